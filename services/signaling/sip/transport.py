"""SIP over UDP and TCP: receive datagrams/streams, hand messages up, send replies back.

Replies go where RFC 3261 18.2.2 / RFC 3581 say: the same TCP connection, or over
UDP to the source address (port from `rport`, else the Via's sent-by port).
Malformed input is counted and dropped (or answered 400 by the core), never fatal.

TCP connections are a resource strangers could hoard: each source may hold only
so many, strangers together only a share of the node's total, a connection must
deliver a complete message within MESSAGE_TIMEOUT of opening or of starting one,
and idle connections are closed (PBXs get a long idle time: their connection is
where our in-dialog BYEs go).

Both transports read their sockets with recvmsg rather than through the loop's own
transports, so that what they deliver carries the kernel's receive time: in a set-up
burst a PBX's INVITEs wait in the socket's buffer, over UDP or TCP alike, and how long
one waited decides whether it is still worth answering (uas.py sheds the late ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from callrec.arrival import (
    ANCILLARY_SPACE,
    arrival_time,
    open_stamped_udp,
    stamp_arrivals,
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
TCP_READ_CHUNK = 4096
"""Bytes one recvmsg of a TCP connection asks for. The kernel stamps a read with the
arrival of the newest segment it took, and merges segments that queue behind each
other into one (keeping the newest's stamp), so a backlog is read in small pieces: a
message gets the stamp of the piece that completed it, a few KB of stream (an INVITE is
1-6 KB) rather than everything that was waiting."""
TCP_READ_BATCH = 16
"""Pieces read from one connection per wake-up (64 KiB, some 50 INVITEs, about what the
UDP socket's batch holds), so a backlog waits in the kernel, where its stamps tell how
long, and one busy PBX does not starve the others, the UDP socket or the bus."""
PBX_TCP_RECEIVE_BUFFER = 4 << 20
"""Bytes the kernel holds of an allow-listed PBX's connection while the loop is busy
(strangers keep the kernel's default). What it cannot hold waits in the PBX's send
buffer and arrives stamped when we read again, so its wait goes unmeasured and a late
INVITE is answered 200 instead of shed. The default (128 KB, not grown while nobody
reads) measured 86 of 200 INVITEs over 0.5 s short in a 1.5 s stall at 200 calls/s; 1
MB and 4 MB none. Capped by net.core.rmem_max."""
TCP_WRITE_LIMIT = 1 << 20
"""Bytes of replies queued for a peer that does not read them: past this its connection
is dropped instead of holding the node's memory (a PBX reads its answers at once)."""
TCP_CLOSE_LINGER = 5.0
"""A connection closed with replies still queued waits this long for the peer to read
them, then is dropped."""
TCP_ACCEPT_BATCH = 64
TCP_BACKLOG = 1024
ACCEPT_RETRY_DELAY = 1.0
"""Out of file descriptors (or memory), accepting pauses this long rather than spin on a
listening socket that stays readable."""
_ACCEPT_PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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
# stamp (of a UDP datagram; for TCP, of the newest segment of the read that completed
# the message), the time of reading where the kernel gives none; None when not known.
Receiver = Callable[[bytes, Peer, float | None], None]
SourceCheck = Callable[[str], bool]
TcpRefused = Callable[[str, RefusalReason], None]


def address_family(host: str) -> socket.AddressFamily:
    """The socket family of a listening address (an IP literal)."""
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def bound_address(sock: socket.socket | None) -> tuple[str, int]:
    """(host, port) a listening socket is bound to."""
    assert sock is not None, "not started"
    name = sock.getsockname()
    return name[0], name[1]


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
        return bound_address(self.sock)

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


class StreamLink(Protocol):
    """What a TcpConnection needs of its byte stream (StampedStream, or a test's fake)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...
    def hold_backlog(self, size: int) -> None: ...
    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class StreamUser(Protocol):
    """What a StampedStream tells (TcpConnection; asyncio.Protocol's calls, stamped)."""

    def connection_made(self, transport: StreamLink) -> None: ...
    def data_received(self, data: bytes, received_at: float | None = None) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


class TcpConnection:
    """One SIP connection: its admission, framing, and timeouts (sweep)."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.framer = StreamFramer()
        self.transport: StreamLink | None = None
        self.peer: Peer | None = None
        self.allowed = False
        self.last_byte = 0.0
        self.waiting_since: float | None = None  # a message is due since then

    def connection_made(self, transport: StreamLink) -> None:
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
        if allowed:  # a stall's backlog waits here, where the kernel stamps it
            transport.hold_backlog(PBX_TCP_RECEIVE_BUFFER)
        self.peer = Peer("TCP", host, port, self)
        self.last_byte = self.waiting_since = self.server.clock()
        self.server.connections.add(self)

    def data_received(self, data: bytes, received_at: float | None = None) -> None:
        """Bytes read, and when the kernel received the newest of them (None: now)."""
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
        if received_at is None:
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


class StampedStream:
    """One accepted TCP connection, read with recvmsg so that each piece read carries
    the kernel's receive time (SO_TIMESTAMPNS), as UdpTransport's datagrams do; the
    loop's own transports read with recv and lose it. Replies are sent at once, and
    what the socket will not take yet is queued (up to TCP_WRITE_LIMIT) and sent when
    it can. The protocol is told as asyncio's would be: connection_made, data_received
    (with the stamp), connection_lost once the socket is closed."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop,
                 protocol: StreamUser) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._protocol = protocol
        self._peername: Any = sock.getpeername()
        self._out = bytearray()  # replies the socket has not taken yet
        self._reading = False
        self._closing = False
        self._closed = False

    def start(self) -> None:
        """Hand the connection to its protocol (which may refuse it) and start reading."""
        self._protocol.connection_made(self)
        if not self._closing:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._peername if name == "peername" else default

    def is_closing(self) -> bool:
        return self._closing

    def hold_backlog(self, size: int) -> None:
        """Let the kernel queue `size` bytes of this connection while it is not read."""
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError as exc:  # reset before we got to it: reading will tell
            log.debug("tcp_receive_buffer_failed", peer=str(self._peername), error=str(exc))
            return
        warn_if_buffer_capped(self._sock, size, "sip_tcp_receive_buffer_capped")

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        if not self._out:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc)
                return
            if sent == len(data):
                return
            self._loop.add_writer(self._fd, self._writable)
            data = data[sent:]
        self._out += data
        if len(self._out) > TCP_WRITE_LIMIT:
            log.warning("tcp_write_backlog_dropped", peer=str(self._peername),
                        queued=len(self._out))
            self.abort()

    def close(self) -> None:
        """Stop reading; close once the queued replies are sent."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._out:
            self._loop.call_soon(self._finish, None)
        else:  # a peer that stopped reading does not keep the socket and its slot
            self._loop.call_later(TCP_CLOSE_LINGER, self._fail, None)

    def abort(self) -> None:
        """Close now, dropping what is queued."""
        self._fail(None)

    def _readable(self) -> None:
        for _ in range(TCP_READ_BATCH):
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(TCP_READ_CHUNK,
                                                                  ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(exc)
                return
            if not data:
                self.close()  # the peer is done sending; what we owe it still goes
                return
            self._protocol.data_received(data, arrival_time(ancdata))
            if self._closing:
                return

    def _writable(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._finish(None)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _fail(self, exc: Exception | None) -> None:
        if self._closed:
            return
        if exc is not None:
            log.debug("tcp_error", peer=str(self._peername), error=str(exc))
        self._closing = True
        self._stop_reading()
        if self._out:
            self._out.clear()
            self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._finish, exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True  # reading stopped and the queue empty: close() or _fail() saw to it
        self._sock.close()
        self._protocol.connection_lost(exc)


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
        self.listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on (host, port); every connection accepted is read with its stamps."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(address_family(host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            stamp_arrivals(sock)  # early: the kernel turns stamping on a moment later
            sock.bind((host, port))
            sock.listen(TCP_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.listener = sock
        self._loop = loop
        loop.add_reader(sock.fileno(), self._accept)
        self.sweeper = asyncio.create_task(self._sweep_loop())

    @property
    def sockname(self) -> tuple[str, int]:
        return bound_address(self.listener)

    def _accept(self) -> None:
        listener, loop = self.listener, self._loop
        if listener is None or loop is None:
            return
        for _ in range(TCP_ACCEPT_BATCH):
            try:
                sock, _address = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_PAUSE_ERRNOS:
                    log.warning("tcp_accept_paused", error=str(exc), seconds=ACCEPT_RETRY_DELAY)
                    loop.remove_reader(listener.fileno())
                    loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)
                    return
                log.debug("tcp_accept_failed", error=str(exc))
                return
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                stamp_arrivals(sock)
                stream = StampedStream(sock, loop, TcpConnection(self))
            except OSError as exc:  # reset before we got to it
                log.debug("tcp_accept_failed", error=str(exc))
                sock.close()
                continue
            stream.start()

    def _resume_accepting(self) -> None:
        if self.listener is not None and self._loop is not None:
            self._loop.add_reader(self.listener.fileno(), self._accept)

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
        if self.listener is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None
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
        sock = open_stamped_udp(address_family(host), (host, port), UDP_RECEIVE_BUFFER)
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
