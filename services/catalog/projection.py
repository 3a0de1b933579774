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
Notes (append-only, full-text indexed with FTS5) and tags (per recording and tag the
latest fact wins, by `contracts.v1.tags`) are projected beside the recordings, keyed by
recording id, since they may arrive before the completion they annotate.
Participant numbers are indexed as sent and as the extension the node's number plan
(`contracts.v1.numbers`) maps them to; a file indexed under another plan is rebuilt.
A call completed twice (a peer's interrupted takeover copy and the origin's own) has
one row: the winner by `contracts.v1.winner` (most audio, then the origin's), which a
better completion replaces whatever the order of arrival.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from contracts.v1.events import (
    EventBase,
    LegalHoldChanged,
    RecordingCompleted,
    RecordingNoteAdded,
    RecordingPurged,
    RecordingTagChanged,
    RecordingWaveformComputed,
    type_of,
)
from contracts.v1.holds import Facts, HoldFact, PurgeFact
from contracts.v1.holds import micros as to_micros
from contracts.v1.numbers import NumberPlan
from contracts.v1.rpc import Annotations, Note, SearchRequest, SearchResult, Waveform
from contracts.v1.tags import TagFact, normalize_tag, tagged
from contracts.v1.winner import better

from . import waveforms

SCHEMA_VERSION = 6
"""Bump when the tables change: an old file is then dropped and rebuilt by replay."""

APPLIED: tuple[type[EventBase], ...] = (
    RecordingCompleted, RecordingPurged, LegalHoldChanged, RecordingWaveformComputed,
    RecordingNoteAdded, RecordingTagChanged,
)
"""The events `Catalog.apply_batch` uses: the catalog follows these alone (each ending
also brings a copy's `recording.replicated` per peer, which it would parse for nothing)."""
APPLIED_TYPES: tuple[str, ...] = tuple(type_of(event) for event in APPLIED)

STREAM_KEY = "events"
"""Checkpoint row of the node's own event stream (room for sourced peer streams)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS recordings (
    rid          INTEGER PRIMARY KEY,
    recording_id TEXT NOT NULL UNIQUE,
    event_id     TEXT NOT NULL UNIQUE,
    node_id      TEXT NOT NULL,
    started_us   INTEGER NOT NULL,
    ended_us     INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    direction    TEXT NOT NULL,
    interrupted  INTEGER NOT NULL,
    numbers      TEXT NOT NULL,
    parties      TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    purged       INTEGER NOT NULL DEFAULT 0
);
-- The full fact, apart: the rows above stay small (dozens per page), so a search that
-- tests each row of a time range reads few pages; only a page's rows read their JSON.
CREATE TABLE IF NOT EXISTS recording_events (
    rid        INTEGER PRIMARY KEY,
    event_json TEXT NOT NULL
);
-- Covering every column a search tests row by row: walking a time range reads this
-- index's pages in order and never the table's (random) pages.
CREATE INDEX IF NOT EXISTS recordings_started ON recordings (
    started_us, recording_id, duration_ms, direction, interrupted, node_id, numbers, parties)
    WHERE purged = 0;
-- Slim: how many recordings a time range holds is counted in a few pages.
CREATE INDEX IF NOT EXISTS recordings_started_slim ON recordings (started_us) WHERE purged = 0;
CREATE INDEX IF NOT EXISTS recordings_duration ON recordings (duration_ms, recording_id)
    WHERE purged = 0;
CREATE TABLE IF NOT EXISTS terms (
    tid  INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    UNIQUE (kind, text)
);
-- Substrings of terms (3 characters or more) found without reading every term.
CREATE VIRTUAL TABLE IF NOT EXISTS terms_fts USING fts5(
    text, content='terms', content_rowid='tid', tokenize='trigram');
-- A term's recordings in time order: "these numbers in this time range" is one short
-- range per number, whatever the size of the catalog.
CREATE TABLE IF NOT EXISTS recording_terms (
    tid        INTEGER NOT NULL,
    started_us INTEGER NOT NULL,
    rid        INTEGER NOT NULL,
    PRIMARY KEY (tid, started_us, rid)
) WITHOUT ROWID;
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
CREATE TABLE IF NOT EXISTS tag_facts (
    recording_id TEXT NOT NULL,
    tag          TEXT NOT NULL,
    at_us        INTEGER NOT NULL,
    event_id     TEXT NOT NULL,
    added        INTEGER NOT NULL,
    sequence     INTEGER NOT NULL,
    PRIMARY KEY (recording_id, tag, at_us, event_id, added)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recording_tags (
    recording_id TEXT NOT NULL,
    tag          TEXT NOT NULL,
    PRIMARY KEY (recording_id, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recording_tags_tag ON recording_tags (tag, recording_id);
CREATE TABLE IF NOT EXISTS notes (
    nid          INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    recording_id TEXT NOT NULL,
    note_id      TEXT NOT NULL,
    at_us        INTEGER NOT NULL,
    author       TEXT NOT NULL,
    text         TEXT NOT NULL,
    sequence     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_recording ON notes (recording_id, at_us, event_id);
CREATE VIRTUAL TABLE IF NOT EXISTS notes_fts USING fts5(
    text, content='notes', content_rowid='nid', tokenize='unicode61 remove_diacritics 2');
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    stream        TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL
);
"""

# Tables of every layout so far: an old file's are dropped before a rebuild.
_TABLES = ("recordings", "recording_events", "recording_numbers", "purged", "hold_facts",
           "purge_facts", "parties_fts", "terms_fts", "terms", "recording_terms", "tag_facts",
           "recording_tags", "notes_fts", "notes", "meta", "waveforms", "checkpoints")

NARROW_ROWS = 20_000
"""A start-time range with at most this many recordings is searched by walking it in
the covering time index and testing each row's text, tags and notes; a wider one (or
none) looks number and name fragments up in the dictionary of distinct terms first
and lets their recordings (and tags' and notes') drive. Exact numbers (visibility, a
user or group filter) always come from `recording_terms`, one range per number."""

WALK_ROWS = 50_000
WALK_MIN = 2_000
"""A page sorted by start time is read by walking the time index when that should meet
its rows within about WALK_ROWS recordings (matches are dense enough); with WALK_MIN
matches or fewer, sorting them all is cheap anyway."""

MMAP_BYTES = 4 << 30
FTS_TAIL = 6

TermKind = Literal["n", "p"]
"""A term is a participant number form ("n": as sent, or its extension) or a
participant's name ("p", lower case)."""

Effect = Literal["cataloged", "replaced", "purged", "restored", "held", "released",
                 "noted", "tagged", "untagged"]
"""What an event did to the catalog: a recording appeared, was replaced by a better
copy of the same call, was purged, came back because a hold voided its purge, its
hold state changed, it got a note, or a tag was added or removed."""


def _like_pattern(fragment: str) -> str:
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _fts_phrase(fragment: str) -> str:
    """One FTS5 string token: the user's text can never be read as query syntax."""
    return '"' + fragment.replace('"', '""') + '"'


def note_query(text: str) -> str | None:
    """FTS5 query for "all these words, each as a word prefix" (None: no word)."""
    words = [w for w in "".join(c if c.isalnum() else " " for c in text).split() if w]
    if not words:
        return None
    return " AND ".join(f"{_fts_phrase(word)}*" for word in words[:16])


def terms_of(event: RecordingCompleted, plan: NumberPlan) -> set[tuple[TermKind, str]]:
    """The numbers (each form) and names a recording is found by."""
    found: set[tuple[TermKind, str]] = {("n", n) for n in plan.forms(event.metadata.numbers())}
    found.update(("p", p.name.lower()) for p in event.metadata.participants if p.name)
    return found


def terms_text(terms: set[tuple[TermKind, str]], kinds: str = "np") -> str:
    """What a narrow search tests row by row with LIKE: the terms of these kinds, lower
    case, one per line (`numbers` and `parties` columns)."""
    return "\n".join(sorted({text.lower() for kind, text in terms if kind in kinds}))


def _text(value: str | None) -> str | None:
    return (value.strip() or None) if value else None


@dataclass(frozen=True)
class _Query:
    where: list[str]
    params: list[Any]
    empty: bool = False


class Catalog:
    """Recordings projected from events; thread-safe so searches can run off the loop."""

    def __init__(self, path: Path, plan: NumberPlan | None = None) -> None:
        self.path = path
        self.plan = plan if plan is not None else NumberPlan()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=OFF")
        self._db.execute("PRAGMA cache_size=-65536")  # 64 MiB
        # Searches read the indexes through the OS page cache without a copy per page.
        self._db.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version != SCHEMA_VERSION or self._stored_plan() != self.plan.fingerprint():
            # An unknown layout or another number plan is thrown away: the stream is
            # the truth, replay rebuilds it.
            for table in _TABLES:
                self._db.execute(f"DROP TABLE IF EXISTS {table}")
            self._db.executescript(_SCHEMA)
            self._db.execute("INSERT INTO meta (key, value) VALUES ('number_plan', ?)",
                             (self.plan.fingerprint(),))
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        waveforms.create(self._db)
        self._last_sequence = self._load_checkpoint()
        self._count = int(
            self._db.execute("SELECT COUNT(*) FROM recordings WHERE purged = 0").fetchone()[0]
        )

    def _stored_plan(self) -> str | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'number_plan'").fetchone()
        except sqlite3.OperationalError:
            return None  # no meta table: a layout from before number plans
        return str(row[0]) if row else None

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
                    elif isinstance(event, RecordingNoteAdded):
                        effect = self._note(event, seq)
                    elif isinstance(event, RecordingTagChanged):
                        effect = self._tag(event, seq)
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

    def _row_values(self, event: RecordingCompleted) -> tuple[Any, ...]:
        terms = terms_of(event, self.plan)
        return (
            event.event_id, event.node_id, to_micros(event.started_at),
            to_micros(event.ended_at), event.duration_ms, event.metadata.direction,
            int(event.interrupted), terms_text(terms, "n"), terms_text(terms),
        )

    def _index_terms(self, rid: int, event: RecordingCompleted,
                     replaced: RecordingCompleted | None = None) -> None:
        """Index a recording's terms (after removing those of the copy it replaces)."""
        if replaced is not None:
            for kind, text in terms_of(replaced, self.plan):
                self._db.execute(
                    "DELETE FROM recording_terms WHERE tid = (SELECT tid FROM terms WHERE "
                    "kind = ? AND text = ?) AND started_us = ? AND rid = ?",
                    (kind, text, to_micros(replaced.started_at), rid))
        for kind, text in sorted(terms_of(event, self.plan)):
            cursor = self._db.execute("INSERT INTO terms (kind, text) VALUES (?, ?) "
                                      "ON CONFLICT DO NOTHING", (kind, text))
            if cursor.rowcount == 1:
                self._db.execute("INSERT INTO terms_fts (rowid, text) VALUES (?, ?)",
                                 (cursor.lastrowid, text))
            self._db.execute(
                "INSERT OR IGNORE INTO recording_terms (tid, started_us, rid) "
                "SELECT tid, ?, ? FROM terms WHERE kind = ? AND text = ?",
                (to_micros(event.started_at), rid, kind, text))

    def _insert(self, event: RecordingCompleted, seq: int) -> Effect | None:
        """Catalog a completion; hidden at once when its purge is already in effect.
        A second completion of the same call replaces the row only when it wins."""
        row = self._db.execute(
            "SELECT r.rid, e.event_json, r.purged FROM recordings r "
            "JOIN recording_events e ON e.rid = r.rid WHERE r.recording_id = ?",
            (event.recording_id,),
        ).fetchone()
        if row is not None:
            return self._replace(event, seq, int(row[0]),
                                 RecordingCompleted.model_validate_json(row[1]),
                                 bool(row[2]))
        purged = bool(self._db.execute(
            "SELECT 1 FROM purge_facts WHERE recording_id = ? LIMIT 1", (event.recording_id,)
        ).fetchone()) and self._facts(event.recording_id).purged
        values = self._row_values(event)
        cursor = self._db.execute(
            "INSERT INTO recordings (recording_id, event_id, node_id, started_us, ended_us, "
            "duration_ms, direction, interrupted, numbers, parties, sequence, purged) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (event.recording_id, *values, seq, int(purged)),
        )
        if cursor.rowcount != 1:
            return None  # same recording or same event already known
        rid = int(cursor.lastrowid or 0)
        self._db.execute("INSERT INTO recording_events (rid, event_json) VALUES (?, ?)",
                         (rid, event.model_dump_json()))
        self._index_terms(rid, event)
        return None if purged else "cataloged"

    def _replace(self, event: RecordingCompleted, seq: int, rid: int,
                 current: RecordingCompleted, purged: bool) -> Effect | None:
        if not better(event, current):
            return None  # the same fact again, or a copy that loses to the one listed
        values = self._row_values(event)
        self._db.execute(
            "UPDATE recordings SET event_id = ?, node_id = ?, started_us = ?, ended_us = ?, "
            "duration_ms = ?, direction = ?, interrupted = ?, numbers = ?, parties = ?, "
            "sequence = ? WHERE rid = ?",
            (*values, seq, rid),
        )
        self._db.execute("UPDATE recording_events SET event_json = ? WHERE rid = ?",
                         (event.model_dump_json(), rid))
        self._index_terms(rid, event, replaced=current)
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

    def _note(self, event: RecordingNoteAdded, seq: int) -> Effect | None:
        """Append a note (once per event id) and index its words."""
        cursor = self._db.execute(
            "INSERT INTO notes (event_id, recording_id, note_id, at_us, author, text, sequence) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (event.event_id, event.recording_id, event.note_id, to_micros(event.occurred_at),
             event.author, event.text, seq),
        )
        if cursor.rowcount != 1:
            return None
        self._db.execute("INSERT INTO notes_fts (rowid, text) VALUES (?, ?)",
                         (cursor.lastrowid, event.text))
        return "noted"

    def _tag(self, event: RecordingTagChanged, seq: int) -> Effect | None:
        """Keep the tag fact, then re-decide that (recording, tag) by the shared rule."""
        rid, tag = event.recording_id, normalize_tag(event.tag)
        if not tag:
            return None
        fact = TagFact.of(event)
        cursor = self._db.execute(
            "INSERT INTO tag_facts (recording_id, tag, at_us, event_id, added, sequence) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (rid, tag, fact.at, fact.event_id, int(fact.added), seq),
        )
        if cursor.rowcount != 1:
            return None
        facts = self._db.execute(
            "SELECT at_us, event_id, added FROM tag_facts WHERE recording_id = ? AND tag = ?",
            (rid, tag),
        ).fetchall()
        now = tagged(TagFact(int(at), str(eid), bool(added)) for at, eid, added in facts)
        if now:
            cursor = self._db.execute(
                "INSERT INTO recording_tags (recording_id, tag) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING", (rid, tag))
        else:
            cursor = self._db.execute(
                "DELETE FROM recording_tags WHERE recording_id = ? AND tag = ?", (rid, tag))
        if cursor.rowcount != 1:
            return None  # a fact that changed nothing (an older one, or a repeat)
        return "tagged" if now else "untagged"

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
                "SELECT e.event_json FROM recordings r JOIN recording_events e ON e.rid = r.rid "
                "WHERE r.recording_id = ? AND r.purged = 0",
                (recording_id,),
            ).fetchone()
        return RecordingCompleted.model_validate_json(row[0]) if row else None

    def waveform(self, recording_id: str) -> Waveform | None:
        with self._lock:
            return waveforms.get(self._db, recording_id)

    def annotations(self, recording_id: str) -> Annotations:
        """A recording's notes, oldest first, and its current tags (empty when unknown)."""
        with self._lock:
            notes = self._db.execute(
                "SELECT note_id, author, at_us, text FROM notes WHERE recording_id = ? "
                "ORDER BY at_us, event_id", (recording_id,),
            ).fetchall()
            tags = self._db.execute(
                "SELECT tag FROM recording_tags WHERE recording_id = ? ORDER BY tag",
                (recording_id,),
            ).fetchall()
        return Annotations(
            recording_id=recording_id,
            notes=[Note(note_id=nid, author=author, at=_from_micros(at), text=text)
                   for nid, author, at, text in notes],
            tags=[str(tag) for (tag,) in tags],
        )

    def _range_rows(self, request: SearchRequest, cap: int) -> int:
        """Recordings in the start-time range, counted up to `cap` (cheap: the index)."""
        if request.start_from is None and request.start_to is None:
            return self._count
        low = to_micros(request.start_from) if request.start_from is not None else -(2**62)
        high = to_micros(request.start_to) if request.start_to is not None else 2**62
        row = self._db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM recordings INDEXED BY recordings_started_slim "
            "WHERE purged = 0 "
            "AND started_us >= ? AND started_us < ? LIMIT ?)", (low, high, cap),
        ).fetchone()
        return int(row[0])

    def _query(self, request: SearchRequest, visible_numbers: list[str] | None,
               narrow: bool) -> _Query:
        """WHERE terms for a request; `narrow`: the time range is walked (see NARROW_ROWS)."""
        where: list[str] = ["r.purged = 0"]
        params: list[Any] = []
        if request.start_from is not None:
            where.append("r.started_us >= ?")
            params.append(to_micros(request.start_from))
        if request.start_to is not None:
            where.append("r.started_us < ?")
            params.append(to_micros(request.start_to))
        since = to_micros(request.start_from) if request.start_from is not None else None
        until = to_micros(request.start_to) if request.start_to is not None else None

        # Which id set drives a wide search: a number or name search or a user or group
        # filter picks few recordings; what the caller may see is then only tested.
        searched = bool(request.numbers_any is not None or _text(request.number)
                        or _text(request.number_or_name))

        def by_terms(condition: str, values: list[Any], drive: bool = True) -> None:
            """Recordings with a term matching `condition` (over `terms t`) in the time
            range: each matching term's recordings are one range of `recording_terms`.
            Unless `drive`, the set is only tested (`+r.rid`: not used to find rows)."""
            bounds = ""
            extra: list[Any] = []
            if since is not None:
                bounds += " AND rt.started_us >= ?"
                extra.append(since)
            if until is not None:
                bounds += " AND rt.started_us < ?"
                extra.append(until)
            lhs = "r.rid" if drive else "+r.rid"
            where.append(f"{lhs} IN (SELECT rt.rid FROM recording_terms rt WHERE rt.tid IN "
                         f"(SELECT t.tid FROM terms t WHERE {condition}){bounds})")
            params.extend([*values, *extra])

        for wanted_list, drive in ((request.numbers_any, True), (visible_numbers, not searched)):
            if wanted_list is None:
                continue
            wanted = sorted({n for n in wanted_list if n})
            if not wanted:
                return _Query(where, params, empty=True)
            marks = ",".join("?" for _ in wanted)
            by_terms(f"t.kind = 'n' AND t.text IN ({marks})", wanted, drive)
        # Substrings: a narrow walk tests each row's text (in the covering index); a
        # wide search looks the fragment up in the dictionary of distinct terms first.
        number, party = _text(request.number), _text(request.number_or_name)
        for fragment, column, kind in ((number, "numbers", "t.kind = 'n' AND "),
                                       (party, "parties", "")):
            if not fragment:
                continue
            pattern = _like_pattern(fragment.lower())
            if narrow:
                where.append(f"r.{column} LIKE ? ESCAPE '\\'")
                params.append(pattern)
            elif len(fragment) >= 3:
                # The trigram index finds the candidates by the fragment's tail (the
                # end of a number varies most: "+49..." is in every number), LIKE checks.
                by_terms(f"{kind}t.tid IN (SELECT rowid FROM terms_fts WHERE terms_fts "
                         "MATCH ?) AND t.text LIKE ? ESCAPE '\\'",
                         [_fts_phrase(fragment.lower()[-FTS_TAIL:]), pattern])
            else:
                by_terms(f"{kind}t.text LIKE ? ESCAPE '\\'", [pattern])
        if request.direction is not None:
            where.append("r.direction = ?")
            params.append(request.direction)
        if request.min_duration_ms is not None:
            where.append("r.duration_ms >= ?")
            params.append(request.min_duration_ms)
        if request.node_id:
            where.append("r.node_id = ?")
            params.append(request.node_id)
        if request.interrupted is not None:
            where.append("r.interrupted = ?")
            params.append(int(request.interrupted))
        if request.tag and normalize_tag(request.tag):
            if narrow:
                where.append("EXISTS (SELECT 1 FROM recording_tags g WHERE "
                             "g.recording_id = r.recording_id AND g.tag = ?)")
            else:
                where.append("r.recording_id IN (SELECT recording_id FROM recording_tags "
                             "WHERE tag = ?)")
            params.append(normalize_tag(request.tag))
        if request.note_text is not None and request.note_text.strip():
            query = note_query(request.note_text)
            if query is None:
                return _Query(where, params, empty=True)
            # The matching notes are collected once (FTS5); a narrow walk tests each row.
            if narrow:
                where.append("+r.recording_id IN (SELECT recording_id FROM notes WHERE nid "
                             "IN (SELECT rowid FROM notes_fts WHERE notes_fts MATCH ?))")
            else:
                where.append("r.recording_id IN (SELECT recording_id FROM notes WHERE nid IN "
                             "(SELECT rowid FROM notes_fts WHERE notes_fts MATCH ?))")
            params.append(query)
        return _Query(where, params)

    def search(
        self, request: SearchRequest, visible_numbers: list[str] | None = None
    ) -> SearchResult:
        """A page of recordings matching every filter, with the total and their tags.

        `visible_numbers` None means everything, [] means nothing; it and
        `request.numbers_any` match a participant number (or its extension) exactly.
        `request.number` matches any participant number containing it (so exact too),
        `number_or_name` any number form or name containing it, ignoring case.
        """
        column = "r.started_us" if request.sort == "started" else "r.duration_ms"
        direction = "DESC" if request.order == "desc" else "ASC"
        order = f"ORDER BY {column} {direction}, r.recording_id {direction}"
        with self._lock:
            in_range = self._range_rows(request, NARROW_ROWS + 1)
            narrow = in_range <= NARROW_ROWS
            query = self._query(request, visible_numbers, narrow)
            if query.empty:
                return SearchResult(total=0, items=[])
            clause = f"WHERE {' AND '.join(query.where)}"
            # A narrow range is walked in the covering time index, whatever else is asked.
            source = "recordings r INDEXED BY recordings_started" if narrow else "recordings r"
            if len(query.where) == 1:
                total = self._count  # no filter at all: the running count
            else:
                total = int(self._db.execute(
                    f"SELECT COUNT(*) FROM {source} {clause}", query.params
                ).fetchone()[0])
            wanted = request.offset + request.limit
            if not narrow and request.sort == "started" and total > WALK_MIN and (
                    self._range_rows(request, WALK_ROWS * total // wanted + 1)
                    <= WALK_ROWS * total // wanted):
                # Dense enough: walking the time index in order meets the page's rows
                # sooner than collecting and sorting every match.
                source = "recordings r INDEXED BY recordings_started"
            page = self._db.execute(
                f"SELECT r.rid, r.recording_id FROM {source} {clause} {order} "
                "LIMIT ? OFFSET ?",
                [*query.params, request.limit, request.offset],
            ).fetchall()
            facts: dict[int, str] = {}
            if page:
                marks = ",".join("?" for _ in page)
                facts = dict(self._db.execute(
                    f"SELECT rid, event_json FROM recording_events WHERE rid IN ({marks})",
                    [rid for rid, _ in page]).fetchall())
            rows = [(recording_id, facts[rid]) for rid, recording_id in page]
            tags: dict[str, list[str]] = {}
            if rows:
                marks = ",".join("?" for _ in rows)
                for rid, tag in self._db.execute(
                    f"SELECT recording_id, tag FROM recording_tags WHERE recording_id IN "
                    f"({marks}) ORDER BY recording_id, tag", [row[0] for row in rows],
                ):
                    tags.setdefault(str(rid), []).append(str(tag))
        items = [RecordingCompleted.model_validate_json(row[1]) for row in rows]
        return SearchResult(total=total, items=items, tags=tags)


def _from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=value)
