"""Start the kernel writing a file's dirty pages now, without waiting for the disk.

Why: capture fsyncs a call's segments when the call ends. Left to the kernel, up to
its dirty_expire (30 s by default) of every call's packets are still only in memory
at the BYE, and 400 calls ending at once then write all of that in their fsyncs
(bench/README.md, "Writeback started while the call goes on"). Started every few
seconds as the call goes, the fsync at its end finds only the last few seconds.

Linux's sync_file_range(SYNC_FILE_RANGE_WRITE) through ctypes (it releases the GIL);
where it is missing nothing is started and the fsync does it all, as before.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["available", "start_writeback", "start_writebacks"]

_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of dirty pages, do not wait


def _load() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load()


def available() -> bool:
    return _sync_file_range is not None


def start_writeback(fd: int) -> bool:
    """Queue every dirty page of the open file for writing; False if that could not be
    started (no such call here, a bad descriptor)."""
    if _sync_file_range is None:
        return False
    return _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) == 0


def start_writebacks(paths: Iterable[Path]) -> int:
    """`start_writeback` for each file by its path (opened here, read-only: no
    descriptor shared with the writer, which may close it meanwhile); a file gone
    since (its call ended and was cleaned up) is skipped. Returns how many started."""
    if _sync_file_range is None:
        return 0
    started = 0
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            started += start_writeback(fd)
        finally:
            os.close(fd)
    return started
