"""Unit tests for callrec.audio (shared encode/decode helpers)."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest

from callrec.audio import (
    PCMA_DECODE_TABLE,
    PCMU_DECODE_TABLE,
    decode_file,
    dominant_frequency,
    duration_seconds,
    encode_opus_stereo,
    ogg_crc,
    ogg_page,
    pcma_decode,
    pcma_encode,
    pcmu_decode,
    pcmu_encode,
    tone,
    transcode_to_wav,
)

RATE = 16000


def test_tone_shape_and_frequency() -> None:
    t = tone(440, 1.5, RATE, amplitude=0.25)
    assert t.dtype == np.int16
    assert t.size == 24000
    assert abs(int(t.max()) - 8192) < 5
    assert dominant_frequency(t, RATE) == pytest.approx(440, abs=0.5)
    assert dominant_frequency(np.zeros(1000, dtype=np.int16), RATE) == 0.0
    assert dominant_frequency(np.zeros(0, dtype=np.int16), RATE) == 0.0


def test_dominant_frequency_rejects_2d() -> None:
    with pytest.raises(ValueError):
        dominant_frequency(np.zeros((2, 100)), RATE)


@pytest.mark.parametrize(
    ("encode", "decode", "table", "pyav"),
    [
        (pcmu_encode, pcmu_decode, PCMU_DECODE_TABLE, "pcm_mulaw"),
        (pcma_encode, pcma_decode, PCMA_DECODE_TABLE, "pcm_alaw"),
    ],
)
def test_g711_encoders_pick_nearest_level(encode, decode, table, pyav) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(-32768, 32768, dtype=np.int32)
    decoded = decode(encode(x.astype(np.int16))).astype(np.int32)
    levels = np.unique(table.astype(np.int32))
    hi = np.clip(np.searchsorted(levels, x), 1, levels.size - 1)
    best = np.minimum(np.abs(x - levels[hi - 1]), np.abs(x - levels[hi]))
    np.testing.assert_array_equal(np.abs(decoded - x), best)
    # PyAV decodes our bytes to the same values as our table.
    ctx = av.CodecContext.create(pyav, "r")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = 8000
    ctx.layout = "mono"
    payload = encode(tone(1000, 0.1, 8000))
    ref = np.concatenate([f.to_ndarray()[0] for f in ctx.decode(av.Packet(payload))])
    np.testing.assert_array_equal(ref, decode(payload))


def test_g711_zero_and_extremes() -> None:
    assert pcmu_encode(np.array([0], dtype=np.int16)) == b"\xff"
    assert pcmu_decode(pcmu_encode(np.array([32767, -32768], dtype=np.int16))).tolist() == [
        32124,
        -32124,
    ]
    assert pcma_decode(pcma_encode(np.array([32767, -32768], dtype=np.int16))).tolist() == [
        32256,
        -32256,
    ]


def test_opus_round_trip_keeps_duration_and_channels(tmp_path: Path) -> None:
    seconds = 3.0
    left = tone(440, seconds, RATE)
    right = tone(1000, seconds, RATE)
    path = tmp_path / "call.opus"
    encode_opus_stereo(left, right, RATE, path)
    samples, rate = decode_file(path, RATE)
    assert rate == RATE
    assert samples.shape[0] == 2
    assert abs(samples.shape[1] - left.size) <= RATE * 0.02
    assert abs(duration_seconds(path) - seconds) <= 0.02
    assert dominant_frequency(samples[0], RATE) == pytest.approx(440, abs=3)
    assert dominant_frequency(samples[1], RATE) == pytest.approx(1000, abs=3)
    # Channels are really separate (no mono collapse at 16 kbit/s).
    only_left = tmp_path / "left.opus"
    encode_opus_stereo(left, np.zeros_like(right), RATE, only_left)
    quiet, _ = decode_file(only_left, RATE)
    assert np.abs(quiet[1]).max() < 50
    assert np.abs(quiet[0]).max() > 10000


@pytest.mark.parametrize("count", [0, 1, 317, 16000 * 2 + 7])
def test_opus_duration_for_odd_lengths(tmp_path: Path, count: int) -> None:
    path = tmp_path / "odd.opus"
    data = tone(300, count / RATE, RATE)
    encode_opus_stereo(data, data, RATE, path)
    assert abs(duration_seconds(path) - count / RATE) <= 0.02


def test_opus_coupled_stereo_option(tmp_path: Path) -> None:
    path = tmp_path / "coupled.opus"
    encode_opus_stereo(
        tone(440, 1.0, RATE),
        tone(1000, 1.0, RATE),
        RATE,
        path,
        bitrate=48000,
        complexity=0,
        independent_channels=False,
    )
    samples, _ = decode_file(path, RATE)
    assert dominant_frequency(samples[0], RATE) == pytest.approx(440, abs=3)
    assert dominant_frequency(samples[1], RATE) == pytest.approx(1000, abs=3)


def test_opus_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        encode_opus_stereo(np.zeros(10), np.zeros(11), RATE, tmp_path / "x.opus")
    with pytest.raises(ValueError):
        encode_opus_stereo(np.zeros((2, 10)), np.zeros((2, 10)), RATE, tmp_path / "x.opus")


def test_transcode_to_wav_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "call.opus"
    encode_opus_stereo(tone(440, 2.0, RATE), tone(1000, 2.0, RATE), RATE, src)
    decoded, rate = decode_file(src, rate=16000)  # the WAV is written at 16 kHz
    dst = tmp_path / "call.wav"
    transcode_to_wav(src, dst)
    with wave.open(str(dst), "rb") as w:
        assert w.getnchannels() == 2
        assert w.getsampwidth() == 2
        assert w.getframerate() == rate
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    np.testing.assert_array_equal(frames.reshape(-1, 2).T, decoded)
    wav_samples, wav_rate = decode_file(dst)
    assert wav_rate == rate
    np.testing.assert_array_equal(wav_samples, decoded)
    assert duration_seconds(dst) == pytest.approx(2.0, abs=0.02)
    assert dominant_frequency(wav_samples[0], wav_rate) == pytest.approx(440, abs=3)
    assert dominant_frequency(wav_samples[1], wav_rate) == pytest.approx(1000, abs=3)


def test_decode_file_resamples_wav(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    data = tone(1000, 1.0, 8000)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(data.astype("<i2").tobytes())
    native, rate = decode_file(path)
    assert rate == 8000
    np.testing.assert_array_equal(native[0], data)
    up, rate16 = decode_file(path, 16000)
    assert rate16 == 16000
    assert up.shape[0] == 1
    assert abs(up.shape[1] - 16000) <= 32
    assert dominant_frequency(up[0], 16000) == pytest.approx(1000, abs=3)


def _ogg_crc_bitwise(data: bytes) -> int:
    """RFC 3533's CRC the slow, obvious way: polynomial 0x04C11DB7, MSB first, no xors."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def test_ogg_crc_and_page_layout() -> None:
    rng = np.random.default_rng(3)
    for size in (0, 1, 27, 300, 1500):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert ogg_crc(data) == _ogg_crc_bitwise(data)
    packets = [b"a" * 10, b"b" * 255, b"c" * 600, b""]
    page = ogg_page(packets, serial=7, sequence=3, granule=960, flags=4)
    lacing = bytes([10, 255, 0, 255, 255, 90, 0])
    assert page[:4] == b"OggS" and page[5] == 4 and page[26] == len(lacing)
    assert page[27:27 + len(lacing)] == lacing
    assert page[27 + len(lacing):] == b"".join(packets)
    blank = page[:22] + b"\0\0\0\0" + page[26:]
    assert int.from_bytes(page[22:26], "little") == _ogg_crc_bitwise(blank)
