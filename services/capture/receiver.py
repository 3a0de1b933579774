"""The per-packet hot path: a UDP endpoint per stream that stores what arrives.

No parsing and no decoding here (that happens at finalize): a version check, a
timestamp, two appends to a buffer. Streams are told apart by the port we gave
them, never by who sends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from .segments import SegmentWriter

# asyncio reads each datagram into a 256 KiB buffer by default, which with glibc
# often costs an mmap/munmap per packet; RTP datagrams are far smaller.
MAX_DATAGRAM = 2048


class StreamReceiver(asyncio.DatagramProtocol):
    __slots__ = ("invalid", "last_arrival", "packets", "started", "transport", "writer")

    def __init__(self, writer: SegmentWriter, started_epoch: float) -> None:
        self.writer = writer
        self.started = started_epoch
        self.packets = 0
        self.invalid = 0
        self.last_arrival = 0.0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        transport.max_size = MAX_DATAGRAM  # type: ignore[attr-defined]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # RTP version 2 and a full fixed header; anything else is counted, not stored.
        if len(data) < 12 or data[0] & 0xC0 != 0x80:
            self.invalid += 1
            return
        now = time.time()
        self.last_arrival = now
        self.packets += 1
        elapsed = int((now - self.started) * 1000)
        self.writer.append(elapsed if elapsed > 0 else 0, data)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors on an unconnected socket: nothing to do, keep receiving.
        pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
