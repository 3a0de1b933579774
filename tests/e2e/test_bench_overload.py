"""bench/overload.py in its smoke mode, so it cannot rot: a real node whose
--max-live-lag every call in progress is over at once, real SIPp and the paced RTP
sender. Checks what the gate must do, never how fast."""

from __future__ import annotations

import asyncio
import math

import pytest

from bench import overload

pytestmark = pytest.mark.e2e


def test_smoke_admits_calls_until_the_gate_trips_then_turns_the_rest_away() -> None:
    result = asyncio.run(overload.run(6, 2.0, 4.0, max_live_lag=1e-3))
    assert result.legs_failed_otherwise == 0, result.table()
    assert result.legs_answered + result.legs_turned_away == 12
    # The first call finds nothing in progress; once one is, every new call is over
    # the limit. A call's second leg joins it even then: calls are whole.
    assert result.legs_answered >= 2 and result.legs_answered % 2 == 0, result.table()
    assert result.legs_turned_away >= 2, result.table()
    first = result.first_behind
    assert first is not None and first.active >= 1, result.timeline()
    assert result.packets_sent > 0  # the admitted calls got their RTP
    assert not math.isnan(result.drained_after_s)  # finalize drained within its wait
    assert result.table().count("\n| ") == 1  # the header, its rule, one row
