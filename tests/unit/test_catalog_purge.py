"""Catalog purges: idempotent, a purge wins over a completion, a hold wins over a purge,
whatever order events arrive in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from contracts.v1.events import (
    LegalHoldChanged,
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    RecordingPurged,
)
from contracts.v1.rpc import SearchRequest
from services.catalog.projection import Catalog

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def completed(rid: str, minutes: int, *numbers: str) -> RecordingCompleted:
    started = T0 + timedelta(minutes=minutes)
    return RecordingCompleted(
        node_id="n1", recording_id=rid, started_at=started,
        ended_at=started + timedelta(seconds=30), duration_ms=30_000,
        object_key=f"2024/05/01/{rid}.ogg", size_bytes=1000, sha256="0" * 64, channels=[],
        metadata=RecordingMetadata(
            source="sip", session_key=rid,
            participants=[Participant(role="far", number=n) for n in numbers],
        ),
    )


def purged(rid: str, node: str = "n1") -> RecordingPurged:
    return RecordingPurged(
        node_id=node, recording_id=rid, object_key=f"2024/05/01/{rid}.ogg",
        reason="deleted by admin", requested_by="admin",
    )


def test_purge_removes_row_and_numbers(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    catalog.apply(completed("a", 0, "1001", "5550100"), 1)
    catalog.apply(completed("b", 10, "1001"), 2)
    assert catalog.apply(purged("a"), 3)
    assert catalog.get("a") is None
    assert catalog.count == 1
    assert catalog.last_sequence == 3
    assert catalog.search(SearchRequest(number="5550100"), None).total == 0
    assert [r.recording_id for r in catalog.search(SearchRequest(), ["1001"]).items] == ["b"]
    assert catalog.is_purged("a") and not catalog.is_purged("b")


def test_purge_is_idempotent(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    catalog.apply(completed("a", 0, "1001"), 1)
    event = purged("a")
    assert catalog.apply(event, 2)
    assert not catalog.apply(event, 2)  # replayed sequence
    assert not catalog.apply(event, 3)  # same event from a peer's stream
    assert not catalog.apply(purged("a", node="n2"), 4)  # another node's purge
    assert not catalog.apply(purged("never-known"), 5)
    assert catalog.count == 0
    assert catalog.last_sequence == 5


def test_purge_before_completed_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    catalog = Catalog(path)
    assert not catalog.apply(purged("a"), 1)
    assert not catalog.apply(completed("a", 0, "1001"), 2)
    assert catalog.get("a") is None
    assert catalog.count == 0
    assert catalog.search(SearchRequest(number="1001"), None).total == 0
    catalog.close()
    # The tombstone survives a restart.
    reopened = Catalog(path)
    assert not reopened.apply(completed("a", 0, "1001"), 3)
    assert reopened.get("a") is None and reopened.count == 0


def test_replay_with_purges_gives_same_result(tmp_path: Path) -> None:
    events = [completed(f"r{i}", i, "1001") for i in range(10)]
    stream = [*events[:5], purged("r2"), *events[5:], purged("r7"), purged("r2"), events[2]]
    first = Catalog(tmp_path / "one.sqlite3")
    for seq, event in enumerate(stream, start=1):
        first.apply(event, seq)
    first.close()
    for file in tmp_path.glob("one.sqlite3*"):
        file.unlink()
    second = Catalog(tmp_path / "one.sqlite3")
    for seq, event in enumerate(stream, start=1):
        second.apply(event, seq)
    ids = [r.recording_id for r in second.search(SearchRequest(limit=100), None).items]
    assert ids == ["r9", "r8", "r6", "r5", "r4", "r3", "r1", "r0"]
    assert second.count == 8


def hold(rid: str, on: bool, minute: int) -> LegalHoldChanged:
    return LegalHoldChanged(node_id="n1", recording_id=rid, hold=on,
                            occurred_at=T0 + timedelta(minutes=minute))


def purged_at(rid: str, minute: int) -> RecordingPurged:
    return RecordingPurged(node_id="n2", recording_id=rid, object_key=f"2024/05/01/{rid}.ogg",
                           reason="forged", occurred_at=T0 + timedelta(minutes=minute))


def test_purge_of_held_recording_changes_nothing_and_stays_void(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    catalog = Catalog(path)
    catalog.apply(completed("a", 0, "1001"), 1)
    event = hold("a", True, 1)
    assert catalog.apply_batch([(event, 2)]) == [(event, "held")]
    assert catalog.is_held("a")
    assert not catalog.apply(purged_at("a", 2), 3)  # held: kept as a fact, not applied
    assert catalog.get("a") is not None and catalog.count == 1 and not catalog.is_purged("a")
    assert catalog.search(SearchRequest(number="1001"), None).total == 1
    catalog.close()
    reopened = Catalog(path)  # the facts survive a restart
    assert reopened.apply(hold("a", False, 3), 4)  # released: the void purge stays void
    assert reopened.get("a") is not None and reopened.count == 1
    assert reopened.apply(purged_at("a", 4), 5)  # a purge issued after the release applies
    assert reopened.get("a") is None and reopened.count == 0


def test_late_hold_brings_back_a_row_purged_here_first(tmp_path: Path) -> None:
    """A partition: this node applied a purge issued after a hold it had not yet seen."""
    catalog = Catalog(tmp_path / "c.sqlite3")
    catalog.apply(completed("a", 0, "1001"), 1)
    catalog.apply(purged_at("a", 5), 2)
    assert catalog.get("a") is None and catalog.count == 0
    changed = catalog.apply_batch([(hold("a", True, 1), 3)])
    assert [effect for _, effect in changed] == ["restored"]
    assert catalog.get("a") is not None and catalog.count == 1 and catalog.is_held("a")
    assert [r.recording_id for r in catalog.search(SearchRequest(number="1001"), None).items] \
        == ["a"]


def test_completion_after_void_purge_is_shown(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    catalog.apply(hold("a", True, 1), 1)
    catalog.apply(purged_at("a", 2), 2)
    assert catalog.apply(completed("a", 0, "1001"), 3)
    assert catalog.get("a") is not None and catalog.count == 1
