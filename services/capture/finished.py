"""The directories of recordings already stored: set aside at once, removed when no
finalize waits.

Why: removing a finished call's directory frees its raw packets (segment files of a few
hundred KB a call), and the unlinks, their journal work and the directory walk were
about 3 % of the machine's CPU in a burst of 400 calls ending at once (bench/README.md,
"A finished call's directory, removed after the burst"). That work does not make any
recording playable sooner, so a finalize only renames the directory out of `active/`
(one rename: a restarted capture no longer sees it, so it is never finalized twice) and
the removal waits until no finalize is queued or running, or at most `MAX_WAIT_S`, so
a steady backlog still frees the disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

__all__ = ["MAX_WAIT_S", "POLL_S", "removal_due", "remove_all", "set_aside"]

# A burst of endings lasts a few seconds; a backlog that never empties still frees the
# raw packets of its finished calls this often.
MAX_WAIT_S = 5.0
# How often a waiting removal looks again whether the finalizes are done.
POLL_S = 0.1


def removal_due(finalizes_waiting: int, waited_s: float, max_wait_s: float = MAX_WAIT_S
                ) -> bool:
    """Whether set-aside directories are removed now: no finalize queued or running,
    or they have waited `max_wait_s`."""
    return finalizes_waiting == 0 or waited_s >= max_wait_s


def set_aside(directory: Path, finished_dir: Path) -> None:
    """Move a stored recording's directory out of the way of recovery (to be removed by
    `remove_all`); where it cannot be moved it is removed now."""
    try:
        os.rename(directory, finished_dir / f"{directory.name}.{uuid.uuid4().hex[:8]}")
    except OSError:
        # Gone already (a retried finalize got this far before), or it cannot move (a
        # full disk may have no room for another entry in `finished_dir`): now.
        shutil.rmtree(directory, ignore_errors=True)


def remove_all(finished_dir: Path) -> int:
    """Remove every directory set aside; returns how many there were."""
    removed = 0
    try:
        entries = list(os.scandir(finished_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        removed += 1
    return removed
