"""bench.capacity reads BYE->playable from the nodes' own logs, without a poll."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.capacity import confirmed_by_poll, logged_times, playable_by_logs, playable_from_log

LOG = "\n".join([
    '{"recording_id":"r1","event":"recording_cataloged","timestamp":"2026-12-05T08:00:01.500000Z"}',
    '{"recording_id":"r1","event":"recording_cataloged","timestamp":"2026-12-05T08:00:09Z"}',
    '{"recording_id":"r2","event":"recording_cataloged","timestamp":"2026-12-05T08:00:01Z"}',
    '{"recording_id":"r1","event":"object_replicated","timestamp":"2026-12-05T08:00:02Z"}',
    'not json "recording_cataloged" {broken',
    '{"recording_id":"r3","event":"recording_cataloged","timestamp":"2026-12-05T08:00:01Z"}',
])
T0 = 1796457600.0  # 2026-12-05T08:00:00Z


def test_the_first_line_of_each_asked_id_counts() -> None:
    times = logged_times(LOG, "recording_cataloged", {"r1", "r2"})
    assert times == {"r1": T0 + 1.5, "r2": T0 + 1.0}


def test_on_a_peer_a_recording_is_playable_once_listed_and_stored() -> None:
    assert playable_from_log(LOG, {"r1", "r2"}, copied=False) == {"r1": T0 + 1.5,
                                                                   "r2": T0 + 1.0}
    assert playable_from_log(LOG, {"r1", "r2"}, copied=True) == {"r1": T0 + 2.0}


def test_a_logged_recording_counts_only_once_a_poll_found_it_playable() -> None:
    logged = playable_from_log(LOG, {"r1", "r2"}, copied=False)
    assert confirmed_by_poll(logged, {"r2": 5.0}) == {"r2": T0 + 1.0}
    assert confirmed_by_poll(logged, {}) == {}


def test_bye_to_playable_on_each_node_and_how_far_the_polls_trailed_the_logs() -> None:
    """The first node records (its catalog's line), the second copies (its catalog's and
    its sync's, the later); each BYE is timed by the wall clock the logs use, each poll
    by the monotonic clock it was seen with."""
    node = SimpleNamespace(log=lambda: LOG)
    driver = SimpleNamespace(requested_wall={"r1": T0 + 1.0, "r2": T0 + 0.5},
                             requested_at={"r1": 100.0, "r2": 99.5})
    polled = [{"r1": 101.0, "r2": 100.8}, {"r1": 101.5}]
    times, trailed = playable_by_logs([node, node], ["r1", "r2"], polled, driver)  # type: ignore[arg-type]
    assert times == [[0.5, 0.5], [1.0]]
    assert sorted(trailed) == pytest.approx([0.5, 0.5, 0.8])
