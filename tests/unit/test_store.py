"""The file-system object store: atomic puts, and finished files adopted by a link."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from callrec.store import FileStore, ObjectMismatch

KEY = "2026/12/04/rec1.opus"


def _source(tmp_path: Path, data: bytes = b"OggS" + bytes(range(256)) * 2000) -> Path:
    path = tmp_path / "capture" / "live.opus"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


def _assert_stored_as_a_copy(store: FileStore, source: Path, sha: str) -> None:
    assert sha == hashlib.sha256(source.read_bytes()).hexdigest()
    target = store.local_path(KEY)
    assert target is not None and target.read_bytes() == source.read_bytes()
    assert target.stat().st_ino != source.stat().st_ino


def test_put_file_copies_and_returns_the_sha256(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    source = _source(tmp_path)
    _assert_stored_as_a_copy(store, source, store.put_file(KEY, source))


def test_adopt_file_links_a_file_on_the_same_file_system(tmp_path: Path) -> None:
    """No second copy of a finished recording: the object is the writer's file."""
    store = FileStore(tmp_path / "objects")
    source = _source(tmp_path)
    data = source.read_bytes()
    sha = store.adopt_file(KEY, source)
    assert sha == hashlib.sha256(data).hexdigest()
    target = store.local_path(KEY)
    assert target is not None
    assert target.stat().st_ino == source.stat().st_ino
    source.unlink()  # the writer cleans up its directory: the object stays whole
    assert target.read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp left


def test_adopt_file_again_is_harmless(tmp_path: Path) -> None:
    """A finalize retried after its publish failed stores the same file again."""
    store = FileStore(tmp_path / "objects")
    source = _source(tmp_path)
    first = store.adopt_file(KEY, source)
    assert store.adopt_file(KEY, source) == first
    target = store.local_path(KEY)
    assert target is not None and target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_adopt_file_copies_where_no_link_can_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Another file system (or links refused): a copy, as put_file makes."""
    store = FileStore(tmp_path / "objects")
    source = _source(tmp_path)

    def refuse(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", refuse)
    _assert_stored_as_a_copy(store, source, store.adopt_file(KEY, source))


def test_adopt_file_of_a_missing_file_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    with pytest.raises(FileNotFoundError):
        store.adopt_file(KEY, tmp_path / "gone.opus")
    assert not store.exists(KEY)
    target = store.local_path(KEY)
    assert target is not None and list(target.parent.iterdir()) == []


def test_adopt_file_refuses_a_key_outside_the_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    with pytest.raises(ValueError):
        store.adopt_file("../escape.opus", _source(tmp_path))


@pytest.mark.parametrize("linked", [True, False])
def test_a_file_with_another_sha256_than_expected_is_not_stored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, linked: bool) -> None:
    """A peer's copy is verified by the read that stores it (adopt_file with the
    completion's sha256): a wrong one never becomes the object, linked or copied."""
    store = FileStore(tmp_path / "objects")
    source = _source(tmp_path)
    data = source.read_bytes()
    if not linked:
        def refuse(src: object, dst: object) -> None:
            raise OSError(errno.EXDEV, "cross-device link")
        monkeypatch.setattr(os, "link", refuse)
    with pytest.raises(ObjectMismatch):
        store.adopt_file(KEY, source, "0" * 64)
    assert not store.exists(KEY) and source.read_bytes() == data
    target = tmp_path / "objects" / KEY
    assert list(target.parent.iterdir()) == []  # no temp left
    right = hashlib.sha256(data).hexdigest()
    assert store.adopt_file(KEY, source, right) == right and store.exists(KEY)
