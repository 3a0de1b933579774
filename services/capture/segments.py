"""Append-only segment files: the raw packets of one stream, as they arrived.

The hot path only appends `(arrival_ms, length, datagram)` records to a buffer that
is written out every half second, so a crash loses at most that much. Each process
start writes a new segment file, so a record torn by a crash ends one file and
never corrupts the next.

Creating a file (and a recording's directory) costs more than the rest of a call's
set-up on the event loop, and a batch of them in the flush loop stalls every INVITE
queued behind it. So call set-up hands that work to `FileWork`, one ordered thread
per capture process (the syscalls release the GIL: it runs on the other core), and a
`SegmentWriter.deferred` keeps its packets in memory (bounded, as on a full disk)
until its file exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar, cast

import structlog

RECORD_HEADER = struct.Struct("<IH")
MAX_PENDING_BYTES = 4 * 1024 * 1024
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND

log = structlog.get_logger()

Job = Callable[[], None]
T = TypeVar("T")


class FileWork:
    """One thread that runs file-system jobs in the order they were submitted.

    The order is the contract: a recording's directory is made before its segment
    files, a segment file is created before it is closed, a released stream's files
    are deleted after its writer closed. `barrier()` waits for everything submitted
    before it (finalize reads the segments only after that). A job that raises is
    counted in `failures` and logged; the jobs after it still run."""

    def __init__(self, name: str = "capture-files") -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.failures = 0  # jobs that failed, including segment files not created
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def failed(self, what: str, exc: BaseException, **fields: object) -> None:
        """A job's failure (called from the thread): counted, logged."""
        self.failures += 1
        log.error("file_work_failed", what=what, error=str(exc), **fields)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception as exc:  # one job's failure must not stop the rest
                self.failed(getattr(job, "__name__", "job"), exc)

    def run(self, job: Callable[[], T]) -> asyncio.Future[T]:
        """The job's result (or its exception), once it and every job submitted
        before it have run: file work a coroutine needs done, off the event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: Exception | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(cast(T, result))

        def in_thread() -> None:
            try:
                result, error = job(), None
            except Exception as exc:  # the caller's to handle, not a failed job
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                loop.call_soon_threadsafe(settle, result, error)

        self.submit(in_thread)
        return done

    def barrier(self) -> asyncio.Future[None]:
        """Done once every job submitted before it has run."""
        return self.run(lambda: None)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every job submitted so far has run (shutdown, tests)."""
        event = threading.Event()
        self.submit(event.set)
        return event.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)


class SegmentWriter:
    """Buffers records in memory; `flush()` appends them to the current segment file.

    A deferred writer's file is created by `FileWork`; until it exists `flush()`
    keeps the records buffered. A create that failed is counted and logged by the
    thread, raised by every `flush()` (as a write error is: the flush loop reports
    it, the records stay buffered up to MAX_PENDING_BYTES) and tried again."""

    __slots__ = ("_closed", "_creating", "_fd", "_files", "_locate", "buffer",
                 "create_error", "dropped", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.buffer = bytearray()
        self.dropped = 0
        self.create_error: OSError | None = None
        self._closed = False
        self._creating = False
        self._files: FileWork | None = None
        self._locate: Callable[[], Path] | None = None
        self._fd = os.open(path, _FLAGS, 0o640) if path.parts else -1

    @classmethod
    def deferred(cls, files: FileWork, locate: Callable[[], Path]) -> SegmentWriter:
        """A writer whose file `files` creates at the path `locate()` returns there
        (in the thread: it may list the directory for the next segment number)."""
        writer = cls(Path())
        writer._files = files
        writer._locate = locate
        writer._creating = True
        files.submit(writer._create)
        return writer

    @property
    def ready(self) -> bool:
        """The file exists and is open (or the writer is closed)."""
        return self._fd >= 0 or self._closed

    def _create(self) -> None:
        """In the file thread: pick the path, create the file; the fd is set last."""
        assert self._files is not None and self._locate is not None
        if self._closed or self._fd >= 0:
            self._creating = False
            return
        try:
            self.path = self._locate()
            fd = os.open(self.path, _FLAGS, 0o640)
        except OSError as exc:
            self.create_error = exc
            self._files.failed("segment_create", exc, path=str(self.path))
        else:
            self.create_error = None
            self._fd = fd
        finally:
            self._creating = False

    def _retry_create(self) -> OSError:
        error = self.create_error
        assert error is not None
        if not self._creating and self._files is not None:
            self._creating = True
            self._files.submit(self._create)
        return error

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
        if self._fd < 0:
            if self.create_error is not None:
                raise self._retry_create()
            return 0  # the file thread has not created it yet: kept buffered
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
        """Write out what is buffered and close. A deferred writer not created yet
        must be closed in the file thread (`close_in`), after its create."""
        if self._closed:
            return
        if self._fd < 0 and self._files is not None and self.create_error is not None:
            self._create()  # one more try, here (a full disk may have cleared)
            if self.create_error is not None:
                raise self.create_error
        if self._fd < 0:
            if self.buffer:
                raise OSError(f"segment {self.path} was not created yet")
            self._closed = True
            return
        self.flush()
        if sync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._closed = True


def segment_path(directory: Path, stream_id: str, index: int) -> Path:
    return directory / f"{stream_id}.{index:04d}.seg"


def next_segment_index(directory: Path, stream_id: str) -> int:
    existing = [_index_of(p) for p in directory.glob(f"{stream_id}.*.seg")]
    return max(existing, default=-1) + 1


def stream_segments(directory: Path, stream_id: str) -> list[Path]:
    return sorted(directory.glob(f"{stream_id}.*.seg"), key=_index_of)


def read_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """Records of one segment; a torn record at the end (crash mid-write) ends it."""
    records: list[tuple[int, bytes]] = []
    split_records(path.read_bytes(), records)
    yield from records


def split_records(data: bytes, out: list[tuple[int, bytes]], until_ms: float = math.inf,
                  last_ms: float = -1.0) -> tuple[int, float]:
    """Append the complete records at the start of ``data`` to ``out``, stopping after
    the first that arrived later than both ``last_ms`` and ``until_ms``: (the offset
    after them, the newest arrival). The live step reads the same layout in place
    (timeline.StreamTimeline.feed_segment, compiled)."""
    pos = 0
    size = RECORD_HEADER.size
    end = len(data)
    while pos + size <= end:
        arrival, length = RECORD_HEADER.unpack_from(data, pos)
        stop = pos + size + length
        if stop > end:
            break
        out.append((arrival, data[pos + size:stop]))
        pos = stop
        if arrival > last_ms:
            last_ms = float(arrival)
            if last_ms > until_ms:
                break
    return pos, last_ms


def read_stream(directory: Path, stream_id: str) -> Iterator[tuple[int, bytes]]:
    for path in stream_segments(directory, stream_id):
        yield from read_records(path)


def _index_of(path: Path) -> int:
    try:
        return int(path.name.rsplit(".", 2)[1])
    except (IndexError, ValueError):
        return -1
