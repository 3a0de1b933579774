"""Server-side login sessions: a random 256-bit id in a cookie, only its hash on disk.

Sessions are this node's own (a browser talks to one node; another node asks for a
login again), kept in a small SQLite file (mode 0600) under the data dir so a web
restart does not log everyone out. A session ends after `idle_s` without a request,
`absolute_s` after its login, at logout, and as soon as its user's password changes
(on any node: the session remembers a stamp of the password hash it was opened with)
or the user is disabled or removed (checked against the users projection on every
request, in `auth.py`). Pure: the clock is injected, no HTTP here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

IDLE_S = 2 * 3600.0  # a supervisor's lunch break, not a weekend
ABSOLUTE_S = 12 * 3600.0  # one working day: log in again the next morning
TOUCH_EVERY_S = 60.0  # last_seen is written at most once a minute per session
MAX_PER_USER = 50  # the oldest go first: a script logging in in a loop fills nothing
MAX_ID_LEN = 100


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


def credential_stamp(password_hash: str | None) -> str:
    """What a session remembers of the password it was opened with (not the hash)."""
    return hashlib.sha256((password_hash or "").encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Session:
    id_hash: str
    username: str
    stamp: str
    created: float
    last_seen: float


class SessionStore:
    """Sessions by hashed id, in SQLite (`path` None: in memory, for tests)."""

    def __init__(
        self,
        path: Path | None,
        clock: Callable[[], float] = time.time,
        idle_s: float = IDLE_S,
        absolute_s: float = ABSOLUTE_S,
    ) -> None:
        self.clock = clock
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        if path is None:
            target = ":memory:"
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Create it private before SQLite opens it (SQLite would use the umask).
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(path, 0o600)
            target = str(path)
        self.db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL" if path else "PRAGMA journal_mode=MEMORY")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS sessions (id_hash TEXT PRIMARY KEY, username TEXT "
            "NOT NULL, stamp TEXT NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL)")
        self.db.execute("CREATE INDEX IF NOT EXISTS sessions_user ON sessions(username)")
        self.purge_expired()

    def create(self, username: str, stamp: str) -> str:
        """A new session; returns its id (the only time it exists unhashed)."""
        session_id = secrets.token_urlsafe(32)  # 256 bits
        now = self.clock()
        self.db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                        (_hash(session_id), username, stamp, now, now))
        self.db.execute(
            "DELETE FROM sessions WHERE username = ? AND id_hash NOT IN (SELECT id_hash "
            "FROM sessions WHERE username = ? ORDER BY created DESC LIMIT ?)",
            (username, username, MAX_PER_USER))
        return session_id

    def lookup(self, session_id: str | None) -> Session | None:
        """The live session for this id (its idle time restarted), None if none."""
        if not session_id or len(session_id) > MAX_ID_LEN:
            return None
        id_hash = _hash(session_id)
        row = self.db.execute(
            "SELECT id_hash, username, stamp, created, last_seen FROM sessions "
            "WHERE id_hash = ?", (id_hash,)).fetchone()
        if row is None:
            return None
        session = Session(*row)
        now = self.clock()
        if now - session.last_seen >= self.idle_s or now - session.created >= self.absolute_s:
            self.db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))
            return None
        if now - session.last_seen >= TOUCH_EVERY_S:
            self.db.execute("UPDATE sessions SET last_seen = ? WHERE id_hash = ?",
                            (now, id_hash))
        return session

    def end(self, session_id: str | None) -> None:
        if session_id and len(session_id) <= MAX_ID_LEN:
            self.db.execute("DELETE FROM sessions WHERE id_hash = ?", (_hash(session_id),))

    def end_hash(self, id_hash: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,))

    def end_user(self, username: str, keep: str | None = None) -> int:
        """End every session of `username` except `keep` (a session id); how many ended."""
        keep_hash = _hash(keep) if keep else ""
        cursor = self.db.execute(
            "DELETE FROM sessions WHERE username = ? AND id_hash != ?", (username, keep_hash))
        return cursor.rowcount

    def purge_expired(self) -> int:
        now = self.clock()
        cursor = self.db.execute(
            "DELETE FROM sessions WHERE last_seen <= ? OR created <= ?",
            (now - self.idle_s, now - self.absolute_s))
        return cursor.rowcount

    def count(self, username: str | None = None) -> int:
        if username is None:
            row = self.db.execute("SELECT COUNT(*) FROM sessions").fetchone()
        else:
            row = self.db.execute("SELECT COUNT(*) FROM sessions WHERE username = ?",
                                  (username,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        self.db.close()
