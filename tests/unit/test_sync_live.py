"""In-flight replication and takeover, without a network: Ogg prefixes, the live book,
building the takeover recording, serving live ranges, and one copy per call in sync."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from callrec.audio import decode_file, dominant_frequency, encode_opus_stereo, sound_seconds, tone
from callrec.store import FileStore
from contracts.v1.events import (
    RecordingCompleted,
    RecordingFailed,
    RecordingMetadata,
    RecordingPurged,
    RecordingReplicated,
    RecordingStarted,
)
from contracts.v1.rpc import LiveProgress, ReadObjectRequest
from services.sync.domain import Discard, Fetch, Purge, ReplicaMap
from services.sync.live import LiveBook
from services.sync.ogg import pages, scan
from services.sync.takeover import build_takeover, takeover_key, takeover_timeout
from services.sync.transfer import ERROR_HEADER, SIZE_HEADER, serve_read

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RATE = 8000


@pytest.fixture(scope="module")
def ogg(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """6 s of a real two-mono-stream Ogg/Opus file (440 Hz near, 1000 Hz far)."""
    path = tmp_path_factory.mktemp("ogg") / "call.opus"
    encode_opus_stereo(tone(440, 6.0, RATE), tone(1000, 6.0, RATE), RATE, path)
    return path.read_bytes()


def started(rid: str = "r1", node: str = "a") -> RecordingStarted:
    return RecordingStarted(node_id=node, recording_id=rid, started_at=T0,
                            metadata=RecordingMetadata(source="sip", session_key=rid))


def progress(rid: str = "r1", node: str = "a", size: int = 100, final: bool = False
             ) -> LiveProgress:
    return LiveProgress(recording_id=rid, node_id=node, bytes=size, duration_ms=1000,
                        final=final)


def completed(node: str, duration_ms: int, interrupted: bool = False,
              rid: str = "r1") -> RecordingCompleted:
    suffix = f".{node}.interrupted" if interrupted else ""
    return RecordingCompleted(
        event_id=f"{node}{duration_ms}{int(interrupted)}".ljust(32, "0"), node_id=node,
        recording_id=rid, started_at=T0, ended_at=T0 + timedelta(milliseconds=duration_ms),
        duration_ms=duration_ms, object_key=f"recordings/{rid}{suffix}.opus", size_bytes=10,
        sha256="0" * 64, channels=[], metadata=RecordingMetadata(source="sip", session_key=rid),
        interrupted=interrupted)


# ---- Ogg prefixes --------------------------------------------------------------------

def test_any_cut_keeps_only_complete_pages_and_their_duration(ogg: bytes) -> None:
    ends = [end for end, _, _ in pages(ogg)]
    assert ends[-1] == len(ogg) and len(ends) >= 6  # headers + about a page a second
    full = scan(ogg)
    assert abs(full.duration_ms - 6000) <= 20 and full.pre_skip > 0
    previous = 0
    for cut in range(0, len(ogg) + 1, 97):
        found = scan(ogg[:cut])
        assert found.complete == max([e for e in ends if e <= cut], default=0)
        assert found.duration_ms >= previous
        previous = found.duration_ms
    assert scan(b"garbage" * 10).complete == 0
    assert scan(ogg[:ends[3]] + b"OggX" + ogg[ends[3]:]).complete == ends[3]


def test_takeover_of_a_cut_copy_plays_what_arrived(ogg: bytes, tmp_path: Path) -> None:
    ends = [end for end, _, _ in pages(ogg)]
    live = tmp_path / "live.opus"
    live.write_bytes(ogg[:ends[5] + 700])  # a chunk that stopped mid-page
    built = build_takeover(live, tmp_path / "out.opus")
    assert built.size == ends[5]
    audio, rate = decode_file(built.path, rate=16000)
    assert abs(audio.shape[1] / rate * 1000 - built.duration_ms) <= 30
    assert 2500 <= built.duration_ms <= 5000
    for channel, hz in ((0, 440.0), (1, 1000.0)):
        assert abs(dominant_frequency(audio[channel], rate) - hz) < 15
        assert sound_seconds(audio[channel], rate) >= built.duration_ms / 1000 - 0.1


def test_takeover_with_nothing_replicated_is_listed_silent(ogg: bytes, tmp_path: Path) -> None:
    headers = ogg[:[end for end, _, _ in pages(ogg)][1]]  # OpusHead + OpusTags, no audio
    for name, content in (("none", None), ("empty", b""), ("headers", headers)):
        live = tmp_path / f"{name}.opus"
        if content is not None:
            live.write_bytes(content)
        built = build_takeover(live, tmp_path / f"{name}-out.opus")
        assert built.duration_ms == 0 and built.size > 0
        audio, _ = decode_file(built.path)
        assert int(np.abs(audio).max()) < 100  # silence (codec noise at most)


def test_takeover_names_and_timeout() -> None:
    assert takeover_key("r1", T0, "b", 4200) == \
        "recordings/2024/05/01/r1.b.4200.interrupted.opus"
    assert takeover_timeout(3.0, {}) == 8.0
    assert takeover_timeout(3.0, {"CALLREC_TAKEOVER_TIMEOUT_S": "20"}) == 20.0
    assert takeover_timeout(3.0, {"CALLREC_TAKEOVER_TIMEOUT_S": "nonsense"}) == 8.0


# ---- the live book ----------------------------------------------------------------------

def test_pulls_follow_progress_in_bounded_ranges() -> None:
    book = LiveBook("b")
    book.apply(started(), 0.0)
    assert book.next_pull("r1") is None
    assert book.progress(progress(size=1000), 1.0)
    assert book.next_pull("r1", chunk=400) == (0, 400)
    book.pulled("r1", 400)
    assert book.next_pull("r1", chunk=400) == (400, 400)
    book.pulled("r1", 600)
    assert book.next_pull("r1") is None
    assert not book.progress(progress(size=900), 2.0)  # out of order: never backwards
    assert book.progress(progress(size=1500), 3.0)


def test_own_recordings_and_spoofed_origins_are_ignored() -> None:
    book = LiveBook("a")
    book.apply(started(node="a"), 0.0)
    assert not book.progress(progress(node="a"), 1.0)
    assert book.due(100.0, {}, 8.0) == []
    other = LiveBook("c")
    other.apply(started(node="a"), 0.0)
    assert not other.progress(progress(node="b"), 1.0)  # not the recording's origin


def test_takeover_only_after_the_origin_is_silent_past_the_timeout() -> None:
    book = LiveBook("b")
    book.apply(started(), 100.0)  # learned at 100 (a restart or a replay gives a full timeout)
    book.progress(progress(), 101.0)
    heard = {"a": 104.0}
    assert book.due(111.9, heard, 8.0) == []  # heartbeat at 104 + 8 s not passed
    heard["a"] = 110.0
    assert book.due(117.0, heard, 8.0) == []
    assert [e.recording_id for e in book.due(118.5, heard, 8.0)] == ["r1"]
    assert book.close("r1") == ["r1"]
    assert book.due(200.0, heard, 8.0) == []
    assert not book.progress(progress(size=5000), 201.0)  # late progress: closed


def test_no_takeover_without_metadata_nor_after_the_origin_ended() -> None:
    book = LiveBook("b")
    book.progress(progress(rid="x"), 0.0)
    assert book.due(100.0, {}, 8.0) == []  # no recording.started yet
    for rid, end in (("r1", completed("a", 1000, rid="r1")),
                     ("r3", RecordingFailed(node_id="a", recording_id="r3", reason="x")),
                     ("r4", RecordingPurged(node_id="c", recording_id="r4", object_key="k",
                                            reason="x"))):
        book.apply(started(rid), 0.0)
        book.progress(progress(rid=rid), 0.0)
        assert book.apply(end, 1.0) == [rid]  # our copy is useless now
    book.apply(RecordingFailed(node_id="b", recording_id="x", reason="not the origin"), 1.0)
    book.apply(started("x"), 1.0)
    # Another peer's takeover copy does not stop ours: the winner rule keeps the best.
    book.apply(started("r2"), 1.0)
    assert book.apply(completed("c", 1000, interrupted=True, rid="r2"), 1.0) == []
    assert [e.recording_id for e in book.due(100.0, {}, 8.0)] == ["r2", "x"]
    book.apply(started("r1"), 2.0)  # a start replayed after the end: stays closed
    assert "r1" not in book.live


def test_after_a_partition_the_peer_follows_again_and_takes_over_again() -> None:
    """A partition looks like a death: b takes over, then a's progress resumes (it was
    recording all along); b pulls a's file again from the start, and if a falls silent
    again b takes over again, with more audio. Only a's own completion ends it."""
    book = LiveBook("b")
    book.apply(started(), 0.0)
    book.progress(progress(size=1000), 1.0)
    book.pulled("r1", 1000)
    assert [e.recording_id for e in book.due(10.0, {"a": 1.5}, 8.0)] == ["r1"]
    book.taken_over("r1")
    assert book.due(50.0, {"a": 1.5}, 8.0) == []  # nothing new: never twice
    assert book.progress(progress(size=3000), 60.0)  # the link is back
    assert book.next_pull("r1") == (0, 3000)  # our copy went with the takeover
    book.pulled("r1", 3000)
    assert book.due(65.0, {"a": 64.0}, 8.0) == []
    assert [e.recording_id for e in book.due(73.0, {"a": 64.0}, 8.0)] == ["r1"]
    # Our own takeover fact, replayed after a restart, counts as done.
    again = LiveBook("b")
    again.apply(started(), 100.0)
    assert again.apply(completed("b", 900, interrupted=True), 100.0) == []
    assert again.due(500.0, {}, 8.0) == []
    assert again.progress(progress(size=4000), 501.0)
    assert [e.recording_id for e in again.due(510.0, {}, 8.0)] == ["r1"]
    assert again.apply(completed("a", 5000), 511.0) == ["r1"]  # the origin's own: done


# ---- serving live ranges ------------------------------------------------------------------

def test_serve_live_ranges_from_capture_and_refuse_escapes(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "objects")
    root = tmp_path / "capture"
    (root / "active" / "r1").mkdir(parents=True)
    (root / "active" / "r1" / "live.opus").write_bytes(b"0123456789")

    def read(**kw: object) -> tuple[bytes, dict[str, str]]:
        return serve_read(store, ReadObjectRequest(**kw).model_dump_json().encode(),  # type: ignore[arg-type]
                          root)

    assert read(live="r1", offset=2, length=5) == (b"23456", {SIZE_HEADER: "10"})
    assert read(live="r1", offset=8, length=5) == (b"89", {SIZE_HEADER: "10"})
    assert read(live="r1", offset=20, length=5) == (b"", {SIZE_HEADER: "10"})
    for bad in ("../r1", "r1/../../x", "a b", ""):
        data, headers = read(live=bad, offset=0, length=5)
        assert data == b"" and ERROR_HEADER in headers
    assert ERROR_HEADER in read(live="r2", offset=0, length=5)[1]
    assert ERROR_HEADER in serve_read(store, ReadObjectRequest(
        live="r1", offset=0, length=5).model_dump_json().encode(), None)[1]


# ---- one copy per call in sync's replica map ------------------------------------------------

def test_peer_replaces_its_takeover_copy_by_the_origins_longer_one() -> None:
    m = ReplicaMap("b")
    mine = completed("b", 4_000, interrupted=True)
    assert m.apply(mine, 1) == []  # our own takeover: held by us
    assert m.recordings_held() == 1
    origin = completed("a", 4_600)  # the origin came back with its data
    assert m.apply(origin, 2) == [Fetch("r1", 2)]
    assert m.needs_fetch("r1") and m.sources("r1") == ["a"]
    assert m.held_locally("r1") == [Discard("r1", mine.object_key, origin.object_key)]
    m.discarded("r1", mine.object_key)
    assert m.discards("r1") == [] and m.recordings_held() == 1 and m.checkpoint == 2


def test_a_losing_copy_is_never_fetched_and_a_held_one_goes() -> None:
    m = ReplicaMap("c")
    assert m.apply(completed("a", 5_000), 1) == [Fetch("r1", 1)]
    assert m.apply(completed("b", 4_000, interrupted=True), 2) == []
    m.held_locally("r1")
    assert m.pending_by_origin() == {}
    # c had fetched the takeover copy before the origin's arrived (it was the only one).
    m2 = ReplicaMap("c")
    takeover = completed("b", 4_000, interrupted=True)
    assert m2.apply(takeover, 1) == [Fetch("r1", 1)]
    m2.held_locally("r1")
    assert m2.apply(completed("a", 5_000), 2) == [Fetch("r1", 2)]
    assert m2.apply(RecordingReplicated(
        node_id="c", recording_id="r1", origin_node_id="a", object_key="recordings/r1.opus",
        sha256="0" * 64, size_bytes=10), 3) == [Discard("r1", takeover.object_key,
                                                           "recordings/r1.opus")]


def test_a_fetch_of_a_copy_that_lost_meanwhile_does_not_count() -> None:
    m = ReplicaMap("c")
    takeover = completed("b", 4_000, interrupted=True)
    m.apply(takeover, 1)
    m.apply(completed("a", 5_000), 2)  # arrives while the takeover copy was downloading
    assert m.held_locally("r1", takeover.object_key) == []
    assert m.needs_fetch("r1")
    assert m.held_locally("r1") == [Discard("r1", takeover.object_key, "recordings/r1.opus")]


def test_purge_deletes_every_copy_of_the_call() -> None:
    m = ReplicaMap("b")
    m.apply(completed("b", 4_000, interrupted=True), 1)
    m.apply(completed("a", 5_000), 2)
    actions = m.apply(RecordingPurged(node_id="a", recording_id="r1",
                                      object_key="recordings/r1.opus", reason="x"), 3)
    assert actions == [Purge("r1", "recordings/r1.opus", 3,
                             ("recordings/r1.b.interrupted.opus",))]
    assert m.recordings_held() == 0
