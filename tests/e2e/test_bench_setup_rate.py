"""bench/setup_rate.py in its smoke mode, so it cannot rot: a real node and real SIPp at
a few calls/s. Only the shape and sanity of the figures are checked, never their size:
at this load they are noise."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from bench import setup_rate

pytestmark = pytest.mark.e2e


def test_percentile_is_nearest_rank() -> None:
    assert setup_rate.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert setup_rate.percentile([1.0, 2.0], 0.99) == 2.0
    assert math.isnan(setup_rate.percentile([], 0.5))


def test_scenario_without_rtp_drops_only_the_stream(tmp_path: Path) -> None:
    path = setup_rate.scenario_without_rtp(tmp_path)
    text = path.read_text()
    assert "rtp_stream" not in text and 'rtd="true"' in text and "BYE" in text
    assert 'response="503" optional="true" next="refused"' in text  # ACKed, as CUCM does


def test_smoke_measures_every_leg() -> None:
    result = asyncio.run(setup_rate.run(5.0, 2.0, baseline_rate=2.0, baseline_seconds=2.0,
                                        media_calls=3, media_seconds=4.0))
    for phase, calls in ((result.baseline, 4), (result.burst, 10)):
        assert phase.attempted == 2 * calls, phase  # both legs of every call
        assert phase.answered == phase.attempted and phase.failed == 0, phase
        assert phase.shed == 0, phase  # a few calls a second never wait a second
        assert phase.over_capacity == 0 and 0 < phase.peak_lag_s < 5.0, phase
        assert len(phase.latencies_ms) == phase.answered
        assert 0 <= phase.q(0.5) <= phase.q(0.99) <= max(phase.latencies_ms)
        assert phase.signaling_cpu > 0 and phase.capture_cpu >= 0, phase
    assert 0 <= result.baseline.after_allocate <= result.baseline.answered
    assert result.burst.after_allocate == 0  # the port reserve answered every burst leg
    assert result.media_packets_sent > 0  # the media load really played
    table = result.table()
    assert table.count("\n| ") == 2 and "| burst, finalizing | 5 | 20 / 20 / 0 (0, 0) |" in table
    assert result.markdown_row().startswith("| setup 5 calls/s | p50 ")


def test_a_node_that_sheds_every_invite_answers_503_and_counts_each() -> None:
    """--sip-shed-after reaches the node: at 1 us every INVITE has waited too long, so
    each leg gets 503 (ACKed by the PBX), none is answered, and the node counts them."""
    result = asyncio.run(setup_rate.run(5.0, 1.0, baseline_rate=2.0, baseline_seconds=1.0,
                                        media_calls=1, media_seconds=2.0, shed_after=1e-6))
    for phase, calls in ((result.baseline, 2), (result.burst, 5)):
        assert phase.attempted == 2 * calls and phase.answered == 0, phase
        assert phase.shed == phase.failed == 2 * calls, phase
