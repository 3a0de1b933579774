"""callrec/filesystem.py tells a data dir on ext4 without a journal (the node warns)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from callrec.filesystem import Mount, ext4_without_journal, mount_of, parse_mountinfo

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
25 22 0:21 / /proc rw,nosuid - proc proc rw
30 22 0:26 / /tmp rw shared:5 - tmpfs tmpfs rw,size=1g
41 22 7:0 / /srv/call\\040rec rw,relatime shared:9 - ext4 /dev/loop0 rw
42 22 7:1 / /srv/xfs rw - xfs /dev/loop1 rw
43 30 0:40 / /tmp/over rw - tmpfs tmpfs rw
44 30 7:2 / /tmp/over rw - ext4 /dev/loop2 rw
this line is not a mount
"""


def test_mountinfo_is_parsed_with_escaped_paths() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert Mount("/", "ext4", "254:1") == mounts[0]
    assert Mount("/srv/call rec", "ext4", "7:0") in mounts
    assert len(mounts) == 7  # the unreadable line skipped


@pytest.mark.parametrize(("path", "device"), [
    ("/var/lib/callrec", "254:1"),      # only the root holds it
    ("/tmp", "0:26"),                   # the mount point itself
    ("/tmpx/data", "254:1"),            # a sibling sharing a prefix is not inside /tmp
    ("/srv/call rec/data", "7:0"),
    ("/tmp/over/data", "7:2"),          # the last of two mounts at one point
])
def test_the_mount_holding_a_path(path: str, device: str) -> None:
    found = mount_of(path, parse_mountinfo(MOUNTINFO))
    assert found is not None and found.device == device


def _fake_system(root: Path, devices: dict[str, tuple[str, str]]) -> tuple[Path, Path]:
    """MOUNTINFO and a sysfs with each "major:minor" -> (block device, journal_task)."""
    mountinfo = root / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    sysfs = root / "sys"
    (sysfs / "dev" / "block").mkdir(parents=True)
    for number, (name, task) in devices.items():
        device = sysfs / "devices" / "virtual" / "block" / name
        device.mkdir(parents=True)
        (sysfs / "dev" / "block" / number).symlink_to(device)
        (sysfs / "fs" / "ext4" / name).mkdir(parents=True)
        (sysfs / "fs" / "ext4" / name / "journal_task").write_text(task + "\n")
    return mountinfo, sysfs


def test_ext4_without_a_journal_is_told_from_one_with(tmp_path: Path) -> None:
    mountinfo, sysfs = _fake_system(tmp_path, {"254:1": ("vda", "<none>"),
                                               "7:0": ("loop0", "1234")})
    assert ext4_without_journal(Path("/var/lib/callrec"), mountinfo, sysfs) is True
    assert ext4_without_journal(Path("/srv/call rec/x"), mountinfo, sysfs) is False
    assert ext4_without_journal(Path("/tmp/x"), mountinfo, sysfs) is False  # tmpfs
    assert ext4_without_journal(Path("/srv/xfs/x"), mountinfo, sysfs) is False  # xfs
    # ext4 whose device sysfs does not show (7:2): not known, so no warning
    assert ext4_without_journal(Path("/tmp/over/x"), mountinfo, sysfs) is None
    assert ext4_without_journal(Path("/x"), tmp_path / "missing", sysfs) is None


needs_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkfs.ext4") is None,
    reason="mounts ext4 loop images: needs root and e2fsprogs")


@needs_mounts
@pytest.mark.parametrize(("features", "without"), [("has_journal", False),
                                                   ("^has_journal", True)])
def test_a_real_ext4_mount(tmp_path: Path, features: str, without: bool) -> None:
    image, mount_point = tmp_path / "fs.img", tmp_path / "mnt"
    with image.open("wb") as handle:
        handle.truncate(64 << 20)
    mount_point.mkdir()
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", features, str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], check=True)
    try:
        (mount_point / "data").mkdir()
        assert ext4_without_journal(mount_point / "data") is without
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
