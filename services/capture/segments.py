"""Append-only segment files: the raw packets of one stream, as they arrived.

The hot path only appends `(arrival_ms, length, datagram)` records to a buffer that
is written out every half second, so a crash loses at most that much. Each process
start writes a new segment file, so a record torn by a crash ends one file and
never corrupts the next.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

RECORD_HEADER = struct.Struct("<IH")
MAX_PENDING_BYTES = 4 * 1024 * 1024


class SegmentWriter:
    """Buffers records in memory; `flush()` appends them to the current segment file."""

    __slots__ = ("_fd", "buffer", "dropped", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.buffer = bytearray()
        self.dropped = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def append(self, arrival_ms: int, datagram: bytes) -> None:
        if len(self.buffer) > MAX_PENDING_BYTES:
            # The disk is not keeping up (or a flood): count it rather than grow without end.
            self.dropped += 1
            return
        self.buffer += RECORD_HEADER.pack(arrival_ms, len(datagram))
        self.buffer += datagram

    def flush(self) -> int:
        """Append what is buffered. On a write error (a full disk) what was not
        written stays buffered, in order, for the next flush: the call keeps
        recording into memory (up to MAX_PENDING_BYTES) until space returns."""
        if not self.buffer:
            return 0
        # Hand the full buffer over and start an empty one: no copy of what is written.
        data, self.buffer = self.buffer, bytearray()
        written = 0
        view = memoryview(data)
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError:
            # A copy (error path only): slices of `data` may still be exported.
            self.buffer = data[written:] + self.buffer
            raise
        return written

    def close(self, sync: bool = True) -> None:
        if self._fd < 0:
            return
        self.flush()
        if sync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1


def segment_path(directory: Path, stream_id: str, index: int) -> Path:
    return directory / f"{stream_id}.{index:04d}.seg"


def next_segment_index(directory: Path, stream_id: str) -> int:
    existing = [_index_of(p) for p in directory.glob(f"{stream_id}.*.seg")]
    return max(existing, default=-1) + 1


def stream_segments(directory: Path, stream_id: str) -> list[Path]:
    return sorted(directory.glob(f"{stream_id}.*.seg"), key=_index_of)


def read_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """Records of one segment; a torn record at the end (crash mid-write) ends it."""
    data = path.read_bytes()
    offset = 0
    size = RECORD_HEADER.size
    end = len(data)
    while offset + size <= end:
        arrival_ms, length = RECORD_HEADER.unpack_from(data, offset)
        offset += size
        if offset + length > end:
            return
        yield arrival_ms, data[offset : offset + length]
        offset += length


def read_stream(directory: Path, stream_id: str) -> Iterator[tuple[int, bytes]]:
    for path in stream_segments(directory, stream_id):
        yield from read_records(path)


def _index_of(path: Path) -> int:
    try:
        return int(path.name.rsplit(".", 2)[1])
    except (IndexError, ValueError):
        return -1
