"""A burst of SIP datagrams while signaling's loop is busy waits in the kernel: at 200
calls/s the default receive buffer (some 90 INVITEs) overflowed and every INVITE the
kernel dropped cost its caller a retransmission (0.5 to 7.5 s)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from callrec.arrival import KERNEL_TIMESTAMPS
from services.signaling.sip.transport import UDP_RECEIVE_BUFFER, Peer, SipTransports
from tests.unit.test_overload import KERNEL_STAMPING_ON

INVITE_SIZE = 1_000  # about a CUCM INVITE with its SDP


def _rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


async def _started() -> tuple[SipTransports, list[bytes], int]:
    received: list[bytes] = []

    def on_message(data: bytes, peer: Peer, received_at: float | None) -> None:
        received.append(data)

    transports = SipTransports(on_message)
    await transports.start("127.0.0.1", 0)
    port = transports.udp.sockname[1]
    return transports, received, port


async def test_the_udp_socket_gets_the_receive_buffer_the_kernel_allows() -> None:
    transports, _, _ = await _started()
    try:
        assert transports.udp.sock is not None
        reported = transports.udp.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert reported >= 2 * min(UDP_RECEIVE_BUFFER, _rmem_max())
    finally:
        transports.close()


async def test_a_burst_sent_while_the_loop_is_busy_is_all_received() -> None:
    transports, received, port = await _started()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # Sent without yielding: the loop reads nothing until all of them are out, as
        # when signaling is busy through a set-up burst. A datagram this size takes
        # under 3 KB of buffer on loopback: count what the granted buffer holds.
        granted = min(UDP_RECEIVE_BUFFER, _rmem_max())
        count = min(1_500, granted // 3_072)
        assert count >= 1_000 or granted < UDP_RECEIVE_BUFFER, "the kernel granted too little"
        for i in range(count):
            sender.sendto(b"INVITE %d " % i + b"x" * INVITE_SIZE, ("127.0.0.1", port))
        for _ in range(200):
            before = len(received)
            await asyncio.sleep(0.01)
            if len(received) == before == count:
                break
        assert len(received) == count
    finally:
        sender.close()
        transports.close()


async def test_each_datagram_carries_the_time_it_reached_the_host() -> None:
    """What an INVITE's wait in the queue is measured from: the kernel's stamp, not the
    time signaling got round to reading it."""
    stamps: list[float | None] = []

    def on_message(data: bytes, peer: Peer, received_at: float | None) -> None:
        stamps.append(received_at)

    transports = SipTransports(on_message)
    await transports.start("127.0.0.1", 0)
    await asyncio.sleep(KERNEL_STAMPING_ON)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sent_at = time.time()
        sender.sendto(b"OPTIONS sip:x SIP/2.0\r\n\r\n", ("127.0.0.1", transports.udp.sockname[1]))
        time.sleep(0.4)  # the loop is busy: nothing reads the datagram meanwhile
        read_from = time.time()
        for _ in range(100):
            if stamps:
                break
            await asyncio.sleep(0.01)
        assert len(stamps) == 1 and stamps[0] is not None
        if KERNEL_TIMESTAMPS:
            assert sent_at - 0.05 <= stamps[0] < read_from - 0.3
        else:
            assert stamps[0] >= read_from
    finally:
        sender.close()
        transports.close()


async def test_a_reply_the_kernel_refuses_is_counted_not_raised() -> None:
    transports = SipTransports(lambda data, peer, received_at: None)
    await transports.start("127.0.0.1", 0)
    try:
        transports.udp.send_to(b"x" * 70_000, "127.0.0.1", 9)  # over a datagram's size
        transports.udp.send_to(b"SIP/2.0 200 OK\r\n\r\n", "127.0.0.1", 9)
        assert transports.udp.send_failures == 1
    finally:
        transports.close()
