"""Whether the file system under the data dir suits a recorder: ext4 without a journal
does not.

Why: capture creates a directory and a few files for every call and deletes them once
the call is finalized. On ext4 without a journal, the kernel will not reuse an inode
deleted in the last minutes (it cannot know the deletion reached the disk), so each
file created walks past every recently deleted one: on a busy node file creation then
costs up to 20 times the CPU (bench/README.md, "The disk's history"), and set-up
latency with it. A journaled ext4 (what mkfs.ext4 makes by default) or XFS does not.
The node still runs there; it says so once at start.

Read from /proc/self/mountinfo (which mount holds the path) and sysfs (ext4's
`journal_task` of that device is `<none>` without a journal); pure parsing apart from
those two reads, so it is tested without mounting.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
SYSFS = Path("/sys")
NO_JOURNAL = "<none>"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fs_type: str
    device: str  # "major:minor"


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a mountinfo file, in its order (a later one may cover an earlier
    one at the same point). Lines it cannot read are skipped."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-", 6)
            mounts.append(Mount(_unescape(fields[4]), fields[separator + 1], fields[2]))
        except (ValueError, IndexError):
            continue
    return mounts


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount holding an absolute, resolved `path`: the longest mount point that is
    the path or one of its parents; of several at that point, the last mounted."""
    best: Mount | None = None
    best_length = -1
    for mount in mounts:
        point = mount.mount_point.rstrip("/") or "/"
        inside = point == "/" or path == point or path.startswith(point + "/")
        if inside and len(point) >= best_length:
            best, best_length = mount, len(point)
    return best


def mount_of_path(path: Path, mountinfo: Path = MOUNTINFO) -> Mount | None:
    """The mount holding `path` on this machine; None if mountinfo cannot be read."""
    try:
        return mount_of(os.path.realpath(path), parse_mountinfo(mountinfo.read_text()))
    except OSError:
        return None


def ext4_without_journal(path: Path, mountinfo: Path = MOUNTINFO,
                         sysfs: Path = SYSFS) -> bool | None:
    """True if `path` is on ext4 without a journal, False if on anything else or a
    journaled ext4, None if it could not be told."""
    mount = mount_of_path(path, mountinfo)
    return None if mount is None else mount_without_journal(mount, sysfs)


def mount_without_journal(mount: Mount, sysfs: Path = SYSFS) -> bool | None:
    """`ext4_without_journal` of a mount already found."""
    if mount.fs_type != "ext4":
        return False
    try:
        device = (sysfs / "dev" / "block" / mount.device).resolve(strict=True).name
        return (sysfs / "fs" / "ext4" / device / "journal_task").read_text().strip() \
            == NO_JOURNAL
    except OSError:
        return None


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as \\ooo."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)
