"""Recordings fabricated straight into a capture data directory (no network).

Writes what capture's receive path would have written for a call of two G.711
streams (near end a tone on channel 0, far end another on channel 1, 20 ms
packets with a little jitter): a manifest and segment files. Used to test and
measure finalize and the live encoder without running calls in real time.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
from aiortc.rtp import RtpPacket

from callrec.audio import pcmu_encode
from callrec.opus import OpusMode
from contracts.v1.events import RecordingMetadata
from services.capture.manifest import RecordingManifest, StreamManifest
from services.capture.segments import RECORD_HEADER, segment_path

NEAR_HZ = 440.0
FAR_HZ = 1004.0
PTIME_MS = 20
SPP = 160


def packets(hz: float, seconds: float, *, ssrc: int, jitter_ms: int, seed: int,
            start_ms: int = 0, seq0: int = 1000, ts0: int = 50_000,
            pt: int = 0) -> list[tuple[int, bytes]]:
    """(arrival_ms, datagram) of a PCMU tone, generated chunk by chunk (bounded)."""
    count = int(seconds * 1000) // PTIME_MS
    n = np.arange(count * SPP, dtype=np.float64)
    samples = np.round(0.5 * 32767 * np.sin(2 * np.pi * hz * n / 8000.0)).astype(np.int16)
    return pcm_packets(samples, ssrc=ssrc, jitter_ms=jitter_ms, seed=seed, start_ms=start_ms,
                       seq0=seq0, ts0=ts0, pt=pt)


def pcm_packets(samples: npt.NDArray[np.int16], *, ssrc: int, jitter_ms: int, seed: int,
                start_ms: int = 0, seq0: int = 1000, ts0: int = 50_000,
                pt: int = 0) -> list[tuple[int, bytes]]:
    """(arrival_ms, datagram) of 8 kHz PCM sent as 20 ms PCMU packets (the tail that
    does not fill a packet is dropped)."""
    rng = random.Random(seed)
    out: list[tuple[int, bytes]] = []
    for i in range(samples.size // SPP):
        payload = pcmu_encode(samples[i * SPP:(i + 1) * SPP])
        datagram = RtpPacket(payload_type=pt, sequence_number=(seq0 + i) & 0xFFFF,
                             timestamp=(ts0 + SPP * i) & 0xFFFFFFFF, ssrc=ssrc,
                             payload=payload).serialize()
        arrival = start_ms + PTIME_MS * i + (rng.randint(0, jitter_ms) if jitter_ms else 0)
        out.append((arrival, datagram))
    out.sort(key=lambda r: r[0])
    return out


def write_segment(path: Path, records: list[tuple[int, bytes]]) -> None:
    with path.open("ab") as handle:
        for arrival, datagram in records:
            handle.write(RECORD_HEADER.pack(arrival, len(datagram)) + datagram)


def make_recording(directory: Path, seconds: float, *, recording_id: str = "rec-gen",
                   ended: bool = True, jitter_ms: int = 8, chunk_s: float = 60.0,
                   signals: dict[str, npt.NDArray[np.int16]] | None = None,
                   lead_s: float = 0.0) -> Path:
    """A recording dir holding ``seconds`` of a two-stream call; returns the directory.

    ``signals`` replaces a stream's tone ("near", "far") by that 8 kHz PCM (speech).
    ``lead_s``: seconds without packets before the tones (set-up before media, a
    hold), added to the recording's length.

    The segments are written a minute at a time so that fabricating a long call
    needs no more memory than a short one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    started = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    manifest = RecordingManifest(
        recording_id=recording_id, started_at=started,
        ended_at=started + timedelta(seconds=seconds + lead_s) if ended else None,
        metadata=RecordingMetadata(source="sip", session_key=recording_id),
        streams={
            "near": StreamManifest(stream_id="near", channel=0, port=40000,
                                   payload_codecs={0: "PCMU"}),
            "far": StreamManifest(stream_id="far", channel=1, port=40002,
                                  payload_codecs={0: "PCMU"}),
        },
    )
    manifest.save(directory)
    for stream_id, hz, ssrc, seed in (("near", NEAR_HZ, 0x1111, 1), ("far", FAR_HZ, 0x2222, 2)):
        path = segment_path(directory, stream_id, 0)
        if signals is not None and stream_id in signals:
            write_segment(path, pcm_packets(signals[stream_id], ssrc=ssrc,
                                            jitter_ms=jitter_ms, seed=seed))
            continue
        done = 0.0
        while done < seconds:
            span = min(chunk_s, seconds - done)
            first = int(done * 1000) // PTIME_MS
            recs = packets(hz, span, ssrc=ssrc, jitter_ms=jitter_ms, seed=seed + first,
                           start_ms=int((lead_s + done) * 1000), seq0=1000 + first,
                           ts0=50_000 + SPP * first)
            write_segment(path, recs)
            done += span
    return directory


def encode_as_capture(directory: Path, bitrate: int, step_ms: float = 500.0,
                      mode: OpusMode | None = None) -> Path:
    """Run capture's live encoder over a fabricated call as capture's worker does (a step
    every ``step_ms`` of call, then finish; ``mode``: the node's --opus-mode, its default
    if None); returns the finished live.opus."""
    from services.capture.finalize import duration_of, stream_specs
    from services.capture.live import LIVE_FILE, NARROWBAND_MODE, worker_finish, worker_step

    mode = mode or NARROWBAND_MODE

    manifest = RecordingManifest.load(directory)
    duration = duration_of(manifest)
    specs = stream_specs(manifest)
    now = 0.0
    while now < duration:
        now += step_ms
        worker_step(directory, manifest.recording_id, specs, min(now, float(duration)),
                    bitrate, mode)
    worker_finish(directory, manifest.recording_id, specs, duration, bitrate, mode)
    return directory / LIVE_FILE
