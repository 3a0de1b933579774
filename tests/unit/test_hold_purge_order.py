"""Hold wins, whatever order the facts arrive in: the rule of `contracts.v1.holds`
and the three projections that apply it (catalog, sync, scheduler), with every
permutation of small fact sets and random shuffles of larger ones."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contracts.v1.events import (
    LegalHoldChanged,
    RecordingCompleted,
    RecordingMetadata,
    RecordingPurged,
)
from contracts.v1.holds import HoldFact, HoldLedger, PurgeFact, effective_purge, held_at
from services.catalog.projection import Catalog
from services.scheduler.jobs import JobBook
from services.sync.domain import Fetch, Purge, ReplicaMap

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
Fact = LegalHoldChanged | RecordingPurged | RecordingCompleted


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def hold(minute: int, on: bool = True, rid: str = "r", event_id: str | None = None,
         node: str = "a") -> LegalHoldChanged:
    extra = {"event_id": event_id} if event_id else {}
    return LegalHoldChanged(node_id=node, recording_id=rid, hold=on, occurred_at=at(minute),
                            **extra)  # type: ignore[arg-type]


def purge(minute: int, rid: str = "r", event_id: str | None = None,
          node: str = "b") -> RecordingPurged:
    extra = {"event_id": event_id} if event_id else {}
    return RecordingPurged(node_id=node, recording_id=rid, object_key=f"k/{rid}.opus",
                           reason="test", occurred_at=at(minute), **extra)  # type: ignore[arg-type]


def completed(rid: str = "r", origin: str = "a") -> RecordingCompleted:
    return RecordingCompleted(
        node_id=origin, recording_id=rid, started_at=T0, ended_at=T0, duration_ms=1000,
        object_key=f"k/{rid}.opus", size_bytes=10, sha256="f" * 64, channels=[],
        metadata=RecordingMetadata(source="sip", session_key=rid), occurred_at=T0,
    )


def verdict(*facts: Fact) -> bool:
    """Purged? by the shared rule, facts in the order given."""
    ledger = HoldLedger()
    for fact in facts:
        ledger.add(fact)
    return ledger.purged("r")


# ---- the rule ----------------------------------------------------------------------


def test_purge_of_a_held_recording_is_void() -> None:
    assert not verdict(hold(0), purge(5))
    assert not verdict(purge(5), hold(0))


def test_backdated_purge_does_not_beat_a_hold_but_applies_after_release() -> None:
    # The purge's timestamp is its issuer's word: dated before the hold, it is
    # suspended while the hold lasts (a forger cannot back-date past a hold) ...
    assert not verdict(purge(-60), hold(0))
    # ... and takes effect once the hold is released: it was issued while not held.
    assert verdict(purge(-60), hold(0), hold(10, on=False))


def test_purge_issued_while_held_stays_void_after_release() -> None:
    assert not verdict(hold(0), purge(5), hold(10, on=False))
    assert verdict(hold(0), purge(5), hold(10, on=False), purge(11))


def test_hold_wins_a_tie_with_a_purge_and_with_a_release() -> None:
    assert not verdict(hold(5), purge(5))
    same = at(3)
    on = LegalHoldChanged(node_id="a", recording_id="r", hold=True, occurred_at=same,
                          event_id="x")
    off = LegalHoldChanged(node_id="a", recording_id="r", hold=False, occurred_at=same,
                           event_id="x")
    assert held_at({HoldFact.of(on), HoldFact.of(off)})


def test_last_writer_wins_by_time_then_event_id() -> None:
    assert held_at({HoldFact(1, "z", False), HoldFact(2, "a", True)})
    assert not held_at({HoldFact(2, "a", True), HoldFact(2, "b", False)})
    assert held_at({HoldFact(2, "b", True), HoldFact(2, "a", False)})
    assert held_at({HoldFact(1, "a", True), HoldFact(3, "b", False)}, at=2)
    assert not held_at(set())


def test_effective_purge_is_the_earliest_that_applies() -> None:
    holds = {HoldFact(10, "h", True), HoldFact(20, "r", False)}
    assert effective_purge({PurgeFact(15, "p1"), PurgeFact(25, "p2")}, holds) == \
        PurgeFact(25, "p2")
    assert effective_purge({PurgeFact(5, "p0"), PurgeFact(25, "p2")}, holds) == \
        PurgeFact(5, "p0")
    assert effective_purge({PurgeFact(15, "p1")}, holds) is None


def random_facts(rng: random.Random, rid: str = "r") -> list[Fact]:
    """A few holds/releases and purges on a small time grid (ties are likely), with
    repeats and reused ids, as two busy nodes and a forger could produce."""
    facts: list[Fact] = []
    for _ in range(rng.randint(0, 4)):
        facts.append(hold(rng.randint(0, 6), rng.random() < 0.6, rid,
                          event_id=rng.choice(["h1", "h2", None, None])))
    for _ in range(rng.randint(0, 3)):
        facts.append(purge(rng.randint(-2, 8), rid, event_id=rng.choice(["p1", None])))
    if facts and rng.random() < 0.3:
        facts.append(rng.choice(facts))  # the same fact again (a second source)
    return facts


def test_same_set_of_facts_same_verdict_in_every_order() -> None:
    rng = random.Random(7)
    checked = 0
    for _ in range(400):
        facts = random_facts(rng)
        orders = (itertools.permutations(facts) if len(facts) <= 5
                  else (rng.sample(facts, len(facts)) for _ in range(100)))
        verdicts = {(verdict(*order), _held(order)) for order in orders}
        assert len(verdicts) == 1, facts
        checked += 1
    assert checked == 400


def _held(facts: tuple[Fact, ...] | list[Fact]) -> bool:
    ledger = HoldLedger()
    for fact in facts:
        ledger.add(fact)
    return ledger.held("r")


def test_a_recording_held_now_is_never_purged() -> None:
    """The security property: whatever purges exist, with whatever timestamps."""
    rng = random.Random(11)
    held_cases = 0
    for _ in range(2000):
        facts = random_facts(rng)
        ledger = HoldLedger()
        for fact in facts:
            ledger.add(fact)
        if ledger.held("r"):
            held_cases += 1
            assert not ledger.purged("r"), facts
    assert held_cases > 100  # the generator does produce held recordings


# ---- the projections agree, whatever the order ----------------------------------------


def catalog_state(tmp: Path, order: list[Fact], name: str) -> tuple[bool, bool, int]:
    catalog = Catalog(tmp / f"{name}.sqlite3")
    try:
        for seq, event in enumerate(order, start=1):
            catalog.apply(event, seq)
        return catalog.get("r") is not None, catalog.is_held("r"), catalog.count
    finally:
        catalog.close()


def sync_state(order: list[Fact], me: str = "b") -> tuple[bool, bool]:
    """(purged, do we end with a copy), playing the adapter: a Purge deletes the copy,
    a Fetch brings it back (a peer that kept it answers)."""
    replicas = ReplicaMap(me)
    have = False
    for seq, event in enumerate(order, start=1):
        for action in replicas.apply(event, seq):
            if isinstance(action, Purge):
                have = False
                replicas.purge_done(action.sequence)
            elif isinstance(action, Fetch):
                assert replicas.needs_fetch(action.recording_id)
                have = True
                replicas.held_locally(action.recording_id)
    return replicas.replicas["r"].purged, have


def book_state(order: list[Fact]) -> tuple[bool, bool, list[str]]:
    book = JobBook()
    for event in order:
        book.apply(event)
    return "r" in book.purged, "r" in book.held, [r.recording_id for r in book.live_recordings()]


def test_catalog_sync_and_scheduler_agree_in_every_order(tmp_path: Path) -> None:
    rng = random.Random(3)
    for case in range(40):
        facts: list[Fact] = [completed(), *random_facts(rng)]
        expected_purged = verdict(*facts)
        expected_held = _held(facts)
        orders = [list(p) for p in itertools.permutations(facts)]
        for index, order in enumerate(rng.sample(orders, min(len(orders), 10))):
            visible, held, count = catalog_state(tmp_path, order, f"c{case}-{index}")
            assert (visible, held, count) == (not expected_purged, expected_held,
                                              0 if expected_purged else 1), order
            assert sync_state(order) == (expected_purged, not expected_purged), order
            assert book_state(order) == (expected_purged, expected_held,
                                         [] if expected_purged else ["r"]), order


def test_forged_purge_overtaking_the_hold_is_undone_on_the_node_it_reached_first(
    tmp_path: Path,
) -> None:
    """A partition: node b applies a purge before the (earlier) hold placed on a
    reaches it; once the hold arrives, b shows the recording again and fetches its copy
    back, like a, which saw the hold first and never deleted anything."""
    facts: list[Fact] = [completed(origin="a"), hold(0), purge(5)]
    a_order = facts
    b_order = [facts[0], facts[2], facts[1]]
    assert catalog_state(tmp_path, a_order, "a") == catalog_state(tmp_path, b_order, "b") \
        == (True, True, 1)
    replicas = ReplicaMap("b")
    assert replicas.apply(b_order[0], 1) == [Fetch("r", 1)]
    replicas.held_locally("r")
    assert replicas.apply(b_order[1], 2) == [Purge("r", "k/r.opus", 2)]
    replicas.purge_done(2)
    assert replicas.recordings_held() == 0
    assert replicas.apply(b_order[2], 3) == [Fetch("r", 3, "restored")]
    assert replicas.sources("r") == ["a"]  # the origin kept it: it saw the hold first
    assert replicas.checkpoint == 2  # the restore is owed until the copy is back
    replicas.held_locally("r")
    assert replicas.checkpoint == 3 and replicas.recordings_held() == 1
