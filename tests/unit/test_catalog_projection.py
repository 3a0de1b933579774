"""Catalog projection: idempotent, checkpointed, searchable (no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from contracts.v1.events import (
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    RecordingReplicated,
    RecordingStarted,
    RecordingWaveformComputed,
    type_of,
)
from contracts.v1.rpc import SearchRequest
from services.catalog.projection import APPLIED_TYPES, Catalog

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def completed(rid: str, minutes: int, *numbers: str) -> RecordingCompleted:
    started = T0 + timedelta(minutes=minutes)
    return RecordingCompleted(
        node_id="n1",
        recording_id=rid,
        started_at=started,
        ended_at=started + timedelta(seconds=30),
        duration_ms=30_000,
        object_key=f"2024/05/01/{rid}.ogg",
        size_bytes=1000,
        sha256="0" * 64,
        channels=[],
        metadata=RecordingMetadata(
            source="sip",
            session_key=rid,
            participants=[
                Participant(role="near" if i == 0 else "far", number=n)
                for i, n in enumerate(numbers)
            ],
        ),
    )


def ids(result: object) -> list[str]:
    return [item.recording_id for item in result.items]  # type: ignore[attr-defined]


def test_insert_get_and_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = Catalog(path)
    assert catalog.last_sequence == 0
    event = completed("r1", 0, "1001", "+4930123")
    assert catalog.apply(event, 1)
    got = catalog.get("r1")
    assert got == event
    assert catalog.get("nope") is None
    assert catalog.count == 1
    catalog.close()

    reopened = Catalog(path)
    assert reopened.last_sequence == 1
    assert reopened.count == 1
    assert reopened.get("r1") == event


def test_idempotent_by_sequence_recording_and_event(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    event = completed("r1", 0, "1001")
    assert catalog.apply(event, 5)
    assert not catalog.apply(event, 5)  # replayed sequence
    assert not catalog.apply(event, 6)  # same event again (e.g. from a peer's stream)
    # Another completion of the same call with less audio loses (contracts.v1.winner).
    other_event_same_recording = completed("r1", 3, "2002").model_copy(
        update={"duration_ms": 29_000})
    assert not catalog.apply(other_event_same_recording, 7)
    assert catalog.last_sequence == 7
    assert catalog.count == 1
    assert catalog.search(SearchRequest(number="2002"), None).total == 0


def test_other_events_advance_checkpoint_only(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    started = RecordingStarted(
        node_id="n1",
        recording_id="r1",
        started_at=T0,
        metadata=RecordingMetadata(source="sip", session_key="k"),
    )
    assert not catalog.apply(started, 3)
    assert catalog.last_sequence == 3
    assert catalog.count == 0


def test_search_order_filters_paging(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    for seq, event in enumerate(
        [
            completed("a", 0, "1001", "5550100"),
            completed("b", 10, "1002", "5550101"),
            completed("c", 20, "1001", "1002"),
            completed("d", 30, "100%_x"),
        ],
        start=1,
    ):
        catalog.apply(event, seq)

    everything = catalog.search(SearchRequest(), None)
    assert everything.total == 4
    assert ids(everything) == ["d", "c", "b", "a"]

    page = catalog.search(SearchRequest(limit=2, offset=1), None)
    assert page.total == 4
    assert ids(page) == ["c", "b"]

    assert ids(catalog.search(SearchRequest(number="1001"), None)) == ["c", "a"]
    assert ids(catalog.search(SearchRequest(number="555"), None)) == ["b", "a"]
    # LIKE wildcards in input are literal characters.
    assert ids(catalog.search(SearchRequest(number="%"), None)) == ["d"]
    assert ids(catalog.search(SearchRequest(number="%_"), None)) == ["d"]

    window = SearchRequest(
        start_from=T0 + timedelta(minutes=10), start_to=T0 + timedelta(minutes=30)
    )
    assert ids(catalog.search(window, None)) == ["c", "b"]
    # Offsets other than UTC compare as instants.
    plus2 = timezone(timedelta(hours=2))
    shifted = SearchRequest(start_from=(T0 + timedelta(minutes=20)).astimezone(plus2))
    assert ids(catalog.search(shifted, None)) == ["d", "c"]


def test_visibility(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    catalog.apply(completed("a", 0, "1001", "5550100"), 1)
    catalog.apply(completed("b", 10, "1002"), 2)
    catalog.apply(completed("c", 20, "10012"), 3)
    assert ids(catalog.search(SearchRequest(), ["1001"])) == ["a"]  # exact, not substring
    assert ids(catalog.search(SearchRequest(), ["1001", "1002"])) == ["b", "a"]
    assert catalog.search(SearchRequest(), []).total == 0
    both = catalog.search(SearchRequest(number="555"), ["1001", "1002"])
    assert ids(both) == ["a"] and both.total == 1


def test_rebuild_from_scratch_gives_same_result(tmp_path: Path) -> None:
    events = [completed(f"r{i}", i, str(1000 + i % 3)) for i in range(50)]
    first = Catalog(tmp_path / "one.sqlite3")
    for seq, event in enumerate(events, start=1):
        first.apply(event, seq)
    second = Catalog(tmp_path / "two.sqlite3")
    # Duplicates later in the stream (e.g. re-published facts) change nothing.
    for seq, event in enumerate(events + events, start=1):
        second.apply(event, seq)
    request = SearchRequest(number="1001", limit=100)
    assert ids(first.search(request, None)) == ids(second.search(request, None))
    assert first.search(request, None).total == 17


def test_schema_version_change_rebuilds(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "c.sqlite3"
    catalog = Catalog(path)
    catalog.apply(completed("a", 0, "1"), 1)
    catalog.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=0")
    reopened = Catalog(path)
    assert reopened.last_sequence == 0
    assert reopened.count == 0


def test_one_row_per_call_the_best_completion_whatever_the_order(tmp_path: Path) -> None:
    """A peer's interrupted takeover copy and the origin's own copy of one call: one row,
    the one with the most audio (a tie goes to the origin), in either order."""
    origin = completed("r1", 0, "1001").model_copy(update={"duration_ms": 9_400})
    takeover = completed("r1", 0, "1001").model_copy(update={
        "event_id": "t" * 32, "node_id": "b", "duration_ms": 9_000, "interrupted": True,
        "object_key": "2024/05/01/r1.b.interrupted.opus"})
    for order, name in (((takeover, origin), "ab"), ((origin, takeover), "ba")):
        catalog = Catalog(tmp_path / f"{name}.sqlite3")
        changed = catalog.apply_batch([(order[0], 1), (order[1], 2)])
        assert [effect for _, effect in changed] == (
            ["cataloged", "replaced"] if order[0] is takeover else ["cataloged"])
        assert catalog.count == 1
        assert catalog.get("r1") == origin
        result = catalog.search(SearchRequest(), None)
        assert result.total == 1 and result.items == [origin]
    # A tie goes to the origin; more audio wins even from a takeover.
    tie = takeover.model_copy(update={"duration_ms": 9_400})
    longer = takeover.model_copy(update={"duration_ms": 9_900})
    catalog = Catalog(tmp_path / "tie.sqlite3")
    catalog.apply_batch([(tie, 1), (origin, 2)])
    assert catalog.get("r1") == origin
    assert catalog.apply(longer, 3)
    got = catalog.get("r1")
    assert got is not None and got.interrupted and got.duration_ms == 9_900
    assert catalog.count == 1


def test_the_catalog_is_sent_only_what_it_applies(tmp_path: Path) -> None:
    """The catalog follows APPLIED_TYPES alone: a copy's `recording.replicated` (one
    per recording and peer in a burst of endings) changes nothing but the checkpoint,
    so it is not sent; what the catalog does apply is in the list."""
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    copy = RecordingReplicated(node_id="n2", recording_id="r1", origin_node_id="n1",
                               object_key="2024/05/01/r1.ogg", sha256="0" * 64,
                               size_bytes=1000)
    before = catalog._db.total_changes
    assert catalog.apply_batch([(copy, 1)]) == []
    assert catalog._db.total_changes - before == 1  # the checkpoint row alone
    assert type_of(RecordingReplicated) not in APPLIED_TYPES
    assert catalog.apply_batch([(completed("r1", 0, "100"), 2)])
    assert {type_of(RecordingCompleted), type_of(RecordingWaveformComputed)} <= set(APPLIED_TYPES)
    catalog.close()
