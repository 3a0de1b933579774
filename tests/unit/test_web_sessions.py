"""The session store alone: ids never stored, idle and absolute expiry, logout, the
other sessions of a user ended, bounded per user, private file surviving a restart."""

from __future__ import annotations

import stat
from pathlib import Path

from services.web.sessions import (
    MAX_PER_USER,
    SessionStore,
    _hash,
    credential_stamp,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_ids_are_random_and_only_their_hash_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "web" / "sessions.sqlite"
    store = SessionStore(path)
    ids = {store.create("alice", "s") for _ in range(20)}
    assert len(ids) == 20 and all(len(i) >= 43 for i in ids)
    store.close()
    raw = path.read_bytes() + (path.with_name(path.name + "-wal").read_bytes()
                               if path.with_name(path.name + "-wal").exists() else b"")
    assert not any(i.encode() in raw for i in ids)
    assert any(_hash(i).encode() in raw for i in ids)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_session_survives_a_restart_of_the_web(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    store = SessionStore(path)
    sid = store.create("alice", "s")
    store.close()
    again = SessionStore(path)
    found = again.lookup(sid)
    assert found is not None and found.username == "alice"


def test_idle_and_absolute_timeouts() -> None:
    clock = Clock()
    store = SessionStore(None, clock=clock, idle_s=100, absolute_s=1000)
    sid = store.create("alice", "s")
    for _ in range(10):  # active every 90 s: alive until the absolute limit
        clock.now += 90
        assert store.lookup(sid) is not None
    clock.now += 90  # 990 s after login, 90 s idle: still there
    assert store.lookup(sid) is not None
    clock.now += 20  # past the absolute limit
    assert store.lookup(sid) is None
    idle = store.create("alice", "s")
    clock.now += 100
    assert store.lookup(idle) is None


def test_logout_and_ending_the_other_sessions() -> None:
    store = SessionStore(None)
    a, b, c = (store.create("alice", "s") for _ in range(3))
    bob = store.create("bob", "s")
    store.end(a)
    assert store.lookup(a) is None and store.lookup(b) is not None
    assert store.end_user("alice", keep=c) == 1
    assert store.lookup(b) is None and store.lookup(c) is not None
    assert store.lookup(bob) is not None
    for junk in (None, "", "x" * 1000, "not-a-session"):
        assert store.lookup(junk) is None


def test_sessions_per_user_are_bounded() -> None:
    clock = Clock()
    store = SessionStore(None, clock=clock)
    first = store.create("alice", "s")
    for _ in range(MAX_PER_USER + 10):
        clock.now += 1
        store.create("alice", "s")
    assert store.count("alice") == MAX_PER_USER
    assert store.lookup(first) is None


def test_the_stamp_changes_with_the_password_hash() -> None:
    assert credential_stamp("scrypt$a") != credential_stamp("scrypt$b")
    assert credential_stamp("scrypt$a") == credential_stamp("scrypt$a")
    assert "scrypt" not in credential_stamp("scrypt$a")
