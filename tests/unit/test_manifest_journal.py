"""Manifest changes of call set-up go to a journal first, manifest.json at the next flush.

What must hold: a capture killed right after an allocate (before any flush) still
finds the recording, with its streams and ports, when it restarts; a replay never
puts back an older state than the manifest.json on disk, nor a recording that was
finished or released since.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from contracts.v1.events import RecordingMetadata
from contracts.v1.rpc import (
    AllocateRequest,
    FinalizeRequest,
    ReleaseRequest,
    RtpSource,
    StreamSpec,
    UpdateRequest,
)
from services.capture.manifest import MANIFEST, ManifestJournal, RecordingManifest
from services.capture.service import Capture
from tests.support.capturecore import bare_capture

META = RecordingMetadata(source="cucm", session_key="k")



def make_capture(data_dir: Path) -> Capture:
    return bare_capture(data_dir, (41000, 41999))


def close_streams(capture: Capture) -> None:
    """A SIGKILL: the sockets and files close, nothing else is written."""
    for recording in capture.live.values():
        for stream in recording.streams.values():
            stream.receiver.close()
            if stream.writer.ready:  # else its create is still queued: it never ran
                stream.writer.close(sync=False)
    capture.journal.close()


async def allocate(capture: Capture, recording_id: str, stream_id: str, channel: int) -> int:
    reply = await capture.allocate(AllocateRequest(
        recording_id=recording_id, started_at=datetime.now(UTC), metadata=META,
        streams=[StreamSpec(stream_id=stream_id, channel=channel)]))
    return reply.ports[stream_id]


async def test_a_crash_before_the_flush_keeps_the_allocated_recording(tmp_path: Path) -> None:
    capture = make_capture(tmp_path)
    near = await allocate(capture, "r1", "near", 0)
    far = await allocate(capture, "r1", "far", 1)
    await capture.update(UpdateRequest(recording_id="r1", stream_id="far",
                                       source=RtpSource(address="127.0.0.1", port=5004)))
    directory = capture.active_dir / "r1"
    assert capture.files.wait(10)  # the file thread made the directory and segments
    assert not (directory / MANIFEST).exists()  # written by the next flush, not per change
    assert (directory / "near.0000.seg").exists() and (directory / "far.0000.seg").exists()
    close_streams(capture)

    restarted = make_capture(tmp_path)
    await restarted.recover()
    try:
        recording = restarted.live["r1"]
        streams = recording.manifest.streams
        assert {s: m.port for s, m in streams.items()} == {"near": near, "far": far}
        assert streams["far"].expected_port == 5004
        assert recording.manifest.recovered
        assert RecordingManifest.load(directory).streams.keys() == {"near", "far"}
        # A resumed stream writes a new segment file, after the old one.
        assert (directory / "near.0001.seg").exists()
        assert ManifestJournal.read(restarted.journal.path)[0] == {}  # emptied
    finally:
        close_streams(restarted)


async def test_replay_keeps_a_newer_manifest_and_skips_finished_recordings(
    tmp_path: Path,
) -> None:
    capture = make_capture(tmp_path)
    for recording_id in ("r1", "r2", "r3"):
        await allocate(capture, recording_id, "near", 0)
    assert capture.files.wait(10)
    r1 = capture.live["r1"]
    r1.manifest.metadata = RecordingMetadata(source="cucm", session_key="newer")
    r1.manifest.save(r1.directory)  # e.g. the call ended: saved at once, not journaled
    r2 = capture.live.pop("r2")
    capture._end(r2, datetime.now(UTC))  # journals its end time
    assert capture.files.wait(10)
    shutil.rmtree(r2.directory)  # finalized and removed while its entry still waits
    await capture.release(ReleaseRequest(recording_id="r3", stream_id="near"))
    close_streams(capture)

    restarted = make_capture(tmp_path)
    await restarted.recover()
    try:
        assert set(restarted.live) == {"r1"}
        assert restarted.live["r1"].manifest.metadata.session_key == "newer"
        assert not (restarted.active_dir / "r2").exists()
        assert not (restarted.active_dir / "r3").exists()
    finally:
        close_streams(restarted)


async def test_a_crash_before_the_file_thread_made_the_directory(tmp_path: Path) -> None:
    """The reply (and the journal line) go before the file thread's mkdir: a capture
    killed in between still recovers the recording, directory and all."""
    capture = make_capture(tmp_path)
    hold = threading.Event()
    capture.files.submit(lambda: hold.wait(10))  # the thread is busy until released
    port = await allocate(capture, "r1", "near", 0)
    directory = capture.active_dir / "r1"
    assert not directory.exists()
    close_streams(capture)  # SIGKILL: the queued mkdir and segment create never run
    restarted = make_capture(tmp_path)
    await restarted.recover()
    try:
        assert restarted.live["r1"].manifest.streams["near"].port == port
        assert (directory / "near.0000.seg").exists()  # the resumed stream's file
    finally:
        close_streams(restarted)
        hold.set()


async def next_flush(capture: Capture) -> None:
    capture._flushed.clear()
    await asyncio.wait_for(capture._flushed.wait(), 10)


async def saves_done(capture: Capture) -> None:
    """The file thread ran them and their results reached the event loop."""
    assert capture.files.wait(10)
    for _ in range(100):
        if not capture.manifest_saves_pending:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("manifest saves still pending")


async def test_a_stalled_disk_holds_the_manifest_save_not_the_event_loop(
    tmp_path: Path,
) -> None:
    """The flush hands the manifests to the file thread: while that thread waits on
    the disk, flushes (and allocates) go on, and the journal keeps the changes until
    the save is done."""
    capture = make_capture(tmp_path)
    await allocate(capture, "r1", "near", 0)
    assert capture.files.wait(10)
    directory = capture.active_dir / "r1"
    stall = threading.Event()
    capture.files.submit(lambda: stall.wait(10))  # a create or rename that hangs
    flusher = asyncio.create_task(capture._flush_loop())
    try:
        await next_flush(capture)  # did not wait for the disk
        assert not (directory / MANIFEST).exists()
        assert capture.manifest_saves_pending == 1
        await allocate(capture, "r2", "near", 0)  # answered during the stall
        await next_flush(capture)
        assert capture.manifest_saves_pending == 2
        assert set(ManifestJournal.read(capture.journal.path)[0]) == {"r1", "r2"}
        stall.set()
        await saves_done(capture)
        assert RecordingManifest.load(directory).streams.keys() == {"near"}
        await next_flush(capture)
        assert ManifestJournal.read(capture.journal.path)[0] == {}  # all in manifests
    finally:
        stall.set()
        flusher.cancel()
        close_streams(capture)


async def test_a_manifest_save_that_failed_is_tried_again(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    capture = make_capture(tmp_path)
    await allocate(capture, "r1", "near", 0)
    recording = capture.live["r1"]
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if threading.current_thread() is not threading.main_thread():
            return real_write(fd, data[:10])  # the file thread's manifest write
        return real_write(fd, data)

    flusher = asyncio.create_task(capture._flush_loop())
    try:
        monkeypatch.setattr(os, "write", full_disk)
        await next_flush(capture)
        await saves_done(capture)
        assert recording.manifest_dirty  # the next flush tries again
        assert not (recording.directory / MANIFEST).exists()
        assert set(ManifestJournal.read(capture.journal.path)[0]) == {"r1"}
        monkeypatch.undo()
        await next_flush(capture)
        await saves_done(capture)
        assert not recording.manifest_dirty
        assert RecordingManifest.load(recording.directory).recording_id == "r1"
        await next_flush(capture)
        assert ManifestJournal.read(capture.journal.path)[0] == {}
    finally:
        flusher.cancel()
        close_streams(capture)


def test_a_torn_journal_line_is_skipped(tmp_path: Path) -> None:
    journal = ManifestJournal(tmp_path / "j")
    manifest = RecordingManifest(recording_id="r1", started_at=datetime.now(UTC),
                                 metadata=META)
    journal.record(manifest)
    journal.released("r2")
    journal.close()
    with (tmp_path / "j").open("ab") as handle:
        handle.write(b'{"recording_id": "r3", "sta')  # a full disk cut it short
    states, bad = ManifestJournal.read(tmp_path / "j")
    assert bad == 1
    assert states["r2"] is None
    assert states["r1"] is not None and states["r1"].revision == manifest.revision == 1
    reopened = ManifestJournal(tmp_path / "j")
    reopened.clear()  # left by a crash: emptied even before anything new was recorded
    reopened.close()
    assert (tmp_path / "j").read_bytes() == b""


async def test_a_crash_before_the_flush_keeps_the_end_of_a_call(tmp_path: Path) -> None:
    capture = make_capture(tmp_path)
    await allocate(capture, "r1", "near", 0)
    ended = datetime.now(UTC)
    await capture.finalize(FinalizeRequest(recording_id="r1", ended_at=ended))
    close_streams(capture)

    restarted = make_capture(tmp_path)
    await restarted.recover()
    recording = restarted.live["r1"]
    assert recording.manifest.ended_at == ended
    assert recording.finalizing  # queued for its finalize, not resumed as live
    close_streams(restarted)


def test_a_save_cut_short_by_a_full_disk_keeps_the_old_manifest(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    manifest = RecordingManifest(recording_id="r1", started_at=datetime.now(UTC),
                                 metadata=META)
    manifest.save(tmp_path)
    assert RecordingManifest.load(tmp_path).revision == 1
    manifest.metadata = RecordingMetadata(source="cucm", session_key="newer")
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(OSError, match="short write"):
        manifest.save(tmp_path)
    monkeypatch.undo()
    assert RecordingManifest.load(tmp_path).metadata.session_key == "k"
    manifest.save(tmp_path)  # the disk has room again: the temporary file is replaced
    saved = RecordingManifest.load(tmp_path)
    assert (saved.metadata.session_key, saved.revision) == ("newer", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]


async def test_a_streams_first_sdp_and_a_moved_source_log_at_info(
    tmp_path: Path,
) -> None:
    capture = make_capture(tmp_path)
    await allocate(capture, "r1", "near", 0)
    try:
        with structlog.testing.capture_logs() as first:
            await capture.update(UpdateRequest(recording_id="r1", stream_id="near",
                                               source=RtpSource(address="10.0.0.1",
                                                                port=5004)))
        with structlog.testing.capture_logs() as moved:
            await capture.update(UpdateRequest(recording_id="r1", stream_id="near",
                                               source=RtpSource(address="10.0.0.2",
                                                                port=5004)))
        assert [(e["event"], e["log_level"], e["address"]) for e in first] == [
            ("rtp_source_expected", "info", "10.0.0.1")]
        assert [(e["event"], e["log_level"], e["address"]) for e in moved] == [
            ("rtp_source_expected", "info", "10.0.0.2")]
        assert capture.live["r1"].manifest.streams["near"].expected_address == "10.0.0.2"
    finally:
        assert capture.files.wait(10)
        close_streams(capture)
        capture.files.close()
