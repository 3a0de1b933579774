"""bench/quality.py counts what it claims: a tone's dropouts and its frequency error."""

from __future__ import annotations

from pathlib import Path

from bench.quality import FRAME, RATE, dropouts, tones
from callrec.config import NodeConfig
from tests.support.rtp import tone_samples


def test_a_hole_in_a_tone_is_counted_in_20_ms_frames() -> None:
    tone = tone_samples(440.0, 2.0)
    assert dropouts(tone) == 0
    holed = tone.copy()
    holed[RATE // 2: RATE // 2 + 3 * FRAME] = 0  # 60 ms of silence, frame-aligned
    assert dropouts(holed) == 3


def test_the_default_encoding_keeps_both_tones(tmp_path: Path) -> None:
    row = tones(tmp_path, NodeConfig.model_fields["opus_bitrate"].default, 3.0)
    assert row.dropouts == 0
    assert row.tone_error_hz is not None and row.tone_error_hz < 5.0
    assert 3.0 < row.mb_call_h < 20.0
