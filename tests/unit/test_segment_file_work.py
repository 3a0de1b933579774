"""Segment files of call set-up are created by one ordered file thread (FileWork).

What must hold: packets appended before the file exists stay in memory and land
byte-identical once it does; a create that fails is counted, raised by each flush
(so the flush loop reports it) and tried again, the packets kept; a stream that
ends before its file exists is written out and closed by the thread.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from contracts.v1.events import RecordingMetadata
from contracts.v1.rpc import AllocateRequest, StreamSpec
from services.capture.manifest import MANIFEST, RecordingManifest
from services.capture.segments import FileWork, SegmentWriter, read_records, read_stream
from services.capture.service import Capture, _write_out_end
from tests.support.capturecore import bare_capture

PACKETS = [(20 * i, bytes([0x80, 0, 0, i]) + bytes([i]) * (160 + i)) for i in range(30)]


def held(files: FileWork) -> threading.Event:
    """Keep the file thread busy until the returned event is set."""
    release = threading.Event()
    files.submit(lambda: release.wait(10))
    return release


def test_packets_before_the_file_exists_land_byte_identical(tmp_path: Path) -> None:
    files = FileWork()
    path = tmp_path / "s.0000.seg"
    release = held(files)
    writer = SegmentWriter.deferred(files, lambda: path)
    for arrival_ms, packet in PACKETS[:10]:
        writer.append(arrival_ms, packet)
    assert writer.flush() == 0 and not path.exists() and not writer.ready  # kept
    release.set()
    assert files.wait(10)
    assert writer.ready and path.exists()
    for arrival_ms, packet in PACKETS[10:]:
        writer.append(arrival_ms, packet)
    assert writer.flush() > 0
    writer.close(sync=False)
    files.close()
    assert list(read_records(path)) == PACKETS
    assert files.failures == 0


def test_a_failed_create_is_counted_kept_and_retried(tmp_path: Path) -> None:
    files = FileWork()
    path = tmp_path / "missing" / "s.0000.seg"
    writer = SegmentWriter.deferred(files, lambda: path)
    assert files.wait(10)
    assert files.failures == 1 and isinstance(writer.create_error, FileNotFoundError)
    for arrival_ms, packet in PACKETS:
        writer.append(arrival_ms, packet)
    with pytest.raises(FileNotFoundError):  # the flush loop logs segment_write_failed
        writer.flush()
    assert files.wait(10) and files.failures == 2  # the retry the flush asked for
    path.parent.mkdir()
    with pytest.raises(FileNotFoundError):  # this flush still sees the old error...
        writer.flush()
    assert files.wait(10)  # ...and its retry creates the file
    assert writer.flush() > 0
    writer.close(sync=False)
    files.close()
    assert list(read_records(path)) == PACKETS



def make_capture(data_dir: Path) -> Capture:
    return bare_capture(data_dir, (42000, 42999))



async def allocate_near(capture: Capture) -> None:
    """Recording r1 with one stream, "near", as a CUCM leg's INVITE allocates it."""
    await capture.allocate(AllocateRequest(
        recording_id="r1", started_at=datetime.now(UTC),
        metadata=RecordingMetadata(source="cucm", session_key="k"),
        streams=[StreamSpec(stream_id="near", channel=0)]))

async def test_a_stream_ended_before_its_file_exists_is_written_by_the_thread(
    tmp_path: Path,
) -> None:
    capture = make_capture(tmp_path)
    release = held(capture.files)
    await allocate_near(capture)
    recording = capture.live["r1"]
    directory = recording.directory
    assert not directory.exists()  # allocate left the mkdir to the thread
    assert not capture._save_manifest(recording)  # a flush before it: kept dirty
    writer = recording.streams["near"].writer
    for arrival_ms, packet in PACKETS:
        writer.append(arrival_ms, packet)
    capture._end(recording, datetime.now(UTC))  # closes the stream: queued behind
    release.set()
    await capture.files.barrier()  # as finalize does before it reads the segments
    assert recording.fresh and not recording.unflushed
    assert list(read_stream(directory, "near")) == PACKETS
    assert capture._save_manifest(recording)
    capture.reader.close()
    capture.journal.close()
    capture.files.close()


async def test_a_failed_segment_create_is_counted_in_the_metrics(tmp_path: Path) -> None:
    capture = make_capture(tmp_path)
    release = held(capture.files)
    await allocate_near(capture)
    recording = capture.live["r1"]
    recording.directory.parent.rename(tmp_path / "elsewhere")  # mkdir and create fail
    release.set()
    await capture.files.barrier()
    exposition = capture.ctx.metrics.render()
    assert "capture_file_work_failures" in exposition
    assert capture.files.failures == 2  # the directory, then the segment file
    writer = recording.streams["near"].writer
    assert writer.create_error is not None and not writer.ready
    capture._end(recording, datetime.now(UTC))
    await capture.files.barrier()
    assert recording.unflushed == [writer]  # finalize tries again, then fails it
    capture.reader.close()
    capture.journal.close()
    capture.files.close()


async def test_run_gives_the_jobs_result_after_the_work_before_it(tmp_path: Path) -> None:
    """What a coroutine needs done on disk runs in the thread, in order; the event
    loop goes on meanwhile, and a job's error is the caller's, not a failed job."""
    files = FileWork()
    try:
        order: list[str] = []
        release = held(files)
        files.submit(lambda: order.append("queued before"))
        result = files.run(lambda: order.append("run") or len(order))
        await asyncio.sleep(0.05)  # the loop is free while the thread waits
        assert not result.done() and order == []
        release.set()
        assert await asyncio.wait_for(result, 10) == 2
        assert order == ["queued before", "run"]

        def broken() -> None:
            raise ValueError("the directory is gone")

        with pytest.raises(ValueError, match="is gone"):
            await asyncio.wait_for(files.run(broken), 10)
        assert files.failures == 0
    finally:
        files.close()


async def test_finalize_writes_the_end_in_the_file_thread(tmp_path: Path) -> None:
    """The manifest with the end time and the last packets a full disk kept are
    written by the thread, after the stream's own file work."""
    capture = make_capture(tmp_path)
    await allocate_near(capture)
    recording = capture.live["r1"]
    await capture.files.barrier()
    ended = datetime.now(UTC)
    capture._end(recording, ended)
    release = held(capture.files)
    written = capture.files.run(partial(_write_out_end, recording,
                                        recording.manifest.snapshot()))
    await asyncio.sleep(0.05)
    assert not (recording.directory / MANIFEST).exists()
    release.set()
    await asyncio.wait_for(written, 10)
    assert RecordingManifest.load(recording.directory).ended_at == ended
    shutil.rmtree(recording.directory)
    with pytest.raises(ValueError, match="is gone"):
        await asyncio.wait_for(capture.files.run(partial(
            _write_out_end, recording, recording.manifest.snapshot())), 10)
    capture.reader.close()
    capture.journal.close()
    capture.files.close()
