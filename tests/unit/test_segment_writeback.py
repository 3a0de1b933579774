"""The segments of calls in progress are handed to the kernel's writeback as they go,
so the fsync at a call's end finds seconds of packets, not half a minute of them."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from callrec import writeback
from services.capture import service as capture_service
from tests.support.capturecore import bare_capture
from tests.unit.test_live_step_skip import PACKET, new_call, packets_flushed

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="sync_file_range is Linux's")


@linux_only
def test_writeback_starts_on_an_open_file_and_not_on_a_closed_one(tmp_path: Path) -> None:
    assert writeback.available()
    path = tmp_path / "near.0000.seg"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, os.urandom(256 * 1024))
    assert writeback.start_writeback(fd)
    os.close(fd)
    assert not writeback.start_writeback(fd)  # EBADF: reported, never raised


@linux_only
def test_writebacks_by_path_skip_a_file_gone(tmp_path: Path) -> None:
    paths = [tmp_path / f"{name}.0000.seg" for name in ("near", "far")]
    for path in paths:
        path.write_bytes(os.urandom(64 * 1024))
    assert writeback.start_writebacks([*paths, tmp_path / "ended.0000.seg"]) == 2


@linux_only
async def test_capture_hands_the_segments_of_calls_in_progress_to_writeback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: list[Path] = []
    start = writeback.start_writebacks

    def record(paths: list[Path]) -> int:
        handed.extend(paths)
        return start(paths)

    monkeypatch.setattr(capture_service, "WRITEBACK_INTERVAL", 0.01)
    monkeypatch.setattr(writeback, "start_writebacks", record)
    capture = bare_capture(tmp_path)
    try:
        await new_call(capture, "r1")
        await new_call(capture, "r2")
        await capture.files.barrier()  # the segment files are created
        capture.live["r2"].streams["far"].writer.append(20, PACKET)
        await packets_flushed(capture, "r1")
        loop = asyncio.create_task(capture._writeback_loop())
        for _ in range(500):
            if capture.m_writebacks.get() >= 4:
                break
            await asyncio.sleep(0.01)
        loop.cancel()
        segments = {live.writer.path for recording in capture.live.values()
                    for live in recording.streams.values()}
        assert len(segments) == 4 and all(p.suffix == ".seg" for p in segments)
        assert set(handed) == segments
        assert capture.m_writebacks.get() >= 4
    finally:
        capture.writeback.shutdown(wait=True)
        capture.reader.close()
        capture.journal.close()
        capture.files.close()
