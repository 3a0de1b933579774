"""Finalizing a taken-over recording: what a peer stores from its live copy.

The live copy is the origin's Ogg/Opus file as far as it reached us; its longest
prefix of complete pages is a playable recording of the call up to the loss. When
nothing (or only headers) arrived, the call still gets its interrupted recording, of
silence, so it is listed with its metadata rather than lost without a trace.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from callrec.audio import encode_opus_stereo

from .ogg import scan

TAKEOVER_ENV = "CALLREC_TAKEOVER_TIMEOUT_S"
TAKEOVER_MARGIN_S = 5.0
_NAMESPACE = uuid.UUID("5b0e6c1d-8f0a-4d55-a7b1-2c1f6f3e9d47")


def takeover_timeout(role_timeout_s: float, env: dict[str, str] | None = None) -> float:
    """How long an origin must be silent (no heartbeat, no live progress) before a peer
    finalizes its recordings in progress: the role timeout plus a margin (default
    3 s + 5 s), or CALLREC_TAKEOVER_TIMEOUT_S. Waiting longer loses nothing (the peer
    keeps the audio); shorter makes a passing partition produce more provisional copies."""
    value = (env if env is not None else os.environ).get(TAKEOVER_ENV)
    if value:
        try:
            parsed = float(value)
        except ValueError:
            parsed = 0.0
        if parsed > 0:
            return parsed
    return role_timeout_s + TAKEOVER_MARGIN_S


def takeover_key(recording_id: str, started_at: datetime, node_id: str,
                 duration_ms: int) -> str:
    """Never the origin's key, nor an earlier takeover's (a second one, after the origin
    came back and fell silent again, has more audio): copies coexist until one loses."""
    day = started_at.astimezone(UTC)
    return (f"recordings/{day:%Y/%m/%d}/{recording_id}.{node_id}.{duration_ms}"
            ".interrupted.opus")


def takeover_event_id(recording_id: str, node_id: str, duration_ms: int) -> str:
    """Deterministic: a takeover retried after a crash is the same fact."""
    return uuid.uuid5(
        _NAMESPACE, f"recording.completed.takeover:{recording_id}:{node_id}:{duration_ms}").hex


@dataclass(frozen=True)
class Built:
    path: Path
    size: int
    duration_ms: int

    @property
    def duration(self) -> timedelta:
        return timedelta(milliseconds=self.duration_ms)


def build_takeover(live_copy: Path, output: Path, rate: int = 8000) -> Built:
    """The recording a peer keeps: complete pages of its live copy (blocking). Not
    synced: the store's adopt_file syncs it before it is visible, and a crash before
    that builds it again from the live copy."""
    output.parent.mkdir(parents=True, exist_ok=True)
    data = live_copy.read_bytes() if live_copy.exists() else b""
    found = scan(data)
    if found.duration_ms > 0:
        with output.open("wb") as handle:
            handle.write(data[:found.complete])
        return Built(output, found.complete, found.duration_ms)
    empty = np.zeros(0, dtype=np.int16)
    encode_opus_stereo(empty, empty, rate, output)
    return Built(output, output.stat().st_size, 0)
