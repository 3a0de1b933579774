"""bench/opus_settings.py in a short run, so it cannot rot: the settings it compares
really reach libopus (CBR spends on silence what VBR saves, a higher bitrate more bytes)
and the baseline is row 1."""

from __future__ import annotations

import shutil

import pytest

from bench.opus_settings import Setting, candidates, measure, table
from services.capture.live import NARROWBAND_MODE, OPUS_BITRATE, OPUS_COMPLEXITY


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")
def test_a_short_comparison_measures_what_each_setting_does() -> None:
    by_name = {s.name: s for s in candidates()}
    assert by_name["default"] == Setting("default", OPUS_BITRATE, OPUS_COMPLEXITY,
                                         mode=NARROWBAND_MODE)
    rows = measure([by_name["default"], by_name["silk 12k cbr"], by_name["celt 16k"]],
                   seconds=3.0, runs=1)
    default, cbr, wider = rows
    assert default.tone_drops == 0 and min(default.stoi) > 0.85
    assert 0.5 < min(default.estoi) < min(default.stoi)  # stricter, on the same audio
    assert default.talk_mb < 0.8 * default.speech_mb  # VBR: silence costs little
    assert cbr.talk_mb == pytest.approx(cbr.speech_mb, rel=0.02)  # CBR: it costs the same
    assert wider.tone_mb > 1.25 * default.tone_mb  # the bitrate reaches libopus
    assert wider.speech_mb > 1.25 * default.speech_mb
    lines = table(rows, 3.0).splitlines()
    assert len(lines) == 5 and lines[2].startswith("| default |") and lines[2].endswith(
        "| 1.00 |")
