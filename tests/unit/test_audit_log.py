"""Appending to the audit chain (no fork under two writers, head restored), the flood
gate and repeat filter, and the projection: filters, export, tampering found."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callrec.metrics import Registry
from contracts.v1.audit import EMPTY_HEAD, AuditHead, head_of
from contracts.v1.events import AuditRecorded
from services.web.audit_log import (
    AuditAppender,
    AuditDraft,
    Auditor,
    AuditUnavailable,
    ChainConflict,
    FloodGate,
    RepeatFilter,
    claimed_head,
)
from services.web.audit_store import AuditProjection, AuditQuery, chain_of

SUBJECT_A = "callrec.v1.a.evt.audit.recorded"


class ListChain:
    """A chain store that enforces the expected last sequence like JetStream does."""

    def __init__(self) -> None:
        self.entries: list[AuditRecorded] = []
        self.down = False

    async def last(self) -> tuple[AuditHead, int]:
        if not self.entries:
            return EMPTY_HEAD, 0
        return head_of(self.entries[-1]), len(self.entries)

    async def append(self, entry: AuditRecorded, expected_last: int) -> int:
        await asyncio.sleep(0)  # let another writer interleave
        if self.down:
            raise TimeoutError("bus down")
        if expected_last != len(self.entries):
            raise ChainConflict("wrong last sequence")
        self.entries.append(entry)
        return len(self.entries)


def test_two_writers_never_fork_the_chain() -> None:
    async def scenario() -> list[AuditRecorded]:
        store = ListChain()
        one, two = AuditAppender(store, "a"), AuditAppender(store, "a")
        await asyncio.gather(*(w.append(AuditDraft(action="search", actor=f"u{i}"))
                               for i in range(20) for w in (one, two)))
        assert one.conflicts + two.conflicts > 0  # they did collide, and recovered
        return store.entries

    entries = asyncio.run(scenario())
    assert [e.seq for e in entries] == list(range(1, 41))
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash


def test_head_is_restored_from_the_store() -> None:
    async def scenario() -> None:
        store = ListChain()
        await AuditAppender(store, "a").append(AuditDraft(action="login", actor="x"))
        later = await AuditAppender(store, "a").append(AuditDraft(action="logout", actor="x"))
        assert later.seq == 2 and later.prev_hash == store.entries[0].hash

    asyncio.run(scenario())


def test_undecodable_head_is_continued_from_what_it_claims() -> None:
    assert claimed_head(b'{"seq": 7, "hash": "ab"}') == AuditHead(seq=7, hash="ab")
    assert claimed_head(b"junk") == EMPTY_HEAD


def test_bus_down_refuses_reads_and_drops_failed_logins() -> None:
    async def scenario() -> None:
        store = ListChain()
        registry = Registry("web", "a")
        auditor = Auditor(AuditAppender(store, "a"), registry)
        store.down = True
        with pytest.raises(AuditUnavailable):
            await auditor.record(AuditDraft(action="play", actor="x", target="r1"))
        assert await auditor.record(AuditDraft(action="login_failed", actor="x")) is None
        assert auditor.m_failed.get(action="play") == 1
        assert auditor.m_failed.get(action="login_failed") == 1
        store.down = False
        entry = await auditor.record(AuditDraft(action="play", actor="x", target="r1"))
        assert entry is not None and entry.seq == 1  # the head was read back

    asyncio.run(scenario())


def test_flood_of_failed_logins_is_aggregated() -> None:
    now = [0.0]
    gate = FloodGate(lambda: now[0])
    admitted = sum(gate.admit(AuditDraft(action="login_failed", actor="admin",
                                         source_address="127.0.0.9")) for _ in range(10_000))
    assert admitted == 5
    # Many addresses: at most the overall burst gets through one by one.
    admitted = sum(gate.admit(AuditDraft(action="login_failed",
                                         source_address=f"10.0.{i // 250}.{i % 250}"))
                   for i in range(5000))
    assert admitted == 25
    assert gate.aggregate() == []  # not a minute yet
    now[0] = 61.0
    [aggregate] = gate.aggregate()
    assert aggregate.action == "login_failed"
    assert aggregate.detail["aggregated"] == 9995 + 4975
    assert aggregate.detail["sources"] == 1 + 4975  # the addresses something was held from
    assert gate.aggregate() == []
    # Signed-in actions are never gated.
    assert all(gate.admit(AuditDraft(action="play", actor="x")) for _ in range(1000))


def test_repeats_of_a_read_are_recorded_once_per_window() -> None:
    now = [0.0]
    repeats = RepeatFilter(lambda: now[0])
    play = AuditDraft(action="play", actor="x", target="r1", source_address="10.0.0.1")
    assert not repeats.is_repeat(play)
    repeats.remember(play)
    assert repeats.is_repeat(play)
    assert not repeats.is_repeat(AuditDraft(action="play", actor="y", target="r1",
                                            source_address="10.0.0.1"))
    now[0] = 601.0
    assert not repeats.is_repeat(play)
    delete = AuditDraft(action="delete", actor="x", target="r1")
    repeats.remember(delete)
    assert not repeats.is_repeat(delete)  # a change is always recorded


def _entries(n: int, node: str = "a", start: int = 0) -> list[AuditRecorded]:
    from contracts.v1.audit import seal

    out, head = [], EMPTY_HEAD
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    for i in range(n):
        entry = seal(head, node_id=node, at=t0 + timedelta(minutes=i),
                     action="play" if i % 2 else "search", actor=f"user{i % 3}",
                     target=f"rec{i}", source_address="10.0.0.1",
                     detail={"number": "+1 (555) 123", "i": i})
        out.append(entry)
        head = head_of(entry)
    return out[start:]


def _fill(projection: AuditProjection, node: str, entries: list[AuditRecorded],
          first_seq: int = 1) -> None:
    projection.apply([(f"callrec.v1.{node}.evt.audit.recorded", first_seq + i,
                       e.model_dump_json().encode()) for i, e in enumerate(entries)])


def test_projection_filters_pages_and_exports(tmp_path: Path) -> None:
    path = tmp_path / "web" / "audit.sqlite"
    projection = AuditProjection(path)
    assert path.stat().st_mode & 0o777 == 0o600
    entries = _entries(30)
    _fill(projection, "a", entries)
    _fill(projection, "a", entries[:3])  # replayed: duplicates ignored
    total, rows = projection.query(AuditQuery(limit=10))
    assert total == 30 and len(rows) == 10 and rows[0].seq == 30
    total, rows = projection.query(AuditQuery(actor="user1", action="play"))
    assert total == len([e for e in entries if e.actor == "user1" and e.action == "play"])
    start = datetime(2026, 12, 1, 0, 10, tzinfo=UTC)
    total, _ = projection.query(AuditQuery(start=start, end=start + timedelta(minutes=4)))
    assert total == 5
    assert projection.query(AuditQuery(node="b"))[0] == 0
    assert sum(len(b) for b in projection.export(AuditQuery())) == 30
    assert projection.last_sequence == 30
    again = AuditProjection(path)
    assert again.last_sequence == 30


def test_projection_verifies_and_finds_an_edited_row(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    projection = AuditProjection(path)
    entries = _entries(2500)  # more than one read batch
    _fill(projection, "a", entries)
    [verdict] = projection.verify({"a": head_of(entries[-1])})
    assert verdict.status == "verified" and verdict.verified_seq == 2500
    with sqlite3.connect(path) as db:
        db.execute("UPDATE audit SET actor = 'nobody' WHERE chain = 'a' AND seq = 1234")
    [verdict] = projection.verify({"a": head_of(entries[-1])})
    assert verdict.status == "broken" and verdict.broken_seq == 1234


def test_entry_claiming_another_node_stays_in_the_forgers_chain(tmp_path: Path) -> None:
    projection = AuditProjection(tmp_path / "audit.sqlite")
    a_entries, b_entries = _entries(3, "a"), _entries(3, "b")
    _fill(projection, "a", a_entries)
    _fill(projection, "b", b_entries, first_seq=10)
    from contracts.v1.audit import seal
    forged = seal(head_of(b_entries[-1]), node_id="a", at=datetime.now(UTC), action="login",
                  actor="admin")
    _fill(projection, "b", [forged], first_seq=20)
    verdicts = {v.node_id: v for v in projection.verify({"a": head_of(a_entries[-1]),
                                                         "b": head_of(forged)})}
    assert verdicts["a"].status == "verified"
    assert verdicts["b"].status == "broken" and verdicts["b"].broken_seq == 4
    assert chain_of(SUBJECT_A) == "a"
    assert chain_of("callrec.v1.a.evt.user.upserted") is None
