"""Whether a recording carries a tag: one rule over the tag facts, for every projection.

Tags are added and removed as `recording.tag_changed` facts from any node, arriving in
any order. Per (recording, tag), the fact latest by (`occurred_at`, `event_id`) decides;
on a full tie (the same event id twice with different content) an addition wins, as a
hold does in `contracts.v1.holds`. The outcome is a function of the set of facts only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .events import RecordingTagChanged
from .holds import micros


def normalize_tag(tag: str) -> str:
    """Tags compare case-insensitively and without surrounding space ("Complaint " is
    "complaint"): applied where a fact is projected and where a filter is read."""
    return " ".join(tag.split()).lower()


@dataclass(frozen=True, order=True)
class TagFact:
    """One addition or removal of a tag, ordered for last-writer-wins."""

    at: int  # occurred_at, UTC microseconds
    event_id: str
    added: bool

    @classmethod
    def of(cls, event: RecordingTagChanged) -> TagFact:
        return cls(micros(event.occurred_at), event.event_id, event.added)


def tagged(facts: Iterable[TagFact]) -> bool:
    """True when the latest fact of one (recording, tag) is an addition."""
    last = max(facts, default=None)
    return last is not None and last.added


def current_tags(facts: Iterable[tuple[str, TagFact]]) -> list[str]:
    """The tags of one recording now, sorted, from its (tag, fact) pairs."""
    by_tag: dict[str, list[TagFact]] = {}
    for tag, fact in facts:
        by_tag.setdefault(normalize_tag(tag), []).append(fact)
    return sorted(tag for tag, tag_facts in by_tag.items() if tagged(tag_facts))
