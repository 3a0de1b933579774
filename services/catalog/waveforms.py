"""Waveform peaks in the catalog: one row per (recording, copy), projected from
`recording.waveform_computed` facts in the projection's own transaction (so the
checkpoint covers them), read by the `catalog.waveform` RPC.

Keyed by the node that computed them, because a call can have two copies (the origin's
and a peer's interrupted takeover copy, `contracts.v1.winner`): the peaks served are
those of the copy the catalog lists, so the drawing matches the audio played. A purged
recording's peaks are hidden with it (the recordings row decides); none are deleted, so
a hold that voids a purge brings them back too.
"""

from __future__ import annotations

import sqlite3

from contracts.v1.events import RecordingWaveformComputed, WaveformPeaks
from contracts.v1.rpc import Waveform

SCHEMA = """
CREATE TABLE IF NOT EXISTS waveforms (
    recording_id TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    duration_ms  INTEGER NOT NULL,
    peaks_json   TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    PRIMARY KEY (recording_id, node_id)
) WITHOUT ROWID;
"""


def create(db: sqlite3.Connection) -> None:
    """Add the table to a catalog file (idempotent; replays re-apply the same rows)."""
    db.executescript(SCHEMA)


def apply(db: sqlite3.Connection, event: RecordingWaveformComputed, seq: int) -> None:
    """Keep one copy's peaks; the same fact again (a replay) changes nothing."""
    db.execute(
        "INSERT INTO waveforms (recording_id, node_id, duration_ms, peaks_json, sequence) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (event.recording_id, event.node_id, event.duration_ms,
         event.peaks.model_dump_json(), seq),
    )


def get(db: sqlite3.Connection, recording_id: str) -> Waveform | None:
    """The peaks of the copy the catalog lists, None when it has none (or is purged)."""
    row = db.execute(
        "SELECT w.duration_ms, w.peaks_json FROM waveforms w JOIN recordings r "
        "ON r.recording_id = w.recording_id AND r.node_id = w.node_id "
        "WHERE w.recording_id = ? AND r.purged = 0",
        (recording_id,),
    ).fetchone()
    if row is None:
        return None
    return Waveform(recording_id=recording_id, duration_ms=int(row[0]),
                    peaks=WaveformPeaks.model_validate_json(row[1]), source="stored")
