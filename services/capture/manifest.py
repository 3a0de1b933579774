"""The on-disk description of a recording in progress.

Everything needed to finish a recording after a crash lives next to its segments:
start time, streams with their ports, payload types and admitted RTP sources, and
the call metadata.

Call set-up changes manifests at the call rate (an allocate per leg, an update per
ACK): rewriting `manifest.json` each time (create a temporary file, write, rename)
was most of an allocate's cost. So a change is first appended to one journal
(`ManifestJournal`: one write() to an open file, in the page cache at once, so it
survives a crash of the capture process as the rename did), and the next flush
writes each changed recording's `manifest.json` once and empties the journal. Each
state carries a `revision`, so replaying the journal after a crash never replaces a
newer `manifest.json` with an older state.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from contracts.v1.events import RecordingMetadata

from .latching import Endpoint, Expected

MANIFEST = "manifest.json"
_TEMP = f".{MANIFEST}.tmp"
_SAVE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


class StreamManifest(BaseModel):
    stream_id: str
    channel: int
    label: str | None = None
    port: int
    payload_codecs: dict[int, str] = Field(default_factory=dict)
    # RTP admission (see latching.py), kept here so that a restarted capture admits the
    # same source rather than whoever sends first: what the peer's SDP said (normalised)
    # and the source the stream latched to.
    expected_address: str | None = None
    expected_port: int | None = None
    latched_address: str | None = None
    latched_port: int | None = None

    def expectation(self) -> tuple[Expected, Endpoint | None]:
        expected = Expected(self.expected_address, self.expected_port)
        latched = (Endpoint(self.latched_address, self.latched_port)
                   if self.latched_address is not None and self.latched_port is not None
                   else None)
        return expected, latched

    def set_expectation(self, expected: Expected, latched: Endpoint | None) -> None:
        self.expected_address, self.expected_port = expected.address, expected.port
        self.set_latched(latched)

    def set_latched(self, latched: Endpoint | None) -> None:
        self.latched_address = latched.address if latched is not None else None
        self.latched_port = latched.port if latched is not None else None


class RecordingManifest(BaseModel):
    recording_id: str
    started_at: datetime
    ended_at: datetime | None = None
    metadata: RecordingMetadata
    streams: dict[str, StreamManifest] = Field(default_factory=dict)
    recovered: bool = False
    # Grows with every state written (file or journal): the newest state wins a replay.
    revision: int = 0

    def save(self, directory: Path) -> None:
        """Atomic replace, so a crash leaves the old or the new manifest, never half."""
        write_manifest(directory, self.snapshot())

    def snapshot(self) -> bytes:
        """The next revision, as `write_manifest` stores it.

        Taken where the manifest changes (the event loop), written where the disk may
        be slow (the file thread): a later change is a later snapshot."""
        self.revision += 1
        return self.model_dump_json().encode()

    @classmethod
    def load(cls, directory: Path) -> RecordingManifest:
        return cls.model_validate_json((directory / MANIFEST).read_text())


def write_manifest(directory: Path, data: bytes) -> None:
    """Replace the directory's manifest.json with `data` atomically.

    Plain os calls on bytes: the flush saves a manifest per recording set up (at 200
    calls/s), and `Path.write_text` (a text-mode file object, its encoder and buffer)
    cost about as much as the write itself."""
    temp = os.path.join(directory, _TEMP)
    fd = os.open(temp, _SAVE_FLAGS, 0o666)
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):  # a full disk: keep the old manifest, say so
        raise OSError(f"manifest: short write ({written} of {len(data)})")
    os.replace(temp, os.path.join(directory, MANIFEST))


JOURNAL = "manifests.journal"


class ManifestJournal:
    """Manifest changes not yet written to their recordings' `manifest.json`.

    One JSON line per change: a whole manifest, or ``{"released": id}`` for a
    recording given up before it recorded anything. The owner writes the changed
    manifests out (`RecordingManifest.save`) and then calls `clear`; after a crash,
    capture writes out what `read` finds before it recovers its recordings.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.entries = 1 if os.fstat(self._fd).st_size else 0  # left by a crash

    def record(self, manifest: RecordingManifest) -> None:
        manifest.revision += 1
        self._append(manifest.model_dump_json().encode())

    def released(self, recording_id: str) -> None:
        self._append(b'{"released": ' + _json_string(recording_id) + b"}")

    def _append(self, line: bytes) -> None:
        data = line + b"\n"
        self.entries += 1  # also a torn line: `clear` must empty the file
        written = os.write(self._fd, data)
        if written != len(data):  # a full disk: the line is torn, replay skips it
            raise OSError(f"manifest journal: short write ({written} of {len(data)})")

    def clear(self) -> None:
        """Every change recorded so far is in its manifest.json."""
        if self.entries:
            os.ftruncate(self._fd, 0)
            self.entries = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @staticmethod
    def read(path: Path) -> tuple[dict[str, RecordingManifest | None], int]:
        """The last state of each recording in the journal (None: released), and how
        many lines could not be read (a line torn by a full disk)."""
        states: dict[str, RecordingManifest | None] = {}
        bad = 0
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_bytes().splitlines():
                if not line.strip():
                    continue
                try:
                    if line.startswith(b'{"released":'):
                        states[_released_id(line)] = None
                    else:
                        manifest = RecordingManifest.model_validate_json(line)
                        states[manifest.recording_id] = manifest
                except ValueError:
                    bad += 1
        return states, bad


def _json_string(value: str) -> bytes:
    return json.dumps(value).encode()


def _released_id(line: bytes) -> str:
    value = json.loads(line).get("released")
    if not isinstance(value, str):
        raise ValueError("released: not a recording id")
    return value
