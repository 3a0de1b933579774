"""The per-packet hot path: a UDP endpoint per stream that stores what arrives.

No parsing and no decoding here (that happens at finalize): a version check, one
compare of the source tuple, a timestamp, two appends to a buffer. Streams are told
apart by the port we gave them; who may send to a port is decided by `latching`,
on the slow path, only when a packet comes from another source than the last one
admitted.

A stream opened before the PBX's SDP is known (CUCM delayed offer: the answer comes
in the ACK, and the phone's RTP races it) holds its packets in memory, unwritten,
until that SDP names the source (then only that source's packets are kept) or says
nothing, or for at most `PENDING_TIMEOUT` (then the first source latches). So a
stranger spraying ports cannot slip packets in before the ACK is processed.

A packet is stamped with the time we read it, a few milliseconds after it arrived.
Not after a capture restart: the socket (kept open by the socket keeper) then holds
up to seconds of backlog, which `drain` reads with the time the kernel received each
packet (SO_TIMESTAMPNS), so it lands where it was heard. Only the drain pays for
recvmsg and its ancillary data; the hot path is a plain recvfrom.

The hot path is a plain recvfrom on the raw socket, not asyncio's datagram transport:
one recvfrom per readiness (epoll is level-triggered, so a second packet stays ready;
draining until EAGAIN would cost a failing syscall and an exception per packet at 50
packets/s per stream) and no transport layer between the loop and `datagram_received`.
`StreamReceiver` stays a `DatagramProtocol`, so it can also sit behind a transport
(the tests do).

The service reads every stream through one `BatchReader` (one epoll set), at most
once per `READ_INTERVAL`, rather than a loop reader per socket: at light load each
packet then woke the loop on its own (epoll_wait, a context switch, a loop iteration,
about 10 us), which made capture dearer per call-minute at 50 calls than at 400.
A packet not read yet waits in the kernel (the socket keeper holds the socket too),
so a SIGKILL loses nothing more; it is stamped up to READ_INTERVAL late.

The module is compiled by mypyc where a compiler is (callrec.native): about 10-15 % of
capture's receive CPU was the interpreter's (bench/README.md, "The receive path
compiled"). Compiled code checks every value against its declared type, so what the
loop hands back is typed by what is used of it (`ReaderLoop`), not as asyncio's
classes, which uvloop's are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import structlog

from callrec.arrival import ANCILLARY_SPACE, arrival_time

from .latching import DROP_REASONS, UNKNOWN, DropReason, Endpoint, Expected, admit, endpoint_of
from .segments import RECORD_HEADER, SegmentWriter

# asyncio reads each datagram into a 256 KiB buffer by default, which with glibc
# often costs an mmap/munmap per packet; RTP datagrams are far smaller.
MAX_DATAGRAM = 2048
# A stranger's packets are counted each time, logged at most this often per stream.
STRANGER_LOG_INTERVAL = 60.0
# Waiting for the SDP of a delayed offer: past the ACK's last retransmission but one.
PENDING_TIMEOUT = 4.0
MAX_PENDING_PACKETS = 600
# A drain reads what the receive buffer held (up to about 2,500 packets), not a
# flood that keeps coming while it reads.
MAX_DRAIN = 10_000
# How often the shared reader collects what arrived: a few milliseconds batch the
# packets of many streams into one loop wake-up, well inside a 20 ms packet time.
READ_INTERVAL = 0.005
# Rounds of reading per collection: a socket with a backlog (a burst, a flood) gets
# one datagram per round, so one stream cannot starve the others.
MAX_READ_ROUNDS = 64
class HeldPackets:
    """Packets held until the stream's SDP comes, in arrival order, stored compactly.

    As tuples of Python objects (bytes, an address tuple, an int) a held packet cost
    about 480 bytes: here it is its segment record (header and datagram) in one buffer
    and a 2-byte index into the distinct sources seen.
    """

    __slots__ = ("_index", "_records", "_sources", "_where")

    def __init__(self) -> None:
        self._records = bytearray()
        # Per packet, its index into _sources (fewer than MAX_PENDING_PACKETS of them).
        self._where: array[int] = array("H")
        self._sources: list[Any] = []
        self._index: dict[Any, int] = {}

    def __len__(self) -> int:
        return len(self._where)

    def add(self, arrival_ms: int, addr: Any, data: bytes) -> None:
        index = self._index.get(addr)
        if index is None:
            index = self._index[addr] = len(self._sources)
            self._sources.append(addr)
        self._where.append(index)
        self._records += RECORD_HEADER.pack(arrival_ms, len(data))
        self._records += data

    def __iter__(self) -> Iterator[tuple[int, Any, bytes]]:
        """(arrival_ms, addr, datagram) in the order they were added."""
        records, offset, size = self._records, 0, RECORD_HEADER.size
        for index in self._where:
            arrival_ms, length = RECORD_HEADER.unpack_from(records, offset)
            offset += size
            yield arrival_ms, self._sources[index], bytes(records[offset:offset + length])
            offset += length


class ReaderLoop(Protocol):
    """What the receivers use of an event loop, typed by what they rely on: the module
    is compiled (callrec.native), which checks each value against its declared type,
    and uvloop (capture's loop) returns None from remove_reader and timer handles and
    transports that are not asyncio's classes."""

    def add_reader(self, fd: int, callback: Callable[[], object]) -> object: ...
    def remove_reader(self, fd: int) -> object: ...
    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable: ...
    def is_closed(self) -> object: ...


class Cancellable(Protocol):
    def cancel(self) -> object: ...


class Closable(Protocol):
    def close(self) -> object: ...


def running_loop() -> ReaderLoop:
    return asyncio.get_running_loop()


OnLatch = Callable[[Endpoint], None]
OnDrop = Callable[[DropReason], None]


def _ignore_latch(_: Endpoint) -> None:
    pass


def _ignore_drop(_: DropReason) -> None:
    pass


class StreamReceiver(asyncio.DatagramProtocol):
    __slots__ = (
        "_loop", "_reader", "_recvfrom", "dropped", "expected", "invalid", "last_arrival",
        "latched", "log", "on_drop", "on_latch", "overflow", "packets", "pending", "pending_since",
        "sock", "source", "started", "stranger_logged_at", "transport", "writer",
    )

    def __init__(
        self,
        writer: SegmentWriter,
        started_epoch: float,
        *,
        expected: Expected = UNKNOWN,
        latched: Endpoint | None = None,
        on_latch: OnLatch = _ignore_latch,
        on_drop: OnDrop = _ignore_drop,
        log: Any = None,
        sdp_pending: bool = False,
    ) -> None:
        self.writer = writer
        self.started = started_epoch
        self.packets = 0
        self.invalid = 0
        self.dropped: dict[DropReason, int] = dict.fromkeys(DROP_REASONS, 0)
        self.last_arrival = 0.0
        self.transport: Closable | None = None
        # With `attach`: the socket read by our own reader callback, and its loop.
        self.sock: socket.socket | None = None
        self._loop: ReaderLoop | None = None
        self._recvfrom: Callable[[int], tuple[bytes, Any]] | None = None
        self._reader: BatchReader | None = None
        self.expected = expected
        self.latched = latched
        # The exact address tuple of the last admitted packet: the hot-path compare.
        self.source: Any = None
        self.on_latch = on_latch
        self.on_drop = on_drop
        self.log = log if log is not None else structlog.get_logger()
        self.stranger_logged_at = float("-inf")
        # Packets held while the SDP is awaited (None: not waiting), compact: up to
        # PENDING_TIMEOUT of them for every stream of a delayed offer.
        self.pending: HeldPackets | None = HeldPackets() if sdp_pending else None
        self.pending_since = time.monotonic()
        self.overflow = 0

    def connection_made(self, transport: Closable) -> None:
        self.transport = transport
        if hasattr(transport, "max_size"):  # asyncio's; uvloop's transport has no such knob
            transport.max_size = MAX_DATAGRAM

    def attach(self, sock: socket.socket, reader: BatchReader | None = None) -> None:
        """Read `sock` from now on: through `reader` (shared by many streams), else
        with a reader callback of its own on the running loop."""
        sock.setblocking(False)
        self.sock = sock
        self._recvfrom = sock.recvfrom
        if reader is not None:
            self._reader = reader
            reader.add(sock.fileno(), self)
            return
        self._loop = running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self, now: float | None = None) -> None:
        """The socket is readable: one datagram, as in `datagram_received`, stamped
        `now` (the reader's time for the whole round) or the time it is read."""
        try:
            data, addr = self._recvfrom(MAX_DATAGRAM)  # type: ignore[misc]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # an ICMP error reported once on the socket: nothing to do
        self.datagram_received(data, addr, now)

    def drain(self, sock: socket.socket, not_before: float | None = None) -> int:
        """Read the backlog of a socket nobody read for a while (capture restarting,
        a reserved port), each packet with its kernel arrival time; before the
        transport takes over. Packets that arrived before `not_before` (wall clock:
        when our answer gave the port away) are dropped as `before_answer`.
        Returns the number of datagrams read."""
        sock.setblocking(False)
        read = 0
        for _ in range(MAX_DRAIN):
            try:
                data, ancdata, _flags, addr = sock.recvmsg(MAX_DATAGRAM, ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error reported once on the socket: read on
            read += 1
            arrival = arrival_time(ancdata)
            if not_before is not None and arrival < not_before:
                self.dropped["before_answer"] += 1
                self.on_drop("before_answer")
                continue
            self.datagram_received(data, addr, arrival)
        return read

    def datagram_received(self, data: bytes, addr: Any, arrival: float | None = None) -> None:
        # RTP version 2 and a full fixed header; anything else is counted, not stored.
        if len(data) < 12 or data[0] & 0xC0 != 0x80:
            self.invalid += 1
            return
        now = time.time() if arrival is None else arrival
        if addr != self.source and not self._admit(addr, data, now):
            return
        self.last_arrival = now
        self.packets += 1
        elapsed = int((now - self.started) * 1000)
        self.writer.append(elapsed if elapsed > 0 else 0, data)

    def _admit(self, addr: Any, data: bytes, arrival: float) -> bool:
        """The slow path: a source other than the last admitted one."""
        if self.pending is not None:
            if len(self.pending) < MAX_PENDING_PACKETS:
                elapsed = int((arrival - self.started) * 1000)
                self.pending.add(elapsed if elapsed > 0 else 0, addr, data)
            else:
                self.overflow += 1
            return False
        source = endpoint_of(addr)
        verdict = admit(source, self.expected, self.latched)
        if verdict == "accept":
            self.source = addr
            return True
        if verdict == "latch":
            self.log.info("rtp_source_latched", source=f"{source.address}:{source.port}",
                          expected_address=self.expected.address,
                          expected_port=self.expected.port,
                          previous=None if self.latched is None
                          else f"{self.latched.address}:{self.latched.port}")
            self.latched = source
            self.source = addr
            self.on_latch(source)
            return True
        self.dropped[verdict] += 1
        self.on_drop(verdict)
        now = time.monotonic()
        if now - self.stranger_logged_at >= STRANGER_LOG_INTERVAL:
            self.stranger_logged_at = now
            self.log.warning("rtp_stranger_dropped", source=f"{source.address}:{source.port}",
                             reason=verdict, expected_address=self.expected.address,
                             expected_port=self.expected.port,
                             latched=None if self.latched is None
                             else f"{self.latched.address}:{self.latched.port}",
                             dropped=sum(self.dropped.values()))
        return False

    def expect(self, expected: Expected, latched: Endpoint | None) -> None:
        """The peer's SDP (as `latching.on_sdp` read it): the next packet re-checks, and
        packets held while it was awaited are admitted or dropped by it."""
        self.expected = expected
        self.latched = latched
        self.source = None
        held, self.pending = self.pending, None
        for arrival_ms, addr, data in held if held is not None else ():
            if addr == self.source or self._admit(addr, data, self.started + arrival_ms / 1000):
                self.packets += 1
                self.last_arrival = self.started + arrival_ms / 1000
                self.writer.append(arrival_ms, data)

    def settle(self, force: bool = False) -> None:
        """Stop waiting for an SDP that did not come in time (or at close): the first
        source latches, as symmetric RTP does."""
        if self.pending is not None and (
            force or time.monotonic() - self.pending_since > PENDING_TIMEOUT
        ):
            if self.pending or not force:
                self.log.warning("rtp_sdp_not_received", held=len(self.pending))
            self.expect(self.expected, self.latched)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on an unconnected socket: nothing to do, keep receiving.
        pass

    def close(self) -> None:
        if self.sock is not None:
            if self._reader is not None:
                self._reader.remove(self.sock.fileno())
                self._reader = None
            elif self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class BatchReader:
    """Reads many streams' sockets through one epoll set, at most once per `interval`.

    Idle, it costs nothing: the loop watches the epoll set's own descriptor. When any
    socket turns readable it reads every ready one, then, every `interval` while
    collections find packets, reads again from a timer; the first collection that finds
    none goes back to watching. Under load the descriptor is not re-registered
    (each registration of an epoll set in another costs a loop check in the kernel)."""

    def __init__(self, interval: float = READ_INTERVAL) -> None:
        self.interval = interval
        self._epoll = select.epoll()
        self._receivers: dict[int, StreamReceiver] = {}
        self._loop: ReaderLoop | None = None
        self._timer: Cancellable | None = None
        self._watching = False

    def add(self, fd: int, receiver: StreamReceiver) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._receivers[fd] = receiver
        if self._loop is None:
            self._loop = running_loop()
            self._watch()

    def remove(self, fd: int) -> None:
        """Before the socket is closed: the keeper's copy would keep it in the set."""
        if self._receivers.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def read_ready(self) -> int:
        """One datagram from each ready socket, round after round until none is
        ready (or MAX_READ_ROUNDS); returns the number of ready events handled."""
        poll = self._epoll.poll
        receivers = self._receivers
        handled = 0
        for _ in range(MAX_READ_ROUNDS):
            events = poll(0)
            if not events:
                break
            handled += len(events)
            # One stamp a round, taken after the poll: each datagram read in the round
            # (one per ready socket, the oldest) was there before it, so it is never
            # stamped before it arrived, and late by at most the round's length.
            now = time.time()
            for fd, _mask in events:
                receiver = receivers.get(fd)
                if receiver is not None:
                    receiver._readable(now)
        return handled

    def _watch(self) -> None:
        self._timer = None
        if self._loop is not None and not self._epoll.closed:
            self._loop.add_reader(self._epoll.fileno(), self._ready)
            self._watching = True

    def _ready(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._epoll.fileno())
        self._watching = False
        self.read_ready()
        self._timer = self._loop.call_later(self.interval, self._collect)

    def _collect(self) -> None:
        assert self._loop is not None
        self._timer = None
        if self._epoll.closed:
            return
        if self.read_ready():
            self._timer = self._loop.call_later(self.interval, self._collect)
        else:
            self._watch()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watching and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._epoll.fileno())
        self._watching = False
        self._receivers.clear()
        self._epoll.close()
