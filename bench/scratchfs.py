"""Run a benchmark with its temporary files on a fresh, journaled ext4 file system.

Why: the benchmark VM's root file system is ext4 *without a journal* (no jbd2 task,
`/sys/fs/ext4/<dev>/journal_task` is `<none>`). There ext4 skips every inode deleted in
the last minutes when it allocates a new one (`recently_deleted()` under
`ext4_create`, fs/ext4/ialloc.c: a no-journal file system cannot tell whether the
deletion reached the disk), so after a run deleted tens of thousands of files, each
file created costs a walk past them: 27 µs a create on a fresh file system, 250-560
µs on the root after earlier runs (bench/README.md, "The disk's history"). Capture
creates a directory and a few files a call, so its CPU in `bench.setup_rate` rose run
after run (4.2 to 8.7 CPU-s for the same burst), the "two modes" that earlier A/B pairs
were read through. A journaled ext4 (what `mkfs.ext4` makes by default) or XFS, what
a data volume in production is, does not do this, and neither does this file system:
each run gets a new one, so no run inherits another's deletions.

    sudo python -m bench.scratchfs -- python -m bench.setup_rate
    sudo python -m bench.scratchfs --size-gib 16 -- python -m bench.churn --calls 400

The command runs with ``TMPDIR`` set to the new file system (every benchmark here
makes its directories with `tempfile`); its exit status is this command's. Needs
root (a loop mount) and e2fsprogs' `mkfs.ext4`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

DEFAULT_SIZE_GIB = 8


@contextlib.contextmanager
def journaled_ext4(size_gib: int, parent: Path | None = None) -> Iterator[Path]:
    """A new journaled ext4 of `size_gib` (a sparse image on a loop device in direct I/O,
    mounted), removed after.

    Its inode tables and journal are written by mkfs, not lazily by a kernel thread
    while the benchmark runs (`lazy_itable_init=0`)."""
    if os.geteuid() != 0:
        raise PermissionError("a loop mount needs root")
    work = Path(tempfile.mkdtemp(prefix="callrec-scratchfs-", dir=parent))
    image, mount_point = work / "fs.img", work / "mnt"
    mounted = False
    try:
        with image.open("wb") as handle:
            handle.truncate(size_gib << 30)
        mount_point.mkdir()
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0",
             str(image))
        # In direct I/O: a buffered loop device copies every write into the image's own
        # page cache and syncs that file on each flush, in kernel threads on the same
        # cores, work a data volume does not have (bench/README.md, "The scratch file
        # system's own work").
        device = _run("losetup", "--direct-io=on", "--find", "--show", str(image)).strip()
        try:
            _run("mount", device, str(mount_point))
            mounted = True
        finally:
            _run("losetup", "--detach", device)  # if mounted, freed at its unmount
        yield mount_point
    finally:
        if mounted:
            done = subprocess.run(["umount", str(mount_point)], capture_output=True,
                                  check=False)
            if done.returncode != 0:  # something still holds it: detach it lazily
                subprocess.run(["umount", "-l", str(mount_point)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def loop_direct_io(device: str, sysfs: Path = Path("/sys")) -> bool | None:
    """Whether the block device `device` ("major:minor") is a loop device in direct I/O
    mode; None when it is not a loop device."""
    try:
        return (sysfs / "dev" / "block" / device / "loop" / "dio").read_text().strip() == "1"
    except OSError:
        return None


def has_journal(device_or_image: Path) -> bool:
    """Whether an ext file system has a journal (its `has_journal` feature)."""
    out = _run("dumpe2fs", "-h", str(device_or_image))
    features = next((line for line in out.splitlines()
                     if line.startswith("Filesystem features:")), "")
    return "has_journal" in features.split()


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=int, default=DEFAULT_SIZE_GIB)
    parser.add_argument("--parent", type=Path, default=None,
                        help="where the image and mount point go (default: the temp dir)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the benchmark command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: give it after --")
    try:
        with journaled_ext4(args.size_gib, args.parent) as mount_point:
            print(f"# temporary files on a new journaled ext4 of {args.size_gib} GiB at "
                  f"{mount_point}", file=sys.stderr, flush=True)
            status = subprocess.run(command, env={**os.environ, "TMPDIR": str(mount_point)},
                                    check=False).returncode
    except (PermissionError, RuntimeError) as exc:
        print(f"scratchfs: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)


if __name__ == "__main__":
    main()
