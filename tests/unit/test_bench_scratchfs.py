"""bench/scratchfs.py gives a benchmark a fresh journaled ext4 as its temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.scratchfs import has_journal, journaled_ext4, loop_direct_io
from callrec import filesystem

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="a loop mount needs root"),
    pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs"),
]


def _mounts() -> list[tuple[str, str]]:
    return [(fields[1], fields[2]) for fields in
            (line.split() for line in Path("/proc/mounts").read_text().splitlines())]


def test_the_command_runs_on_a_new_journaled_ext4_that_is_gone_after(tmp_path: Path) -> None:
    report = tmp_path / "seen"
    child = (
        "import os, pathlib, tempfile\n"
        "tmp = tempfile.gettempdir()\n"
        "kinds = {f[1]: f[2] for f in (l.split() for l in open('/proc/mounts'))}\n"
        f"pathlib.Path({str(report)!r}).write_text(tmp + ' ' + kinds.get(tmp, 'none') + ' '"
        " + str(len(os.listdir(tmp))))\n"
        "raise SystemExit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.scratchfs", "--size-gib", "1", "--parent",
         str(tmp_path), "--", sys.executable, "-c", child],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        text=True, timeout=120, check=False)
    assert done.returncode == 3, done.stderr  # the command's own status
    mount_point, kind, entries = report.read_text().split()
    assert kind == "ext4"
    assert entries == "1"  # a new file system: only lost+found
    assert mount_point not in {point for point, _ in _mounts()}
    assert list(tmp_path.iterdir()) == [report]  # image and mount point removed


def test_the_file_system_has_a_journal(tmp_path: Path) -> None:
    with journaled_ext4(1, tmp_path) as mount_point:
        assert has_journal(mount_point.parent / "fs.img")
    without = tmp_path / "plain.img"
    with without.open("wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(without)], check=True)
    assert not has_journal(without)


def test_the_loop_device_is_in_direct_io(tmp_path: Path) -> None:
    """Buffered, every write would be copied into the image's page cache and synced
    again by kernel threads on the benchmark's cores."""
    with journaled_ext4(1, tmp_path) as mount_point:
        mount = filesystem.mount_of_path(mount_point)
        assert mount is not None and mount.mount_point == str(mount_point)
        assert loop_direct_io(mount.device) is True
    root = filesystem.mount_of_path(Path("/"))
    assert root is not None and loop_direct_io(root.device) in (None, False)


def test_a_results_table_says_what_its_temp_files_are_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.capacity import machine, temp_file_system
    with journaled_ext4(1, tmp_path) as mount_point:
        monkeypatch.setattr(tempfile, "tempdir", str(mount_point))
        said = f"ext4 with a journal ({mount_point}, a loop device in direct I/O)"
        assert temp_file_system() == said
        assert machine().endswith(f", temp files on {said}")
    if Path("/dev/shm").is_mount():
        monkeypatch.setattr(tempfile, "tempdir", "/dev/shm")
        assert temp_file_system() == "tmpfs (/dev/shm)"
