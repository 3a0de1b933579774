"""SegmentWriter creates its file with the first data, never at construction."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.capture.segments import SegmentWriter, read_records


def test_no_file_until_data_and_none_for_a_silent_stream(tmp_path: Path) -> None:
    path = tmp_path / "s.0000.seg"
    writer = SegmentWriter(path)
    assert writer.flush() == 0 and not path.exists()
    writer.close()
    assert not path.exists()
    writer.close()  # idempotent


def test_first_flush_creates_the_file_and_close_writes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "s.0000.seg"
    writer = SegmentWriter(path)
    writer.append(5, b"one")
    assert writer.flush() > 0 and path.exists()
    writer.append(6, b"two")
    writer.close(sync=False)
    assert list(read_records(path)) == [(5, b"one"), (6, b"two")]


def test_a_failed_create_keeps_the_buffer_for_the_next_flush(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "s.0000.seg"
    writer = SegmentWriter(path)
    writer.append(1, b"kept")
    with pytest.raises(OSError):
        writer.flush()
    assert writer.buffer
    path.parent.mkdir()
    writer.close(sync=False)
    assert list(read_records(path)) == [(1, b"kept")]
