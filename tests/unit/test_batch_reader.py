"""The shared stream reader (services.capture.receiver.BatchReader): every stream's
socket read through one epoll set, a collection at most every `interval`.

What must hold: each stream still gets exactly its own packets, strangers and non-RTP
are still counted, a backlog cannot starve the other streams, and a closed stream
leaves the set even while another copy of its socket (the socket keeper's) lives.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import uvloop

from services.capture.latching import expected_from_sdp
from services.capture.receiver import MAX_READ_ROUNDS, BatchReader, StreamReceiver
from services.capture.segments import SegmentWriter, read_records


def rtp(seq: int) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + bytes(8) + b"\xff" * 160


def bound() -> tuple[socket.socket, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def stream(path: Path) -> StreamReceiver:
    return StreamReceiver(SegmentWriter(path), time.time(),
                          expected=expected_from_sdp("127.0.0.1", None))


def stored(receiver: StreamReceiver) -> list[int]:
    receiver.writer.flush()
    return [int.from_bytes(d[2:4], "big") for _, d in read_records(receiver.writer.path)]


async def until(condition: object, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.005)


async def test_streams_read_through_one_reader_keep_their_own_packets(tmp_path: Path) -> None:
    reader = BatchReader(interval=0.02)
    receivers = [stream(tmp_path / f"{i}.seg") for i in range(2)]
    ports = []
    for receiver in receivers:
        sock, port = bound()
        receiver.attach(sock, reader)
        ports.append(port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as real, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        real.bind(("127.0.0.1", 0))
        stranger.bind(("127.0.0.2", 0))
        for seq in range(30):
            real.sendto(rtp(seq), ("127.0.0.1", ports[0]))
            real.sendto(rtp(100 + seq), ("127.0.0.1", ports[1]))
            stranger.sendto(rtp(500 + seq), ("127.0.0.1", ports[1]))
            real.sendto(b"\x00not rtp", ("127.0.0.1", ports[0]))
            if seq % 10 == 9:
                await asyncio.sleep(0.01)  # some arrive while the reader waits
        await until(lambda: receivers[0].packets + receivers[0].invalid >= 60
                    and receivers[1].packets + receivers[1].dropped["wrong_address"] >= 60)
    assert stored(receivers[0]) == list(range(30))
    assert stored(receivers[1]) == list(range(100, 130))
    assert receivers[0].invalid == 30
    assert receivers[1].dropped["wrong_address"] == 30
    for receiver in receivers:
        receiver.close()
    reader.close()


async def test_a_backlog_is_read_a_datagram_per_round_and_then_in_full(tmp_path: Path) -> None:
    reader = BatchReader(interval=10.0)  # only the explicit collections below read
    backlog, quiet = stream(tmp_path / "b.seg"), stream(tmp_path / "q.seg")
    sock_b, port_b = bound()
    sock_q, port_q = bound()
    backlog.attach(sock_b, reader)
    quiet.attach(sock_q, reader)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as real:
        real.bind(("127.0.0.1", 0))
        for seq in range(MAX_READ_ROUNDS + 36):
            real.sendto(rtp(seq), ("127.0.0.1", port_b))
        real.sendto(rtp(7), ("127.0.0.1", port_q))
        reader.read_ready()  # no await since the sends: the loop has not read any
        assert backlog.packets == MAX_READ_ROUNDS
        assert quiet.packets == 1  # read in the first round, beside the backlog
        reader.read_ready()
    assert stored(backlog) == list(range(MAX_READ_ROUNDS + 36))
    backlog.close()
    quiet.close()
    reader.close()


async def test_a_closed_stream_leaves_the_set_though_the_keeper_holds_a_copy(
    tmp_path: Path,
) -> None:
    reader = BatchReader(interval=0.01)
    first = stream(tmp_path / "1.seg")
    sock, port = bound()
    fd = sock.fileno()
    keeper_copy = sock.dup()  # as the socket keeper holds it across a restart
    first.attach(sock, reader)
    first.close()
    # POSIX hands out the lowest free descriptor: the next socket gets the same number,
    # which must register anew (the set would refuse a number still in it).
    sock2, port2 = bound()
    assert sock2.fileno() == fd
    second = stream(tmp_path / "2.seg")
    second.attach(sock2, reader)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as real:
        real.sendto(rtp(1), ("127.0.0.1", port))
        real.sendto(rtp(2), ("127.0.0.1", port2))
        await until(lambda: second.packets == 1)
        await asyncio.sleep(0.03)
        assert first.packets == 0
        assert keeper_copy.recv(2048) == rtp(1)  # still waiting in the kernel
    assert stored(second) == [2]
    second.close()
    keeper_copy.close()
    reader.close()


async def test_an_idle_reader_sets_no_timer(tmp_path: Path) -> None:
    """Nothing arriving costs nothing: the loop only watches the epoll descriptor, and
    goes back to that after the first collection that finds nothing."""
    reader = BatchReader(interval=0.1)
    receiver = stream(tmp_path / "s.seg")
    sock, port = bound()
    receiver.attach(sock, reader)
    await asyncio.sleep(0.3)
    assert reader._timer is None and reader._watching
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as real:
        sent_at = time.time()
        real.sendto(rtp(1), ("127.0.0.1", port))
        await until(lambda: receiver.packets == 1)
        assert not reader._watching  # collecting from the timer for a while
    await asyncio.sleep(0.3)
    assert reader._timer is None and reader._watching
    assert receiver.last_arrival >= sent_at  # stamped after it arrived, not before
    receiver.close()
    reader.close()


def test_the_receivers_run_on_uvloop(tmp_path: Path) -> None:
    """Capture's loop is uvloop, not asyncio's: the shared reader, a socket with a
    reader of its own and a receiver behind a transport each store their packets
    there, across collections and a return to watching. (uvloop's datagram transport
    has no `max_size`: connection_made raised, and nothing came through it. Compiled
    (callrec.native), the module checks what the loop returns against its declared
    types: asyncio's said remove_reader gives a bool, uvloop's gives None, and every
    collection raised, so no packet was stored.)"""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        reader = BatchReader(interval=0.02)
        shared, own, behind = (stream(tmp_path / f"{name}.seg")
                               for name in ("shared", "own", "behind"))
        sock_shared, port_shared = bound()
        sock_own, port_own = bound()
        shared.attach(sock_shared, reader)
        own.attach(sock_own)  # a reader callback of its own on the loop
        await loop.create_datagram_endpoint(lambda: behind, local_addr=("127.0.0.1", 0))
        assert behind.transport is not None
        port_behind = behind.transport.get_extra_info("sockname")[1]  # type: ignore[attr-defined]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as real:
            real.bind(("127.0.0.1", 0))
            for burst in range(2):  # the second after the reader went back to watching
                for seq in range(5):
                    for port in (port_shared, port_own, port_behind):
                        real.sendto(rtp(burst * 5 + seq), ("127.0.0.1", port))
                sent = 5 * (burst + 1)
                await until(lambda n=sent: shared.packets == own.packets  # type: ignore[misc]
                            == behind.packets == n)
                await until(lambda: reader._watching, timeout=1.0)
                assert reader._watching and reader._timer is None
        for receiver in (shared, own, behind):
            assert stored(receiver) == list(range(10))
            receiver.close()
        reader.close()

    uvloop.run(body())
