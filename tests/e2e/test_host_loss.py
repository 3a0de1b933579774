"""Host loss mid-call (issue 9): a peer keeps every call in progress, and the cluster
keeps one recording per call when the origin comes back.

Three CUCM calls with their own tones are recorded on node A; A's whole process group
is SIGKILLed mid-call. Node B, which had been following the calls' live Opus files,
waits out the takeover timeout (A silent: no heartbeat, no live progress) and lists
the three calls as interrupted, each with its audio up to at most a second before the
kill. Then either A is rebuilt empty and joins again the way an operator would (a new
join file from B, `--join`) and catches up, or A restarts with its data and recovers
its own copies: either way one recording per call on both nodes, the most complete.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from callrec import bus
from callrec.audio import decode_file, dominant_frequency, sound_seconds
from contracts import subjects
from contracts.v1.events import RecordingCompleted, parse_event
from contracts.v1.rpc import SearchRequest, SearchResult
from contracts.v1.winner import winner
from tests.support import sipp
from tests.support.cluster import (
    ROLE_TIMEOUT,
    audio_sha,
    eventually,
    record_call,
    recordings,
    start_pair,
)
from tests.support.node import Node

pytestmark = pytest.mark.e2e

RATE = 16000
TAKEOVER_S = ROLE_TIMEOUT + 5.0  # sync's default takeover timeout: role timeout + 5 s
KILL_AFTER_S = 6.0


@dataclass(frozen=True)
class Call:
    near: str
    refci: str
    near_hz: float
    far_hz: float


CALLS = (Call("1001", "83886081", 440.0, 1004.0),
         Call("1003", "83886091", 550.0, 1200.0),
         Call("1005", "83886101", 660.0, 1400.0))


def near_number(row: dict[str, Any]) -> str | None:
    for party in row["metadata"]["participants"]:
        if party.get("role") == "near":
            return str(party.get("number"))
    return None


def calls_on_a_then_kill(a: Node) -> float:
    """Start the three calls (30 s each), let them run, SIGKILL A's process group;
    returns the wall-clock time of the kill."""
    running = [sipp.start_cucm_call("127.0.0.1", a.sip_port, near=c.near, far="2002",
                                    refci=c.refci, near_tone_hz=c.near_hz,
                                    far_tone_hz=c.far_hz, seconds=30.0) for c in CALLS]
    time.sleep(KILL_AFTER_S)
    killed_at = time.time()
    a.kill()
    for call in running:
        call.close()  # the PBX side goes away too
    return killed_at


def listed(node: Node, interrupted: bool | None = None) -> dict[str, dict[str, Any]]:
    """This test's calls as the node lists them, by near-end number."""
    rows: dict[str, dict[str, Any]] = {}
    for row in recordings(node).values():
        number = near_number(row)
        if number in {c.near for c in CALLS}:
            assert number not in rows, f"two recordings of call {number} on {node.node_id}"
            if interrupted is None or row["interrupted"] is interrupted:
                rows[number] = row
    return rows


def catalog(node: Node) -> dict[str, str]:
    """recording id -> event id of every recording the node's catalog lists (asked on
    its bus, so it does not depend on the node's users)."""
    async def search() -> dict[str, str]:
        nc = await node.bus()
        try:
            result = await bus.call(nc, subjects.rpc(node.node_id, subjects.CATALOG,
                                                     subjects.CATALOG_SEARCH),
                                    SearchRequest(limit=1000), SearchResult, timeout=10.0)
        finally:
            await nc.close()
        assert result is not None
        ids = [item.recording_id for item in result.items]
        assert len(ids) == len(set(ids)), "a recording listed twice"
        return {item.recording_id: item.event_id for item in result.items}
    return asyncio.run(search())


async def completions(node: Node, ids: set[str]) -> dict[str, list[RecordingCompleted]]:
    """Every recording.completed fact of these recordings in the node's CLUSTER stream."""
    nc = await node.bus()
    found: dict[str, list[RecordingCompleted]] = {}
    try:
        sub = await nc.jetstream().subscribe(
            subjects.events_of_type("recording.completed"), stream=subjects.CLUSTER_STREAM,
            ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except TimeoutError:
                break
            event = parse_event(msg.data)
            if isinstance(event, RecordingCompleted) and event.recording_id in ids:
                found.setdefault(event.recording_id, []).append(event)
    finally:
        await nc.close()
    return found


def check_audio(node: Node, row: dict[str, Any], call: Call, killed_at: float,
                tmp: Path) -> float:
    """The recording has the call's tones on their channels, up to at most a second
    before the kill; returns the seconds kept (the least of the two channels)."""
    with node.client() as client:
        response = client.get(f"/api/recordings/{row['recording_id']}/audio")
    assert response.status_code == 200, response.text
    path = tmp / f"{node.node_id}-{call.near}.opus"
    path.write_bytes(response.content)
    audio, _ = decode_file(path, rate=RATE)
    assert audio.shape[0] == 2
    sent_s = killed_at - datetime.fromisoformat(row["started_at"]).timestamp()
    kept_all = []
    for index, hz in ((0, call.near_hz), (1, call.far_hz)):
        kept = sound_seconds(audio[index], RATE)
        print(f"{node.node_id} call {call.near} channel {index}: kept {kept:.2f} s of "
              f"{sent_s:.2f} s sent (interrupted={row['interrupted']})")
        assert abs(dominant_frequency(audio[index], RATE) - hz) < 15, (call, index)
        assert sent_s - 1.0 <= kept <= sent_s + 0.1, (call, index, kept, sent_s)
        kept_all.append(kept)
    assert abs(audio.shape[1] / RATE - row["duration_ms"] / 1000) <= 0.1
    return min(kept_all)


def test_host_lost_mid_call_peer_keeps_the_calls_and_rebuilt_node_catches_up(
        tmp_path: Path) -> None:
    a, b, _ = start_pair(tmp_path)
    rebuilt: Node | None = None
    try:
        eventually(lambda: b.metric("callrec_sync_peers") >= 1, 30, "b hears a")
        # A call finished before the loss, replicated to B.
        earlier_id = record_call(a, "83886071", near="1009")
        earlier = recordings(a)[earlier_id]
        eventually(lambda: audio_sha(b, earlier_id) == earlier["sha256"], 30, "b has it")
        killed_at = calls_on_a_then_kill(a)
        shutil.rmtree(a.data_dir)  # the host is lost with its disk

        # B lists the three calls as interrupted, never before A was silent long enough.
        rows = eventually(lambda: len(r := listed(b)) == 3 and r, TAKEOVER_S + 40,
                          "b lists the three calls\n" + b.log()[-3000:])
        assert time.time() - killed_at >= TAKEOVER_S - 0.5
        for row in rows.values():
            assert row["interrupted"] is True and row["node_id"] == "b"
            assert row["metadata"]["source"] == "cucm"
        assert len({row["recording_id"] for row in rows.values()}) == 3
        # ... each with its audio up to at most a second before the kill (by tone).
        for call in CALLS:
            check_audio(b, rows[call.near], call, killed_at, tmp_path)

        # A is rebuilt empty and joins again as an operator would: a new join file.
        join = b.invite(tmp_path / "a-again.join.json")
        rebuilt = Node.clustered(tmp_path / "a", "a", peers=[b.cluster_address],
                                 role_timeout=ROLE_TIMEOUT, extra_args=["--record-all"],
                                 join_file=join).start()
        # It catches up: every recording of the cluster, the call finished before the
        # loss too (a fact of the lost A, kept in B's stream), each once, playable.
        wanted = {earlier["recording_id"]} | {row["recording_id"] for row in rows.values()}
        caught = eventually(lambda: wanted <= set(r := catalog(rebuilt)) and r, 90,
                            "the rebuilt a lists every recording\n" + rebuilt.log()[-3000:])
        for row in [earlier, *rows.values()]:
            assert caught[row["recording_id"]] == row["event_id"]
            eventually(lambda row=row: audio_sha(rebuilt, row["recording_id"])  # type: ignore[misc, arg-type]
                       == row["sha256"], 60, f"the rebuilt a plays {row['recording_id']}")
        # No duplicates anywhere (listed() fails on two rows of one call), and the
        # cluster's users work on the rebuilt node (the admin was a fact of the lost A).
        assert len(listed(b)) == 3 and len(listed(rebuilt)) == 3
    finally:
        if rebuilt is not None:
            rebuilt.stop()
        b.stop()
        a.stop()


def test_host_killed_mid_call_and_restarted_with_its_data_keeps_one_recording_per_call(
        tmp_path: Path) -> None:
    a, b, _ = start_pair(tmp_path)
    try:
        eventually(lambda: b.metric("callrec_sync_peers") >= 1, 30, "b hears a")
        killed_at = calls_on_a_then_kill(a)
        # B's provisional copies first, so both copies of each call exist.
        provisional = eventually(lambda: len(r := listed(b, interrupted=True)) == 3 and r,
                                 TAKEOVER_S + 40, "b takes the three calls over")
        assert all(r["node_id"] == "b" for r in provisional.values())
        a.start()  # same data dir: capture recovers its own copies from its segments
        ids = {row["recording_id"]: number for number, row in provisional.items()}

        def both_copies() -> dict[str, RecordingCompleted] | None:
            facts = asyncio.run(completions(b, set(ids)))
            if any(len(facts.get(rid, [])) < 2 for rid in ids):
                return None  # a has not recovered every call yet
            best = {ids[rid]: winner(facts[rid]) for rid in ids}
            return {n: w for n, w in best.items() if w is not None}

        # The best copy of each call by the facts, then the same one listed on both.
        best = eventually(both_copies, 90, "a recovers its copies\n" + a.log()[-3000:])
        for node in (a, b):
            eventually(lambda node=node: {n: r["event_id"] for n, r in listed(node).items()}  # type: ignore[misc]
                       == {n: w.event_id for n, w in best.items()}, 60,
                       f"{node.node_id} lists the best copy of each call")
        for call in CALLS:
            kept = best[call.near]
            row = listed(a)[call.near]
            assert kept.duration_ms >= provisional[call.near]["duration_ms"]
            print(f"call {call.near}: a's copy vs b's takeover -> {kept.node_id} "
                  f"{kept.duration_ms} ms (b's: {provisional[call.near]['duration_ms']} ms)")
            for node in (a, b):
                eventually(lambda node=node, kept=kept: audio_sha(  # type: ignore[misc]
                    node, kept.recording_id) == kept.sha256, 60,
                    f"{node.node_id} plays {call.near}")
            check_audio(a, row, call, killed_at, tmp_path)
            loser = provisional[call.near]
            if loser["event_id"] != kept.event_id:
                for node in (a, b):
                    path = node.data_dir / "objects" / loser["object_key"]
                    eventually(lambda path=path: not path.exists(), 30,  # type: ignore[misc]
                               f"the losing copy of {call.near} gone from {node.node_id}")
    finally:
        b.stop()
        a.stop()
