"""How legal hold and purge facts combine: one rule that every projection applies.

Hold and purge facts come from different nodes and arrive in different orders on
each node (a partition may hold some back for hours), so the outcome must be a pure
function of the *set* of facts, never of their arrival order. The rule ("hold wins"):

1. The hold state at time `t` is last-writer-wins over the recording's
   `recording.hold_changed` facts with `occurred_at <= t`, ordered by
   (`occurred_at`, `event_id`, hold before release on a full tie). No such fact: not held.
2. A `recording.purged` fact P takes effect iff the recording is not held at
   `P.occurred_at` (rule 1 with t = P.occurred_at) AND not held now (rule 1 over all
   hold facts). A purge issued while the recording was held is void forever, even
   after a release; a purge dated before a hold is suspended while the hold lasts
   (its timestamp is the issuer's word, so a back-dated purge must not beat a hold).
3. The recording is purged iff at least one of its purge facts takes effect.

Consequences, accepted:
- A hold fact can *un-purge* a recording on a node that applied a purge before the
  hold reached it (a partition); that node's projections show the recording again and
  sync fetches the audio back from a node that kept it. If no node kept a copy (every
  node applied the purge before the hold was placed, a race of milliseconds through
  the web, or a forged hold), the row comes back without audio and sync keeps asking.
- Times are the issuers' clocks: last-writer-wins needs the nodes' clocks roughly in
  step (NTP). A purge dated in the future stays void while the hold lasts but takes
  effect if a release dated before it arrives; only a purge issuer can publish one.
Facts are kept as distinct (event_id, occurred_at, ...) versions, so two facts that
share an id but differ (a deterministic id issued twice) are both kept on every node.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .events import LegalHoldChanged, RecordingPurged

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(value: datetime) -> int:
    """UTC microseconds since the epoch (a naive time counts as UTC): exact, sortable."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, order=True)
class HoldFact:
    """One hold/release, ordered for last-writer-wins (a hold beats a release on a tie)."""

    at: int  # occurred_at, UTC microseconds
    event_id: str
    hold: bool

    @classmethod
    def of(cls, event: LegalHoldChanged) -> HoldFact:
        return cls(micros(event.occurred_at), event.event_id, event.hold)


@dataclass(frozen=True, order=True)
class PurgeFact:
    at: int  # occurred_at, UTC microseconds
    event_id: str

    @classmethod
    def of(cls, event: RecordingPurged) -> PurgeFact:
        return cls(micros(event.occurred_at), event.event_id)


def held_at(holds: Iterable[HoldFact], at: int | None = None) -> bool:
    """Rule 1: the last hold fact at or before `at` (None: of all of them) decides."""
    last = max((h for h in holds if at is None or h.at <= at), default=None)
    return last is not None and last.hold


def purge_applies(purge: PurgeFact, holds: Iterable[HoldFact]) -> bool:
    """Rule 2: not held when the purge was issued, and not held now."""
    facts = tuple(holds)
    return not held_at(facts, purge.at) and not held_at(facts)


def effective_purge(purges: Iterable[PurgeFact], holds: Iterable[HoldFact]) -> PurgeFact | None:
    """Rule 3: the earliest purge that takes effect, or None (the recording stays)."""
    facts = tuple(holds)
    return min((p for p in purges if purge_applies(p, facts)), default=None)


@dataclass
class Facts:
    """One recording's hold and purge facts (sets: repeats and order do not matter)."""

    holds: set[HoldFact] = field(default_factory=set)
    purges: set[PurgeFact] = field(default_factory=set)

    @property
    def held(self) -> bool:
        return held_at(self.holds)

    @property
    def purged(self) -> bool:
        return effective_purge(self.purges, self.holds) is not None

    @property
    def last_hold(self) -> HoldFact | None:
        """The hold fact in force now (None: never held)."""
        return max(self.holds, default=None)


class HoldLedger:
    """The hold and purge facts of every recording, for in-memory projections; the
    held and purged id sets are kept current so membership tests stay O(1)."""

    def __init__(self) -> None:
        self.facts: dict[str, Facts] = {}
        self._held: set[str] = set()
        self._purged: set[str] = set()

    def add(self, event: object) -> bool:
        """Fold in a hold or purge fact; True when it is new (other events: False)."""
        if isinstance(event, LegalHoldChanged):
            facts = self.facts.setdefault(event.recording_id, Facts())
            hold = HoldFact.of(event)
            if hold in facts.holds:
                return False
            facts.holds.add(hold)
        elif isinstance(event, RecordingPurged):
            facts = self.facts.setdefault(event.recording_id, Facts())
            purge = PurgeFact.of(event)
            if purge in facts.purges:
                return False
            facts.purges.add(purge)
        else:
            return False
        rid = event.recording_id
        for now, ids in ((facts.held, self._held), (facts.purged, self._purged)):
            if now:
                ids.add(rid)
            else:
                ids.discard(rid)
        return True

    def held(self, recording_id: str) -> bool:
        return recording_id in self._held

    def purged(self, recording_id: str) -> bool:
        return recording_id in self._purged

    @property
    def held_ids(self) -> AbstractSet[str]:
        """Recordings under hold now (a live view: do not keep it across events)."""
        return self._held

    @property
    def purged_ids(self) -> AbstractSet[str]:
        """Recordings whose purge took effect (a live view)."""
        return self._purged

    def hold_version(self, recording_id: str) -> str:
        """Id of the hold fact in force ("" when never held): a purge issued after a
        release is then a different fact from one issued before the hold."""
        facts = self.facts.get(recording_id)
        last = facts.last_hold if facts is not None else None
        return last.event_id if last is not None else ""
