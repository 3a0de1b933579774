"""A worker's live steps go in chunks of about LIVE_CHUNK_SECONDS, so a finish never
waits for all of them.

Each encoder worker runs one call at a time, in the order they are sent. At 400 calls
on 2 cores one step of every call a worker holds took a second and more, and a
finish sent meanwhile waited for all of it (bench/churn.py). The worker is faked
here by a FIFO lock and a fixed cost per step: what the test sees is the order the
round trips would run in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from contracts.v1.events import RecordingMetadata
from services.capture.live import StepJob, StepResult
from services.capture.manifest import RecordingManifest
from services.capture.service import (
    LIVE_CHUNK_CEILING_SECONDS,
    LIVE_CHUNK_MIN,
    LIVE_CHUNK_SECONDS,
    LIVE_CHUNKS_MAX,
    Capture,
    LiveRecording,
    live_chunk_size,
)
from tests.support.capturecore import bare_capture

META = RecordingMetadata(source="cucm", session_key="k")


class FifoWorker:
    """Stands in for Capture._in_worker: one round trip at a time, in arrival order."""

    def __init__(self, step_seconds: float) -> None:
        self.step_seconds = step_seconds
        self.lock = asyncio.Lock()
        self.trips: list[tuple[str, list[str]]] = []
        self.during_first: Callable[[], None] | None = None

    async def __call__(self, recording_id: str, fn: Callable[..., Any], jobs: Any) -> Any:
        async with self.lock:
            if fn.__name__ == "worker_steps":
                steps: list[StepJob] = jobs
                self.trips.append(("steps", [job[1] for job in steps]))
                if self.during_first is not None:
                    hook, self.during_first = self.during_first, None
                    hook()
                # the worker is busy: others queue meanwhile
                await asyncio.sleep(self.step_seconds * len(steps))
                return [StepResult(None, 0, None, False) for _ in steps]
            self.trips.append(("finish", [recording_id]))
            return None


def add_live(capture: Capture, recording_id: str) -> LiveRecording:
    directory = capture.active_dir / recording_id
    directory.mkdir()
    manifest = RecordingManifest(recording_id=recording_id, started_at=datetime.now(UTC),
                                 metadata=META)
    recording = LiveRecording(manifest, directory, directory_made=True)
    capture.live[recording_id] = recording
    return recording


async def test_a_finish_sent_during_a_step_runs_before_the_rest_of_the_step(
        tmp_path: Path) -> None:
    capture = bare_capture(tmp_path)
    capture.workers = [cast(Any, None)]  # one worker: the fake below
    worker = FifoWorker(step_seconds=0.002)
    capture._in_worker = worker  # type: ignore[method-assign,assignment]
    batch = [add_live(capture, f"r{i:03d}") for i in range(125)]
    ending, released = batch[-1], batch[-2]
    finish: list[asyncio.Task[Any]] = []

    def call_ends_meanwhile() -> None:
        ending.finalizing = True  # as _end does, before its finish is queued
        finish.append(asyncio.ensure_future(
            capture._in_worker(ending.manifest.recording_id, print, [])))
        del capture.live[released.manifest.recording_id]  # its last stream released

    worker.during_first = call_ends_meanwhile
    await capture._live_steps(batch, flushed_at=datetime.now(UTC).timestamp())
    await finish[0]

    kinds = [kind for kind, _ in worker.trips]
    assert kinds[:2] == ["steps", "finish"]  # one chunk, then the finish: not the rest
    assert kinds[2:] == ["steps"] * (len(kinds) - 2) and len(kinds) >= 4
    chunks = [len(ids) for kind, ids in worker.trips if kind == "steps"]
    # about LIVE_CHUNK_SECONDS of the worker's time each (timer slack aside)
    assert max(chunks) <= LIVE_CHUNK_SECONDS / worker.step_seconds
    stepped = [rid for kind, ids in worker.trips if kind == "steps" for rid in ids]
    # every call in progress stepped once; the ended and the released ones not after
    assert stepped == [r.manifest.recording_id for r in batch[:-2]]


async def test_an_idle_worker_takes_every_step_in_one_round_trip(tmp_path: Path) -> None:
    capture = bare_capture(tmp_path)
    capture.workers = [cast(Any, None)]
    worker = FifoWorker(step_seconds=0.0)
    capture._in_worker = worker  # type: ignore[method-assign,assignment]
    batch = [add_live(capture, f"r{i:03d}") for i in range(300)]
    capture.step_seconds[0] = 0.00001  # what its last round trip measured
    await capture._live_steps(batch, flushed_at=datetime.now(UTC).timestamp())
    assert [len(ids) for _, ids in worker.trips] == [300]
    assert capture.step_seconds[0] > 0.0  # measured again for the next step


async def test_a_busy_worker_with_many_calls_gets_at_most_so_many_round_trips(
        tmp_path: Path) -> None:
    capture = bare_capture(tmp_path)
    capture.workers = [cast(Any, None)]
    worker = FifoWorker(step_seconds=0.001)  # 50 a round trip by time: the cap is larger
    capture._in_worker = worker  # type: ignore[method-assign,assignment]
    batch = [add_live(capture, f"r{i:04d}") for i in range(800)]
    capture.step_seconds[0] = 0.002  # its last round trip: 2 ms a step (a set-up burst)
    await capture._live_steps(batch, flushed_at=datetime.now(UTC).timestamp())
    assert [len(ids) for _, ids in worker.trips] == [800 // LIVE_CHUNKS_MAX] * LIVE_CHUNKS_MAX
    assert sum(len(ids) for _, ids in worker.trips) == 800


async def test_a_finish_waits_at_most_about_the_ceiling_when_steps_are_dear(
        tmp_path: Path) -> None:
    """The encoding seconds behind: each step catches up seconds of its call. A finish
    sent meanwhile waits for one round trip of about the ceiling, not for 16 steps."""
    capture = bare_capture(tmp_path)
    capture.workers = [cast(Any, None)]
    worker = FifoWorker(step_seconds=0.06)
    capture._in_worker = worker  # type: ignore[method-assign,assignment]
    batch = [add_live(capture, f"r{i:03d}") for i in range(12)]
    capture.step_seconds[0] = 0.06  # its last round trip: 60 ms a step
    ending = batch[-1]
    finish: list[asyncio.Task[Any]] = []
    loop = asyncio.get_running_loop()
    waited: list[float] = []

    def call_ends_meanwhile() -> None:
        ending.finalizing = True
        sent = loop.time()
        task = asyncio.ensure_future(capture._in_worker(ending.manifest.recording_id,
                                                        print, []))
        task.add_done_callback(lambda _: waited.append(loop.time() - sent))
        finish.append(task)

    worker.during_first = call_ends_meanwhile
    await capture._live_steps(batch, flushed_at=datetime.now(UTC).timestamp())
    await finish[0]
    chunks = [len(ids) for kind, ids in worker.trips if kind == "steps"]
    assert chunks[0] == int(LIVE_CHUNK_CEILING_SECONDS / 0.06) == 4
    assert [kind for kind, _ in worker.trips][:2] == ["steps", "finish"]
    assert waited[0] < 2 * LIVE_CHUNK_CEILING_SECONDS  # not all 12 steps: 0.72 s
    assert sum(chunks) == 11  # every call in progress stepped once, the ended one not


def test_chunk_size_follows_the_cost_of_a_step() -> None:
    assert live_chunk_size(0.002, 10) == int(LIVE_CHUNK_SECONDS / 0.002)
    assert live_chunk_size(0.002, 800) == 800 // LIVE_CHUNKS_MAX  # cheap and many
    assert live_chunk_size(0.02, 200) == int(LIVE_CHUNK_CEILING_SECONDS / 0.02) == 12
    assert live_chunk_size(0.5, 200) == 1  # dear steps: one at a time
    assert LIVE_CHUNK_MIN * 0.002 < LIVE_CHUNK_CEILING_SECONDS  # cheap steps keep the floor
    assert live_chunk_size(0.0, 1) > 10_000
