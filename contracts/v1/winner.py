"""One recording per call: which of several completions of one recording id is kept.

A call can be completed more than once: a peer that took over a recording whose
origin fell silent mid-call publishes an interrupted copy (what it had replicated),
and the origin, back with its data, publishes its own (recovered from its segments,
or complete if it was only partitioned away). Every node keeps the same one by this
pure rule over the set of `recording.completed` facts of the recording id, so no
decision has to be published and no order of arrival matters:

1. the most audio (`duration_ms`) wins: a copy is never replaced by a shorter one;
2. on a tie, the origin's own copy (not `interrupted`) wins over a takeover;
3. then the node id, then the event id, only so that every node picks the same.

Sync, the catalog and the scheduler apply it (never two rows, never none: a loser is
dropped only where its winner is known).
"""

from __future__ import annotations

from collections.abc import Iterable

from contracts.v1.events import RecordingCompleted


def rank(fact: RecordingCompleted) -> tuple[int, int, str, str]:
    """Sort key: the greatest is the winner."""
    return (fact.duration_ms, 0 if fact.interrupted else 1, fact.node_id, fact.event_id)


def winner(facts: Iterable[RecordingCompleted]) -> RecordingCompleted | None:
    """The completion kept for one recording id (None for no facts)."""
    best: RecordingCompleted | None = None
    for fact in facts:
        if best is None or rank(fact) > rank(best):
            best = fact
    return best


def better(candidate: RecordingCompleted, current: RecordingCompleted | None) -> bool:
    """True when `candidate` replaces `current` (the incremental form of `winner`)."""
    return current is None or rank(candidate) > rank(current)


def provisional(fact: RecordingCompleted) -> bool:
    """A takeover copy: the origin may still come back with its own (then rule 1
    decides). It is the only thing the API shows for a call until then."""
    return fact.interrupted
