"""The on-disk description of a recording in progress.

Everything needed to finish a recording after a crash lives next to its segments:
start time, streams with their ports and payload types, and the call metadata.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from contracts.v1.events import RecordingMetadata

MANIFEST = "manifest.json"


class StreamManifest(BaseModel):
    stream_id: str
    channel: int
    label: str | None = None
    port: int
    payload_codecs: dict[int, str] = Field(default_factory=dict)


class RecordingManifest(BaseModel):
    recording_id: str
    started_at: datetime
    ended_at: datetime | None = None
    metadata: RecordingMetadata
    streams: dict[str, StreamManifest] = Field(default_factory=dict)
    recovered: bool = False

    def save(self, directory: Path) -> None:
        """Atomic replace, so a crash leaves the old or the new manifest, never half."""
        temp = directory / f".{MANIFEST}.tmp"
        temp.write_text(self.model_dump_json())
        os.replace(temp, directory / MANIFEST)

    @classmethod
    def load(cls, directory: Path) -> RecordingManifest:
        return cls.model_validate_json((directory / MANIFEST).read_text())
