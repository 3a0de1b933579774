"""Capture steps a call's live encoding only when a step could add audio.

A call set up but not sent to yet (a burst of new calls, whose first packets come a
moment after the ACK), or one on hold, costs a worker nothing: no step, no encoder,
no directory listing. What must hold: a call with new packets is stepped, and so is
one whose encoder still holds audio back (the emit delay); a call is skipped only
after its worker said it is drained at a revision no packet has passed since.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from contracts.v1.events import RecordingMetadata
from contracts.v1.rpc import AllocateRequest, StreamSpec
from services.capture.live import StepJob, StepResult
from services.capture.service import Capture
from tests.support.capturecore import bare_capture

PACKET = bytes([0x80, 0, 0, 1]) + bytes(8) + bytes([0xFF]) * 160


class Worker:
    """Stands in for Capture._in_worker: answers each step with `drained`, and runs
    `meanwhile` while the step is in flight (as the flush loop may)."""

    def __init__(self) -> None:
        self.drained = True
        self.error: str | None = None
        self.stepped: list[str] = []
        self.meanwhile: Any = None

    async def __call__(self, recording_id: str, fn: Any, jobs: list[StepJob]) -> Any:
        self.stepped += [job[1] for job in jobs]
        if self.meanwhile is not None:
            await self.meanwhile()
        return [StepResult(None, 0, self.error, self.drained and self.error is None)
                for _ in jobs]


async def new_call(capture: Capture, recording_id: str) -> None:
    await capture.allocate(AllocateRequest(
        recording_id=recording_id, started_at=datetime.now(UTC),
        metadata=RecordingMetadata(source="cucm", session_key=recording_id),
        streams=[StreamSpec(stream_id="near", channel=0),
                 StreamSpec(stream_id="far", channel=1)]))


async def packets_flushed(capture: Capture, recording_id: str) -> None:
    """A packet received, then one pass of the real flush loop."""
    capture.live[recording_id].streams["near"].writer.append(20, PACKET)
    capture._flushed.clear()
    flush = asyncio.create_task(capture._flush_loop())
    await asyncio.wait_for(capture._flushed.wait(), 5)
    flush.cancel()


def wanted(capture: Capture) -> list[str]:
    return sorted(r.manifest.recording_id for batch in capture._live_batches().values()
                  for r in batch)


async def step_all(capture: Capture) -> None:
    for batch in capture._live_batches().values():
        await capture._live_chunk(batch, datetime.now(UTC).timestamp())


async def test_only_calls_with_something_to_encode_are_stepped(tmp_path: Path) -> None:
    capture = bare_capture(tmp_path)
    capture.workers = [cast(Any, None)]
    worker = Worker()
    capture._in_worker = worker  # type: ignore[method-assign,assignment]
    try:
        await new_call(capture, "quiet")
        await new_call(capture, "talking")
        await capture.files.barrier()  # the directories are made
        assert wanted(capture) == []  # set up, no packet yet: no step, no encoder

        await packets_flushed(capture, "talking")
        assert wanted(capture) == ["talking"]
        worker.drained = False  # audio held back by the emit delay
        await step_all(capture)
        assert wanted(capture) == ["talking"]  # stepped again although nothing came
        worker.drained = True
        await step_all(capture)
        assert wanted(capture) == []  # on hold: skipped
        assert capture.m_live_steps.get() == 2

        # Packets flushed while a step is in flight: that step's "drained" is too old.
        worker.meanwhile = lambda: packets_flushed(capture, "talking")
        await packets_flushed(capture, "talking")
        await step_all(capture)
        worker.meanwhile = None
        assert wanted(capture) == ["talking"]
        await step_all(capture)
        assert wanted(capture) == []

        # A failed step never counts as drained: the next starts again from disk.
        await packets_flushed(capture, "talking")
        worker.error = "OSError: disk"
        await step_all(capture)
        assert wanted(capture) == ["talking"]
        worker.error = None

        # A manifest change (a source latched, an update) is stepped once more.
        await step_all(capture)
        capture._journal(capture.live["talking"])
        assert wanted(capture) == ["talking"]
        assert worker.stepped.count("quiet") == 0
    finally:
        capture.reader.close()
        capture.journal.close()
        capture.files.close()


async def test_a_call_recovered_after_a_restart_is_stepped_before_any_packet(
        tmp_path: Path) -> None:
    """Its segments may hold packets the encoder never saw (capture was down)."""
    capture = bare_capture(tmp_path)
    capture.workers = [cast(Any, None)]
    try:
        await new_call(capture, "r1")
        await capture.files.barrier()
        await packets_flushed(capture, "r1")
        capture._save_manifest(capture.live["r1"])
        capture.live.clear()
        capture._recover({})
        assert wanted(capture) == ["r1"]
    finally:
        capture.reader.close()
        capture.journal.close()
        capture.files.close()
