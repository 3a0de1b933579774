"""The node's object store for finished recordings.

One interface with the local file system behind it by default; MinIO (through the
`minio` SDK) will sit behind the same interface. Writes are atomic (temporary name,
fsync, rename), so a reader never sees half an object and a crash leaves none.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

CHUNK = 256 * 1024


class ObjectStore(Protocol):
    def put_file(self, key: str, source: Path, expected_sha256: str | None = None) -> str: ...
    def adopt_file(self, key: str, source: Path, expected_sha256: str | None = None) -> str: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]: ...
    def local_path(self, key: str) -> Path | None: ...
    def delete(self, key: str) -> None: ...
    def writable(self) -> tuple[bool, str | None]: ...
    def free_bytes(self) -> int: ...


class StoreKeyError(ValueError):
    """A key that would escape the store (absolute, '..', empty parts)."""


class ObjectMismatch(ValueError):
    """A file offered with the sha256 it must have did not have it: not stored."""


def file_chunks(path: Path, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of a file, in chunks (for ranged downloads)."""
    with path.open("rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class FileStore:
    """Objects as files under `root`, keyed by relative slash-separated paths."""

    def __init__(self, root: Path, min_free_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StoreKeyError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _staging(self, key: str) -> tuple[Path, Path]:
        """An object's path (its directory made) and the temporary name it is
        written under before the atomic rename."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target, target.with_name(f".{target.name}.tmp-{os.getpid()}")

    def put_file(self, key: str, source: Path, expected_sha256: str | None = None) -> str:
        """Copy `source` in atomically; returns its sha256 (computed while copying).
        With `expected_sha256`, a copy with another digest is not stored (ObjectMismatch)."""
        target, temp = self._staging(key)
        digest = hashlib.sha256()
        try:
            with source.open("rb") as src, temp.open("wb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    dst.write(chunk)
                _check_digest(key, digest.hexdigest(), expected_sha256)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)  # e.g. a full disk: leave no partial copy behind
            raise
        _fsync_dir(target.parent)
        return digest.hexdigest()

    def adopt_file(self, key: str, source: Path, expected_sha256: str | None = None) -> str:
        """Store a finished file its writer will not write again (it may still remove
        it); returns its sha256. With `expected_sha256`, a file with another digest is
        not stored (ObjectMismatch): a copy is verified by the one read that stores it.
        Where `source` is on the store's file system it is linked in, not copied: a
        burst of finished recordings then costs the disk what their writers left
        unwritten, not a second copy of each (bench/README.md, "The store takes a
        finished file by a link"). Elsewhere it is copied."""
        target, temp = self._staging(key)
        temp.unlink(missing_ok=True)  # left by a crash with a recycled pid: link needs the name
        try:
            os.link(source, temp)
        except OSError as exc:
            if exc.errno not in _CANNOT_LINK:
                raise
            return self.put_file(key, source, expected_sha256)
        digest = hashlib.sha256()
        try:
            with temp.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
                _check_digest(key, digest.hexdigest(), expected_sha256)
                os.fsync(handle.fileno())  # the writer's unsynced pages, nothing more
            os.replace(temp, target)
            # Already stored (a retried finalize): rename of two links to one file
            # does nothing (POSIX), so the temporary name is still there.
            temp.unlink(missing_ok=True)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return digest.hexdigest()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of an object, in chunks."""
        return file_chunks(self._path(key), start, end)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def writable(self) -> tuple[bool, str | None]:
        if not os.access(self.root, os.W_OK):
            return False, f"store {self.root} is not writable"
        if self.free_bytes() < self.min_free_bytes:
            return False, f"store {self.root} has less than {self.min_free_bytes} bytes free"
        return True, None


def open_store(data_dir: Path) -> ObjectStore:
    return FileStore(data_dir / "objects")


# Where a hard link cannot be made and a copy is the way: another file system, one
# without hard links, a link count at its limit, a link refused (protected_hardlinks).
_CANNOT_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP,
                          errno.EOPNOTSUPP, errno.EACCES})


def _check_digest(key: str, digest: str, expected: str | None) -> None:
    if expected is not None and digest != expected:
        raise ObjectMismatch(f"{key}: sha256 {digest}, expected {expected}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
