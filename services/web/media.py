"""Audio for playback and download, and waveforms the catalog has none of.

The stored Ogg/Opus object is served as it is; WAV and MP3 are transcoded once per copy
of a recording (decoding is CPU-heavy) with `callrec.audio.transcode`, the rule the
export job uses too, into `<data_dir>/cache/<format>/<id>.<sha>.<ext>`. Keyed by the
copy's sha256, so when the catalog lists a better copy of a call (the origin's after a
peer's interrupted one) its downloads are made again rather than served stale.
A recording without stored peaks (older than peaks, a peer's interrupted copy, a
capture restart whose prefix did not decode) gets them computed from its audio once,
cached the same way as JSON. Every file is written under a temporary name, made 0600,
then renamed, so a concurrent reader or a crash never sees half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from callrec import audio, waveform
from callrec.store import ObjectStore
from contracts.v1.events import RecordingCompleted
from contracts.v1.rpc import Waveform

_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9+._-]+")

Transcoded = Literal["wav", "mp3"]
"""Formats made from the stored Ogg/Opus (which is itself the `opus` download)."""


class AudioMissing(FileNotFoundError):
    """The catalog knows the recording but this node's store has no object for it."""


def download_name(record: RecordingCompleted, extension: str) -> str:
    """A name a person can sort and recognise: start time, numbers, short id."""
    when = record.started_at.strftime("%Y%m%d-%H%M%S")
    numbers = "_".join(record.metadata.numbers()[:4])
    parts = ["callrec", when, numbers, record.recording_id[:12]]
    stem = "_".join(p for p in parts if p)
    stem = _FILENAME_UNSAFE.sub("-", stem).strip("-.")[:150] or "recording"
    return f"{stem}.{extension}"


class MediaCache:
    """WAV/MP3 transcodes and computed waveforms, each made once per copy of a recording."""

    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self._locks: dict[Path, tuple[asyncio.Lock, int]] = {}

    def path_of(self, record: RecordingCompleted, kind: str, extension: str) -> Path:
        return self.cache_dir / kind / f"{record.recording_id}.{record.sha256[:16]}.{extension}"

    async def ensure(self, record: RecordingCompleted, fmt: Transcoded = "wav") -> Path:
        """Path of the recording as `fmt`, transcoding it first when not cached yet."""
        target = self.path_of(record, fmt, fmt)

        def build(source: Path, temp: Path) -> None:
            audio.transcode(source, temp, fmt)

        await self._once(record, target, build)
        return target

    async def waveform(self, record: RecordingCompleted) -> Waveform:
        """The recording's peaks computed from its audio (the catalog had none stored)."""
        target = self.path_of(record, "waveform", "json")

        def build(source: Path, temp: Path) -> None:
            peaks, duration_ms = waveform.peaks_of_file(source)
            computed = Waveform(recording_id=record.recording_id, duration_ms=duration_ms,
                                peaks=peaks, source="computed")
            temp.write_text(computed.model_dump_json())

        await self._once(record, target, build)
        return Waveform.model_validate_json(target.read_text())

    async def _once(self, record: RecordingCompleted, target: Path,
                    build: Callable[[Path, Path], None]) -> None:
        """Make `target` unless it exists; concurrent requests for it wait for one build."""
        if target.is_file():
            return
        lock, users = self._locks.get(target, (asyncio.Lock(), 0))
        self._locks[target] = (lock, users + 1)
        try:
            async with lock:
                if not target.is_file():
                    await asyncio.to_thread(self._build, record, target, build)
        finally:
            lock, users = self._locks[target]
            if users <= 1:
                del self._locks[target]
            else:
                self._locks[target] = (lock, users - 1)

    def _build(self, record: RecordingCompleted, target: Path,
               build: Callable[[Path, Path], None]) -> None:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp{target.suffix}")
        try:
            with self._source(record, target.parent) as source:
                build(source, temp)
            os.chmod(temp, 0o600)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _source(self, record: RecordingCompleted, work_dir: Path) -> Iterator[Path]:
        """The stored Ogg/Opus as a local file (a remote store's fetched to a temp file)."""
        source = self.store.local_path(record.object_key)
        if source is not None:
            if not source.is_file():
                raise AudioMissing(record.object_key)
            yield source
            return
        fd, name = tempfile.mkstemp(dir=work_dir, suffix=".ogg.tmp")
        copied = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                size = self.store.size(record.object_key)
                for chunk in self.store.read_range(record.object_key, 0, size):
                    out.write(chunk)
            yield copied
        finally:
            copied.unlink(missing_ok=True)
