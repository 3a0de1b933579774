"""A worker's round trip of live steps gives way to a finish sent after it began
(services/capture/finish_signal.py), and to nothing else.

In process: the counters, worker_steps' cut, and capture re-sending the steps not
taken after the finish. tests/integration/test_finish_signal_worker.py does it
across a real worker process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from services.capture import finish_signal, live
from services.capture.finalize import FinishBatcher
from services.capture.finish_signal import FinishTickets
from services.capture.live import StepJob
from tests.support.capturecore import add_live, bare_capture


@pytest.fixture
def installed() -> Iterator[FinishTickets]:
    tickets = FinishTickets(2)
    finish_signal.install(tickets, 1)
    yield tickets
    finish_signal._installed = None


def test_a_finish_waits_from_when_it_is_sent_until_it_begins() -> None:
    tickets = FinishTickets(2)
    assert not tickets.waiting(0)
    first = tickets.send(0)
    assert tickets.waiting(0) and not tickets.waiting(1)  # per worker
    second = tickets.send(0)
    tickets.begun(0, first)
    assert tickets.waiting(0)  # the second has not begun
    tickets.begun(0, second)
    assert not tickets.waiting(0)
    tickets.begun(0, first)  # the first sent again (a replaced worker): no going back
    assert not tickets.waiting(0)


def test_nothing_installed_never_cuts() -> None:
    assert finish_signal._installed is None
    assert not finish_signal.finish_waiting()
    finish_signal.finish_started(3)  # a worker in capture's own process: no-op


def _jobs(count: int) -> list[StepJob]:
    return [(Path("."), f"r{i}", [], 0.0, 11500, "celt") for i in range(count)]


def test_worker_steps_stop_after_the_step_during_which_a_finish_was_sent(
        installed: FinishTickets, monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[str] = []
    sent: list[int] = []

    def step(directory: Path, recording_id: str, *_: Any) -> tuple[None, int]:
        taken.append(recording_id)
        if recording_id == "r2" and not sent:
            sent.append(installed.send(1))  # capture sends a finish while r2 is encoded
        return None, 0

    monkeypatch.setattr(live, "worker_step", step)
    assert len(live.worker_steps(_jobs(10))) == 3 and taken == ["r0", "r1", "r2"]
    # the next round trip (the rest, sent again) still waits: one step, then the cut
    assert len(live.worker_steps(_jobs(10))) == 1
    live.worker_finishes([], ticket=sent[0])  # the finish begins
    taken.clear()
    assert len(live.worker_steps(_jobs(10))) == 10  # nothing waits: every step


def test_another_workers_finish_does_not_cut(installed: FinishTickets,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "worker_step", lambda *_: (None, 0))
    installed.send(0)
    assert len(live.worker_steps(_jobs(10))) == 10


class CuttingWorker:
    """Stands in for Capture._in_worker over one worker: one round trip at a time in
    arrival order; a round trip of steps checks the tickets after each step."""

    def __init__(self, tickets: FinishTickets, step_seconds: float) -> None:
        self.tickets = tickets
        self.step_seconds = step_seconds
        self.lock = asyncio.Lock()
        self.trips: list[tuple[str, list[str]]] = []
        self.during_first: Callable[[], None] | None = None

    async def __call__(self, recording_id: str, fn: Callable[..., Any], jobs: Any,
                       ticket: int | None = None) -> Any:
        async with self.lock:
            if fn is live.worker_steps:
                steps: list[StepJob] = jobs
                taken: list[str] = []
                for job in steps:
                    taken.append(job[1])
                    if self.during_first is not None:
                        hook, self.during_first = self.during_first, None
                        hook()
                    await asyncio.sleep(self.step_seconds)
                    if self.tickets.waiting(0):
                        break
                self.trips.append(("steps", taken))
                return [(None, 0, None) for _ in taken]
            assert ticket is not None
            self.tickets.begun(0, ticket)
            self.trips.append(("finish", [job[1] for job in jobs]))
            return [live.FinalizeResult(duration_ms=1, channels=[], codecs=[])
                    for _ in jobs]


async def test_a_finish_runs_after_the_step_in_progress_and_the_rest_after_it(
        tmp_path: Path) -> None:
    """Steps far behind (30 ms each against the 2 ms the last round trip measured):
    a finish sent during the first step runs right after it, not after the chunk of 25
    steps; every other call is stepped once, in order, after the finish."""
    capture = bare_capture(tmp_path)
    capture.workers = [cast(Any, None)]
    tickets = FinishTickets(1)
    worker = CuttingWorker(tickets, step_seconds=0.03)
    capture._in_worker = worker  # type: ignore[method-assign,assignment]
    capture.finishes = FinishBatcher(worker, tickets=tickets)
    batch = [add_live(capture, f"r{i:03d}") for i in range(40)]
    capture.step_seconds[0] = 0.002  # the estimate: 25 steps a round trip
    ending = batch[-1]
    finish: list[asyncio.Task[Any]] = []

    def call_ends_meanwhile() -> None:
        ending.finalizing = True
        finish.append(asyncio.ensure_future(capture.finishes.finish(
            0, (ending.directory, ending.manifest.recording_id, [], 1000, 11500, "celt"))))

    worker.during_first = call_ends_meanwhile
    await capture._live_steps(batch, flushed_at=datetime.now(UTC).timestamp())
    await finish[0]
    assert worker.trips[0] == ("steps", ["r000"])
    assert worker.trips[1] == ("finish", [ending.manifest.recording_id])
    stepped = [rid for kind, ids in worker.trips if kind == "steps" for rid in ids]
    assert stepped == [r.manifest.recording_id for r in batch[:-1]]  # each once, in order
    assert [kind for kind, _ in worker.trips[2:]] == ["steps"] * (len(worker.trips) - 2)
    assert not tickets.waiting(0)


async def test_with_no_finish_a_slow_round_trip_is_not_cut(tmp_path: Path) -> None:
    """A worker the scheduler starves (each step 30 ms where 2 ms was measured) takes
    its whole chunk: nothing waits, so nothing is sent twice."""
    capture = bare_capture(tmp_path)
    capture.workers = [cast(Any, None)]
    tickets = FinishTickets(1)
    worker = CuttingWorker(tickets, step_seconds=0.03)
    capture._in_worker = worker  # type: ignore[method-assign,assignment]
    batch = [add_live(capture, f"r{i:03d}") for i in range(30)]
    capture.step_seconds[0] = 0.002
    await capture._live_steps(batch, flushed_at=datetime.now(UTC).timestamp())
    assert [len(ids) for _, ids in worker.trips] == [25, 5]
