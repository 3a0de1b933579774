"""When capture's live encoding steps (what a peer holds of a call in progress)."""

from __future__ import annotations

import itertools

from services.capture.capacity import live_lag
from services.capture.live import EMIT_DELAY_MS
from services.capture.service import FLUSH_INTERVAL, LIVE_STEP_INTERVAL, live_step_due


def steps_taken(flushes: list[float], step_seconds: float = 0.0) -> list[float]:
    """The flushes the live loop steps on; a step lasting ``step_seconds`` sees the
    newest flush when it ends (the event is a latch, not a queue)."""
    taken: list[float] = []
    due = 0.0
    busy_until = float("-inf")
    for at in flushes:
        if at < busy_until or at < due:
            continue
        taken.append(at)
        busy_until = at + step_seconds
        due = live_step_due(at)
    return taken


def test_a_step_every_interval_on_a_fresh_flush() -> None:
    flushes = [i * (FLUSH_INTERVAL + 0.004) for i in range(9)]
    taken = steps_taken(flushes)
    gaps = [b - a for a, b in itertools.pairwise(taken)]
    assert taken[0] == 0.0 and len(taken) == 5
    assert all(LIVE_STEP_INTERVAL <= gap < LIVE_STEP_INTERVAL + FLUSH_INTERVAL for gap in gaps)


def test_a_flush_that_comes_early_still_counts() -> None:
    # A flush a little sooner than the interval (timer jitter) is not skipped, so
    # the gap between steps never grows to three flush intervals.
    assert live_step_due(10.0) <= 10.0 + LIVE_STEP_INTERVAL - 0.1
    assert live_step_due(10.0) > 10.0 + FLUSH_INTERVAL + 0.05


def test_the_live_lag_counts_from_the_last_round_and_adds_the_emit_delay() -> None:
    delay = EMIT_DELAY_MS / 1000
    assert live_lag(100.0, None) == 0.0  # no round yet
    assert live_lag(100.0, 99.5) == 0.5 + delay
    assert live_lag(100.0, 100.2) == delay  # a clock stepped back reads as no lag
