"""Capture's reserve of ports for signaling (issue 11, set-up rate), on real sockets.

A reserved port is bound and left unread; its allocate comes after the 200 OK that
gave it away. What reached it before that answer cannot be the PBX's and is dropped
(counted as before_answer); what came after waits in the socket and is kept. The
reserve never takes more than a quarter of the free ports, and an unused lease ends.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.v1.events import RecordingMetadata
from contracts.v1.rpc import AllocateRequest, ReserveRequest, StreamSpec
from services.capture.ports import PortsExhausted
from services.capture.service import RESERVE_LEASE_S, Capture
from tests.support.capturecore import bare_capture
from tests.support.stamping import kernel_stamps_arrivals

RANGE = (47100, 47139)  # 20 even ports


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[Capture]:
    c = bare_capture(tmp_path, RANGE)
    yield c
    for live in (s for r in c.live.values() for s in r.streams.values()):
        live.receiver.close()
    for _, sock in c.reserved.release_all():
        sock.close()
    c.reader.close()
    c.journal.close()
    c.files.close()


def rtp(seq: int) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + bytes(8) + bytes(160)


def allocate(port: int, capture_id: str, answered_at: float) -> AllocateRequest:
    return AllocateRequest(
        recording_id="r1", started_at=datetime.now(UTC),
        metadata=RecordingMetadata(source="cucm", session_key="k"),
        streams=[StreamSpec(stream_id="near", channel=0, port=port)],
        capture_id=capture_id, answered_at=answered_at)


async def test_what_reached_a_reserved_port_before_the_answer_is_dropped(
    capture: Capture,
) -> None:
    reply = await capture.reserve_ports(ReserveRequest(count=2))
    assert len(reply.ports) == 2 and reply.capture_id == capture.capture_id
    port = reply.ports[0]
    await kernel_stamps_arrivals()  # else the stranger's packets are stamped when read
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as early, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx:
        for seq in range(3):  # a stranger spraying ports before any call
            early.sendto(rtp(seq), ("127.0.0.1", port))
        await asyncio.sleep(0.05)
        answered_at = time.time()  # our 200 OK names the port
        for seq in range(3, 5):
            pbx.sendto(rtp(seq), ("127.0.0.1", port))
        await asyncio.sleep(0.05)
        result = await capture.allocate(allocate(port, reply.capture_id, answered_at))
    assert result.ports == {"near": port}
    receiver = capture.live["r1"].streams["near"].receiver
    assert receiver.dropped["before_answer"] == 3
    assert receiver.pending is not None and len(receiver.pending) == 2  # kept for the SDP
    assert capture.m_rejected.get(reason="before_answer") == 3
    assert port not in capture.reserved and not capture.pool.available(port)


async def test_a_port_no_longer_reserved_is_bound_again_if_it_is_free(
    capture: Capture,
) -> None:
    port = RANGE[0] + 10  # answered from a capture process that has since restarted
    assert capture.pool.available(port)
    result = await capture.allocate(allocate(port, "capture-before-restart", time.time()))
    assert result.ports == {"near": port}
    assert not capture.pool.available(port)


async def test_a_port_reserved_again_goes_to_the_leg_its_predecessor_answered(
    capture: Capture,
) -> None:
    reply = await capture.reserve_ports(ReserveRequest(count=1))
    (port,) = reply.ports
    # Signaling answered with `port` from the capture before a restart, and this one
    # has since reserved the same port: the leg gets it.
    result = await capture.allocate(allocate(port, "capture-before-restart", time.time()))
    assert result.ports == {"near": port}
    assert port not in capture.reserved


async def test_a_port_a_stream_holds_fails_the_allocate(capture: Capture) -> None:
    reply = await capture.reserve_ports(ReserveRequest(count=1))
    (port,) = reply.ports
    await capture.allocate(allocate(port, reply.capture_id, time.time()))
    other = allocate(port, "capture-before-restart", time.time())
    other.recording_id = "r2"
    with pytest.raises(PortsExhausted):
        await capture.allocate(other)
    assert capture.live["r1"].streams["near"].manifest.port == port


async def test_the_reserve_takes_at_most_a_quarter_of_the_free_ports(
    capture: Capture,
) -> None:
    free = capture.pool.free
    reply = await capture.reserve_ports(ReserveRequest(count=100))
    assert len(reply.ports) == free // 4 == 5
    assert len(set(reply.ports)) == 5
    assert (await capture.reserve_ports(ReserveRequest(count=100))).ports == []
    assert capture.pool.free == free - 5


async def test_an_unused_lease_ends_and_its_port_returns_to_the_pool(
    capture: Capture,
) -> None:
    free = capture.pool.free
    reply = await capture.reserve_ports(ReserveRequest(count=3))
    capture._expire_reserved(time.monotonic() + RESERVE_LEASE_S / 2)
    assert len(capture.reserved) == 3
    capture._expire_reserved(time.monotonic() + RESERVE_LEASE_S + 1)
    assert len(capture.reserved) == 0 and capture.pool.free == free
    for port in reply.ports:  # closed: the port can be bound again
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))
