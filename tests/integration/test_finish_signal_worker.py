"""Across a real encoder worker process: a finish sent while the worker takes a long
round trip of live steps runs after the step in progress, not after the round trip
(the tickets in shared memory, as capture's main() hands them to its workers).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from services.capture import finish_signal
from services.capture.finalize import stream_specs
from services.capture.finish_signal import FinishTickets
from services.capture.live import LIVE_FILE, FinishJob, StepJob, worker_finishes, worker_steps
from services.capture.manifest import RecordingManifest
from tests.support.callgen import make_recording

CALLS = 30
SECONDS = 10.0


def test_a_finish_overtakes_the_rest_of_a_round_trip_of_steps(tmp_path: Path) -> None:
    directories = [make_recording(tmp_path / f"call-{i:02d}", SECONDS,
                                  recording_id=f"call-{i:02d}") for i in range(CALLS)]
    steps: list[StepJob] = []
    for directory in directories[:-1]:
        manifest = RecordingManifest.load(directory)
        # each step catches up all 10 s of its call: tens of ms of encoding
        steps.append((directory, manifest.recording_id, stream_specs(manifest),
                      SECONDS * 1000, 11500, "celt"))
    last = RecordingManifest.load(directories[-1])
    finish: FinishJob = (directories[-1], last.recording_id, stream_specs(last),
                         int(SECONDS * 1000), 11500, "celt")
    context = multiprocessing.get_context("forkserver")
    tickets = FinishTickets(1, context)
    with ProcessPoolExecutor(1, mp_context=context, initializer=finish_signal.install,
                             initargs=(tickets, 0)) as worker:
        worker.submit(os.getpid).result()  # its process is up
        stepping = worker.submit(worker_steps, steps)
        began = time.monotonic()
        while not (directories[0] / LIVE_FILE).exists():  # the round trip is under way
            assert time.monotonic() - began < 60
            time.sleep(0.002)
        finishing = worker.submit(worker_finishes, [finish], tickets.send(0))
        results = stepping.result(timeout=120)
        assert 1 <= len(results) < len(steps)  # cut short, after at least one step
        assert all(error is None and progress is not None
                   for progress, _, error in results)
        [done] = finishing.result(timeout=120)
        assert not isinstance(done, Exception)
        assert done.duration_ms == SECONDS * 1000
        assert not tickets.waiting(0)
        # the steps not taken, sent again, are all taken now that nothing waits
        rest = worker.submit(worker_steps, steps[len(results):]).result(timeout=120)
        assert len(rest) == len(steps) - len(results)
