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

from callrec.audio import ogg_crc

CAPTURE = b"OggS"
HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, type, granule, serial, seq, crc, nsegs
OPUS_RATE = 48000
EOS = 4  # header type flag: the stream's last page


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
        span = _page_span(view, offset, count)
        if span is None:
            return
        table_end, end = span
        yield end, position, view[table_end:end]
        offset = end


def _page_span(view: memoryview, start: int, segments: int) -> tuple[int, int] | None:
    """(end of its segment table, end of the page) of the page whose header is at
    `start` with `segments` lacing values; None while the page is not all there."""
    table_end = start + HEADER.size + segments
    if table_end > len(view):
        return None
    end = table_end + sum(view[start + HEADER.size:table_end])
    return (table_end, end) if end <= len(view) else None


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


# ---- following a copy across appends ---------------------------------------------------

@dataclass(frozen=True)
class Chain:
    """Where a replicated live file stands after the bytes appended to it so far.

    The origin may lose the unsynced tail of its file (a machine crash) and write other
    bytes at offsets a peer already holds; appending those to the peer's copy would join
    two different streams. Following the page chain (capture pattern, version, serial,
    consecutive page numbers, granule never going back, each page's CRC, nothing after
    the end-of-stream page) across appends
    catches such a join wherever it falls: inside a page the CRC breaks, on a page
    boundary the page number or granule does (and a page number that happens to match
    needs the same page boundary at the same offset as well).
    """

    offset: int = 0  # bytes of the copy: complete pages, then `tail`
    serial: int | None = None  # of the first page
    next_seq: int = 0
    granule: int = -1  # last non-negative granule position
    tail: bytes = b""  # the beginning of a page not complete yet
    ended: bool = False  # the last complete page closed the stream (end of stream)

    @property
    def complete(self) -> int:
        """Bytes of complete, chained pages from the start."""
        return self.offset - len(self.tail)


def follow(chain: Chain, data: bytes | memoryview) -> Chain | None:
    """The chain once `data` is appended at `chain.offset`; None when `data` does not
    continue the stream (the copy must then be discarded and pulled again)."""
    buffer = chain.tail + bytes(data)
    view = memoryview(buffer)
    serial, seq, granule, ended = chain.serial, chain.next_seq, chain.granule, chain.ended
    start = 0
    while True:
        left = len(view) - start
        if left < HEADER.size:  # what there is must still be able to start a page
            head = min(left, 4)
            if (ended and left) or bytes(view[start:start + head]) != CAPTURE[:head]:
                return None
            break
        capture, version, kind, position, page_serial, page_seq, crc, count = \
            HEADER.unpack_from(view, start)
        if ended or capture != CAPTURE or version != 0 or page_seq != seq or (
                serial is not None and page_serial != serial):
            return None
        if 0 <= position < granule and not kind & EOS:
            # Time never goes back, except on the last page: capture before 2026-12-05
            # wrote its last frames' pages before the end page, whose granule (the
            # call's end) then trimmed their padding; such recordings still replicate.
            # A copy taking the whole file is checked against the completion's sha256
            # after this.
            return None
        span = _page_span(view, start, count)
        if span is None:
            break
        end = span[1]
        blank = bytearray(view[start:end])
        blank[22:26] = b"\0\0\0\0"
        if ogg_crc(bytes(blank)) != crc:
            return None
        serial = page_serial
        seq += 1
        ended = bool(kind & EOS)
        if position >= 0:
            granule = position
        start = end
    return Chain(chain.offset + len(data), serial, seq, granule, bytes(view[start:]), ended)


def follow_file(data: bytes | memoryview) -> Chain:
    """The chain of an existing copy (read back after a restart): its longest prefix of
    chained complete pages, the rest left out (the caller cuts the file there)."""
    chain = Chain()
    for end, _position, _payload in pages(data):
        followed = follow(chain, memoryview(data)[chain.offset:end])
        if followed is None:
            break
        chain = followed
    return Chain(chain.complete, chain.serial, chain.next_seq, chain.granule, b"", chain.ended)
