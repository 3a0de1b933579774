"""Unit tests for callrec.opus (libopus through ctypes) and the Ogg pages made with it."""

from __future__ import annotations

import ctypes.util
import importlib.util
import itertools
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
from tests.support.opus_toc import stream_modes


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


def test_an_end_of_stream_page_never_goes_below_a_page_already_out(tmp_path: Path) -> None:
    """RFC 7845 trims the end within the end-of-stream page only: an end inside audio
    already put out on earlier pages cannot take their samples back."""
    rate = 8000
    encoder = OpusPageEncoder(rate, bitrate=16000, complexity=0, frame_ms=60)
    frames = 5 * encoder.frame_size
    left, right = tone(440, frames / rate, rate), tone(1004, frames / rate, rate)
    encoder.encode(left[:frames], right[:frames])
    path = tmp_path / "call.opus"
    path.write_bytes(encoder.pages() + encoder.close(3 * encoder.frame_size))
    pages = list(scan_ogg_pages(path))
    granules = [page.granule for page in pages]
    assert granules == sorted(granules) and pages[-1].flags & 4
    assert pages[-1].granule == pages[-2].granule == 5 * encoder.frame_size * 48000 // rate


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


def test_silence_goes_out_canned_and_sound_after_it_keeps_its_place(tmp_path: Path) -> None:
    """No packets (before the first, on hold) means digital silence on both channels:
    those frames cost no libopus call, and the sound after them starts where it did."""
    rate, frame = 8000, 480

    def call(hz: int) -> np.ndarray:
        silence = [np.zeros(int(s * rate), dtype=np.int16) for s in (2.04, 1.98, 1.02)]
        return np.concatenate([silence[0], tone(hz, 3.0, rate), silence[1],
                               tone(hz, 3.06, rate), silence[2]])

    left, right = call(440), call(1004)
    starts = (int(2.04 * rate), int(7.02 * rate))
    ends = (int(5.04 * rate), int(10.08 * rate))
    decoded: dict[bool, np.ndarray] = {}
    for skip in (True, False):
        encoder = OpusPageEncoder(rate, bitrate=16000, complexity=0, frame_ms=60)
        encoder._opus._skips_silence = skip
        out = bytearray()
        for start in range(0, left.size, 8 * frame):  # capture's steps: 0.48 s of call
            encoder.encode(left[start:start + 8 * frame], right[start:start + 8 * frame])
            out += encoder.pages()
        out += encoder.close(left.size)
        path = tmp_path / f"skip-{skip}.opus"
        path.write_bytes(bytes(out))
        if skip:
            # The lead is all canned (34 frames); of the hold and the tail, all but the
            # frame that flushes the look-ahead of the sound before them (32 + 16).
            assert encoder._opus.frames_skipped >= 34 + 32 + 16
        else:
            assert encoder._opus.frames_skipped == 0
        decoded[skip], _ = decode_file(path, rate)
    assert decoded[True].shape == decoded[False].shape == (2, left.size)
    # Both encodings pass the same checks (the codec smears about 20 ms either side of
    # a sound, skipping or not).
    for (skip, samples), (channel, hz) in itertools.product(decoded.items(),
                                                            ((0, 440), (1, 1004))):
        pcm = samples[channel]
        assert np.abs(pcm[:starts[0] - 160]).max() <= 4, skip  # canned silence is silent
        assert np.abs(pcm[ends[0] + 480:starts[1] - 160]).max() <= 4, skip
        assert np.abs(pcm[ends[1] + 480:]).max() <= 4, skip
        for start, end in zip(starts, ends, strict=True):
            # The sound after the silence starts at its sample (within 4 ms: less than the
            # look-ahead, 52 samples, or a frame), and the sound before it
            # ran to its end (the look-ahead was flushed, not dropped).
            assert abs(int(np.argmax(np.abs(pcm[start - 400:]) > 1000)) - 400) <= 32, skip
            assert np.abs(pcm[end - 32:end]).max() > 5000, skip
            middle = slice(start + rate // 4, end - rate // 4)
            assert dominant_frequency(pcm[middle], rate) == pytest.approx(hz, abs=3)


def test_silence_on_one_channel_only_is_encoded() -> None:
    encoder = MultistreamEncoder(8000, bitrate=16000, complexity=0, frame_ms=60)
    left = tone(440, 1.2, 8000)
    pcm = np.zeros(left.size * 2, dtype=np.int16)
    pcm[0::2] = left
    encoder.encode_frames(pcm)
    assert encoder.frames_skipped == 0
    encoder.encode_frames(np.zeros(4 * 2 * encoder.frame_size, dtype=np.int16))
    assert encoder.frames_skipped == 3  # the first silent frame flushed the look-ahead
    encoder.close()


def test_silence_is_encoded_once_a_ctl_changed_the_settings() -> None:
    """The canned packet is made with the default CTLs: after :meth:`set`, libopus
    encodes silence as any frame (bench/opus_settings.py compares CTLs on silence too)."""
    encoder = MultistreamEncoder(8000, bitrate=16000, complexity=0, frame_ms=60)
    encoder.set(opus.SET_VBR, 0)
    packets = encoder.encode_frames(np.zeros(5 * 2 * encoder.frame_size, dtype=np.int16))
    assert encoder.frames_skipped == 0 and len({len(p) for p in packets}) == 1
    encoder.close()


def test_celt_mode_codes_every_frame_in_celt_and_keeps_the_look_ahead() -> None:
    rate = 8000
    pcm = np.empty(rate * 3 * 2, dtype=np.int16)
    pcm[0::2] = tone(440, 3.0, rate)
    pcm[1::2] = tone(1004, 3.0, rate)
    pcm[2 * rate: 2 * rate + rate // 2] = 0  # half a second of silence on both channels
    celt = MultistreamEncoder(rate, bitrate=11500, complexity=0, frame_ms=60, mode="celt")
    auto = MultistreamEncoder(rate, bitrate=11500, complexity=0, frame_ms=60)
    frames = pcm.reshape(-1, 2 * celt.frame_size)
    ours = celt.encode_frames(frames)
    theirs = auto.encode_frames(frames)
    assert celt.mode == "celt" and auto.mode == "auto"
    assert celt.frames_skipped > 0  # silence went out canned, and the encoder was reset
    assert {m for p in ours for m in stream_modes(p)} == {"celt"}
    assert {m for p in theirs for m in stream_modes(p)} == {"silk"}  # libopus' choice at 8 kHz
    assert celt.pre_skip == auto.pre_skip  # a file resumed across the switch keeps its timing
    celt.close()
    auto.close()


def test_a_libopus_that_refuses_to_force_celt_records_in_auto_and_says_so(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(opus, "_SET_FORCE_MODE", 11999)  # a request libopus does not know
    monkeypatch.setattr(opus, "_celt_refused", [])
    encoders = [MultistreamEncoder(8000, bitrate=11500, complexity=0, frame_ms=60, mode="celt")
                for _ in range(2)]
    assert [e.mode for e in encoders] == ["auto", "auto"]
    pcm = np.empty(480 * 2 * 4, dtype=np.int16)
    pcm[0::2] = tone(440, 0.24, 8000)
    pcm[1::2] = tone(1004, 0.24, 8000)
    packets = encoders[0].encode_frames(pcm)
    assert len(packets) == 4 and {m for p in packets for m in stream_modes(p)} == {"silk"}
    assert capsys.readouterr().out.count("opus_celt_refused") == 1  # once per process
    for encoder in encoders:
        encoder.close()
