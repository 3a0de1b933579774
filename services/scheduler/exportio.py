"""Writing exported recordings to the target folder (blocking: run it in a thread).

Each file appears atomically (temporary name in the same directory, fsync, rename),
so an archive reader or a second node never sees half a file. The audio goes first
and the sidecar, which records the audio's size, last: a file with a matching
sidecar is complete, which lets a node that takes over skip what a dead node wrote.
The target itself is never created: a missing mount point must fail the run, not
silently fill the local disk.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callrec.audio import transcode
from contracts.v1.events import RecordingCompleted

from .exportplan import TEMP_MARK, sidecar_path

MIN_FREE_BYTES = 16 * 1024 * 1024
TARGET_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                           errno.EIO, errno.ESTALE})
"""Errors that say the target (not one recording) is unusable: the run fails. (A missing
file is not one of them: the source may have been purged meanwhile.)"""


class TargetUnavailable(RuntimeError):
    """The export target is missing, not a directory, not writable or full."""


@dataclass(frozen=True)
class Written:
    path: Path
    size: int
    reused: bool  # already complete on the target (e.g. written by a node that died)


def check_target(target: Path, min_free: int = MIN_FREE_BYTES) -> None:
    if not target.is_absolute():
        raise TargetUnavailable(f"export target {target} is not an absolute path")
    if not target.exists():
        raise TargetUnavailable(f"export target {target} does not exist (share not mounted?)")
    if not target.is_dir():
        raise TargetUnavailable(f"export target {target} is not a directory")
    if not os.access(target, os.W_OK | os.X_OK):
        raise TargetUnavailable(f"export target {target} is not writable")
    free = shutil.disk_usage(target).free
    if free < min_free:
        raise TargetUnavailable(f"export target {target} is full ({free} bytes free)")


def probe_target(target: Path, node_id: str) -> tuple[bool, str]:
    """Whether an export could write into `target` now, and a sentence saying so: the
    checks of a run plus one real file written and removed (permission bits do not
    tell root about a read-only or full share)."""
    try:
        check_target(target)
        probe = target / f".callrec-probe{TEMP_MARK}{node_id}-{os.getpid()}"
        try:
            with probe.open("wb") as handle:
                handle.write(b"callrec export target check\n")
                os.fsync(handle.fileno())
        finally:
            probe.unlink(missing_ok=True)
        free = shutil.disk_usage(target).free
    except TargetUnavailable as exc:
        return False, str(exc)
    except OSError as exc:
        return False, f"export target {target} cannot be written: {exc.strerror or exc}"
    return True, f"export target {target} exists and is writable ({free / 1e9:.1f} GB free)"


def target_error(exc: BaseException, target: Path) -> str | None:
    """Why the whole run must stop after `exc`, or None when only one recording failed."""
    try:
        check_target(target)
    except TargetUnavailable as unavailable:
        return str(unavailable)
    except OSError as other:
        return f"export target {target}: {other}"
    if isinstance(exc, OSError) and exc.errno in TARGET_ERRNOS:
        return f"export target {target}: {exc}"
    return None


def _makedirs_below(target: Path, relative_dir: Path) -> Path:
    """Create the directories of `relative_dir` below `target`, never `target` itself."""
    current = target
    for part in relative_dir.parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            current.mkdir()
    return current


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_for(final: Path, node_id: str) -> Path:
    return final.with_name(f".{final.name}{TEMP_MARK}{node_id}-{os.getpid()}")


def _write_atomic(final: Path, node_id: str, write: Callable[[Path], object]) -> bool:
    """Write through a temporary name, fsync, rename. False when another node removed our
    temporary file because it finished the same file first (the final file is theirs)."""
    temp = _temp_for(final, node_id)
    try:
        write(temp)
        with temp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, final)
    except FileNotFoundError:
        if final.exists() and not temp.exists():
            return False
        raise
    finally:
        temp.unlink(missing_ok=True)
    _remove_temps(final)
    return True


def _remove_temps(final: Path) -> None:
    """Leftovers of this name by any node (one killed mid-write): the file is final now.
    A live peer still writing loses its temporary file and finds the final one instead."""
    prefix = f".{final.name}{TEMP_MARK}"
    with contextlib.suppress(OSError):
        for entry in os.scandir(final.parent):
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _complete(audio: Path, sidecar: Path | None, recording: RecordingCompleted,
              fmt: str) -> int | None:
    """Size of an already complete export of this recording, else None."""
    try:
        size = audio.stat().st_size
    except OSError:
        return None
    if sidecar is None:
        return size if fmt == "opus" and size == recording.size_bytes else None
    try:
        meta = json.loads(sidecar.read_text())
        export = meta["export"]
        # The event id: a call replaced by a better copy is written again in place.
        ok = (meta["recording_id"] == recording.recording_id and export["format"] == fmt
              and export["size_bytes"] == size
              and meta.get("event_id", recording.event_id) == recording.event_id)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size if ok else None


def remove_export(target: Path, audio: Path, fmt: str) -> None:
    """Delete an export (audio and sidecar) that a better copy of the call replaced at
    another path; only below the target, never anything else."""
    root = target.resolve()
    for path in (audio, audio.with_suffix(".json")):
        if path.resolve().is_relative_to(root) and path.resolve() != root:
            path.unlink(missing_ok=True)


def sidecar_json(recording: RecordingCompleted, fmt: str, file_name: str, size: int) -> str:
    body: dict[str, Any] = recording.model_dump(mode="json")
    body["export"] = {"format": fmt, "file": file_name, "size_bytes": size}
    return json.dumps(body, indent=2, sort_keys=True)


def export_recording(
    source: Path,
    target: Path,
    relative: str,
    recording: RecordingCompleted,
    fmt: str,
    with_sidecar: bool,
    node_id: str,
) -> Written:
    """Write one recording (and its sidecar) below `target`; idempotent."""
    check_target(target)
    rel = Path(relative)
    directory = _makedirs_below(target, rel.parent)
    audio = directory / rel.name
    sidecar = target / sidecar_path(relative, fmt) if with_sidecar else None
    if not audio.resolve().is_relative_to(target.resolve()):
        raise TargetUnavailable(f"{audio} escapes the export target {target}")
    done = _complete(audio, sidecar, recording, fmt)
    if done is not None:
        _remove_temps(audio)
        if sidecar is not None:
            _remove_temps(sidecar)
        return Written(audio, done, reused=True)
    _write_atomic(audio, node_id, lambda temp: transcode(source, temp, fmt))
    size = audio.stat().st_size
    if sidecar is not None:
        text = sidecar_json(recording, fmt, audio.name, size)
        _write_atomic(sidecar, node_id, lambda temp: temp.write_text(text))
    _fsync_dir(directory)
    return Written(audio, size, reused=False)
