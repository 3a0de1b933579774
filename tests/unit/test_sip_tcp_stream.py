"""SIP over TCP is read by signaling itself (StampedStream), so that each read carries the
kernel's receive time: the reading, the replies a slow peer cannot take at once, and a
peer that never reads them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any

from services.signaling.sip import transport
from services.signaling.sip.transport import TCP_WRITE_LIMIT, StampedStream, StreamLink


class User:
    """The calls a StampedStream makes, as a TcpConnection would receive them."""

    def __init__(self) -> None:
        self.link: StreamLink | None = None
        self.data = bytearray()
        self.stamps: list[float | None] = []
        self.lost: list[Exception | None] = []

    def connection_made(self, link: StreamLink) -> None:
        self.link = link

    def data_received(self, data: bytes, received_at: float | None = None) -> None:
        self.data += data
        self.stamps.append(received_at)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def until(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def stream_pair(user: User) -> tuple[StampedStream, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    stream = StampedStream(ours, asyncio.get_running_loop(), user)
    stream.start()
    return stream, theirs


async def test_what_the_peer_sends_arrives_in_order_and_its_end_closes_the_stream() -> None:
    user = User()
    _stream, peer = stream_pair(user)
    payload = bytes(range(256)) * 400  # 100 KB: several reads, some wake-ups
    peer.sendall(payload)
    await until(lambda: len(user.data) == len(payload))
    assert bytes(user.data) == payload and all(s is not None for s in user.stamps)
    peer.close()
    await until(lambda: user.lost == [None])


async def test_replies_the_socket_cannot_take_at_once_are_queued_and_sent_whole() -> None:
    user = User()
    stream, peer = stream_pair(user)
    peer.setblocking(False)
    replies = [bytes([n]) * 100_000 for n in range(6)]  # 600 KB: more than the buffers
    for reply in replies:
        stream.write(reply)
    received = bytearray()
    deadline = time.monotonic() + 10
    while len(received) < 600_000:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)  # the peer reads slowly
        with contextlib.suppress(BlockingIOError):
            received += peer.recv(32768)
    assert bytes(received) == b"".join(replies) and user.lost == []
    stream.close()
    await until(lambda: user.lost == [None])
    peer.close()


async def test_a_peer_that_never_reads_its_replies_is_dropped_at_the_limit() -> None:
    """A stranger (or a broken PBX) sends requests and never reads the answers: the
    queue stops at TCP_WRITE_LIMIT and the connection is dropped, its memory freed."""
    user = User()
    stream, peer = stream_pair(user)
    chunk = b"x" * 65536
    for _ in range(TCP_WRITE_LIMIT // len(chunk) * 4):
        stream.write(chunk)
        if stream.is_closing():
            break
    assert stream.is_closing()
    await until(lambda: len(user.lost) == 1)
    stream.write(chunk)  # after the end: ignored, no error
    peer.close()


async def test_a_close_with_replies_queued_waits_for_them_then_gives_up(monkeypatch: Any,
                                                                        ) -> None:
    monkeypatch.setattr(transport, "TCP_CLOSE_LINGER", 0.2)
    user = User()
    stream, peer = stream_pair(user)
    for _ in range(12):  # more than the socket buffers hold, less than the limit
        stream.write(b"y" * 65536)
    stream.close()
    await asyncio.sleep(0.05)
    assert user.lost == []  # still waiting for the peer to read
    await until(lambda: len(user.lost) == 1, 2.0)  # it never did: dropped
    peer.close()


async def test_a_tcp_read_is_stamped_with_the_kernels_receive_time() -> None:
    """Over real TCP: bytes that waited in the kernel while the loop was busy keep the
    time they came, not the time they were read."""
    server = transport.TcpServer(lambda data, peer, received_at: got.append(
        (data, received_at)))
    got: list[tuple[bytes, float | None]] = []
    await server.start("127.0.0.1", 0)
    await asyncio.sleep(0.2)  # the kernel turns stamping on a moment after it is asked
    client = socket.create_connection(server.sockname)
    try:
        await until(lambda: bool(server.connections))
        sent = time.time()
        client.sendall(b"OPTIONS sip:rec@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        time.sleep(0.5)  # the loop is busy
        await until(lambda: bool(got))
        ((_, received_at),) = got
        assert received_at is not None and abs(received_at - sent) < 0.25, received_at - sent
    finally:
        client.close()
        server.close()


async def test_a_pbxs_backlog_through_a_stall_keeps_the_time_each_message_came() -> None:
    """A PBX's connection at 200 requests a second (1 KB each, as over Ethernet: 1448-
    byte segments, no Nagle) while the loop stalls 1.5 s. The kernel's default buffer
    (128 KB, not grown while nobody reads) fills in about half a second; the rest waits
    in the PBX's own send buffer and is stamped when it finally comes, so its wait goes
    unmeasured: 86 of 200 late requests were measured over 0.5 s short. A PBX's
    connection is given PBX_TCP_RECEIVE_BUFFER, so each keeps the time it came."""
    got: list[tuple[bytes, float | None, float]] = []
    server = transport.TcpServer(lambda data, peer, received_at: got.append(
        (data, received_at, time.time())), is_allowed=lambda host: True)
    await server.start("127.0.0.1", 0)
    await asyncio.sleep(0.2)  # the kernel turns stamping on a moment after it is asked
    client = socket.socket()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1448)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect(server.sockname)
    rate, count = 200, 500

    def send() -> None:
        start = time.time()
        for n in range(count):
            time.sleep(max(0.0, start + n / rate - time.time()))
            sent = f"X-Sent: {time.time():.6f}\r\n".encode()
            head = b"OPTIONS sip:rec@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n" + sent
            client.sendall(head + b"X-Pad: " + b"p" * (1000 - len(head) - 11) + b"\r\n\r\n")

    sender = threading.Thread(target=send)
    try:
        await until(lambda: bool(server.connections))
        sender.start()
        await asyncio.sleep(0.5)
        time.sleep(1.5)  # the loop stalls
        await until(lambda: len(got) == count, 10.0)
        waits = [(read - float(data.split(b"X-Sent: ")[1].split(b"\r\n")[0]),
                  read - (stamp or read)) for data, stamp, read in got]
        late = [(true, measured) for true, measured in waits if true > 0.5]
        short = [(true, measured) for true, measured in late if measured < true - 0.5]
        assert len(late) >= 150, len(late)  # the stall did back them up
        assert len(short) <= len(late) // 20, (len(short), len(late))
    finally:
        if sender.ident is not None:  # started
            sender.join()
        client.close()
        server.close()
