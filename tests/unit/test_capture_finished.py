"""A stored recording's directory leaves `active/` at once and is removed only when no
finalize waits: its unlinks are kept out of a burst of endings, and a restarted capture
never finalizes it again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.v1.events import RecordingMetadata
from services.capture import finished
from services.capture.manifest import RecordingManifest
from services.capture.service import Capture
from tests.support.capturecore import bare_capture


def _recording_dir(parent: Path, name: str) -> Path:
    directory = parent / name
    (directory / "near").mkdir(parents=True)
    (directory / "near" / "000000.seg").write_bytes(b"x" * 4096)
    (directory / "live.opus").write_bytes(b"OggS")
    return directory


def test_removal_waits_for_the_finalizes_but_not_forever() -> None:
    assert finished.removal_due(0, 0.0)
    assert not finished.removal_due(3, 1.0, max_wait_s=5.0)
    assert finished.removal_due(3, 5.0, max_wait_s=5.0)


def test_set_aside_moves_the_directory_and_remove_all_empties_the_place(
        tmp_path: Path) -> None:
    active, done = tmp_path / "active", tmp_path / "finished"
    done.mkdir()
    first = _recording_dir(active, "r1")
    finished.set_aside(first, done)
    again = _recording_dir(active, "r1")  # a second finalize of the same id
    finished.set_aside(again, done)
    finished.set_aside(active / "gone", done)  # already removed: nothing to do
    assert not first.exists() and not again.exists()
    assert len(list(done.iterdir())) == 2
    assert finished.remove_all(done) == 2
    assert list(done.iterdir()) == []
    assert finished.remove_all(tmp_path / "missing") == 0


def test_a_directory_that_cannot_be_moved_is_removed_now(tmp_path: Path) -> None:
    directory = _recording_dir(tmp_path / "active", "r1")
    finished.set_aside(directory, tmp_path / "no-such-place")
    assert not directory.exists()


def test_a_set_aside_recording_is_not_recovered(tmp_path: Path) -> None:
    capture = bare_capture(tmp_path)
    directory = capture.active_dir / "r1"
    directory.mkdir()
    now = datetime.now(UTC)
    RecordingManifest(recording_id="r1", started_at=now, ended_at=now,
                      metadata=RecordingMetadata(source="cucm", session_key="k")
                      ).save(directory)
    finished.set_aside(directory, capture.finished_dir)
    capture.journal.close()
    capture.files.close()
    restarted = bare_capture(tmp_path)
    try:
        restarted._recover({})
        assert restarted.live == {}
        assert restarted.queue.qsize() == 0
    finally:
        restarted.journal.close()
        restarted.files.close()


async def _until_empty(directory: Path) -> None:
    """Wait (up to 5 s) for the removal loop to empty `directory`."""
    for _ in range(500):
        if not any(directory.iterdir()):
            return
        await asyncio.sleep(0.01)


async def _stop(capture: Capture, loop: asyncio.Task[None]) -> None:
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    capture.journal.close()
    capture.files.close()


async def test_the_removal_loop_waits_while_a_finalize_is_queued_or_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finished, "POLL_S", 0.01)
    monkeypatch.setattr(finished, "MAX_WAIT_S", 60.0)
    capture = bare_capture(tmp_path)
    left_by_a_crash = _recording_dir(capture.finished_dir, "old.1234abcd")
    loop = asyncio.create_task(capture._removal_loop())
    try:
        for _ in range(500):  # removed at the start
            if not left_by_a_crash.exists():
                break
            await asyncio.sleep(0.01)
        assert not left_by_a_crash.exists()

        capture.queue.put_nowait("queued")
        capture.finalizing_now.add("running")
        finished.set_aside(_recording_dir(capture.active_dir, "r1"), capture.finished_dir)
        capture.removals_due.set()
        await asyncio.sleep(0.2)
        assert len(list(capture.finished_dir.iterdir())) == 1  # the burst goes on

        capture.queue.get_nowait()
        await asyncio.sleep(0.2)
        assert len(list(capture.finished_dir.iterdir())) == 1  # one still running

        capture.finalizing_now.clear()
        await _until_empty(capture.finished_dir)
        assert list(capture.finished_dir.iterdir()) == []
    finally:
        await _stop(capture, loop)


async def test_a_steady_backlog_still_frees_the_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finished, "POLL_S", 0.01)
    monkeypatch.setattr(finished, "MAX_WAIT_S", 0.2)
    capture = bare_capture(tmp_path)
    capture.queue.put_nowait("never done")
    finished.set_aside(_recording_dir(capture.active_dir, "r1"), capture.finished_dir)
    loop = asyncio.create_task(capture._removal_loop())
    try:
        await _until_empty(capture.finished_dir)
        assert list(capture.finished_dir.iterdir()) == []
    finally:
        await _stop(capture, loop)
