"""Waveform peaks in the catalog (services/catalog/waveforms.py): in either order with
the completion, checkpointed with it, the listed copy's peaks only, hidden with a purge."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from callrec.waveform import compute_peaks
from contracts.v1.events import LegalHoldChanged, RecordingPurged, RecordingWaveformComputed
from services.catalog.projection import Catalog
from tests.unit.test_catalog_projection import completed


def waveform(rid: str, node: str, level: int) -> RecordingWaveformComputed:
    pcm = np.full((2, 16000), level, dtype=np.int16)
    return RecordingWaveformComputed(node_id=node, recording_id=rid, duration_ms=1000,
                                     peaks=compute_peaks(pcm, 16000))


def test_peaks_arrive_before_or_after_the_completion_and_survive_a_reopen(
    tmp_path: Path,
) -> None:
    for name, order in (("before", 0), ("after", 1)):
        path = tmp_path / f"{name}.sqlite3"
        catalog = Catalog(path)
        peaks, done = waveform("r1", "n1", 1000), completed("r1", 0, "1001")
        events = [peaks, done] if order == 0 else [done, peaks]
        catalog.apply(events[0], 1)
        assert catalog.waveform("r1") is None  # nothing to show until both are there
        catalog.apply(events[1], 2)
        got = catalog.waveform("r1")
        assert got is not None and got.peaks == peaks.peaks and got.source == "stored"
        assert got.duration_ms == 1000
        catalog.close()
        reopened = Catalog(path)
        assert reopened.waveform("r1") == got and reopened.last_sequence == 2
        reopened.close()


def test_the_listed_copys_peaks_are_served(tmp_path: Path) -> None:
    origin = completed("r1", 0, "1001").model_copy(update={"duration_ms": 9_400})
    takeover = origin.model_copy(update={
        "event_id": "t" * 32, "node_id": "b", "duration_ms": 9_900, "interrupted": True})
    catalog = Catalog(tmp_path / "c.sqlite3")
    catalog.apply_batch([(waveform("r1", "n1", 1000), 1), (origin, 2)])
    first = catalog.waveform("r1")
    assert first is not None
    # A takeover copy with more audio wins the listing: its peaks (none here) count.
    catalog.apply(takeover, 3)
    assert catalog.waveform("r1") is None
    catalog.apply(waveform("r1", "b", 3000), 4)
    second = catalog.waveform("r1")
    assert second is not None and second.peaks != first.peaks


def test_a_purge_hides_the_peaks_and_a_voiding_hold_brings_them_back(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "c.sqlite3")
    done = completed("r1", 0, "1001")
    catalog.apply_batch([(done, 1), (waveform("r1", "n1", 1000), 2)])
    held_at = done.ended_at
    purge = RecordingPurged(node_id="n1", recording_id="r1", object_key=done.object_key,
                            reason="test", occurred_at=held_at.replace(minute=30))
    catalog.apply(purge, 3)
    assert catalog.waveform("r1") is None
    # A hold issued before the purge (arriving late, a partition) voids it.
    hold = LegalHoldChanged(node_id="n2", recording_id="r1", hold=True,
                            occurred_at=held_at.replace(minute=10))
    catalog.apply(hold, 4)
    assert catalog.waveform("r1") is not None
