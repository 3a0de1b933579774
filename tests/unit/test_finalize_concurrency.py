"""Capture finalizes several recordings at once, never one recording twice at once.

The finalize step itself is replaced by a fake that waits on an event, so the test
sees how the finalize tasks schedule recordings (in flight together, a duplicate
queue entry, a failed attempt's retry racing a fresh entry, cancellation) without
a bus, a store or encoder workers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from callrec import diskspace
from contracts.v1.events import RecordingMetadata
from services.capture import service as capture_service
from services.capture.finalize import CaptureSideSlots, FinalizeResult, FinishBatcher
from services.capture.manifest import RecordingManifest
from services.capture.service import (
    Capture,
    LiveRecording,
    finalize_concurrency,
    finalize_may_widen,
)
from tests.support.capturecore import bare_capture

META = RecordingMetadata(source="cucm", session_key="k")



def make_capture(data_dir: Path) -> Capture:
    return bare_capture(data_dir, (41000, 41999))


def add_ended(capture: Capture, recording_id: str) -> None:
    directory = capture.active_dir / recording_id
    directory.mkdir()
    now = datetime.now(UTC)
    manifest = RecordingManifest(recording_id=recording_id, started_at=now, ended_at=now,
                                 metadata=META)
    capture.live[recording_id] = LiveRecording(manifest, directory, finalizing=True)
    capture.queue.put_nowait(recording_id)


class FakeFinalize:
    """Stands in for Capture._finalize_one: counts what runs at once, per recording."""

    def __init__(self, capture: Capture, fail_first: set[str] | None = None) -> None:
        self.capture = capture
        self.fail_first = set(fail_first or ())
        self.release = asyncio.Event()
        self.running: dict[str, int] = {}
        self.most_at_once = 0
        self.most_of_one = 0
        self.calls: dict[str, int] = {}
        self.done: list[str] = []

    async def __call__(self, recording: LiveRecording) -> None:
        recording_id = recording.manifest.recording_id
        self.calls[recording_id] = self.calls.get(recording_id, 0) + 1
        self.running[recording_id] = self.running.get(recording_id, 0) + 1
        self.most_of_one = max(self.most_of_one, self.running[recording_id])
        self.most_at_once = max(self.most_at_once, sum(self.running.values()))
        try:
            await self.release.wait()
            if recording_id in self.fail_first:
                self.fail_first.discard(recording_id)
                raise OSError("bus or disk hiccup")  # transient: its directory is there
            self.capture.live.pop(recording_id, None)
            self.done.append(recording_id)
        finally:
            self.running[recording_id] -= 1


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_several_recordings_finalize_at_once(tmp_path: Path) -> None:
    capture = make_capture(tmp_path)
    fake = FakeFinalize(capture)
    capture._finalize_one = fake  # type: ignore[method-assign]
    count = finalize_concurrency(len(capture.workers))
    assert count > 1
    ids = [f"r{i}" for i in range(count * 2)]
    for recording_id in ids:
        add_ended(capture, recording_id)
    loop_task = asyncio.create_task(capture._finalize_loop())
    try:
        await wait_for(lambda: sum(fake.running.values()) == count)
        await asyncio.sleep(0.05)  # no task takes more than the bound
        assert fake.most_at_once == count
        fake.release.set()
        await wait_for(lambda: len(fake.done) == len(ids))
    finally:
        loop_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop_task
    assert sorted(fake.done) == sorted(ids)
    assert fake.most_of_one == 1
    assert not capture.finalizing_now


async def test_a_recording_is_never_finalized_twice_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A duplicate queue entry and a retry racing a fresh entry: one task at a time."""
    monkeypatch.setattr(diskspace, "retry_delay", lambda attempt: 0.01)
    capture = make_capture(tmp_path)
    fake = FakeFinalize(capture, fail_first={"a"})
    capture._finalize_one = fake  # type: ignore[method-assign]
    add_ended(capture, "a")
    add_ended(capture, "b")
    loop_task = asyncio.create_task(capture._finalize_loop())
    try:
        await wait_for(lambda: fake.running.get("a") == 1)
        for _ in range(3):  # e.g. a recovery and a late re-queue of the same id
            capture.queue.put_nowait("a")
        await asyncio.sleep(0.05)  # free tasks take the duplicates now: they must skip
        assert fake.calls["a"] == 1
        fake.release.set()  # "a" fails once: its retry re-queues it after the back-off
        await wait_for(lambda: sorted(fake.done) == ["a", "b"])
        capture.queue.put_nowait("a")  # finished: a late entry finalizes nothing
        await asyncio.sleep(0.05)
    finally:
        loop_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop_task
    assert fake.calls == {"a": 2, "b": 1}
    assert fake.most_of_one == 1
    assert capture.attempts == {}  # the success cleared the failed attempt
    assert not capture.finalizing_now


async def test_cancelling_the_loop_stops_every_finalize(tmp_path: Path) -> None:
    capture = make_capture(tmp_path)
    fake = FakeFinalize(capture)
    capture._finalize_one = fake  # type: ignore[method-assign]
    for i in range(3):
        add_ended(capture, f"r{i}")
    loop_task = asyncio.create_task(capture._finalize_loop())
    await wait_for(lambda: sum(fake.running.values()) == 3)
    loop_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop_task
    assert sum(fake.running.values()) == 0
    assert not capture.finalizing_now
    assert set(capture.live) == {"r0", "r1", "r2"}  # a restart finalizes them


def test_finalize_narrows_only_while_calls_are_set_up_in_a_burst() -> None:
    quiet = capture_service.SETUP_QUIET_S
    burst = capture_service.SETUP_BURST_ALLOCATES
    assert finalize_may_widen(100.0, [])  # no call set up yet
    # calls set up one by one as others end (a few a second): not a burst
    assert finalize_may_widen(100.0, [100.0 - quiet / 2] * (burst - 1))
    steady = [100.0 - i * 0.15 for i in reversed(range(burst))]  # 6.7 a second
    assert finalize_may_widen(100.0, steady)
    # as many as that within the quiet period: a burst, until it is over
    assert not finalize_may_widen(100.0, [100.0 - quiet / 2] * burst)
    assert finalize_may_widen(100.0, [100.0 - quiet] * burst)


class SlotHolder(FakeFinalize):
    """A finalize whose capture-side part (a slot) waits on the release event; its
    encoder part would run outside the slot, so it is left out."""

    async def __call__(self, recording: LiveRecording) -> None:
        async with self.capture.finalize_slots.slot():
            await super().__call__(recording)


async def test_capture_side_work_takes_turns_while_calls_are_set_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set-up (the PBX waits on it) goes first: while allocates come in a burst, one
    recording at a time does its capture-side finalize work; once they stop, several
    again (FINALIZE_CAPTURE_SIDE). Every finalize task still takes its recording, so
    the encoder workers' finishes keep batching meanwhile."""
    monkeypatch.setattr(capture_service, "SETUP_QUIET_S", 0.05)
    capture = make_capture(tmp_path)
    fake = SlotHolder(capture)
    capture._finalize_one = fake  # type: ignore[method-assign]
    wide = capture_service.FINALIZE_CAPTURE_SIDE
    tasks = finalize_concurrency(len(capture.workers))
    assert 1 < wide < tasks
    capture.recent_allocates.extend([time.monotonic()] * capture_service.SETUP_BURST_ALLOCATES)
    busy = True

    async def calls_being_set_up() -> None:
        while busy:  # a burst: 300 a second
            for _ in range(3):
                capture.recent_allocates.append(time.monotonic())
            await asyncio.sleep(0.01)

    setup = asyncio.create_task(calls_being_set_up())
    loop_task = asyncio.create_task(capture._finalize_loop())
    try:
        for i in range(tasks):  # as many as there are finalize tasks: each takes one
            add_ended(capture, f"r{i}")
        await wait_for(lambda: sum(fake.running.values()) == 1)
        await asyncio.sleep(0.3)  # several quiet periods' worth: still one
        assert fake.most_at_once == 1
        assert capture.queue.empty()  # every recording taken by a task, waiting its turn
        busy = False
        await setup
        await wait_for(lambda: sum(fake.running.values()) == wide)
        await asyncio.sleep(0.05)
        assert capture.finalize_slots.most_at_once == wide  # never more
        fake.release.set()
        await wait_for(lambda: len(fake.done) == tasks)
    finally:
        busy = False
        loop_task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop_task
    assert fake.most_of_one == 1
    assert capture.finalize_slots.busy == 0


async def test_the_file_work_of_each_slot_runs_side_by_side(tmp_path: Path) -> None:
    """Each finalize holding a capture-side slot gets its own file thread: the fsyncs
    of a burst of endings wait on the disk together, not one after another (400 calls
    ending at once spent 6 s in a single thread). Here each slot's file work waits at
    a barrier that only opens when all of them are in it at once."""
    capture = make_capture(tmp_path)
    wide = capture_service.FINALIZE_CAPTURE_SIDE
    barrier = threading.Barrier(wide, timeout=5.0)

    async def file_work_in_a_slot() -> int:
        async with capture.finalize_slots.slot():
            return await capture._finalize_file_work(barrier.wait)

    try:
        arrived = await asyncio.gather(*(file_work_in_a_slot() for _ in range(wide)))
    finally:
        capture.finalize_files.shutdown(wait=False)
    assert sorted(arrived) == list(range(wide))


async def test_a_cancelled_wait_for_a_slot_takes_none() -> None:
    widen = False
    slots = CaptureSideSlots(3, lambda: widen, 0.01)
    async with slots.slot():
        waiter = asyncio.create_task(slots.slot().__aenter__())
        await asyncio.sleep(0.03)
        assert not waiter.done() and slots.busy == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert slots.busy == 0
    widen = True
    async with slots.slot(), slots.slot(), slots.slot():
        assert slots.busy == 3


class FakeWorker:
    """Stands in for Capture._in_worker running worker_finishes: records each round
    trip's jobs and answers when released."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.broken = False

    async def run(self, recording_id: str, fn: Any, jobs: list[Any]) -> list[Any]:
        assert recording_id == jobs[0][1]
        self.batches.append([job[1] for job in jobs])
        await self.release.wait()
        if self.broken:
            raise OSError(5, "worker gone")
        return [OSError(28, "full") if job[1].startswith("bad") else
                FinalizeResult(duration_ms=job[3], channels=[], codecs=[]) for job in jobs]


def _job(recording_id: str, duration_ms: int = 1000) -> Any:
    return (Path("/nowhere"), recording_id, [], duration_ms, 16000)


async def test_finishes_waiting_for_one_worker_go_in_one_round_trip() -> None:
    worker = FakeWorker()
    batcher = FinishBatcher(worker.run)
    first = asyncio.create_task(batcher.finish(0, _job("a", 1)))
    await asyncio.sleep(0)
    more = [asyncio.create_task(batcher.finish(0, _job(r, 2))) for r in ("b", "bad-c", "d")]
    other = asyncio.create_task(batcher.finish(1, _job("e", 3)))
    await asyncio.sleep(0.01)
    assert worker.batches == [["a"], ["e"]]  # a lone finish waits for nothing
    worker.release.set()
    assert (await first).duration_ms == 1 and (await other).duration_ms == 3
    results = await asyncio.gather(*more, return_exceptions=True)
    assert worker.batches[2] == ["b", "bad-c", "d"]  # what came meanwhile: one trip
    assert isinstance(results[1], OSError) and results[1].errno == 28  # its own error
    assert [r.duration_ms for r in results if isinstance(r, FinalizeResult)] == [2, 2]
    assert not batcher._sending and not batcher._waiting


async def test_a_failed_round_trip_fails_each_of_its_finishes_and_the_next_goes_on() -> None:
    worker = FakeWorker()
    worker.broken = True
    worker.release.set()
    batcher = FinishBatcher(worker.run)
    results = await asyncio.gather(batcher.finish(0, _job("a")), batcher.finish(0, _job("b")),
                                   return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    worker.broken = False
    assert (await batcher.finish(0, _job("c", 7))).duration_ms == 7


async def test_a_cancelled_finish_does_not_disturb_its_batch() -> None:
    worker = FakeWorker()
    batcher = FinishBatcher(worker.run)
    a = asyncio.create_task(batcher.finish(0, _job("a", 1)))
    b = asyncio.create_task(batcher.finish(0, _job("b", 2)))
    await asyncio.sleep(0.01)
    a.cancel()
    worker.release.set()
    assert (await b).duration_ms == 2
    with pytest.raises(asyncio.CancelledError):
        await a


async def test_a_batch_holds_at_most_max_batch_finishes_in_arrival_order() -> None:
    """The worker's live steps queue behind a batch: it stays bounded, and what did not
    fit goes first in the next round trip."""
    worker = FakeWorker()
    batcher = FinishBatcher(worker.run, max_batch=3)
    first = asyncio.create_task(batcher.finish(0, _job("a")))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.finish(0, _job(f"r{i}"))) for i in range(7)]
    await asyncio.sleep(0.01)
    worker.release.set()
    await asyncio.gather(first, *rest)
    assert worker.batches == [["a"], ["r0", "r1", "r2"], ["r3", "r4", "r5"], ["r6"]]
