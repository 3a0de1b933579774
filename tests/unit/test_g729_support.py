"""The G.729 test encoder (bcg729 via ctypes) makes audio PyAV and capture decode."""

from __future__ import annotations

import av
import numpy as np
import pytest

from callrec.audio import dominant_frequency, tone
from services.capture.timeline import build_channel
from tests.support import g729


def _pyav_decode(payload: bytes) -> np.ndarray:
    decoder = av.CodecContext.create("g729", "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoder.sample_rate = 8000
    decoder.layout = "mono"
    parts = []
    for start in range(0, len(payload), 20):
        for frame in decoder.decode(av.Packet(payload[start : start + 20])):
            parts.append(frame.to_ndarray()[0])
    return np.concatenate(parts).astype(np.float64)


def test_440hz_tone_survives_bcg729_then_pyav() -> None:
    payload = g729.g729_payload(tone(440, 1.0, 8000))
    assert len(payload) == 100 * g729.FRAME_BYTES  # 10 bytes per 10 ms, no SID without VAD
    decoded = _pyav_decode(payload)
    assert decoded.size == 8000
    assert abs(decoded[800:]).max() > 0.05  # a real signal, not comfort silence
    assert dominant_frequency(decoded[800:], 8000) == pytest.approx(440, abs=5)


def test_silence_encodes_to_sid_or_nothing_with_vad() -> None:
    frames = g729.encode(np.zeros(8000, dtype=np.int16), vad=True)
    assert len(frames) == 100
    assert {len(f) for f in frames} <= {0, 2, 10}
    assert any(len(f) in (0, 2) for f in frames)


def test_capture_records_g729_rtp_made_by_bcg729() -> None:
    from aiortc.rtp import RtpPacket

    payload = g729.g729_payload(tone(440, 1.0, 8000))
    records = [
        (20 * i, RtpPacket(payload_type=18, sequence_number=i, timestamp=160 * i, ssrc=3,
                           payload=payload[20 * i : 20 * i + 20]).serialize())
        for i in range(50)
    ]
    result = build_channel(records, {18: "G729"}, 1100)
    assert result.stats.silent_reason is None
    assert result.stats.codecs == ["G729"]
    assert dominant_frequency(result.samples[1600:16000], 16000) == pytest.approx(440, abs=5)
