"""Which facts sync is sent: the ones its replica map and live book apply, and no
others (a burst of endings brings each recording's waveform too, which sync has no
use for). No network: the server-side filter itself is tested in
tests/integration/test_event_filters.py."""

from __future__ import annotations

import typing
from datetime import UTC, datetime

from contracts import subjects
from contracts.v1.events import Event, RecordingWaveformComputed, WaveformPeaks, type_of
from services.sync.domain import REPLICA_FACTS, ReplicaMap
from services.sync.live import LIVE_FACTS, LiveBook
from services.sync.service import FOLLOWED_TYPES

KNOWN_TYPES = {type_of(cls) for cls in typing.get_args(typing.get_args(Event)[0])}


def test_sync_follows_what_it_applies_and_not_the_waveforms() -> None:
    assert set(FOLLOWED_TYPES) == {type_of(cls) for cls in REPLICA_FACTS + LIVE_FACTS}
    assert set(FOLLOWED_TYPES) == {
        "recording.started", "recording.completed", "recording.failed",
        "recording.replicated", "recording.purged", "recording.hold_changed"}
    assert set(FOLLOWED_TYPES) <= KNOWN_TYPES
    assert "recording.waveform_computed" not in FOLLOWED_TYPES
    # Each becomes its own subject filter (none is a wildcard that lets others in).
    for event_type in FOLLOWED_TYPES:
        assert not {"*", ">"} & set(subjects.events_of_type(event_type).rsplit(".", 2)[-2:])


def test_a_fact_outside_the_lists_changes_nothing_but_the_checkpoint() -> None:
    """Sent one anyway (an older server, a catch-up), both books ignore it, and the
    checkpoint still moves past its sequence."""
    waveform = RecordingWaveformComputed(
        node_id="a", recording_id="r1", duration_ms=20,
        peaks=WaveformPeaks(bucket_ms=20, buckets=1, channels=["AAA="]))
    replicas = ReplicaMap("b")
    assert replicas.apply(waveform, 1) == []
    assert replicas.checkpoint == 1
    assert replicas.recordings_held() == 0
    live = LiveBook("b")
    assert live.apply(waveform, datetime.now(UTC).timestamp()) == []
    assert live.live == {}
