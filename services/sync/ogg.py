"""Just enough Ogg to trust a prefix of a live Opus file (pure).

A replicated live file is appended in chunks that need not end on a page; what a
takeover keeps is the longest prefix made of complete pages (RFC 3533), and its
audio duration is the last page's granule position minus the Opus pre-skip
(RFC 7845: granules count 48 kHz samples).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

CAPTURE = b"OggS"
HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, type, granule, serial, seq, crc, nsegs
OPUS_RATE = 48000


@dataclass(frozen=True)
class Scan:
    complete: int  # bytes of complete pages from the start
    pages: int
    granule: int  # last non-negative granule position seen (-1: none)
    pre_skip: int  # from OpusHead (0 when not seen)

    @property
    def duration_ms(self) -> int:
        if self.granule < 0:
            return 0
        return max(0, self.granule - self.pre_skip) * 1000 // OPUS_RATE


def pages(data: bytes | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(end offset, granule position, payload) of each complete page from the start;
    stops at the first incomplete or malformed one."""
    view = memoryview(data)
    offset = 0
    while offset + HEADER.size <= len(view):
        capture, version, _kind, position, _serial, _seq, _crc, count = HEADER.unpack_from(
            view, offset)
        if capture != CAPTURE or version != 0:
            return
        table_end = offset + HEADER.size + count
        if table_end > len(view):
            return
        end = table_end + sum(view[offset + HEADER.size:table_end])
        if end > len(view):
            return
        yield end, position, view[table_end:end]
        offset = end


def scan(data: bytes | memoryview) -> Scan:
    """The complete pages of a (possibly cut) Ogg/Opus file."""
    complete = count = pre_skip = 0
    granule = -1
    for end, position, payload in pages(data):
        if count == 0 and bytes(payload[:8]) == b"OpusHead" and len(payload) >= 12:
            pre_skip = int.from_bytes(payload[10:12], "little")
        if position >= 0:
            granule = position
        count += 1
        complete = end
    return Scan(complete, count, granule, pre_skip)
