"""Capture announces a finished recording's whole live file before it stores it and
publishes the completion: a peer copying the call pulls the last pages with its other
copies' steps (one request for many), and its fetch after the completion finds nothing
left to ask for.

Capture's own finalize loop with a real worker process and FileStore; NATS and
JetStream are stubs that record what is published, in one order.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from contracts import subjects
from tests.support.callgen import make_recording
from tests.support.capturecore import stop_worker_capture, worker_capture


class Published:
    """Both the core client and JetStream: what was published, in order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, subject: str, payload: bytes, **_: Any) -> Any:
        self.messages.append((subject, json.loads(payload)))
        return SimpleNamespace(seq=len(self.messages))


async def test_the_whole_live_file_is_announced_before_the_completion(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    make_recording(data_dir / "capture" / "active" / "call-1", 2.0, recording_id="call-1")
    published = Published()
    capture, _ = worker_capture(data_dir, published, published)
    capture._recover({})
    loop = asyncio.create_task(capture._finalize_loop())
    try:
        for _ in range(3000):
            if not capture.live:
                break
            await asyncio.sleep(0.01)
        assert not capture.live
    finally:
        await stop_worker_capture(capture, loop)
    order = [subject for subject, _ in published.messages]
    completed_at = order.index(subjects.event("n1", "recording.completed"))
    finals = [(index, update) for index, (subject, body) in enumerate(published.messages)
              if subject == subjects.live_batch("n1")
              for update in body["updates"] if update["final"]]
    assert [update["recording_id"] for _, update in finals] == ["call-1"]
    announced_at, update = finals[0]
    assert announced_at < completed_at
    completion = published.messages[completed_at][1]
    assert update["bytes"] == completion["size_bytes"]  # the whole file, as stored
    assert update["duration_ms"] == completion["duration_ms"]
