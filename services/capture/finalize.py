"""Finishing a recording: the live encoding run to the end of the call, then closed.

Capture encodes a call into its final Ogg/Opus file while it is recorded (live.py);
finalize only encodes the last half second and closes the stream, so its memory
and time do not grow with the call's length. A recording whose live encoder is gone
(capture restarted) is picked up from the segments and what live.opus already holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from .live import (
    LIVE_FILE,
    FinalizeResult,
    FinishJob,
    LiveEncoder,
    StreamSpec,
    worker_finish,
    worker_finishes,
)
from .manifest import RecordingManifest

__all__ = ["CaptureSideSlots", "FinalizeResult", "FinishBatcher", "finalize_recording",
           "stream_specs"]


def stream_specs(manifest: RecordingManifest) -> list[StreamSpec]:
    """The streams of a manifest as the live encoder needs them (a snapshot)."""
    return [
        StreamSpec(stream_id=s.stream_id, channel=s.channel,
                   payload_codecs=dict(s.payload_codecs), port=s.port)
        for s in sorted(manifest.streams.values(), key=lambda s: (s.channel, s.stream_id))
    ]


def duration_of(manifest: RecordingManifest) -> int:
    if manifest.ended_at is None:
        raise ValueError(f"recording {manifest.recording_id} has not ended")
    return max(0, int((manifest.ended_at - manifest.started_at).total_seconds() * 1000))


def finalize_recording(directory: Path, output: Path | None, bitrate: int,
                       encoder: LiveEncoder | None = None) -> FinalizeResult:
    """Finish the recording in ``directory`` (its live.opus); copy it to ``output`` if given.

    ``encoder`` is the recording's live encoder when the caller has one; otherwise
    this process's (a capture worker's) or one resumed from disk. Idempotent: a
    finished recording returns its result.
    """
    manifest = RecordingManifest.load(directory)
    duration_ms = duration_of(manifest)
    sync_segments(directory)
    specs = stream_specs(manifest)
    if encoder is None:
        result = worker_finish(directory, manifest.recording_id, specs, duration_ms, bitrate)
        path = directory / LIVE_FILE
    else:
        result = encoder.finish(specs, duration_ms)
        path = encoder.path
    if output is not None:
        shutil.copyfile(path, output)
    return result


def sync_segments(directory: Path) -> None:
    """Make the raw packets durable before the recording is built from them."""
    for path in directory.glob("*.seg"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


RunInWorker = Callable[[str, Callable[[list[FinishJob]], list[FinalizeResult | Exception]],
                        list[FinishJob]], Awaitable[list[FinalizeResult | Exception]]]
"""Runs ``worker_finishes`` on the worker of the given recording id (capture's
_in_worker)."""


class FinishBatcher:
    """Sends the finishes waiting for one encoder worker in one round trip.

    Capture finalizes a few recordings per worker at once; each finish used to be its
    own call into the worker process (pickling, the pool's queue thread, a wake-up on
    each side). Here the first finish for a worker goes at once; those that come while
    it runs go together in the next call, so a burst costs one round trip per batch,
    and a lone finish waits for nothing. A batch holds at most `max_batch` finishes:
    the worker's live steps of the calls still in progress queue behind it, and a
    finish after a restart encodes its whole call from the segments (seconds for an
    hour), so a long batch would let the peers' live copies fall that far behind.
    """

    def __init__(self, run: RunInWorker, max_batch: int = 8) -> None:
        self._run = run
        self.max_batch = max(1, max_batch)
        self._waiting: dict[int, list[tuple[FinishJob, asyncio.Future[FinalizeResult]]]] = {}
        self._sending: dict[int, asyncio.Task[None]] = {}

    async def finish(self, worker: int, job: FinishJob) -> FinalizeResult:
        """``job``'s result from worker ``worker`` (its exception raised here)."""
        future: asyncio.Future[FinalizeResult] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(worker, []).append((job, future))
        if worker not in self._sending:
            self._sending[worker] = asyncio.create_task(self._send(worker))
        return await future

    async def _send(self, worker: int) -> None:
        try:
            while waiting := self._waiting.pop(worker, []):
                waiting = [(job, future) for job, future in waiting if not future.done()]
                batch, rest = waiting[:self.max_batch], waiting[self.max_batch:]
                if rest:  # the next round trip's, ahead of any that come meanwhile
                    self._waiting[worker] = rest
                if not batch:
                    continue
                jobs = [job for job, _ in batch]
                try:
                    results = await self._run(jobs[0][1], worker_finishes, jobs)
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:  # the round trip itself: every finish of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its finalize was cancelled meanwhile
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            del self._sending[worker]
            for _, future in self._waiting.pop(worker, []):
                future.cancel()  # (only when cancelled: the loop above empties it)


class CaptureSideSlots:
    """How many finalizes may do their part in capture's own process at once: the
    file thread's syncs, storing the file, the bus publishes and the event loop's share
    of each. `wide` at most, but while `may_widen()` says calls are being set up, one
    at a time and one start per `narrow_gap_s`: a PBX waits on set-up, and the
    capture-side work of many finalizes at once took the INVITE->200 p99 of 200 new
    calls/s from about 90 to 200-370 ms (bench.setup_rate; spaced 0.05 s, about 104).
    The encoder worker's part is not counted here (FinishBatcher): it runs in other
    processes at the lowest CPU priority, so finishes keep batching during set-up,
    which is what lets finalize keep pace while calls are set up all day.
    """

    def __init__(self, wide: int, may_widen: Callable[[], bool], poll_s: float,
                 narrow_gap_s: float = 0.0) -> None:
        self.wide = max(1, wide)
        self._may_widen = may_widen
        self._poll_s = max(poll_s, 0.01)
        self._narrow_gap_s = narrow_gap_s
        self._last_start = float("-inf")
        self.busy = 0
        self.most_at_once = 0
        self._freed = asyncio.Event()
        # Waiters queue here (FIFO, one woken per release); only the first of them
        # watches for a freed slot, so a release never wakes a hundred tasks.
        self._turn = asyncio.Lock()

    def width(self) -> int:
        return self.wide if self._may_widen() else 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Held across one stretch of capture-side work of one finalize."""
        async with self._turn:
            while True:
                width = self.width()
                if self.busy < width:
                    early = (self._last_start + self._narrow_gap_s - time.monotonic()
                             if width == 1 else 0.0)
                    if early <= 0:
                        break
                    await asyncio.sleep(min(early, self._poll_s))
                    continue
                self._freed.clear()
                # Woken by a freed slot, or after a poll interval: set-up may have gone
                # quiet, which widens the width without any slot being freed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._freed.wait(), self._poll_s)
            self.busy += 1
            self._last_start = time.monotonic()
        self.most_at_once = max(self.most_at_once, self.busy)
        try:
            yield
        finally:
            self.busy -= 1
            self._freed.set()
