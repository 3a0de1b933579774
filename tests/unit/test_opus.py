"""Unit tests for callrec.opus (libopus through ctypes) and the Ogg pages made with it."""

from __future__ import annotations

import ctypes.util
import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from callrec import opus
from callrec.audio import (
    OpusPageEncoder,
    decode_file,
    dominant_frequency,
    opus_input_rate,
    scan_ogg_pages,
    tone,
)
from callrec.opus import MultistreamEncoder, OpusError


def _ffmpeg_packets(rate: int, frame_ms: int, pcm: np.ndarray) -> tuple[bytes, list[bytes]]:
    """(OpusHead, packets) of FFmpeg's libopus encoder on interleaved stereo ``pcm``."""
    ctx = av.CodecContext.create("libopus", "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = rate
    ctx.layout = "stereo"
    ctx.format = "s16"
    ctx.bit_rate = 16000
    ctx.options = {"compression_level": "0", "application": "voip",
                   "mapping_family": "255", "frame_duration": str(frame_ms)}
    ctx.time_base = Fraction(1, rate)
    ctx.open()
    frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="stereo")
    frame.sample_rate = rate
    frame.pts = 0
    frame.time_base = Fraction(1, rate)
    return bytes(ctx.extradata or b""), [bytes(p) for p in ctx.encode(frame)]


@pytest.mark.parametrize(("rate", "frame_ms"), [(8000, 60), (16000, 20)])
def test_same_head_and_packets_as_ffmpegs_libopus_encoder(rate: int, frame_ms: int) -> None:
    count = rate * 6 // 5  # 1.2 s: whole frames of 20 and of 60 ms
    pcm = np.empty(count * 2, dtype=np.int16)
    pcm[0::2] = tone(440, 1.2, rate)
    pcm[1::2] = np.random.default_rng(7).normal(0, 3000, count).astype(np.int16)
    head, theirs = _ffmpeg_packets(rate, frame_ms, pcm)
    encoder = MultistreamEncoder(rate, bitrate=16000, complexity=0, frame_ms=frame_ms)
    step = 2 * encoder.frame_size
    ours = [encoder.encode(pcm[i:i + step]) for i in range(0, pcm.size, step)]
    assert encoder.head() == head  # family 255, 2 streams, 0 coupled, mapping [0, 1]
    assert len(ours) == len(theirs) == 1200 // frame_ms
    assert ours == theirs
    assert encoder.pre_skip == encoder.lookahead * 48000 // rate > 0
    encoder.close()


def test_pages_round_trip_through_ffmpegs_decoder(tmp_path: Path) -> None:
    rate, seconds = 8000, 3.0
    encoder = OpusPageEncoder(rate, bitrate=16000, complexity=0, frame_ms=60)
    left, right = tone(440, seconds, rate), tone(1004, seconds, rate)
    usable = left.size // encoder.frame_size * encoder.frame_size
    total = usable + 77  # a tail shorter than a frame is trimmed by the end granule
    encoder.encode(left[:usable], right[:usable])
    path = tmp_path / "call.opus"
    path.write_bytes(encoder.pages() + encoder.close(total))
    assert encoder.samples_done >= total
    assert opus_input_rate(path) == rate
    assert [p.sequence for p in scan_ogg_pages(path)][-1] >= 2
    with av.open(str(path)) as container:
        ctx = container.streams.audio[0].codec_context
        assert ctx.channels == 2 and ctx.sample_rate == 48000
    samples, out_rate = decode_file(path, rate)
    assert out_rate == rate and samples.shape[0] == 2
    assert abs(samples.shape[1] - total) <= rate // 100  # resampler edges only
    # At 48 kHz exactly what the end granule says: the look-ahead was flushed out too.
    assert decode_file(path)[0].shape[1] == total * 48000 // rate
    middle = slice(rate // 2, usable - rate // 2)
    assert dominant_frequency(samples[0, middle], rate) == pytest.approx(440, abs=3)
    assert dominant_frequency(samples[1, middle], rate) == pytest.approx(1004, abs=3)
    # The audio runs to the end: the last 20 ms still sound.
    assert np.abs(samples[:, usable - rate // 50:usable]).max() > 5000


def test_channels_stay_separate(tmp_path: Path) -> None:
    rate = 8000
    encoder = OpusPageEncoder(rate, bitrate=16000, complexity=0, frame_ms=60)
    left = tone(440, 1.44, rate)
    encoder.encode(left, np.zeros_like(left))
    path = tmp_path / "left.opus"
    path.write_bytes(encoder.pages() + encoder.close(left.size))
    samples, _ = decode_file(path, rate)
    assert np.abs(samples[1]).max() < 50
    assert np.abs(samples[0]).max() > 10000


def test_errors_carry_libopus_messages() -> None:
    with pytest.raises(OpusError, match="invalid argument"):
        MultistreamEncoder(44100, bitrate=16000, complexity=0)  # not an Opus input rate
    with pytest.raises(OpusError, match="invalid argument") as caught:
        MultistreamEncoder(8000, bitrate=16000, complexity=11)
    assert caught.value.code == -1
    with pytest.raises(ValueError):
        MultistreamEncoder(8000, bitrate=16000, complexity=0, frame_ms=15)
    encoder = MultistreamEncoder(8000, bitrate=16000, complexity=0, frame_ms=20)
    with pytest.raises(ValueError):
        encoder.encode(np.zeros(2 * 160 - 2, dtype=np.int16))
    with pytest.raises(ValueError):
        encoder.encode(np.zeros(2 * 160, dtype=np.int32)[: 160])
    assert len(encoder.encode(np.zeros(2 * 160, dtype=np.int16))) > 0
    encoder.close()
    encoder.close()  # idempotent
    with pytest.raises(OpusError):
        encoder.encode(np.zeros(2 * 160, dtype=np.int16))


def test_library_found_next_to_av_or_on_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "av.libs" in opus.library_path() and "libopus" in opus.library_path()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libopus.so.0")
    assert opus.library_path() == "libopus.so.0"
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(OSError, match="libopus not found"):
        opus.library_path()


def test_frames_in_one_call_give_the_packets_of_frame_by_frame() -> None:
    left, right = tone(440, 1.2, 8000), tone(1004, 1.2, 8000)
    pcm = np.empty(left.size * 2, dtype=np.int16)
    pcm[0::2], pcm[1::2] = left, right
    one = MultistreamEncoder(8000, bitrate=16000, complexity=0, frame_ms=60)
    many = MultistreamEncoder(8000, bitrate=16000, complexity=0, frame_ms=60)
    step = 2 * one.frame_size
    usable = pcm.size // step * step
    expected = [one.encode(pcm[i:i + step]) for i in range(0, usable, step)]
    assert many.encode_frames(pcm[:usable]) == expected and len(expected) == 20
    with pytest.raises(ValueError):
        many.encode_frames(pcm[: step + 2])  # not whole frames
    assert many.encode_frames(pcm[:0]) == []
    one.close()
    many.close()
    with pytest.raises(OpusError):
        many.encode_frames(pcm[:step])


def test_set_ctls_reach_every_stream_and_bad_values_are_refused() -> None:
    """CBR through :meth:`set` gives packets of one size on a signal VBR codes unevenly."""
    rng = np.random.default_rng(3)
    count = 8000 * 12 // 10
    pcm = np.empty(count * 2, dtype=np.int16)
    pcm[0::2] = tone(440, 1.2, 8000) * (np.arange(count) < count // 2)  # tone, then silence
    pcm[1::2] = rng.normal(0, 3000, count).astype(np.int16)
    sizes: dict[int, set[int]] = {}
    for vbr in (1, 0):
        encoder = MultistreamEncoder(8000, bitrate=16000, complexity=0, frame_ms=60)
        encoder.set(opus.SET_VBR, vbr)
        sizes[vbr] = {len(p) for p in encoder.encode_frames(pcm)}
        encoder.close()
    assert len(sizes[0]) == 1 and len(sizes[1]) > 3
    encoder = MultistreamEncoder(8000, bitrate=16000, complexity=0)
    encoder.set(opus.SET_SIGNAL, opus.SIGNAL_VOICE)
    encoder.set(opus.SET_BANDWIDTH_MAX, opus.BANDWIDTH_NARROWBAND)
    with pytest.raises(OpusError, match="invalid argument"):
        encoder.set(opus.SET_LSB_DEPTH, 99)
    with pytest.raises(OpusError):  # a refused CTL closes the encoder
        encoder.set(opus.SET_DTX, 0)


def test_120_ms_packets_decode_to_the_call(tmp_path: Path) -> None:
    encoder = OpusPageEncoder(8000, bitrate=12000, complexity=0, frame_ms=120)
    assert encoder.frame_size == 960
    left = tone(440, 2.4, 8000)
    encoder.encode(left, left)
    path = tmp_path / "long-frames.opus"
    path.write_bytes(encoder.pages() + encoder.close(left.size))
    samples, _ = decode_file(path, 8000)
    assert abs(samples.shape[1] - left.size) <= 80
    assert dominant_frequency(samples[0, 4000:-4000], 8000) == pytest.approx(440, abs=3)
