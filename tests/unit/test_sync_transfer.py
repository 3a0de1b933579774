"""Sync's object transfer: the read RPC's answers and the resumable, verified pull."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from callrec.store import FileStore
from services.sync.state import load_checkpoint, part_path, save_checkpoint
from services.sync.transfer import (
    ERROR_HEADER,
    SIZE_HEADER,
    Outcome,
    TransferError,
    pull_object,
    serve_read,
    store_whole_part,
)

KEY = "recordings/2024/05/01/r1.opus"


def read(store: FileStore, key: str, offset: int, length: int) -> tuple[bytes, dict[str, str]]:
    request = json.dumps({"object_key": key, "offset": offset, "length": length}).encode()
    return serve_read(store, request)


def make_store(tmp_path: Path, data: bytes) -> FileStore:
    store = FileStore(tmp_path / "objects")
    source = tmp_path / "src"
    source.write_bytes(data)
    store.put_file(KEY, source)
    return store


def test_serve_read_ranges_and_errors(tmp_path: Path) -> None:
    store = make_store(tmp_path, b"0123456789")
    assert read(store, KEY, 2, 3) == (b"234", {SIZE_HEADER: "10"})
    assert read(store, KEY, 8, 100) == (b"89", {SIZE_HEADER: "10"})
    assert read(store, KEY, 10, 5) == (b"", {SIZE_HEADER: "10"})
    assert ERROR_HEADER in read(store, "recordings/missing.opus", 0, 1)[1]
    assert ERROR_HEADER in read(store, "recordings/../../etc/passwd", 0, 1)[1]
    assert ERROR_HEADER in read(store, "/etc/passwd", 0, 1)[1]
    assert ERROR_HEADER in serve_read(store, b"not json")[1]


class FakePeer:
    """A holder answering read requests from a store, optionally failing."""

    def __init__(self, store: FileStore, fail_after: int | None = None) -> None:
        self.store = store
        self.fail_after = fail_after
        self.calls = 0

    async def __call__(self, subject: str, payload: bytes) -> tuple[bytes, dict[str, str]]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise TransferError("timeout")
        return serve_read(self.store, payload)


async def test_pull_resumes_after_link_loss(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    sha = hashlib.sha256(data).hexdigest()
    peer = FakePeer(make_store(tmp_path, data), fail_after=2)
    part = part_path(tmp_path / "sync", "r1")
    assert await pull_object(peer, "s", KEY, len(data), sha, part, chunk=1000) \
        is Outcome.UNAVAILABLE
    assert part.stat().st_size == 2000
    peer.fail_after = None
    peer.calls = 0
    assert await pull_object(peer, "s", KEY, len(data), sha, part, chunk=1000) is Outcome.DONE
    assert peer.calls == 8
    assert part.read_bytes() == data


async def test_pull_waits_on_no_disk_sync_on_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync on the loop held up every other fetch and the live copies for a journal
    commit; the store's adopt_file (in a thread) is what makes the copy durable."""
    loop_thread = threading.current_thread()
    on_loop: list[int] = []
    elsewhere: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        (on_loop if threading.current_thread() is loop_thread else elsewhere).append(fd)
        real_fsync(fd)

    data = os.urandom(10_000)
    peer = FakePeer(make_store(tmp_path, data))
    monkeypatch.setattr(os, "fsync", fsync)
    part = part_path(tmp_path / "sync", "r1")
    sha = hashlib.sha256(data).hexdigest()
    assert await pull_object(peer, "s", KEY, len(data), sha, part, chunk=1000) is Outcome.DONE
    assert on_loop == []
    store = FileStore(tmp_path / "copy")
    await asyncio.to_thread(store.adopt_file, KEY, part)
    assert on_loop == [] and elsewhere  # the copy was synced, in the thread
    path = store.local_path(KEY)
    assert path is not None and path.read_bytes() == data


async def test_pull_detects_corruption_and_removes_part(tmp_path: Path) -> None:
    data = os.urandom(5000)
    peer = FakePeer(make_store(tmp_path, data))
    part = tmp_path / "sync" / "partial" / "r1.part"
    outcome = await pull_object(peer, "s", KEY, len(data), "0" * 64, part, chunk=1024)
    assert outcome is Outcome.MISMATCH
    assert not part.exists()


async def test_pull_rejects_holder_with_other_size(tmp_path: Path) -> None:
    peer = FakePeer(make_store(tmp_path, b"short"))
    part = tmp_path / "p.part"
    assert await pull_object(peer, "s", KEY, 100, "0" * 64, part) is Outcome.MISMATCH


async def test_pull_missing_object_is_unavailable(tmp_path: Path) -> None:
    peer = FakePeer(FileStore(tmp_path / "empty"))
    part = tmp_path / "p.part"
    assert await pull_object(peer, "s", KEY, 100, "0" * 64, part) is Outcome.UNAVAILABLE


async def test_pull_stops_when_purged(tmp_path: Path) -> None:
    data = os.urandom(3000)
    peer = FakePeer(make_store(tmp_path, data))
    part = tmp_path / "p.part"
    outcome = await pull_object(peer, "s", KEY, len(data), "0" * 64, part, chunk=1000,
                                keep_going=lambda: peer.calls < 1)
    assert outcome is Outcome.UNAVAILABLE
    assert peer.calls == 1


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "sync"
    assert load_checkpoint(root) == 0
    save_checkpoint(root, 42)
    assert load_checkpoint(root) == 42
    (root / "checkpoint").write_text("garbage")
    assert load_checkpoint(root) == 0


def test_part_path_rejects_unsafe_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        part_path(tmp_path, "../x")


def test_a_whole_live_copy_is_verified_and_stored_in_one_step(tmp_path: Path) -> None:
    """The common end of a copy: the live pages made the part whole, and one read
    verifies and stores it; held already, wrong, or short, it says so instead."""
    data = os.urandom(10_000)
    sha = hashlib.sha256(data).hexdigest()
    store = FileStore(tmp_path / "copy")
    part = part_path(tmp_path / "sync", "r1")
    part.parent.mkdir(parents=True)
    assert store_whole_part(store, KEY, len(data), sha, part) == "partial"  # no part yet
    part.write_bytes(data[:4000])
    assert store_whole_part(store, KEY, len(data), sha, part) == "partial"
    assert part.exists() and not store.exists(KEY)
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # whole, one bit wrong
    assert store_whole_part(store, KEY, len(data), sha, part) == "mismatch"
    assert not part.exists() and not store.exists(KEY)
    part.write_bytes(data)
    assert store_whole_part(store, KEY, len(data), sha, part) == "stored"
    assert not part.exists()
    path = store.local_path(KEY)
    assert path is not None and path.read_bytes() == data
    assert store_whole_part(store, KEY, len(data), sha, part) == "held"
