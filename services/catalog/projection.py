"""The catalog read model: recordings projected from events into SQLite.

SQLite is only a cache of the event stream: the checkpoint (last applied stream
sequence) is written in the same transaction as each change, so a crash never
applies an event twice or skips one, and deleting the file rebuilds it by replay.
Indexed columns answer searches; the full event JSON answers "get" unchanged.
Hold and purge facts are kept as facts, and whether a recording is purged is decided
by the one rule of `contracts.v1.holds` over all of them, so every node ends in the
same state whatever order they arrive in. A purged recording's row is hidden, not
deleted: a hold fact that arrives late (a partition) can void the purge and bring it
back, and a completion that arrives after its purge stays hidden.
A call completed twice (a peer's interrupted takeover copy and the origin's own) has
one row: the winner by `contracts.v1.winner` (most audio, then the origin's), which a
better completion replaces whatever the order of arrival.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal

from contracts.v1.events import (
    LegalHoldChanged,
    RecordingCompleted,
    RecordingPurged,
    RecordingWaveformComputed,
)
from contracts.v1.holds import Facts, HoldFact, PurgeFact
from contracts.v1.holds import micros as to_micros
from contracts.v1.rpc import SearchRequest, SearchResult, Waveform
from contracts.v1.winner import better

from . import waveforms

SCHEMA_VERSION = 4
"""Bump when the tables change: an old file is then dropped and rebuilt by replay."""

STREAM_KEY = "events"
"""Checkpoint row of the node's own event stream (room for sourced peer streams)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    recording_id TEXT PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    node_id      TEXT NOT NULL,
    started_us   INTEGER NOT NULL,
    ended_us     INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    sequence     INTEGER NOT NULL,
    event_json   TEXT NOT NULL,
    purged       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS recordings_started ON recordings (started_us DESC, recording_id)
    WHERE purged = 0;
CREATE TABLE IF NOT EXISTS recording_numbers (
    number       TEXT NOT NULL,
    recording_id TEXT NOT NULL,
    PRIMARY KEY (number, recording_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recording_numbers_recording ON recording_numbers (recording_id);
CREATE TABLE IF NOT EXISTS hold_facts (
    recording_id TEXT NOT NULL,
    at_us        INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    hold         INTEGER NOT NULL,
    sequence     INTEGER NOT NULL,
    PRIMARY KEY (recording_id, at_us, event_id, hold)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS purge_facts (
    recording_id TEXT NOT NULL,
    at_us        INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    PRIMARY KEY (recording_id, at_us, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    stream        TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL
);
"""

# Tables of every layout so far: an old file's are dropped before a rebuild.
_TABLES = ("recordings", "recording_numbers", "purged", "hold_facts", "purge_facts",
           "checkpoints")

Effect = Literal["cataloged", "replaced", "purged", "restored", "held", "released"]
"""What an event did to the catalog: a recording appeared, was replaced by a better
copy of the same call, was purged, came back because a hold voided its purge, or its
hold state changed."""


def _like_pattern(fragment: str) -> str:
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class Catalog:
    """Recordings projected from events; thread-safe so searches can run off the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=OFF")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version != SCHEMA_VERSION:
            # An unknown layout is thrown away: the stream is the truth, replay rebuilds it.
            for table in _TABLES:
                self._db.execute(f"DROP TABLE IF EXISTS {table}")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        waveforms.create(self._db)
        self._last_sequence = self._load_checkpoint()
        self._count = int(
            self._db.execute("SELECT COUNT(*) FROM recordings WHERE purged = 0").fetchone()[0]
        )

    def _load_checkpoint(self) -> int:
        row = self._db.execute(
            "SELECT last_sequence FROM checkpoints WHERE stream = ?", (STREAM_KEY,)
        ).fetchone()
        return int(row[0]) if row else 0

    @property
    def last_sequence(self) -> int:
        """Last stream sequence applied; following resumes right after it."""
        return self._last_sequence

    @property
    def count(self) -> int:
        """Recordings shown (purged ones are hidden)."""
        return self._count

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def apply(self, event: Any, seq: int) -> bool:
        """Apply one event at stream sequence `seq`; returns True when the model changed.

        Events at or below the checkpoint are replays and ignored. Event types the
        catalog does not index still advance the checkpoint, so a restart does not
        re-read them.
        """
        return bool(self.apply_batch([(event, seq)]))

    def apply_batch(self, items: list[tuple[Any, int]]) -> list[tuple[Any, Effect]]:
        """Apply events in one transaction (catch-up speed); returns those that changed
        what the catalog shows, with what they did."""
        changed: list[tuple[Any, Effect]] = []
        with self._lock:
            items = [(event, seq) for event, seq in items if seq > self._last_sequence]
            if not items:
                return changed
            delta = 0
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for event, seq in items:
                    effect: Effect | None = None
                    if isinstance(event, RecordingCompleted):
                        effect = self._insert(event, seq)
                    elif isinstance(event, RecordingPurged | LegalHoldChanged):
                        effect = self._fact(event, seq)
                    elif isinstance(event, RecordingWaveformComputed):
                        waveforms.apply(self._db, event, seq)
                    if effect is not None:
                        changed.append((event, effect))
                        delta += {"cataloged": 1, "restored": 1, "purged": -1}.get(effect, 0)
                last = max(seq for _, seq in items)
                self._db.execute(
                    "INSERT INTO checkpoints (stream, last_sequence) VALUES (?, ?) "
                    "ON CONFLICT(stream) DO UPDATE SET last_sequence = excluded.last_sequence",
                    (STREAM_KEY, last),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._last_sequence = last
            self._count += delta
            return changed

    def _insert(self, event: RecordingCompleted, seq: int) -> Effect | None:
        """Catalog a completion; hidden at once when its purge is already in effect.
        A second completion of the same call replaces the row only when it wins."""
        row = self._db.execute(
            "SELECT event_json, purged FROM recordings WHERE recording_id = ?",
            (event.recording_id,),
        ).fetchone()
        if row is not None:
            return self._replace(event, seq, RecordingCompleted.model_validate_json(row[0]),
                                 bool(row[1]))
        purged = bool(self._db.execute(
            "SELECT 1 FROM purge_facts WHERE recording_id = ? LIMIT 1", (event.recording_id,)
        ).fetchone()) and self._facts(event.recording_id).purged
        cursor = self._db.execute(
            "INSERT INTO recordings (recording_id, event_id, node_id, started_us, ended_us, "
            "duration_ms, sequence, event_json, purged) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                event.recording_id,
                event.event_id,
                event.node_id,
                to_micros(event.started_at),
                to_micros(event.ended_at),
                event.duration_ms,
                seq,
                event.model_dump_json(),
                int(purged),
            ),
        )
        if cursor.rowcount != 1:
            return None  # same recording or same event already known
        numbers = sorted(set(event.metadata.numbers()))
        self._db.executemany(
            "INSERT OR IGNORE INTO recording_numbers (number, recording_id) VALUES (?, ?)",
            [(number, event.recording_id) for number in numbers],
        )
        return None if purged else "cataloged"

    def _replace(self, event: RecordingCompleted, seq: int, current: RecordingCompleted,
                 purged: bool) -> Effect | None:
        if not better(event, current):
            return None  # the same fact again, or a copy that loses to the one listed
        self._db.execute(
            "UPDATE recordings SET event_id = ?, node_id = ?, started_us = ?, ended_us = ?, "
            "duration_ms = ?, sequence = ?, event_json = ? WHERE recording_id = ?",
            (event.event_id, event.node_id, to_micros(event.started_at),
             to_micros(event.ended_at), event.duration_ms, seq, event.model_dump_json(),
             event.recording_id),
        )
        self._db.execute("DELETE FROM recording_numbers WHERE recording_id = ?",
                         (event.recording_id,))
        self._db.executemany(
            "INSERT OR IGNORE INTO recording_numbers (number, recording_id) VALUES (?, ?)",
            [(number, event.recording_id) for number in sorted(set(event.metadata.numbers()))],
        )
        return None if purged else "replaced"

    def _fact(self, event: RecordingPurged | LegalHoldChanged, seq: int) -> Effect | None:
        """Keep a hold or purge fact, then re-decide the recording by the shared rule."""
        rid = event.recording_id
        before = self._facts(rid)
        if isinstance(event, LegalHoldChanged):
            hold = HoldFact.of(event)
            self._db.execute(
                "INSERT INTO hold_facts (recording_id, at_us, event_id, hold, sequence) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (rid, hold.at, hold.event_id, int(hold.hold), seq),
            )
        else:
            purge = PurgeFact.of(event)
            self._db.execute(
                "INSERT INTO purge_facts (recording_id, at_us, event_id, sequence) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (rid, purge.at, purge.event_id, seq),
            )
        after = self._facts(rid)
        if after.purged != before.purged:
            cursor = self._db.execute(
                "UPDATE recordings SET purged = ? WHERE recording_id = ?",
                (int(after.purged), rid),
            )
            if cursor.rowcount:
                return "purged" if after.purged else "restored"
        if after.held != before.held:
            return "held" if after.held else "released"
        return None

    def _facts(self, recording_id: str) -> Facts:
        holds = self._db.execute(
            "SELECT at_us, event_id, hold FROM hold_facts WHERE recording_id = ?",
            (recording_id,),
        ).fetchall()
        purges = self._db.execute(
            "SELECT at_us, event_id FROM purge_facts WHERE recording_id = ?", (recording_id,)
        ).fetchall()
        return Facts(
            holds={HoldFact(int(at), str(eid), bool(hold)) for at, eid, hold in holds},
            purges={PurgeFact(int(at), str(eid)) for at, eid in purges},
        )

    def is_purged(self, recording_id: str) -> bool:
        with self._lock:
            return self._facts(recording_id).purged

    def is_held(self, recording_id: str) -> bool:
        """Under legal hold now, by the shared last-writer-wins rule."""
        with self._lock:
            return self._facts(recording_id).held

    def get(self, recording_id: str) -> RecordingCompleted | None:
        with self._lock:
            row = self._db.execute(
                "SELECT event_json FROM recordings WHERE recording_id = ? AND purged = 0",
                (recording_id,),
            ).fetchone()
        return RecordingCompleted.model_validate_json(row[0]) if row else None

    def waveform(self, recording_id: str) -> Waveform | None:
        with self._lock:
            return waveforms.get(self._db, recording_id)

    def search(
        self, request: SearchRequest, visible_numbers: list[str] | None = None
    ) -> SearchResult:
        """Newest first. `visible_numbers` None means everything, [] means nothing.

        `request.number` matches any participant number containing it (so exact too);
        `visible_numbers` must match a participant number exactly.
        """
        where: list[str] = ["r.purged = 0"]
        params: list[Any] = []
        if request.start_from is not None:
            where.append("r.started_us >= ?")
            params.append(to_micros(request.start_from))
        if request.start_to is not None:
            where.append("r.started_us < ?")
            params.append(to_micros(request.start_to))
        if request.number:
            where.append(
                "r.recording_id IN (SELECT recording_id FROM recording_numbers "
                "WHERE number LIKE ? ESCAPE '\\')"
            )
            params.append(_like_pattern(request.number))
        if visible_numbers is not None:
            wanted = sorted(set(visible_numbers))
            if not wanted:
                return SearchResult(total=0, items=[])
            marks = ",".join("?" for _ in wanted)
            where.append(
                "r.recording_id IN (SELECT recording_id FROM recording_numbers "
                f"WHERE number IN ({marks}))"
            )
            params.extend(wanted)
        clause = f"WHERE {' AND '.join(where)}"
        with self._lock:
            total = int(
                self._db.execute(
                    f"SELECT COUNT(*) FROM recordings r {clause}", params
                ).fetchone()[0]
            )
            rows = self._db.execute(
                f"SELECT r.event_json FROM recordings r {clause} "
                "ORDER BY r.started_us DESC, r.recording_id DESC LIMIT ? OFFSET ?",
                [*params, request.limit, request.offset],
            ).fetchall()
        items = [RecordingCompleted.model_validate_json(row[0]) for row in rows]
        return SearchResult(total=total, items=items)
