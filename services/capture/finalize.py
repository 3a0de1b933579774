"""Turning a finished recording's raw packets into one stereo Ogg/Opus file.

Runs in a worker process, so decoding and encoding never stall packet reception.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callrec.audio import encode_opus_stereo
from contracts.v1.events import ChannelSummary, DtmfDigit

from .manifest import RecordingManifest
from .segments import read_stream
from .timeline import build_channel

OUTPUT_RATE = 16000


@dataclass
class FinalizeResult:
    duration_ms: int
    channels: list[ChannelSummary]
    codecs: list[str]


def finalize_recording(directory: Path, output: Path, bitrate: int) -> FinalizeResult:
    """Build both channels from the manifest's streams and encode them to `output`."""
    manifest = RecordingManifest.load(directory)
    _sync_segments(directory)
    if manifest.ended_at is None:
        raise ValueError(f"recording {manifest.recording_id} has not ended")
    duration_ms = max(0, int((manifest.ended_at - manifest.started_at).total_seconds() * 1000))
    samples = duration_ms * OUTPUT_RATE // 1000
    mix = [np.zeros(samples, dtype=np.int32), np.zeros(samples, dtype=np.int32)]
    summaries: list[ChannelSummary] = []
    codecs: set[str] = set()
    for stream in sorted(manifest.streams.values(), key=lambda s: (s.channel, s.stream_id)):
        channel = 0 if stream.channel <= 0 else 1
        result = build_channel(
            read_stream(directory, stream.stream_id),
            stream.payload_codecs,
            duration_ms,
            out_rate=OUTPUT_RATE,
        )
        mix[channel][: len(result.samples)] += result.samples[:samples].astype(np.int32)
        stats = result.stats
        codecs.update(stats.codecs)
        summaries.append(
            ChannelSummary(
                channel=channel,
                stream_id=stream.stream_id,
                port=stream.port,
                packets_received=stats.packets_received,
                packets_lost=stats.packets_lost,
                packets_duplicate=stats.packets_duplicate,
                packets_invalid=stats.packets_invalid,
                packets_outside=stats.packets_outside,
                unknown_payload=stats.unknown_payload,
                ssrc_changes=stats.ssrc_changes,
                codecs=list(stats.codecs),
                packets_decoded=stats.packets_decoded,
                unknown_payload_types=list(stats.unknown_payload_types),
                silent_reason=stats.silent_reason,
                dtmf=[
                    DtmfDigit(digit=d.digit, at_ms=d.start_ms, duration_ms=d.duration_ms)
                    for d in result.dtmf
                ],
            )
        )
    left, right = (np.clip(m, -32768, 32767).astype(np.int16) for m in mix)
    encode_opus_stereo(left, right, OUTPUT_RATE, output, bitrate=bitrate)
    return FinalizeResult(duration_ms=duration_ms, channels=summaries, codecs=sorted(codecs))


def _sync_segments(directory: Path) -> None:
    """Make the raw packets durable before the recording is built from them."""
    for path in directory.glob("*.seg"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
