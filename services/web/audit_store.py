"""This node's copy of every node's audit chain: a SQLite projection of the cluster's
`audit.recorded` facts, for the audit page's filters, its CSV export and verification.

It lives in the web's own data directory (`web/audit.sqlite`, mode 0600), outside the
catalog: the audit is the web's concern, and a copy of its own lets verification read
exactly what this node holds. Each entry is filed under the chain of the node whose
subject it was stored on (the bus only lets a node's own identities publish there),
never under the node it claims, so a forged entry shows up in the forger's chain.
Rows keep the fields the hash covers in their canonical spelling, so verification
recomputes every hash from what is stored here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from contracts import subjects
from contracts.v1.audit import (
    AuditHead,
    ChainVerdict,
    canonical_detail,
    canonical_parts,
    canonical_time,
    verify_chain,
)
from contracts.v1.events import AuditRecorded, AuditValue

log = structlog.get_logger(component="web")

AUDIT_TYPE = "audit.recorded"
MAX_PAGE = 500
CSV_BATCH = 1000
VERIFY_BATCH = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    stream_seq INTEGER NOT NULL,
    chain TEXT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    node_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    at TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    actor TEXT,
    action TEXT NOT NULL,
    target TEXT,
    source_address TEXT,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_chain_seq ON audit (chain, seq, id);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at_us, id);
CREATE INDEX IF NOT EXISTS audit_actor ON audit (actor, at_us);
CREATE INDEX IF NOT EXISTS audit_action ON audit (action, at_us);
CREATE INDEX IF NOT EXISTS audit_target ON audit (target, at_us);
CREATE INDEX IF NOT EXISTS audit_chain_at ON audit (chain, at_us);
CREATE TABLE IF NOT EXISTS progress (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""
COLUMNS = ("stream_seq, chain, event_id, node_id, seq, prev_hash, hash, at, actor, action, "
           "target, source_address, outcome, detail")


@dataclass(frozen=True)
class AuditRow:
    """One stored entry, as read back (it has every field the hash covers)."""

    chain: str
    stream_seq: int
    event_id: str
    node_id: str
    seq: int
    prev_hash: str
    hash: str
    at: datetime
    actor: str | None
    action: str
    target: str | None
    source_address: str | None
    outcome: str
    detail: Mapping[str, AuditValue]

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.chain, "seq": self.seq, "at": canonical_time(self.at),
            "actor": self.actor, "action": self.action, "target": self.target,
            "source_address": self.source_address, "outcome": self.outcome,
            "detail": dict(self.detail), "hash": self.hash, "prev_hash": self.prev_hash,
            "claimed_node": self.node_id if self.node_id != self.chain else None,
        }


@dataclass(frozen=True, slots=True)
class StoredLink:
    """A stored entry as verification needs it: its links and its canonical bytes."""

    node_id: str
    seq: int
    prev_hash: str
    hash: str
    canonical: bytes

    @classmethod
    def of(cls, values: tuple[Any, ...]) -> StoredLink:
        (event_id, node_id, seq, prev_hash, digest, at, actor, action, target, source,
         outcome, detail, _) = values
        try:
            number = int(seq)
            canonical = canonical_parts(
                event_id=str(event_id), node_id=str(node_id), seq=number,
                prev_hash=str(prev_hash), at=str(at), actor=actor, action=str(action),
                target=target, source_address=source, outcome=str(outcome),
                detail=str(detail))
        except (TypeError, ValueError):
            number, canonical = -1, b""  # a row edited into another type: it cannot match
        return cls(str(node_id), number, str(prev_hash), str(digest), canonical)

    def rehash(self) -> str:
        return hashlib.sha256(self.canonical).hexdigest()


@dataclass(frozen=True)
class AuditQuery:
    """The page's filters; every one optional, all of them combined with AND."""

    actor: str | None = None
    action: str | None = None
    node: str | None = None
    target: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    limit: int = 50
    offset: int = 0

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("actor", self.actor), ("action", self.action),
                              ("chain", self.node), ("target", self.target)):
            if value:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.start is not None:
            clauses.append("at_us >= ?")
            args.append(_micros(self.start))
        if self.end is not None:
            clauses.append("at_us <= ?")
            args.append(_micros(self.end))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


@dataclass
class ApplyStats:
    applied: int = 0
    duplicates: int = 0
    undecodable: int = 0
    foreign: list[str] = field(default_factory=list)


def _micros(at: datetime) -> int:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    delta = at.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def chain_of(subject: str) -> str | None:
    """The node whose stream a fact was stored in, from its subject."""
    parts = subject.split(".")
    if len(parts) < 4:
        return None
    try:
        node = subjects.check_node_id(parts[2])
    except ValueError:
        return None
    return node if subject == subjects.event(node, AUDIT_TYPE) else None


def _row(values: tuple[Any, ...]) -> AuditRow:
    (stream_seq, chain, event_id, node_id, seq, prev_hash, digest, at, actor, action, target,
     source, outcome, detail) = values
    # A row edited into nonsense still reads back (and then fails its hash).
    try:
        parsed = json.loads(detail)
    except (TypeError, ValueError):
        parsed = {"unreadable": str(detail)[:200]}
    try:
        when = datetime.fromisoformat(str(at))
    except ValueError:
        when = datetime(1970, 1, 1, tzinfo=UTC)
    return AuditRow(chain=chain, stream_seq=stream_seq, event_id=event_id, node_id=node_id,
                    seq=seq, prev_hash=prev_hash, hash=digest, at=when, actor=actor,
                    action=action, target=target, source_address=source, outcome=outcome,
                    detail=parsed if isinstance(parsed, dict) else {"value": str(parsed)})


class AuditProjection:
    """SQLite behind one lock: the follower writes, requests read (in threads)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            if side.exists():
                os.chmod(side, 0o600)
        row = self.db.execute("SELECT v FROM progress WHERE k = 'stream_seq'").fetchone()
        self.last_sequence: int = int(row[0]) if row else 0

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def reset(self) -> None:
        """Forget everything (the node's CLUSTER stream was rebuilt): read it again."""
        with self.lock:
            self.db.execute("DELETE FROM audit")
            self.db.execute("DELETE FROM progress")
            self.last_sequence = 0

    # ---- writing ------------------------------------------------------------------

    def apply(self, items: list[tuple[str, int, bytes]]) -> ApplyStats:
        """Store (subject, CLUSTER sequence, data) of audit facts; duplicates (same event
        id) are ignored, undecodable ones counted and skipped."""
        stats = ApplyStats()
        rows: list[tuple[Any, ...]] = []
        top = self.last_sequence
        for subject, stream_seq, data in items:
            top = max(top, stream_seq)
            chain = chain_of(subject)
            try:
                entry = AuditRecorded.model_validate_json(data)
            except ValidationError as exc:
                stats.undecodable += 1
                log.error("audit_entry_undecodable", subject=subject, seq=stream_seq,
                          error=str(exc)[:200])
                continue
            if chain is None:
                stats.undecodable += 1
                continue
            if entry.node_id != chain:
                stats.foreign.append(chain)
                log.warning("audit_entry_claims_other_node", chain=chain,
                            claimed=entry.node_id, seq=entry.seq, stream_seq=stream_seq)
            rows.append((stream_seq, chain, entry.event_id, entry.node_id, entry.seq,
                         entry.prev_hash, entry.hash, canonical_time(entry.at), entry.actor,
                         entry.action, entry.target, entry.source_address, entry.outcome,
                         canonical_detail(entry.detail), _micros(entry.at)))
        with self.lock:
            self.db.execute("BEGIN")
            try:
                before = self.db.total_changes
                self.db.executemany(
                    f"INSERT OR IGNORE INTO audit ({COLUMNS}, at_us) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows)
                stats.applied = self.db.total_changes - before
                self.db.execute(
                    "INSERT INTO progress (k, v) VALUES ('stream_seq', ?) "
                    "ON CONFLICT (k) DO UPDATE SET v = excluded.v", (top,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.last_sequence = top
        stats.duplicates = len(rows) - stats.applied
        return stats

    # ---- reading ------------------------------------------------------------------

    def query(self, q: AuditQuery) -> tuple[int, list[AuditRow]]:
        """(matching entries, one page of them, newest first)."""
        where, args = q.where()
        limit = max(1, min(q.limit, MAX_PAGE))
        with self.lock:
            total = int(self.db.execute(f"SELECT COUNT(*) FROM audit{where}", args).fetchone()[0])
            rows = self.db.execute(
                f"SELECT {COLUMNS} FROM audit{where} ORDER BY at_us DESC, id DESC "
                "LIMIT ? OFFSET ?", [*args, limit, max(0, q.offset)]).fetchall()
        return total, [_row(r) for r in rows]

    def export(self, q: AuditQuery) -> Iterator[list[AuditRow]]:
        """Every matching entry, newest first, a batch at a time (no page limit)."""
        where, args = q.where()
        cursor: tuple[int, int] | None = None
        while True:
            clause, extra = where, list(args)
            if cursor is not None:
                clause += (" AND " if where else " WHERE ") + "(at_us, id) < (?, ?)"
                extra += [cursor[0], cursor[1]]
            with self.lock:
                found = self.db.execute(
                    f"SELECT {COLUMNS}, at_us, id FROM audit{clause} "
                    "ORDER BY at_us DESC, id DESC LIMIT ?", [*extra, CSV_BATCH]).fetchall()
            if not found:
                return
            cursor = (found[-1][-2], found[-1][-1])
            yield [_row(r[:-2]) for r in found]
            if len(found) < CSV_BATCH:
                return

    def chains(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT DISTINCT chain FROM audit")]

    def chain_links(self, chain: str) -> Iterator[StoredLink]:
        """One node's chain in this copy, in chain order, as stored (a batch at a time)."""
        after = (0, 0)
        while True:
            with self.lock:
                found = self.db.execute(
                    "SELECT event_id, node_id, seq, prev_hash, hash, at, actor, action, target, "
                    "source_address, outcome, detail, id FROM audit "
                    "WHERE chain = ? AND (seq, id) > (?, ?) ORDER BY seq, id LIMIT ?",
                    (chain, after[0], after[1], VERIFY_BATCH)).fetchall()
            for values in found:
                yield StoredLink.of(values)
            if len(found) < VERIFY_BATCH:
                return
            after = (found[-1][2], found[-1][-1])

    def verify(self, announced: Mapping[str, AuditHead | None]) -> list[ChainVerdict]:
        """Every chain this copy holds or a node announces, checked (see verify_chain)
        from the stored text itself: a row edited in any way fails its hash."""
        names = sorted(set(self.chains()) | set(announced))
        return [verify_chain(name, self.chain_links(name), announced.get(name),
                             StoredLink.rehash) for name in names]
