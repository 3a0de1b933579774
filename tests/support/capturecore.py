"""A capture service object with no bus and no workers, for tests of its own logic
(journal, file thread, finalize scheduling) that call its handlers directly."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from callrec.config import NodeConfig
from callrec.metrics import Registry
from callrec.service import ServiceContext
from contracts.v1.events import RecordingMetadata
from services.capture.manifest import RecordingManifest
from services.capture.service import Capture, LiveRecording


def bare_capture(data_dir: Path, ports: tuple[int, int] = (41000, 41999)) -> Capture:
    config = NodeConfig(node_id="n1", data_dir=data_dir, rtp_port_min=ports[0],
                        rtp_port_max=ports[1])
    ctx = ServiceContext("capture", config, cast(Any, None), cast(Any, None),
                         Registry("capture", "n1"), asyncio.Event())
    return Capture(ctx, cast(Any, None), [], cast(Any, lambda _: None))


def add_live(capture: Capture, recording_id: str) -> LiveRecording:
    """A call in progress with its directory made (no streams), as live steps see it."""
    directory = capture.active_dir / recording_id
    directory.mkdir()
    manifest = RecordingManifest(recording_id=recording_id, started_at=datetime.now(UTC),
                                 metadata=RecordingMetadata(source="cucm", session_key="k"))
    recording = LiveRecording(manifest, directory, directory_made=True)
    capture.live[recording_id] = recording
    return recording
