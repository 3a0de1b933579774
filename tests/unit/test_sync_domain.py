"""Sync's holder map and planner: what to fetch, from whom, purges, duplicates,
and the checkpoint's low-water mark (no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.v1.events import (
    LegalHoldChanged,
    RecordingCompleted,
    RecordingMetadata,
    RecordingPurged,
    RecordingReplicated,
)
from services.sync.domain import (
    MAX_BACKOFF_S,
    Fetch,
    LowWaterMark,
    PeerTable,
    Purge,
    ReplicaMap,
    backoff,
    chunk_plan,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def completed(rid: str, origin: str = "a", size: int = 10) -> RecordingCompleted:
    return RecordingCompleted(
        node_id=origin, recording_id=rid, started_at=T0, ended_at=T0, duration_ms=1000,
        object_key=f"recordings/{rid}.opus", size_bytes=size, sha256="f" * 64, channels=[],
        metadata=RecordingMetadata(source="sip", session_key=rid),
    )


def replicated(rid: str, node: str, origin: str = "a") -> RecordingReplicated:
    return RecordingReplicated(node_id=node, recording_id=rid, origin_node_id=origin,
                               object_key=f"recordings/{rid}.opus", sha256="f" * 64,
                               size_bytes=10)


def purged(rid: str, node: str = "a") -> RecordingPurged:
    return RecordingPurged(node_id=node, recording_id=rid,
                           object_key=f"recordings/{rid}.opus", reason="retention")


def test_foreign_recording_is_fetched_once_own_never() -> None:
    m = ReplicaMap("b")
    assert m.apply(completed("r1", "a"), 1) == [Fetch("r1", 1)]
    assert m.apply(completed("r1", "a"), 2) == []  # duplicate from a second source
    assert m.apply(completed("r2", "b"), 3) == []  # ours: already held
    assert m.needs_fetch("r1") and not m.needs_fetch("r2")
    assert m.recordings_held() == 1
    assert m.pending_by_origin() == {"a": 1}


def test_own_copy_missing_from_the_store_is_fetched_from_a_holder() -> None:
    """A node rebuilt empty reads its old self's completions: not held, so fetched."""
    m = ReplicaMap("a")
    assert m.apply(completed("r1", "a"), 1) == []
    m.apply(replicated("r1", "b"), 2)
    assert m.missing_locally("r1", 1) == [Fetch("r1", 1, "missing")]
    assert m.needs_fetch("r1") and m.sources("r1") == ["b"]
    assert m.missing_locally("r1", 1) == []  # already wanted


def test_fetch_done_then_own_replicated_event_is_idempotent() -> None:
    m = ReplicaMap("b")
    m.apply(completed("r1"), 1)
    m.held_locally("r1")
    assert not m.needs_fetch("r1")
    assert m.recordings_held() == 1
    m.apply(replicated("r1", "b"), 2)
    m.apply(replicated("r1", "b"), 3)
    assert m.recordings_held() == 1
    assert m.pending_by_origin() == {}
    assert m.checkpoint == 3


def test_our_replicated_seen_before_completed_means_no_fetch() -> None:
    m = ReplicaMap("b")
    m.apply(replicated("r1", "b"), 1)
    assert m.apply(completed("r1"), 2) == []
    assert m.recordings_held() == 1


def test_sources_prefer_origin_then_other_holders_and_demote_bad_ones() -> None:
    m = ReplicaMap("c")
    m.apply(completed("r1", "a"), 1)
    m.apply(replicated("r1", "b"), 2)
    m.apply(replicated("r1", "d"), 3)
    assert m.sources("r1") == ["a", "b", "d"]
    assert m.sources("r1", avoid={"a"}) == ["b", "d", "a"]
    assert m.sources("unknown") == []


def test_purge_drops_pending_fetch_and_is_applied_once() -> None:
    m = ReplicaMap("b")
    m.apply(completed("r1"), 1)
    assert m.apply(purged("r1"), 2) == [Purge("r1", "recordings/r1.opus", 2)]
    assert m.apply(purged("r1"), 3) == []
    assert not m.needs_fetch("r1")
    assert m.pending_by_origin() == {}
    assert m.recordings_held() == 0
    assert m.checkpoint == 1  # the deletion is not done yet
    m.purge_done(2)
    assert m.checkpoint == 3


def test_purge_before_completed_prevents_any_fetch() -> None:
    m = ReplicaMap("b")
    assert m.apply(purged("r1", "c"), 1) == [Purge("r1", "recordings/r1.opus", 1)]
    assert m.apply(completed("r1", "a"), 2) == []
    assert not m.needs_fetch("r1")
    assert m.recordings_held() == 0


def test_purge_of_held_copy_lowers_held_count() -> None:
    m = ReplicaMap("a")
    m.apply(completed("r1", "a"), 1)
    m.apply(completed("r2", "a"), 2)
    assert m.recordings_held() == 2
    m.apply(purged("r1"), 3)
    assert m.recordings_held() == 1


def test_replay_below_checkpoint_rebuilds_state_without_work() -> None:
    m = ReplicaMap("b")
    assert m.apply(completed("r1"), 1, handled=True) == []
    assert m.apply(completed("r3"), 2, handled=True) == []
    assert m.apply(purged("r3"), 3, handled=True) == []
    assert m.recordings_held() == 1
    assert m.apply(completed("r2"), 4) == [Fetch("r2", 4)]
    assert m.apply(completed("r3"), 5) == []  # purged before the checkpoint: never again


def test_checkpoint_waits_for_oldest_unfinished_fetch() -> None:
    m = ReplicaMap("b")
    m.apply(completed("r1"), 5)
    m.apply(completed("r2"), 7)
    m.apply(completed("r3", "b"), 9)
    assert m.checkpoint == 4
    m.held_locally("r2")
    assert m.checkpoint == 4
    m.held_locally("r1")
    assert m.checkpoint == 9


def test_low_water_mark() -> None:
    mark = LowWaterMark()
    assert mark.value == 0
    mark.seen(3)
    mark.open(4)
    mark.open(6)
    mark.seen(8)
    assert mark.value == 3
    mark.close(6)
    assert mark.value == 3
    mark.close(4)
    assert mark.value == 8
    mark.close(4)  # closing twice is harmless
    assert mark.value == 8


def test_backoff_grows_and_caps() -> None:
    delays = [backoff(n) for n in range(1, 10)]
    assert delays == sorted(delays)
    assert delays[0] > 0 and delays[-1] == MAX_BACKOFF_S


def test_chunk_plan() -> None:
    assert chunk_plan(0, 10, 4) == (0, 4)
    assert chunk_plan(8, 10, 4) == (8, 2)
    assert chunk_plan(10, 10, 4) is None


def test_peer_table() -> None:
    table = PeerTable()
    assert table.heard("a", 100.0, {"node_id": "a"})
    assert not table.heard("a", 101.0, {"node_id": "a"})
    assert table.alive("a", 103.0, 3.0)
    assert not table.alive("a", 104.5, 3.0)
    assert not table.alive("z", 100.0, 3.0)


def test_ten_thousand_events_apply_fast() -> None:
    import time

    m = ReplicaMap("b")
    events: list[RecordingCompleted | RecordingReplicated]
    events = [completed(f"r{i}", "a") for i in range(5000)]
    events += [replicated(f"r{i}", "b") for i in range(5000)]
    start = time.perf_counter()
    for seq, event in enumerate(events, 1):
        m.apply(event, seq)
    assert time.perf_counter() - start < 1.0
    assert m.recordings_held() == 5000
    assert m.checkpoint == 10000


def test_stalled_sources_are_kicked_only_when_peer_alive_and_not_too_often() -> None:
    from services.sync.domain import stalled_sources

    contact: dict[str, float | None] = {"a": 42.0, "c": 0.5, "d": None, "e": 99.0}
    assert stalled_sources(["a", "c", "d", "z"], contact, 100.0, {}) == ["a", "d"]
    assert stalled_sources(["a"], contact, 100.0, {"a": 90.0}) == []
    assert stalled_sources(["a"], contact, 100.0, {"a": 60.0}) == ["a"]


def hold(rid: str, on: bool, minute: int) -> LegalHoldChanged:
    return LegalHoldChanged(node_id="a", recording_id=rid, hold=on,
                            occurred_at=T0 + timedelta(minutes=minute))


def purged_at(rid: str, minute: int) -> RecordingPurged:
    return RecordingPurged(node_id="c", recording_id=rid, object_key=f"recordings/{rid}.opus",
                           reason="forged", occurred_at=T0 + timedelta(minutes=minute))


def test_purge_of_held_recording_deletes_nothing() -> None:
    m = ReplicaMap("a")
    m.apply(completed("r1", "a"), 1)
    assert m.apply(hold("r1", True, 1), 2) == []
    assert m.apply(purged_at("r1", 2), 3) == []  # void: the copy stays
    assert m.apply(purged_at("r1", -5), 4) == []  # back-dated: suspended by the hold
    assert m.recordings_held() == 1 and m.checkpoint == 4
    assert m.apply(hold("r1", False, 3), 5) == [Purge("r1", "recordings/r1.opus", 5)]
    # (the back-dated purge was issued while not held: the release lets it apply)


def test_late_hold_voids_applied_purge_and_fetches_copy_back() -> None:
    m = ReplicaMap("b")
    assert m.apply(completed("r1", "a"), 1) == [Fetch("r1", 1)]
    m.held_locally("r1")
    m.apply(replicated("r1", "b"), 2)
    assert m.apply(purged_at("r1", 5), 3) == [Purge("r1", "recordings/r1.opus", 3)]
    m.purge_done(3)
    m.apply(replicated("r1", "b"), 4)  # our announcement trailing the purge: not a copy
    assert m.apply(hold("r1", True, 1), 5) == [Fetch("r1", 5, "restored")]
    assert m.needs_fetch("r1") and m.sources("r1") == ["a"]
    assert m.checkpoint == 4
    m.held_locally("r1")
    assert m.checkpoint == 5 and m.recordings_held() == 1


def test_replay_of_a_voided_purge_rebuilds_state_without_work() -> None:
    m = ReplicaMap("b")
    assert m.apply(completed("r1", "a"), 1, handled=True) == []
    assert m.apply(purged_at("r1", 5), 2, handled=True) == []
    assert m.apply(hold("r1", True, 1), 3, handled=True) == []
    assert m.recordings_held() == 1 and not m.needs_fetch("r1")
