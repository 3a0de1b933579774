"""Finishing a recording: the live encoding run to the end of the call, then closed.

Capture encodes a call into its final Ogg/Opus file while it is recorded (live.py);
finalize only encodes the last half second and closes the stream, so its memory
and time do not grow with the call's length. A recording whose live encoder is gone
(capture restarted) is picked up from the segments and what live.opus already holds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .live import LIVE_FILE, FinalizeResult, LiveEncoder, StreamSpec, worker_finish
from .manifest import RecordingManifest

__all__ = ["FinalizeResult", "finalize_recording", "stream_specs"]


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
