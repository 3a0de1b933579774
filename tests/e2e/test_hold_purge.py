"""Legal hold against purge on two real nodes: a forged `recording.purged` of a held
recording, published straight onto a node's bus, changes nothing on any node; and a
purge that one node applied before the hold reached it (a partition) is undone there
once the hold arrives: the row comes back and the audio is fetched back from the peer.

The role holder's purge job skipping a held recording is covered on real nodes by
tests/e2e/test_jobs_engine.py::test_purge_respects_retention_and_legal_hold.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from contracts import subjects
from contracts.v1.events import RecordingPurged
from services.scheduler.jobs import purged_event_id
from tests.support.cluster import (
    audio_sha,
    cluster,
    eventually,
    playable_everywhere,
    record_call,
    recordings,
    start_pair,
)
from tests.support.node import Node

pytestmark = pytest.mark.e2e

RESTORES = "callrec_sync_restores_total"


async def connect_as_purger(node: Node) -> NATS:
    """A client of `node`'s bus allowed to publish `recording.purged`: the web
    identity, one of the two purge issuers (what a thief of its password could do)."""
    client: NATS = await node.bus("web")
    return client


def forge_purges(node: Node, *events: RecordingPurged) -> None:
    """Publish purge facts onto `node`'s own event stream, as a purge issuer would."""
    async def go() -> None:
        nc = await connect_as_purger(node)
        try:
            js = nc.jetstream()
            for event in events:
                await js.publish(subjects.event(event.node_id, event.type),
                                 event.model_dump_json().encode(),
                                 headers={"Nats-Msg-Id": event.event_id}, timeout=5)
        finally:
            await nc.close()

    asyncio.run(go())


def forged(node: Node, item: dict[str, Any], **fields: Any) -> RecordingPurged:
    return RecordingPurged(node_id=node.node_id, recording_id=item["recording_id"],
                           object_key=item["object_key"], reason="forged",
                           requested_by="job:forged", **fields)


def set_hold(node: Node, recording_id: str, hold: bool) -> None:
    with node.client() as client:
        if hold:
            response = client.put(f"/api/recordings/{recording_id}/hold",
                                  json={"reason": "case 7"})
        else:
            response = client.delete(f"/api/recordings/{recording_id}/hold")
    assert response.status_code == 200 and response.json()["legal_hold"] is hold, response.text


def shows_hold(node: Node, recording_id: str) -> bool:
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording_id}")
    return response.status_code == 200 and response.json()["legal_hold"] is True


def object_file(node: Node, item: dict[str, Any]) -> Path:
    return node.data_dir / "objects" / item["object_key"]


def test_forged_purge_of_held_recording_changes_nothing_on_any_node(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    eventually(lambda: all(n["alive"] for n in cluster(b)["nodes"])
               and len(cluster(b)["nodes"]) == 2, 20, "b sees a")
    rid = record_call(a, "7100001")
    item = eventually(lambda: recordings(a).get(rid), 10, "listed on a")
    sha = item["sha256"]
    playable_everywhere([a, b], rid, sha, timeout=20)
    set_hold(a, rid, True)
    for node in (a, b):
        eventually(lambda node=node: shows_hold(node, rid), 15,  # type: ignore[misc]
                   f"hold shown on {node.node_id}")

    now = datetime.now(UTC)
    forge_purges(a,
                 forged(a, item),  # issued now, while held
                 forged(a, item, occurred_at=now - timedelta(days=3650)))  # back-dated
    forge_purges(b,
                 forged(b, item, event_id=purged_event_id(rid)),  # as the purge job names it
                 forged(b, item, occurred_at=now + timedelta(days=3650)))  # future-dated
    # Markers: a call recorded on each node after the forgeries. Each node's facts reach
    # every projection in order, so once both markers are listed and playable on both
    # nodes, every forged purge has been applied (or not) everywhere.
    markers = [record_call(a, "7100002"), record_call(b, "7100003")]
    for marker in markers:
        origin = a if marker == markers[0] else b
        playable_everywhere([a, b], marker, recordings(origin)[marker]["sha256"], timeout=30)

    for node in (a, b):
        listed = recordings(node)
        assert rid in listed, f"{rid} purged on {node.node_id}"
        assert listed[rid]["legal_hold"] is True
        assert audio_sha(node, rid) == sha
        assert object_file(node, item).is_file()
    assert a.metric(RESTORES) == b.metric(RESTORES) == 0  # nothing was deleted to restore


def test_purge_applied_during_a_partition_is_undone_when_the_earlier_hold_arrives(
    tmp_path: Path,
) -> None:
    a, b, proxy = start_pair(tmp_path, proxy_to_a=True)
    assert proxy is not None
    try:
        eventually(lambda: all(n["alive"] for n in cluster(b)["nodes"])
                   and len(cluster(b)["nodes"]) == 2, 20, "b sees a")
        rid = record_call(a, "7200001")
        item = recordings(a)[rid]
        sha = item["sha256"]
        playable_everywhere([a, b], rid, sha, timeout=20)

        proxy.cut()
        eventually(lambda: not next(n for n in cluster(b)["nodes"]
                                    if n["node_id"] == "a")["alive"], 15, "b loses a")
        set_hold(a, rid, True)  # seen by a only
        forge_purges(b, forged(b, item))  # issued after the hold, seen by b only
        eventually(lambda: rid not in recordings(b), 15, "purge applied on b")
        eventually(lambda: not object_file(b, item).exists(), 15, "b's copy deleted")
        assert rid in recordings(a) and audio_sha(a, rid) == sha

        proxy.heal()
        for node in (a, b):
            eventually(lambda node=node: shows_hold(node, rid), 60,  # type: ignore[misc]
                       f"hold shown on {node.node_id}")
        playable_everywhere([a, b], rid, sha, timeout=60)  # b fetched its copy back
        assert object_file(a, item).is_file() and object_file(b, item).is_file()
        assert b.metric(RESTORES) == 1
        assert a.metric(RESTORES) == 0  # a never deleted anything
    finally:
        b.stop()
        a.stop()
        proxy.close()
