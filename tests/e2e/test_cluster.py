"""Hot-standby clusters of real nodes (separate process groups, ports, data dirs and
nats-servers on loopback), driven by SIPp, with faults injected: SIGKILL of a whole
node, a cut link between nodes, a node that joins after history exists."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import sipp
from tests.support.cluster import (
    ROLE_TIMEOUT,
    audio_sha,
    cluster,
    eventually,
    holder,
    playable_everywhere,
    record_call,
    recordings,
    start_pair,
)
from tests.support.node import Node

pytestmark = pytest.mark.e2e

def test_recordings_replicate_both_ways_with_identical_audio(pair: tuple[Node, Node]) -> None:
    a, b = pair
    on_a = record_call(a, "1000001")
    on_b = record_call(b, "1000002")
    for recording_id, origin in ((on_a, a), (on_b, b)):
        meta = recordings(origin)[recording_id]
        assert audio_sha(origin, recording_id) == meta["sha256"]
        playable_everywhere([a, b], recording_id, meta["sha256"], timeout=10)
    # The cluster page on either node shows both nodes, alive, one holder, and for each
    # node its replication lag behind its peer and the recordings it holds (all: 2).
    def caught_up(n: dict[str, Any]) -> bool:
        peer = "b" if n["node_id"] == "a" else "a"
        lag = n["lag"].get(peer)
        return (bool(lag) and lag["events"] == 0 and lag["objects"] == 0
                and n["recordings"] == 2)

    for node in (a, b):
        status = eventually(lambda node=node: (s := cluster(node)) and all(  # type: ignore[misc]
            caught_up(n) for n in s["nodes"]) and s, 10, "lag reported")
        assert {n["node_id"] for n in status["nodes"]} == {"a", "b"}
        assert all(n["alive"] for n in status["nodes"])
        assert status["holder"] == "a"
        assert {n["node_id"]: n["current_role"] for n in status["nodes"]} == {
            "a": "active", "b": "standby"}


def test_primary_killed_backup_takes_over_and_primary_catches_up(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    eventually(lambda: holder(a) == "a" and holder(b) == "a", 15, "a holds the role")
    before = record_call(a, "2000001")
    sha_before = recordings(a)[before]["sha256"]
    playable_everywhere([b], before, sha_before, timeout=10)

    a.kill()
    killed = time.monotonic()
    eventually(lambda: holder(b) == "b", ROLE_TIMEOUT + 5, "b takes the role")
    took_over = time.monotonic() - killed
    assert took_over <= ROLE_TIMEOUT + 3, took_over
    during = record_call(b, "2000002")  # the PBX now sends calls to the backup
    sha_during = recordings(b)[during]["sha256"]

    a.start()
    playable_everywhere([a], during, sha_during, timeout=20)
    eventually(lambda: holder(a) == "a" and holder(b) == "a", ROLE_TIMEOUT + 10,
               "a takes the role back")
    assert set(recordings(a)) == set(recordings(b)) == {before, during}


def test_partitioned_nodes_both_record_and_converge_after_heal(tmp_path: Path) -> None:
    a, b, proxy = start_pair(tmp_path, proxy_to_a=True)
    assert proxy is not None
    try:
        eventually(lambda: all(n["alive"] for n in cluster(b)["nodes"])
                   and len(cluster(b)["nodes"]) == 2, 15, "b sees a")
        shared = record_call(a, "3000001")
        playable_everywhere([b], shared, recordings(a)[shared]["sha256"], timeout=10)

        proxy.cut()
        eventually(lambda: holder(b) == "b", ROLE_TIMEOUT + 5, "b alone takes the role")
        assert holder(a) == "a"  # each side acts on what it sees
        only_a = record_call(a, "3000002")
        only_b = record_call(b, "3000003")
        assert only_b not in recordings(a) and only_a not in recordings(b)

        proxy.heal()
        expected = {shared, only_a, only_b}
        for node in (a, b):
            eventually(lambda node=node: set(recordings(node)) == expected, 60,  # type: ignore[misc]
                       f"{node.node_id} converges")
        for recording_id in expected:
            origin = a if recording_id in (shared, only_a) else b
            sha = recordings(origin)[recording_id]["sha256"]
            playable_everywhere([a, b], recording_id, sha, timeout=30)
        eventually(lambda: holder(a) == "a" and holder(b) == "a", ROLE_TIMEOUT + 10,
                   "one holder again")
        # No duplicates: the same ids, each listed once, on both nodes.
        with a.client() as client:
            assert client.get("/api/recordings", params={"limit": 1000}).json()["total"] == 3
    finally:
        b.stop()
        a.stop()
        proxy.close()


def test_third_node_started_later_catches_up_on_200_recordings(tmp_path: Path) -> None:
    a, b, _ = start_pair(tmp_path)
    c: Node | None = None
    try:
        result = sipp.run_bulk_cucm_calls("127.0.0.1", a.sip_port, 200, rate=25, seconds=0.4)
        assert result.ok, result.describe()
        history = eventually(lambda: len(recordings(a)) >= 200 and recordings(a), 60,
                             "200 recordings on a")
        assert len(history) == 200
        c = Node.clustered(tmp_path / "c", "c", peers=[a.cluster_address, b.cluster_address],
                           role="backup", priority=2, role_timeout=ROLE_TIMEOUT,
                           join_file=a.invite(tmp_path / "c.join.json")).start()
        started = time.monotonic()
        eventually(lambda: set(recordings(c)) == set(history), 60, "c lists all 200")
        listed_s = time.monotonic() - started
        objects = c.data_dir / "objects"

        def all_objects_present() -> bool:
            return all((objects / item["object_key"]).is_file() for item in history.values())

        eventually(all_objects_present, 120, "c holds all 200 objects")
        for item in list(history.values())[:20]:
            assert audio_sha(c, item["recording_id"]) == item["sha256"]
        print(f"third node: listed 200 in {listed_s:.1f}s, objects in "
              f"{time.monotonic() - started:.1f}s")
    finally:
        if c is not None:
            c.stop()
        b.stop()
        a.stop()


def test_three_nodes_primary_killed_best_backup_takes_over(tmp_path: Path) -> None:
    a, b, _ = start_pair(tmp_path)
    c = Node.clustered(tmp_path / "c", "c", peers=[a.cluster_address, b.cluster_address],
                       role="backup", priority=2, role_timeout=ROLE_TIMEOUT,
                       extra_args=["--record-all"],
                       join_file=a.invite(tmp_path / "c.join.json")).start()
    try:
        eventually(lambda: all(holder(n) == "a" for n in (a, b, c)), 15, "a holds the role")
        first = record_call(a, "4000001")
        playable_everywhere([b, c], first, recordings(a)[first]["sha256"], timeout=10)
        a.kill()
        eventually(lambda: holder(b) == "b" and holder(c) == "b", ROLE_TIMEOUT + 5,
                   "b (best backup) takes the role, on both survivors")
        second = record_call(b, "4000002")
        playable_everywhere([c], second, recordings(b)[second]["sha256"], timeout=10)
        status = cluster(c)
        alive = {n["node_id"]: n["alive"] for n in status["nodes"]}
        assert alive == {"a": False, "b": True, "c": True}
    finally:
        c.stop()
        b.stop()
        a.stop()
