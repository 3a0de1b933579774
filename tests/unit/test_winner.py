"""One recording per call: the winner rule over a call's completions (pure)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from contracts.v1.events import RecordingCompleted, RecordingMetadata
from contracts.v1.winner import better, provisional, winner

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def copy(node: str, duration_ms: int, interrupted: bool = False,
         event_id: str | None = None) -> RecordingCompleted:
    return RecordingCompleted(
        event_id=event_id or f"{node}-{duration_ms}-{int(interrupted)}".ljust(32, "0"),
        node_id=node, recording_id="r1", started_at=T0,
        ended_at=T0 + timedelta(milliseconds=duration_ms), duration_ms=duration_ms,
        object_key=f"recordings/r1.{node}.opus", size_bytes=100, sha256="0" * 64,
        channels=[], metadata=RecordingMetadata(source="sip", session_key="r1"),
        interrupted=interrupted)


def test_most_audio_wins_even_from_a_takeover() -> None:
    origin = copy("a", 4_000)  # recovered from its segments after a crash
    takeover = copy("b", 5_000, interrupted=True)
    assert winner([origin, takeover]) == takeover
    complete = copy("a", 20_000)  # the origin was only partitioned away
    assert winner([complete, takeover]) == complete


def test_a_tie_goes_to_the_origin() -> None:
    origin = copy("z", 5_000)
    takeover = copy("b", 5_000, interrupted=True)
    assert winner([takeover, origin]) == origin
    assert not better(takeover, origin) and better(origin, takeover)


def test_same_decision_whatever_the_order_of_arrival() -> None:
    facts = [copy("a", 5_000), copy("b", 5_000, True), copy("c", 5_000, True),
             copy("b", 4_999, True, event_id="x" * 32), copy("d", 5_000, True)]
    expected = winner(facts)
    assert expected == facts[0]
    for order in itertools.permutations(facts):
        best = None
        for fact in order:  # the incremental form, as projections apply it
            if better(fact, best):
                best = fact
        assert best == expected
    assert winner([]) is None


def test_never_replaced_by_itself_and_provisional_means_takeover() -> None:
    fact = copy("a", 1_000)
    assert not better(fact, fact)
    assert not provisional(fact)
    assert provisional(copy("b", 1_000, interrupted=True))
