"""Waveform peaks (callrec/waveform.py) and where capture makes them (live encoder):
a tone on one channel and silence on the other show in the right lane, at the right
time, whatever the pieces the PCM arrives in and across a capture restart."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from callrec import buspolicy
from callrec.audio import encode_opus_stereo, tone
from callrec.waveform import (
    BASE_MS,
    MAX_BUCKETS,
    PeakAccumulator,
    compute_peaks,
    decode_peaks,
    peaks_of_file,
)
from contracts.v1.events import RecordingWaveformComputed, WaveformPeaks, parse_event
from services.capture.finalize import stream_specs
from services.capture.live import LIVE_FILE, FinalizeResult, LiveEncoder
from services.capture.manifest import RecordingManifest
from services.capture.segments import segment_path
from tests.support.callgen import NEAR_HZ, packets, write_segment
from tests.unit.test_live import _empty_recording, _play

RATE = 16000


def _lanes(peaks: WaveformPeaks) -> np.ndarray:
    """(channels, buckets) of each bucket's peak-to-peak height in int8 steps."""
    data = decode_peaks(peaks).astype(np.int32)
    return data[:, :, 1] - data[:, :, 0]


def test_tone_on_one_channel_and_silence_on_the_other_show_in_the_right_lane() -> None:
    seconds = 3.0
    left = np.zeros(int(seconds * RATE), dtype=np.int16)
    right = tone(1000, seconds, RATE, amplitude=0.5)
    right[: RATE] = 0  # the far end speaks from 1 s on
    peaks = compute_peaks(np.stack([left, right]), RATE)
    assert peaks.bucket_ms == BASE_MS and peaks.buckets == 150
    lanes = _lanes(peaks)
    assert (lanes[0] == 0).all()  # silence draws nothing
    assert (lanes[1][:50] == 0).all()
    # Half of full scale peak to peak is 128 int8 steps (-64..64).
    assert (np.abs(lanes[1][50:] - 128) <= 2).all()


def test_quiet_sound_still_draws_and_extremes_do_not_overflow() -> None:
    quiet = np.array([[3, -3] * 160, [32767, -32768] * 160], dtype=np.int16)
    data = decode_peaks(compute_peaks(quiet, RATE))
    assert data[0, 0].tolist() == [-1, 1]
    assert data[1, 0].tolist() == [-128, 127]


def test_pieces_of_any_size_give_the_whole_arrays_peaks() -> None:
    rng = np.random.default_rng(7)
    total = RATE * 200 + 123  # 200 s: resolution halves several times on the way
    pcm = rng.integers(-30000, 30000, size=(2, total), dtype=np.int16)
    whole = compute_peaks(pcm, RATE)
    accumulator = PeakAccumulator(RATE)
    pos = 0
    while pos < total:
        step = int(rng.integers(1, 40_000))
        accumulator.add(pcm[:, pos:pos + step])
        pos += step
    assert accumulator.result() == whole
    # 200 s at 20 ms doubled until at most MAX_BUCKETS: 160 ms, 1251 buckets (the last partial).
    assert whole.bucket_ms == 160 and whole.buckets == 1251
    reference = pcm[:, : 1250 * 2560].reshape(2, 1250, 2560)
    data = decode_peaks(whole)
    assert (data[:, :1250, 0] == reference.min(axis=2) >> 8).all()


@pytest.mark.parametrize("seconds", [0.0, 0.01, 39.99, 40.0, 40.02, 3600.0])
def test_bucket_count_stays_bounded_and_memory_too(seconds: float) -> None:
    accumulator = PeakAccumulator(RATE)
    remaining = int(seconds * RATE)
    piece = np.zeros((2, 8000), dtype=np.int16)  # the live encoder's half second
    while remaining > 0:
        accumulator.add(piece[:, :remaining])
        remaining -= piece.shape[1]
        assert accumulator._lo.shape[1] <= 2 * MAX_BUCKETS
    result = accumulator.result()
    assert result.buckets <= MAX_BUCKETS
    assert result.buckets * result.bucket_ms >= seconds * 1000
    if seconds >= 40.02:
        assert result.buckets > MAX_BUCKETS // 2
    # About 11 KB of JSON at most (two channels of 2000 (min, max) pairs, base64).
    assert len(result.model_dump_json()) < 11_000


def test_peaks_of_a_file_and_malformed_peaks_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.opus"
    left = tone(440, 2.0, RATE, amplitude=0.4)
    encode_opus_stereo(left, np.zeros_like(left), RATE, path)
    peaks, duration_ms = peaks_of_file(path)
    assert abs(duration_ms - 2000) <= 30
    lanes = _lanes(peaks)
    assert (lanes[0][5:-5] > 80).all() and (lanes[1] <= 2).all()
    broken = peaks.model_copy(update={"channels": [peaks.channels[0][:-8], peaks.channels[1]]})
    with pytest.raises(ValueError):
        decode_peaks(broken)
    with pytest.raises(ValueError):
        decode_peaks(peaks.model_copy(update={"channels": ["not base64!", ""]}))


def test_the_event_round_trips_and_only_capture_may_state_it() -> None:
    peaks = compute_peaks(np.zeros((2, 320), dtype=np.int16), RATE)
    event = RecordingWaveformComputed(node_id="n1", recording_id="r", duration_ms=20,
                                      peaks=peaks)
    assert parse_event(event.model_dump_json().encode()) == event
    owners = {identity for identity, kinds in buspolicy.PUBLISHES.items()
              if "recording.waveform_computed" in kinds}
    assert owners == {"capture"}
    assert base64.b64decode(peaks.channels[0]) == b"\x00\x00"


def test_live_encoder_computes_the_peaks_while_it_encodes(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    near = packets(NEAR_HZ, 4.0, ssrc=1, jitter_ms=5, seed=1, start_ms=2_000)
    encoder = _play(directory, LiveEncoder(directory, "r1"), {"near": near, "far": []}, 6_000)
    result = encoder.finish(stream_specs(manifest), 6_000)
    assert result.peaks is not None and result.peaks.bucket_ms == BASE_MS
    assert result.peaks.buckets == 300
    lanes = _lanes(result.peaks)
    assert (lanes[1] == 0).all()  # the far end sent nothing
    assert (lanes[0][:95] == 0).all() and (lanes[0][105:295] > 100).all()
    # final.json keeps them: a finalize retried after a restart publishes the same peaks.
    again = LiveEncoder(directory, "r1").finish(stream_specs(manifest), 6_000)
    assert again.peaks == result.peaks
    assert FinalizeResult.from_json(result.to_json()) == result


def test_peaks_survive_a_capture_restart_mid_call(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    manifest = _empty_recording(directory)
    near = packets(NEAR_HZ, 2.0, ssrc=1, jitter_ms=5, seed=1, start_ms=1_000)
    far = packets(1000.0, 2.0, ssrc=2, jitter_ms=5, seed=2, start_ms=6_000)
    streams = {"near": near, "far": far}
    first = _play(directory, LiveEncoder(directory, "r1"), streams, 5_000)
    first.close()  # capture killed: the second encoder decodes what live.opus holds
    second = LiveEncoder(directory, "r1")
    assert second.cursor > 0
    _play(directory, second, streams, 9_000, start_ms=5_000, segment=1)
    result = second.finish(stream_specs(manifest), 9_000)
    assert result.peaks is not None
    lanes = _lanes(result.peaks)
    # Before the restart the peaks come from the decoded Opus: a lossy copy of the tone
    # (at 6 kbit/s a channel its peaks wander by a fifth), and its silence is a step or two.
    assert (lanes[0][55:145] > 80).all() and (lanes[0][160:] == 0).all()
    assert (lanes[1][:240] <= 2).all() and (lanes[1][260:290] == 0).all()
    assert (lanes[1][305:395] > 100).all()


def test_a_prefix_that_does_not_decode_gives_no_peaks_not_a_failure(tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    _empty_recording(directory)
    near = packets(NEAR_HZ, 3.0, ssrc=1, jitter_ms=5, seed=1)
    first = _play(directory, LiveEncoder(directory, "r1"), {"near": near, "far": []}, 2_000)
    first.close()
    import services.capture.live as live_module

    def broken(*_: object, **__: object) -> object:
        raise ValueError("decoder exploded")

    original = live_module.iter_decoded
    live_module.iter_decoded = broken  # type: ignore[assignment]
    try:
        second = LiveEncoder(directory, "r1")
    finally:
        live_module.iter_decoded = original
    write_segment(segment_path(directory, "near", 1), [r for r in near if r[0] > 2_000])
    result = second.finish(stream_specs(RecordingManifest.load(directory)), 3_000)
    assert result.peaks is None and (directory / LIVE_FILE).stat().st_size > 0


@pytest.mark.parametrize("seconds", [3.3, 97.1])
def test_fed_in_random_pieces_peaks_are_each_buckets_quantised_extremes(seconds: float) -> None:
    """An oracle independent of the accumulator: per bucket of the width it chose, the
    floor of the minimum and the ceiling of the maximum over 256 (the int16 extremes
    included), whatever the pieces and however many times it halved its resolution."""
    rng = np.random.default_rng(7)
    rate = 8000
    pcm = rng.integers(-32768, 32768, size=(2, int(seconds * rate)), dtype=np.int16)
    pcm = (pcm // rng.integers(1, 300, size=pcm.shape)).astype(np.int16)  # quiet parts
    pcm[:, 5] = -32768
    pcm[:, 7] = 32767
    accumulator = PeakAccumulator(rate)
    pos = 0
    while pos < pcm.shape[1]:
        step = int(rng.integers(1, 9000))
        accumulator.add(pcm[:, pos:pos + step])
        pos += step
    peaks = accumulator.result()
    size = peaks.bucket_ms * rate // 1000
    got = decode_peaks(peaks)
    assert got.shape[1] == -(-pcm.shape[1] // size)
    for bucket in range(got.shape[1]):
        chunk = pcm[:, bucket * size:(bucket + 1) * size].astype(np.int32)
        assert (got[:, bucket, 0] == np.clip(chunk.min(axis=1) >> 8, -128, 127)).all()
        assert (got[:, bucket, 1] == np.clip(-((-chunk.max(axis=1)) >> 8), -128, 127)).all()


def test_quantising_is_the_floor_of_a_minimum_and_the_ceiling_of_a_maximum() -> None:
    """Every int16 value, against the definitions: floor(v / 256) and ceil(v / 256),
    within int8."""
    from callrec.waveform import _quantise_hi, _quantise_lo

    values = np.arange(-32768, 32768, dtype=np.int16)
    wide = values.astype(np.int64)
    assert np.array_equal(_quantise_lo(values), np.clip(np.floor_divide(wide, 256), -128, 127))
    assert np.array_equal(_quantise_hi(values), np.clip(-np.floor_divide(-wide, 256), -128, 127))
    assert _quantise_lo(values).dtype == _quantise_hi(values).dtype == np.int8
