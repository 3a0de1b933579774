"""The on-disk description of a recording in progress.

Everything needed to finish a recording after a crash lives next to its segments:
start time, streams with their ports, payload types and admitted RTP sources, and
the call metadata.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from contracts.v1.events import RecordingMetadata

from .latching import Endpoint, Expected

MANIFEST = "manifest.json"


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

    def save(self, directory: Path) -> None:
        """Atomic replace, so a crash leaves the old or the new manifest, never half."""
        temp = directory / f".{MANIFEST}.tmp"
        temp.write_text(self.model_dump_json())
        os.replace(temp, directory / MANIFEST)

    @classmethod
    def load(cls, directory: Path) -> RecordingManifest:
        return cls.model_validate_json((directory / MANIFEST).read_text())
