"""Recording sessions kept on disk, so a restarted signaling service still knows its
calls: capture keeps recording them, and the PBX's re-INVITEs and BYEs still match.

One small JSON file per recording, replaced atomically on every change (answer, ACK,
re-INVITE, UPDATE, metadata) and deleted when the recording ends. Only sessions of
the same node boot are taken back: after the whole node went down the PBX has moved
on, and capture finalizes those recordings from what reached the disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from contracts.v1.events import RecordingMetadata

from . import siprec
from .recorder import Leg, RecordingSession, Stream
from .sip.transport import Peer

log = structlog.get_logger()


def session_to_dict(
    session: RecordingSession, siprec_meta: siprec.RecordingMetadata | None
) -> dict[str, Any]:
    now_wall, now_mono = time.time(), time.monotonic()
    legs = []
    for leg in session.legs.values():
        peer = leg.peer if isinstance(leg.peer, Peer) else None
        legs.append({
            **{f.name: getattr(leg, f.name) for f in dataclasses.fields(leg)
               if f.name not in ("streams", "peer", "refreshed_at")},
            "streams": [dataclasses.asdict(s) for s in leg.streams],
            "peer": [peer.transport, peer.host, peer.port] if peer else None,
            "refreshed_wall": now_wall - (now_mono - leg.refreshed_at),
        })
    return {
        "recording_id": session.recording_id,
        "session_key": session.session_key,
        "started_at": session.started_at.isoformat(),
        "metadata": session.metadata.model_dump(mode="json"),
        "legs": legs,
        "siprec": dataclasses.asdict(siprec_meta) if siprec_meta else None,
    }


def session_from_dict(
    data: dict[str, Any],
) -> tuple[RecordingSession, siprec.RecordingMetadata | None]:
    now_wall, now_mono = time.time(), time.monotonic()
    session = RecordingSession(
        recording_id=data["recording_id"],
        session_key=data["session_key"],
        started_at=datetime.fromisoformat(data["started_at"]),
        metadata=RecordingMetadata.model_validate(data["metadata"]),
    )
    for raw in data["legs"]:
        fields = {k: v for k, v in raw.items()
                  if k not in ("streams", "peer", "refreshed_wall")}
        streams = [Stream(**{**s, "payload_codecs": {int(k): v for k, v in
                                                      s["payload_codecs"].items()}})
                   for s in raw["streams"]]
        leg = Leg(**fields, streams=streams)
        if raw.get("peer"):
            transport, host, port = raw["peer"]
            leg.peer = Peer(str(transport), str(host), int(port))  # TCP: reply on a new one
        leg.refreshed_at = now_mono - (now_wall - float(raw["refreshed_wall"]))
        session.legs[leg.call_id] = leg
    meta = None
    if data.get("siprec"):
        raw_meta = data["siprec"]
        meta = siprec.RecordingMetadata(**{
            **raw_meta,
            "participants": [siprec.Participant(**p) for p in raw_meta["participants"]],
            "streams": [siprec.StreamInfo(**s) for s in raw_meta["streams"]],
        })
    return session, meta


class DialogStore:
    def __init__(self, directory: Path, boot_id: str = "") -> None:
        self.directory = directory
        self.boot_id = boot_id
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, session: RecordingSession,
             siprec_meta: siprec.RecordingMetadata | None) -> None:
        path = self.directory / f"{session.recording_id}.json"
        temp = path.with_suffix(".tmp")
        data = {**session_to_dict(session, siprec_meta), "boot_id": self.boot_id}
        temp.write_text(json.dumps(data))
        os.replace(temp, path)

    def delete(self, recording_id: str) -> None:
        (self.directory / f"{recording_id}.json").unlink(missing_ok=True)

    def load_all(self) -> list[tuple[RecordingSession, siprec.RecordingMetadata | None]]:
        loaded = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                if data.get("boot_id", "") != self.boot_id:
                    log.info("dialog_state_from_previous_boot", path=str(path))
                    path.unlink(missing_ok=True)
                    continue
                loaded.append(session_from_dict(data))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("dialog_state_unreadable", path=str(path), error=str(exc))
                path.unlink(missing_ok=True)
        return loaded
