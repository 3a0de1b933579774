"""Tags: per (recording, tag) the latest fact by (occurred_at, event_id) wins."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from contracts.v1.events import RecordingTagChanged
from contracts.v1.tags import TagFact, current_tags, normalize_tag, tagged

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def change(tag: str, added: bool, seconds: int, event_id: str) -> RecordingTagChanged:
    return RecordingTagChanged(node_id="n1", recording_id="r1", tag=tag, added=added,
                               changed_by="alice", occurred_at=T0 + timedelta(seconds=seconds),
                               event_id=event_id)


def test_latest_wins_whatever_the_order() -> None:
    facts = [change("vip", True, 0, "a"), change("vip", False, 5, "b"),
             change("vip", True, 5, "c")]  # same instant: event id "c" > "b" decides
    for order in itertools.permutations(facts):
        assert tagged(TagFact.of(f) for f in order)
    assert not tagged(TagFact.of(f) for f in facts[:2])
    assert not tagged([])


def test_full_tie_goes_to_the_addition() -> None:
    assert tagged([TagFact(1, "x", False), TagFact(1, "x", True)])


def test_current_tags_normalized_and_sorted() -> None:
    facts = [change("VIP ", True, 0, "a"), change("complaint", True, 1, "b"),
             change("vip", False, 2, "c"), change("Follow  up", True, 3, "d")]
    assert current_tags((f.tag, TagFact.of(f)) for f in facts) == ["complaint", "follow up"]
    assert normalize_tag("  Follow \t Up ") == "follow up"
