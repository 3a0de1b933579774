"""In-flight replication and takeover, without a network: Ogg prefixes, the live book,
building the takeover recording, serving live ranges, and one copy per call in sync."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from callrec.audio import (
    OpusPageEncoder,
    decode_file,
    dominant_frequency,
    encode_opus_stereo,
    ogg_crc,
    scan_ogg_pages,
    sound_seconds,
    tone,
)
from callrec.store import FileStore
from contracts import subjects
from contracts.v1.events import (
    RecordingCompleted,
    RecordingFailed,
    RecordingMetadata,
    RecordingPurged,
    RecordingReplicated,
    RecordingStarted,
)
from contracts.v1.rpc import (
    LivePart,
    LiveProgress,
    LiveProgressBatch,
    LiveRange,
    ReadLiveReply,
    ReadLiveRequest,
    ReadObjectRequest,
)
from services.sync.domain import Discard, Fetch, Purge, ReplicaMap
from services.sync.live import LiveBook, progress_of
from services.sync.ogg import Chain, follow, follow_file, pages, scan
from services.sync.service import _append_at
from services.sync.takeover import build_takeover, takeover_key, takeover_timeout
from services.sync.transfer import (
    ERROR_HEADER,
    SIZE_HEADER,
    TransferError,
    read_live_ranges,
    serve_live_ranges,
    serve_read,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RATE = 8000


def _stream(seconds: float, hz: float, *, steps: int = 1) -> bytes:
    """Ogg pages as capture appends them: a page per 0.5 s step."""
    encoder = OpusPageEncoder(RATE, bitrate=12000, complexity=0, frame_ms=60)
    out = encoder.pages()
    frames = int(seconds * RATE) // encoder.frame_size * encoder.frame_size
    signal = tone(hz, frames / RATE, RATE)[:frames]
    step = RATE // 2 // encoder.frame_size * encoder.frame_size
    for start in range(0, frames, step):
        piece = signal[start:start + step]
        encoder.encode(piece, piece)
        out += encoder.pages()
    encoder.release()
    return out


DATA = _stream(12.0, 440.0)  # a live file of a few kilobytes, used as plain bytes


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
    assert book.pulled("r1", DATA[:400])
    assert book.next_pull("r1", chunk=400) == (400, 400)
    assert book.pulled("r1", DATA[400:1000])
    assert book.next_pull("r1") is None
    assert not book.progress(progress(size=900), 2.0)  # out of order: never backwards
    assert book.progress(progress(size=1500), 3.0)


def test_live_messages_must_match_their_subject_and_speak_for_their_node() -> None:
    one = progress("r1", "a", size=500)
    assert progress_of(subjects.live("a", "r1"), one.model_dump_json().encode()) == ([one], 0)
    batch = LiveProgressBatch(node_id="a", updates=[one, progress("r2", "a"),
                                                    progress("r3", "c")])
    assert progress_of(subjects.live_batch("a"), batch.model_dump_json().encode()) == (
        batch.updates[:2], 1)  # r3 claims node c's recording: left out, counted
    for subject, data in (
        (subjects.live("b", "r1"), one.model_dump_json().encode()),  # another node's subject
        (subjects.live("a", "r2"), one.model_dump_json().encode()),  # another recording's
        (subjects.live_batch("b"), batch.model_dump_json().encode()),
        (subjects.live_batch("a"), one.model_dump_json().encode()),  # not a batch
        (subjects.live("a", "r1"), b"{not json"),
        ("callrec.v1.a.live.r1.x", one.model_dump_json().encode()),
        (subjects.live_batch("a"), LiveProgressBatch.model_construct(
            node_id="a", updates=[]).model_dump_json().encode()),  # empty
    ):
        with pytest.raises(ValueError):
            progress_of(subject, data)
    bad_node = progress("r1", "a b")
    with pytest.raises(ValueError):  # a node id that is not one
        progress_of("callrec.v1.a b.live.r1", bad_node.model_dump_json().encode())


def test_one_request_asks_for_many_recordings_within_its_bounds() -> None:
    book = LiveBook("b")
    for rid, size in (("r1", 1000), ("r2", 300), ("r3", 700), ("r4", 50)):
        book.apply(started(rid), 0.0)
        assert book.progress(progress(rid, size=size), 1.0)
    book.apply(started("r5"), 0.0)  # announced nothing yet
    due = {"r1", "r2", "r3", "r4", "r5"}
    asked = book.next_pulls(due, max_ranges=10, max_bytes=10_000)
    assert sorted(asked) == [("r1", 0, 1000), ("r2", 0, 300), ("r3", 0, 700), ("r4", 0, 50)]
    assert due == {"r1", "r2", "r3", "r4"}  # level ones leave
    assert len(book.next_pulls(set(due), max_ranges=2, max_bytes=10_000)) == 2
    # A byte budget: the first range always goes, the others only while they fit.
    bounded = book.next_pulls(set(due), max_ranges=10, max_bytes=1000)
    assert 1 <= len(bounded) < 4 and sum(length for _, _, length in bounded) <= 1000
    assert book.next_pulls({"r1"}, max_ranges=10, max_bytes=100) == [("r1", 0, 1000)]
    assert book.pulled("r4", DATA[:50])
    assert ("r4", 0, 50) not in book.next_pulls(due, max_ranges=10, max_bytes=10_000)
    assert "r4" not in due


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
    assert book.pulled("r1", DATA[:1000])
    assert [e.recording_id for e in book.due(10.0, {"a": 1.5}, 8.0)] == ["r1"]
    book.taken_over("r1")
    assert book.due(50.0, {"a": 1.5}, 8.0) == []  # nothing new: never twice
    assert book.progress(progress(size=3000), 60.0)  # the link is back
    assert book.next_pull("r1") == (0, 3000)  # our copy went with the takeover
    assert book.pulled("r1", DATA[:3000])
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


def test_serve_many_live_ranges_in_one_reply_within_its_budget(tmp_path: Path) -> None:
    root = tmp_path / "capture"
    for rid, content in (("r1", b"0123456789"), ("r2", b"abcdefghij")):
        (root / "active" / rid).mkdir(parents=True)
        (root / "active" / rid / "live.opus").write_bytes(content)

    def ask(*ranges: tuple[str, int, int], budget: int = 1000) -> list[bytes | None]:
        request = ReadLiveRequest(ranges=[LiveRange(recording_id=r, offset=o, length=n)
                                          for r, o, n in ranges])

        async def origin(subject: str, body: bytes) -> tuple[bytes, dict[str, str]]:
            return serve_live_ranges(root, body, budget)

        return asyncio.run(read_live_ranges(origin, "s", request.ranges))

    assert ask(("r1", 2, 5), ("r2", 8, 5), ("r1", 20, 5)) == [b"23456", b"ij", b""]
    # Unknown or unsafe ids get nothing (an error in their part), the others their bytes.
    assert ask(("r2", 0, 3), ("../r1", 0, 5), ("r9", 0, 5), ("a b", 0, 5)) == [
        b"abc", b"", b"", b""]
    # A full reply leaves the rest for the next request (None), never over the budget.
    assert ask(("r1", 0, 6), ("r2", 0, 6), ("r2", 6, 4), budget=8) == [b"012345", b"ab", None]
    body, headers = serve_live_ranges(root, ReadLiveRequest(ranges=[
        LiveRange(recording_id="r1", offset=0, length=10)]).model_dump_json().encode())
    assert headers == {} and body.endswith(b"\n0123456789")
    assert ERROR_HEADER in serve_live_ranges(root, b'{"ranges": []}')[1]
    assert ERROR_HEADER in serve_live_ranges(root, b"not json")[1]
    parts = ReadLiveReply.model_validate_json(serve_live_ranges(None, ReadLiveRequest(ranges=[
        LiveRange(recording_id="r1", offset=0, length=10)]).model_dump_json().encode())[0]
        .split(b"\n")[0]).parts
    assert parts[0].error and parts[0].length == 0


def test_a_live_reply_that_does_not_match_the_request_is_refused() -> None:
    ranges = [LiveRange(recording_id="r1", offset=0, length=4),
              LiveRange(recording_id="r2", offset=10, length=4)]

    def reply_with(body: bytes, headers: dict[str, str] | None = None) -> object:
        async def origin(subject: str, _: bytes) -> tuple[bytes, dict[str, str]]:
            return body, headers or {}
        try:
            return asyncio.run(read_live_ranges(origin, "s", ranges))
        except TransferError as exc:
            return exc

    def line(*parts: tuple[str, int, int]) -> bytes:
        return ReadLiveReply(parts=[LivePart(recording_id=r, offset=o, length=n)
                                    for r, o, n in parts]).model_dump_json().encode() + b"\n"

    assert reply_with(line(("r1", 0, 2), ("r2", 10, 1)) + b"abc") == [b"ab", b"c"]
    for bad in (
        line(("r1", 0, 2)) + b"ab",                                # a part missing
        line(("r1", 0, 2), ("r3", 10, 1)) + b"abc",                # another recording
        line(("r1", 0, 2), ("r2", 0, 1)) + b"abc",                 # another offset
        line(("r1", 0, 5), ("r2", 10, 1)) + b"abcdef",             # more than asked
        line(("r1", 0, 2), ("r2", 10, 1)) + b"abcd",               # body longer than parts
        line(("r1", 0, 2), ("r2", 10, 1)) + b"ab",                 # body shorter
        b"no line at all",
    ):
        assert isinstance(reply_with(bad), TransferError), bad
    assert isinstance(reply_with(b"", {ERROR_HEADER: "invalid request"}), TransferError)


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


# ---- following the copy's page chain across appends ---------------------------------------

def _ends(data: bytes) -> list[int]:
    return [end for end, _, _ in pages(data)]


def _lost_tail(data: bytes, keep: int, tmp_path: Path, seconds: float = 8.0) -> bytes:
    """The origin's file after a machine crash lost everything past page `keep`: it
    resumes from there with a fresh encoder (as LiveEncoder does) and records on."""
    path = tmp_path / "origin.opus"
    path.write_bytes(data[:_ends(data)[keep]])
    last = list(scan_ogg_pages(path))[-1]
    encoder = OpusPageEncoder(RATE, bitrate=12000, complexity=0, frame_ms=60,
                              resume_from=last)
    out = path.read_bytes()
    step = RATE // 2 // encoder.frame_size * encoder.frame_size
    signal = tone(1000.0, seconds, RATE)
    for start in range(0, len(signal) - step + 1, step):
        piece = signal[start:start + step]
        encoder.encode(piece, piece)
        out += encoder.pages()
    encoder.release()
    return out


def _page_with(data: bytes, index: int, **fields: int) -> bytes:
    """Page `index` of `data` with header fields replaced (CRC recomputed)."""
    ends = [0, *_ends(data)]
    page = bytearray(data[ends[index]:ends[index + 1]])
    for name, (offset, size) in {"seq": (18, 4), "granule": (6, 8), "flags": (5, 1)}.items():
        if name in fields:
            page[offset:offset + size] = fields[name].to_bytes(size, "little", signed=True)
    page[22:26] = b"\0\0\0\0"
    page[22:26] = ogg_crc(bytes(page)).to_bytes(4, "little")
    return bytes(page)


def test_a_clean_copy_follows_whatever_the_chunking() -> None:
    ends = _ends(DATA)
    for size in (1, 5, 27, 97, 331, 4096, len(DATA)):
        chain: Chain | None = Chain()
        for start in range(0, len(DATA), size):
            assert chain is not None
            chain = follow(chain, DATA[start:start + size])
            assert chain is not None, (size, start)
            assert chain.complete == max([e for e in ends if e <= chain.offset], default=0)
        assert chain == follow_file(DATA) == Chain(len(DATA), chain.serial, len(ends), 576000)
    assert follow(Chain(), b"Ogg") is not None and follow(Chain(), b"OgX") is None


def test_a_join_inside_a_page_breaks_the_chain(tmp_path: Path) -> None:
    ends = _ends(DATA)
    rewritten = _lost_tail(DATA, 10, tmp_path)
    assert rewritten[:ends[10]] == DATA[:ends[10]] and rewritten[ends[12]:] != DATA[ends[12]:]
    for held in (ends[14] - 3, ends[14] + 9, ends[16] + 100):  # mid-page on either side
        chain = follow(Chain(), DATA[:held])
        assert chain is not None
        joined: Chain | None = chain
        for start in range(held, len(rewritten), 64):  # pulled in small ranges
            assert joined is not None
            joined = follow(joined, rewritten[start:start + 64])
            if joined is None:
                break
        assert joined is None, held


def test_an_aligned_join_needs_the_next_page_number_and_granule() -> None:
    ends = _ends(DATA)
    chain = follow(Chain(), DATA[:ends[8]])
    assert chain is not None and chain.next_seq == 9 and chain.tail == b""
    assert follow(chain, DATA[ends[8]:ends[9]]) is not None  # the right page
    assert follow(chain, DATA[ends[4]:ends[5]]) is None  # a valid page, wrong number
    assert follow(chain, DATA[ends[9]:ends[10]]) is None  # one skipped
    assert follow(chain, _page_with(DATA, 8, seq=9)) is not None  # the helper is faithful
    assert follow(chain, _page_with(DATA, 8, seq=9, granule=1000)) is None  # time went back
    # ...except on the last page, whose granule ends the call (end trimming)
    trimmed = follow(chain, _page_with(DATA, 8, seq=9, granule=1000, flags=4))
    assert trimmed is not None and trimmed.ended and trimmed.granule == 1000
    closed = follow(chain, _page_with(DATA, 9, flags=4))  # end of stream...
    assert closed is not None and closed.ended
    assert follow(closed, DATA[ends[9]:ends[10]]) is None  # ...then nothing more
    assert follow(closed, b"O") is None
    corrupt = bytearray(DATA[ends[8]:ends[9]])
    corrupt[-5] ^= 0x40  # same header, other bytes: the CRC
    assert follow(chain, bytes(corrupt)) is None


def _pull_until_level(book: LiveBook, origin: bytes, path: Path, chunk: int) -> int:
    """What Sync._pull_live does, against a file instead of the bus: returns restarts."""
    restarts = 0
    while (step := book.next_pull("r1", chunk)) is not None:
        offset, length = step
        data = origin[offset:offset + length]
        if not data:
            break  # the origin announced more than it has now (it lost a tail)
        if not book.pulled("r1", data):
            restarts += 1
            _append_at(path, 0, b"")
            continue
        _append_at(path, offset, data)
    return restarts


def test_a_peer_copy_survives_the_origin_losing_its_tail(tmp_path: Path) -> None:
    """The origin's file is cut back (its unsynced tail lost in a machine crash) and
    written on differently: the peer drops its copy, pulls again, and ends with a valid
    copy equal to a prefix of the origin's new file."""
    ends = _ends(DATA)
    copy = tmp_path / "copy.opus"
    book = LiveBook("b")
    book.apply(started(), 0.0)
    for index in (3, 9, 15, 20):  # progress as the origin records, pulled in odd ranges
        book.progress(progress(size=ends[index]), float(index))
        assert _pull_until_level(book, DATA, copy, chunk=777) == 0
    assert copy.read_bytes() == DATA[:ends[20]]
    rewritten = _lost_tail(DATA, 12, tmp_path)
    # The origin comes back: it announces less than before (ignored, our copy stays a
    # valid recording), then more; the pull past what we hold breaks the chain.
    assert not book.progress(progress(size=ends[12]), 30.0)
    assert book.progress(progress(size=len(rewritten)), 31.0)
    assert _pull_until_level(book, rewritten, copy, chunk=777) == 1
    held = copy.read_bytes()
    assert held == rewritten[:len(held)] and len(held) == len(rewritten)
    assert follow_file(held).offset == len(held)
    built = build_takeover(copy, tmp_path / "taken.opus")
    assert built.size == len(held) and built.duration_ms > 6000


def test_a_read_racing_the_origins_rewrite_is_caught(tmp_path: Path) -> None:
    """A range read while the origin cut and rewrote its file: old bytes then new ones."""
    ends = _ends(DATA)
    rewritten = _lost_tail(DATA, 6, tmp_path)
    chain = follow(Chain(), DATA[:ends[7]])
    assert chain is not None
    torn = DATA[ends[7]:ends[8] - 20] + rewritten[ends[8] - 20:ends[8] + 500]
    assert follow(chain, torn) is None


def test_a_copy_read_back_after_a_restart_keeps_its_chained_pages(tmp_path: Path) -> None:
    ends = _ends(DATA)
    assert follow_file(DATA[:ends[9] + 50]).offset == ends[9]  # a cut page left out
    spliced = DATA[:ends[9]] + DATA[ends[10]:]  # a page missing (an old, broken copy)
    assert follow_file(spliced) == follow_file(DATA[:ends[9]])
