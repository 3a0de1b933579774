"""Audio bytes for playback: the stored Ogg/Opus object, or a cached WAV transcode.

WAV files are made once per recording (decoding is CPU-heavy) into
`<data_dir>/cache/wav/<id>.wav` via a temporary name and a rename, so a concurrent
reader or a crash never leaves a half-written file where a finished one is expected.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import uuid
from pathlib import Path

from callrec import audio
from callrec.store import ObjectStore
from contracts.v1.events import RecordingCompleted

_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9+._-]+")


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


class WavCache:
    def __init__(self, store: ObjectStore, cache_dir: Path) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def path_of(self, recording_id: str) -> Path:
        return self.cache_dir / f"{recording_id}.wav"

    async def ensure(self, record: RecordingCompleted) -> Path:
        """Path of the WAV of a recording, transcoding it first when not cached yet."""
        target = self.path_of(record.recording_id)
        if target.is_file():
            return target
        lock, users = self._locks.get(record.recording_id, (asyncio.Lock(), 0))
        self._locks[record.recording_id] = (lock, users + 1)
        try:
            async with lock:
                if not target.is_file():
                    await asyncio.to_thread(self._build, record, target)
        finally:
            lock, users = self._locks[record.recording_id]
            if users <= 1:
                del self._locks[record.recording_id]
            else:
                self._locks[record.recording_id] = (lock, users - 1)
        return target

    def _build(self, record: RecordingCompleted, target: Path) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        source = self.store.local_path(record.object_key)
        copied: Path | None = None
        if source is None:
            # A remote store (MinIO): fetch the object to a temporary file first.
            fd, name = tempfile.mkstemp(dir=self.cache_dir, suffix=".ogg.tmp")
            copied = Path(name)
            with os.fdopen(fd, "wb") as out:
                size = self.store.size(record.object_key)
                for chunk in self.store.read_range(record.object_key, 0, size):
                    out.write(chunk)
            source = copied
        if not source.is_file():
            raise AudioMissing(record.object_key)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            audio.transcode_to_wav(source, temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
            if copied is not None:
                copied.unlink(missing_ok=True)
