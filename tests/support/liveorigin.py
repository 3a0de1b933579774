"""A fake origin of a recording in progress, as the live encoder (issue 9) presents one:
a real Ogg/Opus file growing page by page under the node's capture directory, and its
LiveProgress on core NATS after each flush (a batch of one).

The audio is a real two-mono-stream Ogg/Opus file (callrec.audio.encode_opus_stereo)
cut at page boundaries, so a peer's copy can be checked by tone and duration.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from callrec import bus
from callrec.audio import OpusPageEncoder, encode_opus_stereo, scan_ogg_pages, tone
from contracts import subjects
from contracts.v1.events import (
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    RecordingStarted,
)
from contracts.v1.rpc import LiveProgress, LiveProgressBatch
from services.sync.ogg import pages, scan

from .node import Node

RATE = 8000


@dataclass
class FakeOrigin:
    node: Node
    recording_id: str
    seconds: float
    near_hz: float = 440.0
    far_hz: float = 1004.0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    data: bytes = b""
    flushed: int = 0  # bytes announced
    flushed_ms: int = 0  # audio announced
    flushed_at: float = 0.0  # wall clock of the last announcement
    boundaries: list[tuple[int, int]] = field(default_factory=list)  # (end, duration_ms)
    clock: float | None = None  # wall time of call time 0 (the first play)

    def __post_init__(self) -> None:
        work = self.node.data_dir.parent / f"{self.recording_id}.full.opus"
        encode_opus_stereo(tone(self.near_hz, self.seconds, RATE),
                           tone(self.far_hz, self.seconds, RATE), RATE, work)
        self.data = work.read_bytes()
        pre_skip = scan(self.data).pre_skip
        for end, granule, _ in pages(self.data):
            self.boundaries.append((end, max(0, granule - pre_skip) * 1000 // 48000))
        self.directory = self.node.data_dir / "capture" / self.recording_id
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def metadata(self) -> RecordingMetadata:
        return RecordingMetadata(source="sip", session_key=self.recording_id, participants=[
            Participant(role="caller", number="1001", channel=0),
            Participant(role="callee", number="2002", channel=1)])

    async def start(self) -> None:
        """recording.started, as signaling states it."""
        nc = await self.node.bus("signaling")
        try:
            await bus.publish_event(nc.jetstream(), RecordingStarted(
                node_id=self.node.node_id, recording_id=self.recording_id,
                started_at=self.started_at, metadata=self.metadata))
        finally:
            await nc.close()

    async def play(self, until_s: float, nc: Any | None = None) -> None:
        """Flush once a second (the pages covering the call so far) until `until_s` of
        call time, announcing each flush as capture would."""
        own = nc is None
        nc = nc or await self.node.bus("capture")
        try:
            if self.clock is None:
                self.clock = time.time()
            t0 = self.clock
            while self.flushed_ms < until_s * 1000 - 1:
                due = t0 + (int((time.time() - t0) + 1e-3) + 1)  # the next whole second
                await asyncio.sleep(max(0.0, due - time.time()))
                call_ms = (time.time() - t0) * 1000
                end, ms = max(((e, d) for e, d in self.boundaries if d <= call_ms),
                              default=(0, 0))
                if end > self.flushed:
                    await self._flush(nc, end, ms)
                if self.flushed == len(self.data):
                    break
        finally:
            if own:
                await nc.close()

    def write_to(self, call_s: float) -> LiveProgress | None:
        """Append the pages covering `call_s` of call time now, without announcing them
        (a test that wants many calls' progress to arrive together sends it itself);
        returns the progress to announce, None when there was nothing new."""
        end, ms = max(((e, d) for e, d in self.boundaries if d <= call_s * 1000),
                      default=(0, 0))
        return self._write(end, ms) if end > self.flushed else None

    async def _flush(self, nc: Any, end: int, ms: int, final: bool = False) -> None:
        update = self._write(end, ms, final)
        batch = LiveProgressBatch(node_id=self.node.node_id, updates=[update])
        await nc.publish(subjects.live_batch(self.node.node_id),
                         batch.model_dump_json().encode())
        await nc.flush()

    def _write(self, end: int, ms: int, final: bool = False) -> LiveProgress:
        with (self.directory / "live.opus").open("ab") as handle:
            handle.write(self.data[self.flushed:end])
            handle.flush()
            os.fdatasync(handle.fileno())
        self.flushed, self.flushed_ms, self.flushed_at = end, ms, time.time()
        return LiveProgress(recording_id=self.recording_id, node_id=self.node.node_id,
                            bytes=end, duration_ms=ms, final=final)

    def lose_tail(self, keep_s: float, near_hz: float = 660.0, far_hz: float = 1500.0) -> None:
        """A machine crash lost what the origin flushed after `keep_s` of audio (nothing
        was synced): its file is cut back to the last page before that and, as the live
        encoder resumes, goes on from there with a fresh encoder (other tones here, so
        the bytes surely differ from those the peer already holds). Announcements follow
        the new file from the next `play`."""
        path = self.directory / "live.opus"
        keep = max(e for e, d in self.boundaries if d <= keep_s * 1000)
        with path.open("r+b") as handle:
            handle.truncate(keep)
        encoder = OpusPageEncoder(RATE, resume_from=list(scan_ogg_pages(path))[-1])
        data = self.data[:keep]
        left_s = self.seconds - keep_s
        frames = int(left_s * RATE) // encoder.frame_size * encoder.frame_size
        near, far = (tone(hz, left_s, RATE)[:frames] for hz in (near_hz, far_hz))
        for start in range(0, frames, RATE):  # a page a second
            encoder.encode(near[start:start + RATE], far[start:start + RATE])
            data += encoder.pages()
        encoder.release()
        pre_skip = scan(self.data).pre_skip
        self.data = data
        self.boundaries = [(end, max(0, granule - pre_skip) * 1000 // 48000)
                           for end, granule, _ in pages(data)]
        self.flushed = keep
        self.flushed_ms = max(d for e, d in self.boundaries if e <= keep)

    async def complete(self, duration_ms: int | None = None) -> RecordingCompleted:
        """The origin's own copy (the whole file, or what `duration_ms` covers) stored
        and announced as capture does."""
        end = len(self.data)
        if duration_ms is not None:
            end = max(e for e, d in self.boundaries if d <= duration_ms)
        ms = max(d for e, d in self.boundaries if e <= end)
        body = self.data[:end]
        key = f"recordings/{self.started_at:%Y/%m/%d}/{self.recording_id}.opus"
        path = self.node.data_dir / "objects" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        event = RecordingCompleted(
            node_id=self.node.node_id, recording_id=self.recording_id,
            started_at=self.started_at, ended_at=self.started_at + timedelta(milliseconds=ms),
            duration_ms=ms, object_key=key, size_bytes=len(body),
            sha256=hashlib.sha256(body).hexdigest(), channels=[], metadata=self.metadata)
        nc = await self.node.bus("capture")
        try:
            await bus.publish_event(nc.jetstream(), event)
        finally:
            await nc.close()
        return event
