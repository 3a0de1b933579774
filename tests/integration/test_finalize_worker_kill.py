"""An encoder worker SIGKILLed while it finishes a batch of recordings: every one of
them still ends as one correct recording (capture replaces the worker and sends the
batch again; each finish resumes from what the segments and live.opus hold).

Capture's own finalize loop with a real worker process and FileStore; JetStream is a
stub that records what is published (no NATS server needed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from concurrent.futures import Executor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from callrec.audio import decode_file, dominant_frequency
from callrec.store import sha256_file
from tests.support.callgen import FAR_HZ, NEAR_HZ, make_recording
from tests.support.capturecore import stop_worker_capture, worker_capture

CALLS = 16


class RecordingJetStream:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, subject: str, payload: bytes, **_: Any) -> Any:
        await asyncio.sleep(0.002)
        self.events.append((subject, json.loads(payload)))
        return SimpleNamespace(seq=len(self.events))


class NoNats:
    async def publish(self, subject: str, payload: bytes) -> None:
        return None


def _pids(executor: Executor) -> list[int]:
    processes = getattr(executor, "_processes", None) or {}
    return list(processes)


async def test_a_worker_killed_mid_batch_leaves_every_recording_correct(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    active = data_dir / "capture" / "active"
    for i in range(CALLS):
        make_recording(active / f"call-{i:03d}", 2.0, recording_id=f"call-{i:03d}")
    js = RecordingJetStream()
    capture, store = worker_capture(data_dir, NoNats(), js)
    capture.workers[0].submit(os.getpid).result()  # its process is up
    first = capture.workers[0]
    victim = _pids(first)
    assert victim
    capture._recover({})
    loop = asyncio.create_task(capture._finalize_loop())
    try:
        # Kill the worker as soon as its first round trip is under way: the finishes of
        # that batch (and those queued behind it) are in flight.
        while not capture.finalizing_now:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.005)
        for pid in victim:
            os.kill(pid, signal.SIGKILL)
        for _ in range(6000):
            if not capture.live:
                break
            await asyncio.sleep(0.01)
        assert not capture.live, f"{len(capture.live)} recordings not finalized"
        # Each finished recording's directory is removed once it is stored.
        for _ in range(3000):
            if not any(active.iterdir()):
                break
            await asyncio.sleep(0.01)
        assert not any(active.iterdir()), sorted(p.name for p in active.iterdir())
    finally:
        await stop_worker_capture(capture, loop)
    assert capture.workers[0] is not first  # the kill was seen, the worker replaced
    completed = [e for s, e in js.events if s.endswith("recording.completed")]
    assert sorted(e["recording_id"] for e in completed) == [
        f"call-{i:03d}" for i in range(CALLS)]  # each once, none failed
    assert not [s for s, _ in js.events if s.endswith("recording.failed")]
    for event in completed:
        path = store.local_path(event["object_key"])
        assert path is not None
        assert sha256_file(path) == event["sha256"]
        assert path.stat().st_size == event["size_bytes"]
        assert event["duration_ms"] == 2000
        audio, rate = decode_file(path, rate=8000)
        assert abs(audio.shape[1] / rate - 2.0) <= 0.05  # (a clean finish decodes to 2.03)
        assert abs(dominant_frequency(audio[0], rate) - NEAR_HZ) < 5
        assert abs(dominant_frequency(audio[1], rate) - FAR_HZ) < 5
