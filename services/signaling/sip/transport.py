"""SIP over UDP and TCP: receive datagrams/streams, hand messages up, send replies back.

Replies go where RFC 3261 18.2.2 / RFC 3581 say: the same TCP connection, or over
UDP to the source address (port from `rport`, else the Via's sent-by port).
Malformed input is counted and dropped (or answered 400 by the core), never fatal.

TCP connections are a resource strangers could hoard: each source may hold only
so many, strangers together only a share of the node's total, a connection must
deliver a complete message within MESSAGE_TIMEOUT of opening or of starting one,
and idle connections are closed (PBXs get a long idle time: their connection is
where our in-dialog BYEs go).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import structlog

from callrec.arrival import (
    ANCILLARY_SPACE,
    arrival_time,
    open_stamped_udp,
    warn_if_buffer_capped,
)

from ..admission import RefusalReason, TcpLimits, TcpSlots
from .message import MAX_MESSAGE_SIZE, SipParseError, StreamFramer

log = structlog.get_logger()

MAX_TCP_CONNECTIONS = 1024
MAX_TCP_PER_SOURCE = 64
# No byte for this long: closed. Strangers only ever get 403s; a PBX's connection
# carries the BYEs we send it, so it may stay quiet through a long call.
TCP_IDLE_TIMEOUT = 120.0
TCP_PBX_IDLE_TIMEOUT = 3600.0
# A connection must complete a message this soon after opening or starting one.
MESSAGE_TIMEOUT = 30.0
TCP_SWEEP_INTERVAL = 5.0
# Every PBX's UDP signalling shares one socket. A burst of set-ups (hundreds of
# INVITEs a second, with the ACKs and BYEs of other calls) must wait in the kernel
# while the loop is busy for a moment, not be dropped there unseen: the kernel's
# default (about 200 KB, some 90 INVITEs) overflowed at 200 calls/s, and each dropped
# INVITE cost its caller a retransmission, 0.5 to 7.5 s. Capped by net.core.rmem_max.
UDP_RECEIVE_BUFFER = 4 << 20
# Datagrams read per wake-up: a burst is read in batches, with timers and the bus
# served between them.
UDP_READ_BATCH = 64


@dataclass(frozen=True)
class Peer:
    """Where a request came from and how to answer it."""

    transport: str  # "UDP" or "TCP"
    host: str
    port: int
    connection: TcpConnection | None = None

    def send(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection.send(data)


# A message, its sender, and when it reached this host (wall clock): the kernel's
# stamp for a UDP datagram, the time of reading for TCP; None when not known.
Receiver = Callable[[bytes, Peer, float | None], None]
SourceCheck = Callable[[str], bool]
TcpRefused = Callable[[str, RefusalReason], None]


class UdpTransport:
    """Signaling's UDP socket, read here with recvmsg rather than by the loop's datagram
    transport, so that every datagram comes with the time the kernel received it: in a
    set-up burst INVITEs wait in the socket's buffer, and how long one waited decides
    whether it is still worth answering (uas.py sheds the late ones with a 503)."""

    def __init__(self, on_message: Receiver) -> None:
        self.on_message = on_message
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Replies the kernel would not take (its send buffer full, or the route gone):
        # SIP's retransmissions recover them, so they are counted, not retried here.
        self.send_failures = 0

    def attach(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading a bound, non-blocking socket (its arrivals stamped)."""
        self.sock = sock
        self._loop = loop
        loop.add_reader(sock.fileno(), self._readable)

    @property
    def sockname(self) -> tuple[str, int]:
        assert self.sock is not None
        name = self.sock.getsockname()
        return name[0], name[1]

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(UDP_READ_BATCH):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(MAX_MESSAGE_SIZE + 1,
                                                           ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp_error", error=str(exc))
                continue  # an error reported once on the socket: read on
            self.datagram_received(data, addr, arrival_time(ancdata))

    def datagram_received(self, data: bytes, addr: Any, received_at: float | None = None) -> None:
        if data in (b"\r\n\r\n", b"\r\n", b"\0\0\0\0"):
            return  # keep-alives
        self.on_message(data, Peer("UDP", addr[0], addr[1]),
                        time.time() if received_at is None else received_at)

    def send_to(self, data: bytes, host: str, port: int) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto(data, (host, port))
        except OSError as exc:
            self.send_failures += 1
            log.debug("udp_send_failed", error=str(exc), peer=f"{host}:{port}")

    def close(self) -> None:
        if self.sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None


class TcpConnection(asyncio.Protocol):
    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.allowed = False
        self.last_byte = 0.0
        self.waiting_since: float | None = None  # a message is due since then

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        allowed = self.server.is_allowed(host)
        refused = self.server.slots.acquire(host, allowed)
        if refused is not None:
            self.server.refused += 1
            self.server.on_refused(host, refused)
            transport.abort()
            return
        self.transport = transport
        self.allowed = allowed
        self.peer = Peer("TCP", host, port, self)
        self.last_byte = self.waiting_since = self.server.clock()
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            return
        now = self.server.clock()
        self.last_byte = now
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            self.server.framing_errors += 1
            log.warning("tcp_framing_error", peer=f"{self.peer.host}:{self.peer.port}",
                        error=str(exc))
            self.close()
            return
        if messages:
            self.waiting_since = now if self.framer.buffered else None
        elif self.waiting_since is None and self.framer.buffered:
            self.waiting_since = now
        received_at = time.time()
        for message in messages:
            self.server.on_message(message, self.peer, received_at)

    def expired(self, now: float) -> str | None:
        """Why this connection should be closed now, if it should."""
        if self.waiting_since is not None and now - self.waiting_since > MESSAGE_TIMEOUT:
            return "no complete message"
        idle = TCP_PBX_IDLE_TIMEOUT if self.allowed else TCP_IDLE_TIMEOUT
        if now - self.last_byte > idle:
            return "idle"
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self in self.server.connections:
            self.server.connections.discard(self)
            self.server.slots.release(self.peer.host, self.allowed)
        self.transport = None

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpServer:
    def __init__(
        self,
        on_message: Receiver,
        *,
        is_allowed: SourceCheck = lambda host: True,
        on_refused: TcpRefused = lambda host, reason: None,
        limits: TcpLimits | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.on_message = on_message
        self.is_allowed = is_allowed
        self.on_refused = on_refused
        self.slots = TcpSlots(limits or TcpLimits(MAX_TCP_PER_SOURCE, MAX_TCP_CONNECTIONS))
        self.clock = clock or time.monotonic
        self.connections: set[TcpConnection] = set()
        self.framing_errors = 0
        self.refused = 0
        self.expired = 0
        self.server: asyncio.Server | None = None
        self.sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: TcpConnection(self), host, port, reuse_address=True, backlog=1024
        )
        self.sweeper = asyncio.create_task(self._sweep_loop())

    def sweep(self) -> int:
        """Close connections that are idle or owe us a message for too long."""
        now = self.clock()
        closed = 0
        for connection in list(self.connections):
            why = connection.expired(now)
            if why is not None and connection.peer is not None:
                log.info("tcp_connection_closed", reason=why,
                         peer=f"{connection.peer.host}:{connection.peer.port}")
                connection.close()
                closed += 1
        self.expired += closed
        return closed

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(TCP_SWEEP_INTERVAL)
            self.sweep()

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            connection.close()


class SipTransports:
    """Both listeners on one port, and the one place that knows how to answer a peer."""

    def __init__(
        self,
        on_message: Receiver,
        *,
        is_allowed: SourceCheck = lambda host: True,
        on_refused: TcpRefused = lambda host, reason: None,
        tcp_limits: TcpLimits | None = None,
    ) -> None:
        self.udp = UdpTransport(on_message)
        self.tcp = TcpServer(on_message, is_allowed=is_allowed, on_refused=on_refused,
                             limits=tcp_limits)

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        sock = open_stamped_udp(family, (host, port), UDP_RECEIVE_BUFFER)
        warn_if_buffer_capped(sock, UDP_RECEIVE_BUFFER, "sip_udp_receive_buffer_capped")
        self.udp.attach(sock, loop)
        await self.tcp.start(host, port)

    def reply(self, peer: Peer, data: bytes, via_port: int | None, rport: bool) -> None:
        """Send a response to the peer a request came from."""
        if peer.transport == "TCP":
            peer.send(data)
            return
        port = peer.port if rport or via_port is None else via_port
        self.udp.send_to(data, peer.host, port)

    def send_request(self, peer: Peer, data: bytes) -> None:
        """Send an in-dialog request (e.g. BYE) back towards a peer."""
        if peer.transport == "TCP":
            peer.send(data)
        else:
            self.udp.send_to(data, peer.host, peer.port)

    def close(self) -> None:
        self.udp.close()
        with contextlib.suppress(Exception):
            self.tcp.close()
