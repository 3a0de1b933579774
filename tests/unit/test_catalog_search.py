"""Catalog search filters, sorting, notes (FTS5), tags and the number plan (no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contracts.v1.events import (
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    RecordingNoteAdded,
    RecordingTagChanged,
)
from contracts.v1.numbers import NumberPlan
from contracts.v1.rpc import SearchRequest, SearchResult
from services.catalog import projection
from services.catalog.projection import Catalog

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def rec(rid: str, minutes: int, parties: list[tuple[str, str | None]], *, seconds: int = 30,
        direction: str = "inbound", node: str = "n1", interrupted: bool = False
        ) -> RecordingCompleted:
    started = T0 + timedelta(minutes=minutes)
    return RecordingCompleted(
        node_id=node, recording_id=rid, started_at=started,
        ended_at=started + timedelta(seconds=seconds), duration_ms=seconds * 1000,
        object_key=f"x/{rid}.opus", size_bytes=1, sha256="0" * 64, channels=[],
        interrupted=interrupted,
        metadata=RecordingMetadata(
            source="siprec", session_key=rid, direction=direction,  # type: ignore[arg-type]
            participants=[Participant(role="near" if i == 0 else "far", number=n, name=name)
                          for i, (n, name) in enumerate(parties)]),
    )


def note(rid: str, text: str, seconds: int, event_id: str) -> RecordingNoteAdded:
    return RecordingNoteAdded(node_id="n1", recording_id=rid, text=text, author="sup",
                              occurred_at=T0 + timedelta(seconds=seconds), event_id=event_id)


def tag(rid: str, name: str, added: bool, seconds: int, event_id: str) -> RecordingTagChanged:
    return RecordingTagChanged(node_id="n2", recording_id=rid, tag=name, added=added,
                               changed_by="sup", occurred_at=T0 + timedelta(seconds=seconds),
                               event_id=event_id)


def ids(result: SearchResult) -> list[str]:
    return [item.recording_id for item in result.items]


PLAN = NumberPlan.parse(["+4930123452XXX/4"])


def fill(catalog: Catalog) -> None:
    events: list[Any] = [
        rec("a", 0, [("+4930123452001", "Alice Agent"), ("+4989111", "Bob Müller")],
            seconds=30),
        rec("b", 10, [("2002", "Carol"), ("+4989222", "Dave")], seconds=300,
            direction="outbound"),
        rec("c", 20, [("2001", None), ("2002", None)], seconds=5, direction="internal",
            node="n2"),
        rec("d", 30, [("+4930123452003", "Eve"), ("0171555", "Mallory")], seconds=90,
            interrupted=True),
        note("a", "Customer complains about the invoice", 100, "n1"),
        note("a", "Called back, resolved", 200, "n2"),
        note("d", "Kündigung angedroht", 300, "n3"),
        note("zz", "note before its recording arrives", 50, "n4"),
        tag("a", "Complaint", True, 10, "t1"),
        tag("b", "complaint", True, 10, "t2"),
        tag("b", "complaint", False, 20, "t3"),
        tag("d", "vip", True, 10, "t4"),
        tag("zz", "early", True, 10, "t5"),
    ]
    catalog.apply_batch([(event, seq) for seq, event in enumerate(events, start=1)])


@pytest.fixture(params=["narrow", "wide-walk", "wide-collect"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Catalog:
    """Every query shape (per-row tests in a small time range; id sets first in a wide
    one, its page read by walking the time index or by sorting the matches) must give
    the same answers."""
    monkeypatch.setattr(projection, "NARROW_ROWS", 1_000 if request.param == "narrow" else 0)
    monkeypatch.setattr(projection, "WALK_ROWS", 0 if request.param == "wide-collect"
                        else 50_000)
    catalog = Catalog(tmp_path / "c.sqlite3", PLAN)
    fill(catalog)
    return catalog


def test_numbers_names_and_the_number_plan(catalog: Catalog) -> None:
    assert ids(catalog.search(SearchRequest(number_or_name="müller"))) == ["a"]
    assert ids(catalog.search(SearchRequest(number_or_name="ALICE"))) == ["a"]
    assert ids(catalog.search(SearchRequest(number_or_name="+49891"))) == ["a"]
    assert ids(catalog.search(SearchRequest(number_or_name="200"))) == ["d", "c", "b", "a"]
    assert ids(catalog.search(SearchRequest(number_or_name="%"))) == []
    assert ids(catalog.search(SearchRequest(number="0171"))) == ["d"]
    assert ids(catalog.search(SearchRequest(number="eve"))) == []  # numbers only
    # The E.164 number is indexed as extension 2001 too: exact filters see it.
    assert ids(catalog.search(SearchRequest(numbers_any=["2001"]))) == ["c", "a"]
    assert ids(catalog.search(SearchRequest(), ["2001"])) == ["c", "a"]
    assert ids(catalog.search(SearchRequest(numbers_any=["2001"]), ["2002"])) == ["c"]
    assert catalog.search(SearchRequest(numbers_any=[]), None).total == 0
    assert ids(catalog.search(SearchRequest(), ["200"])) == []  # exact, never a substring


def test_direction_duration_node_interrupted(catalog: Catalog) -> None:
    assert ids(catalog.search(SearchRequest(direction="outbound"))) == ["b"]
    assert ids(catalog.search(SearchRequest(min_duration_ms=60_000))) == ["d", "b"]
    assert ids(catalog.search(SearchRequest(node_id="n2"))) == ["c"]
    assert ids(catalog.search(SearchRequest(interrupted=True))) == ["d"]
    assert ids(catalog.search(SearchRequest(interrupted=False))) == ["c", "b", "a"]
    window = SearchRequest(start_from=T0 + timedelta(minutes=5),
                           start_to=T0 + timedelta(minutes=30), direction="internal")
    assert ids(catalog.search(window)) == ["c"]


def test_sort_order_and_paging(catalog: Catalog) -> None:
    assert ids(catalog.search(SearchRequest(order="asc"))) == ["a", "b", "c", "d"]
    by_length = catalog.search(SearchRequest(sort="duration", limit=2))
    assert ids(by_length) == ["b", "d"] and by_length.total == 4
    page = catalog.search(SearchRequest(sort="duration", order="asc", limit=2, offset=1))
    assert ids(page) == ["a", "d"] and page.total == 4


def test_tags_filter_and_listed_tags(catalog: Catalog) -> None:
    result = catalog.search(SearchRequest(tag=" COMPLAINT"))
    assert ids(result) == ["a"]  # b's tag was removed later
    assert result.tags == {"a": ["complaint"]}
    everything = catalog.search(SearchRequest())
    assert everything.tags == {"a": ["complaint"], "d": ["vip"]}
    assert catalog.search(SearchRequest(tag="nope")).total == 0


def test_text_in_notes(catalog: Catalog) -> None:
    assert ids(catalog.search(SearchRequest(note_text="invoice"))) == ["a"]
    assert ids(catalog.search(SearchRequest(note_text="INVO"))) == ["a"]  # word prefix
    assert ids(catalog.search(SearchRequest(note_text="kundigung"))) == ["d"]  # diacritics
    assert ids(catalog.search(SearchRequest(note_text="customer resolved"))) == []  # one note
    assert ids(catalog.search(SearchRequest(note_text="called resolved"))) == ["a"]
    # FTS5 syntax in the input is only text.
    for hostile in ['"', "a OR b", "NEAR(x y)", "*", "invoice\" OR \"x", "-", "col:x"]:
        catalog.search(SearchRequest(note_text=hostile))
    assert ids(catalog.search(SearchRequest(note_text="*"))) == []


def test_annotations(catalog: Catalog) -> None:
    got = catalog.annotations("a")
    assert [n.text for n in got.notes] == ["Customer complains about the invoice",
                                           "Called back, resolved"]
    assert got.notes[0].at == T0 + timedelta(seconds=100)
    assert got.tags == ["complaint"]
    assert catalog.annotations("b").tags == []
    early = catalog.annotations("zz")  # facts before their recording: kept
    assert early.tags == ["early"] and len(early.notes) == 1
    assert catalog.annotations("unknown").notes == []


def test_annotation_facts_are_idempotent_and_order_free(tmp_path: Path) -> None:
    facts = [tag("r", "x", True, 1, "e1"), tag("r", "x", False, 2, "e2"),
             note("r", "hello", 1, "n1")]
    one = Catalog(tmp_path / "one.sqlite3")
    one.apply_batch([(f, i) for i, f in enumerate(facts, start=1)])
    two = Catalog(tmp_path / "two.sqlite3")
    effects = two.apply_batch([(f, i) for i, f in enumerate(
        [facts[1], facts[0], facts[2], facts[2], facts[0]], start=1)])
    assert [e for _, e in effects] == ["noted"]  # the late addition changes nothing
    assert one.annotations("r") == two.annotations("r")
    assert one.annotations("r").tags == [] and len(two.annotations("r").notes) == 1


def test_a_replaced_completion_is_reindexed(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    first = rec("r", 0, [("1001", "Old Name")], interrupted=True)
    better = rec("r", 0, [("1002", "New Name")], seconds=60)
    catalog.apply_batch([(first, 1), (better, 2)])
    assert ids(catalog.search(SearchRequest(number_or_name="old name"))) == []
    assert ids(catalog.search(SearchRequest(number_or_name="new name"))) == ["r"]
    assert ids(catalog.search(SearchRequest(numbers_any=["1001"]))) == []
    assert ids(catalog.search(SearchRequest(interrupted=False))) == ["r"]


def test_another_number_plan_rebuilds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    catalog = Catalog(path)
    catalog.apply(rec("a", 0, [("+4930123452001", None)]), 1)
    assert catalog.search(SearchRequest(numbers_any=["2001"])).total == 0
    catalog.close()
    same = Catalog(path)
    assert same.last_sequence == 1
    same.close()
    replanned = Catalog(path, PLAN)
    assert replanned.last_sequence == 0 and replanned.count == 0  # replay re-indexes
    replanned.apply(rec("a", 0, [("+4930123452001", None)]), 1)
    assert replanned.search(SearchRequest(numbers_any=["2001"])).total == 1


def test_old_requests_keep_their_meaning() -> None:
    old = SearchRequest.model_validate({"number": "1001", "limit": 10, "visible_numbers": None})
    assert old.sort == "started" and old.order == "desc" and old.numbers_any is None
