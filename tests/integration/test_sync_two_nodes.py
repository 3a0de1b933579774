"""Two real clustered nodes: a recording made on A is replicated to B, both see each
other in sync status, and a purge removes every copy."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import struct
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from callrec import bus
from contracts import subjects
from contracts.v1.events import RecordingMetadata, RecordingPurged
from contracts.v1.rpc import (
    AllocateReply,
    AllocateRequest,
    Empty,
    FinalizeRequest,
    StreamSpec,
    SyncStatus,
    UpdateRequest,
)
from tests.support.node import Node

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    tmp = tmp_path_factory.mktemp("sync")
    a = Node.clustered(tmp / "a", "a")
    b = Node.clustered(tmp / "b", "b", peers=[a.cluster_address], role="backup", priority=1)
    try:
        a.start()
        b.join_file = a.invite(tmp / "b.join.json")
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


def send_rtp(ports: list[int], packets: int = 50) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(packets):
            for n, port in enumerate(ports):
                header = struct.pack("!BBHII", 0x80, 0, i, i * 160, 0x1000 + n)
                sock.sendto(header + bytes([0xFF - n]) * 160, ("127.0.0.1", port))
            time.sleep(0.005)


async def record_on(node: Node, recording_id: str) -> None:
    """Open, feed and finalize a recording through capture's RPCs (no SIP)."""
    nc = await node.bus()
    try:
        def rpc(op: str) -> str:
            return subjects.rpc(node.node_id, subjects.CAPTURE, op)

        reply = await bus.call(nc, rpc(subjects.CAPTURE_ALLOCATE), AllocateRequest(
            recording_id=recording_id, started_at=datetime.now(UTC),
            streams=[StreamSpec(stream_id="near", channel=0),
                     StreamSpec(stream_id="far", channel=1)],
            metadata=RecordingMetadata(source="sip", session_key=recording_id),
        ), AllocateReply, timeout=10.0)
        assert reply is not None
        await bus.call(nc, rpc(subjects.CAPTURE_UPDATE),
                       UpdateRequest(recording_id=recording_id, payload_codecs={0: "PCMU"}),
                       None, timeout=10.0)
        await asyncio.to_thread(send_rtp, [reply.ports["near"], reply.ports["far"]])
        await asyncio.sleep(0.7)  # a flush interval: packets reach the segments
        await bus.call(nc, rpc(subjects.CAPTURE_FINALIZE),
                       FinalizeRequest(recording_id=recording_id, ended_at=datetime.now(UTC)),
                       None, timeout=10.0)
    finally:
        await nc.close()


async def sync_status(node: Node) -> SyncStatus:
    nc = await node.bus()
    try:
        status = await bus.call(nc, subjects.rpc(node.node_id, subjects.SYNC,
                                                 subjects.SYNC_STATUS), Empty(), SyncStatus)
        assert status is not None
        return status
    finally:
        await nc.close()


async def purge(node: Node, recording_id: str, object_key: str) -> None:
    nc = await node.bus()
    try:
        await bus.publish_event(nc.jetstream(), RecordingPurged(
            node_id=node.node_id, recording_id=recording_id, object_key=object_key,
            reason="test", requested_by="admin"))
    finally:
        await nc.close()


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def find(node: Node, recording_id: str) -> dict[str, Any] | None:
    with node.client() as client:
        response = client.get("/api/recordings", params={"limit": 1000})
        if response.status_code != 200:
            return None
        return next((i for i in response.json()["items"]
                     if i["recording_id"] == recording_id), None)


def audio(node: Node, recording_id: str) -> bytes | None:
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording_id}/audio")
        return response.content if response.status_code == 200 else None


def test_recording_replicates_and_purge_removes_every_copy(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    rid = f"sync-{int(time.time())}"
    asyncio.run(record_on(a, rid))
    on_a = wait_for(lambda: find(a, rid), 30, "recording on A")
    finished = time.monotonic()
    original = audio(a, rid)
    assert original is not None
    assert hashlib.sha256(original).hexdigest() == on_a["sha256"]

    copy = wait_for(lambda: audio(b, rid), 15, "audio on B\n" + b.log()[-3000:])
    print(f"replicated to B {time.monotonic() - finished:.2f} s after A listed it")
    assert hashlib.sha256(copy).hexdigest() == on_a["sha256"]
    assert find(b, rid) is not None

    def both_see_each_other() -> bool:
        sa, sb = asyncio.run(sync_status(a)), asyncio.run(sync_status(b))
        alive_a = {n.node_id for n in sa.nodes if n.alive}
        alive_b = {n.node_id for n in sb.nodes if n.alive}
        return alive_a == alive_b == {"a", "b"} and sb.recordings_held >= 1
    wait_for(both_see_each_other, 10, "sync status on both nodes")
    sb = asyncio.run(sync_status(b))
    lag_a = {p.node_id: p for p in sb.lag}["a"]
    assert lag_a.objects_pending == 0 and lag_a.events_last_contact_s is not None

    key = on_a["object_key"]
    path_a, path_b = a.data_dir / "objects" / key, b.data_dir / "objects" / key
    assert path_a.is_file() and path_b.is_file()
    asyncio.run(purge(a, rid, key))
    wait_for(lambda: not path_a.exists() and not path_b.exists(), 15, "purge on both nodes")
    assert not list((b.data_dir / "sync" / "partial").glob("*.part"))


def test_restarted_backup_catches_up_from_its_checkpoint(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    b.stop()
    checkpoint = int((b.data_dir / "sync" / "checkpoint").read_text())
    assert checkpoint > 0
    rid = f"sync-late-{int(time.time())}"
    asyncio.run(record_on(a, rid))
    on_a = wait_for(lambda: find(a, rid), 30, "recording on A")
    b.start()
    restarted = time.monotonic()
    # The server re-creates B's source of A's events with its own retry back-off when
    # the link was not up at start-up (seen: 1-30 s), hence the long wait.
    copy = wait_for(lambda: audio(b, rid), 60, "audio on B after restart\n" + b.log()[-3000:])
    print(f"caught up {time.monotonic() - restarted:.2f} s after B was healthy again")
    assert hashlib.sha256(copy).hexdigest() == on_a["sha256"]
    # B copies the recording as soon as it reads A's events, which can be before A's
    # next heartbeat tells it A is alive: wait for both, then check them.
    status = wait_for(lambda: (s := asyncio.run(sync_status(b))).recordings_held == 1
                      and {n.node_id for n in s.nodes if n.alive} == {"a", "b"} and s,
                      10, "B holds exactly the new recording and sees A alive")
    assert status.recordings_held == 1
    assert {n.node_id for n in status.nodes if n.alive} == {"a", "b"}
