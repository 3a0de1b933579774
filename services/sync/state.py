"""Sync's files under `<data_dir>/sync`: the checkpoint and partial downloads.

The checkpoint is written atomically (temporary file, fsync, rename) so a crash
leaves either the old or the new value, never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path

from contracts import subjects

CHECKPOINT = "checkpoint"


def load_checkpoint(root: Path) -> int:
    """Last CLUSTER sequence fully handled; 0 (replay everything) when unknown."""
    try:
        value = int((root / CHECKPOINT).read_text().strip())
    except (OSError, ValueError):
        return 0
    return max(0, value)


def save_checkpoint(root: Path, sequence: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    target = root / CHECKPOINT
    temp = root / f".{CHECKPOINT}.tmp"
    with temp.open("w") as handle:
        handle.write(f"{sequence}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, target)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def part_path(root: Path, recording_id: str) -> Path:
    """Where a download in progress lives; ids become file names, so only plain ones."""
    return root / "partial" / f"{subjects.check_plain_id(recording_id)}.part"


def live_path(root: Path, recording_id: str) -> Path:
    """Our copy of a recording in progress on another node (appended as it grows)."""
    part = part_path(root, recording_id)  # same id check
    return root / "live" / part.name.replace(".part", ".opus")
