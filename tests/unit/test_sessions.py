"""The session registry: legs and dialogs, pending-media counts, persistence."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.v1.events import RecordingMetadata
from services.signaling.recorder import Leg, RecordingSession, Stream
from services.signaling.sessions import DialogStore, SessionRegistry, journal_line
from services.signaling.sip.transport import Peer


def session(recording_id: str = "r1") -> RecordingSession:
    return RecordingSession(
        recording_id=recording_id, session_key=f"k-{recording_id}",
        started_at=datetime.now(UTC),
        metadata=RecordingMetadata(source="sip", session_key=f"k-{recording_id}"),
        first_source="192.0.2.1",
    )


def leg(call_id: str = "c1") -> Leg:
    out = Leg(call_id, "ours", "theirs", [Stream("m0", 0, "0", 40000)])
    out.peer = Peer("UDP", "192.0.2.1", 5060)
    out.refreshed_at = 1.0
    return out


def test_dialogs_are_found_by_call_id_and_our_tag() -> None:
    registry = SessionRegistry()
    s, l1 = session(), leg()
    registry.add_session(s, None)
    registry.add_leg(s, l1)
    assert registry.dialog("c1", "ours") == (s, l1)
    assert registry.dialog("c1", None) is None
    assert registry.joinable("k-r1") is s
    s.ending = True
    assert registry.joinable("k-r1") is None
    registry.drop_dialog(l1)
    assert registry.dialogs == {}


def test_pending_media_counts_per_source() -> None:
    registry = SessionRegistry()
    registry.await_media("r1", "192.0.2.1")
    registry.await_media("r1", "192.0.2.1")  # idempotent
    registry.await_media("invite:x", "::ffff:192.0.2.1")
    assert registry.awaiting_count("192.0.2.1") == 2
    registry.media_arrived("r1")
    registry.media_arrived("invite:x")
    assert registry.awaiting_by_source == {} and registry.awaiting_media == {}


def test_persisted_sessions_are_restored_and_forgotten(tmp_path: Path) -> None:
    store = DialogStore(tmp_path, "boot")
    registry = SessionRegistry(store)
    s, l1 = session(), leg()
    registry.add_session(s, None)
    registry.add_leg(s, l1)
    registry.persist(s)
    again = SessionRegistry(DialogStore(tmp_path, "boot"))
    found = again.dialog("c1", "ours")
    assert found is not None and found[0].recording_id == "r1"
    assert again.awaiting_count("192.0.2.1") == 1  # no media seen before the restart
    again.forget(found[0])
    assert DialogStore(tmp_path, "boot").load_all() == []
    assert again.sessions == {} and again.by_key == {}


def test_the_journal_keeps_the_last_state_and_is_compacted(tmp_path: Path) -> None:
    store = DialogStore(tmp_path, "boot")
    store.COMPACT_MIN = 10
    sessions = []
    for index in range(6):
        s = session()
        s.recording_id, s.session_key = f"r{index}", f"k{index}"
        sessions.append(s)
        for _ in range(3):
            store.save(s, None)
    for s in sessions[:4]:
        store.delete(s.recording_id)
    # 6 x 3 saves + 4 deletions were appended; compaction kept the file near the live two
    lines = (tmp_path / DialogStore.JOURNAL).read_bytes().splitlines()
    assert len(lines) < 10
    with (tmp_path / DialogStore.JOURNAL).open("ab") as handle:
        handle.write(b'{"recording_id": "torn')  # a crash in the middle of a write
    loaded = DialogStore(tmp_path, "boot").load_all()
    assert sorted(s.recording_id for s, _ in loaded) == ["r4", "r5"]
    assert store.recording_ids() == ["r4", "r5"]


def test_a_journal_line_reads_back_as_json_dumps_would_have_written_it() -> None:
    data = {"recording_id": "r1", "name": "Zoë \u00a0\"quoted\"", "n": [1, 2.5, None, True],
            "nested": {"0": "PCMU"}, "wall": 1796092353.8129394}
    line = journal_line(data)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert json.loads(line) == json.loads(json.dumps(data)) == data
    odd = {"name": "\udcff"}  # a lone surrogate: the fast encoder refuses it
    assert json.loads(journal_line(odd)) == odd


def test_a_leg_restored_from_the_journal_has_its_streams_and_peer(tmp_path: Path) -> None:
    store = DialogStore(tmp_path, "boot")
    s, l1 = session(), leg()
    l1.streams[0].payload_codecs = {0: "PCMU", 101: "telephone-event"}
    l1.confirmed = True
    s.legs[l1.call_id] = l1
    store.save(s, None)
    [(restored, meta)] = DialogStore(tmp_path, "boot").load_all()
    again = restored.legs["c1"]
    assert meta is None and restored.metadata == s.metadata
    assert again.confirmed and again.peer == l1.peer
    assert again.streams[0].payload_codecs == {0: "PCMU", 101: "telephone-event"}


def test_files_of_the_layout_before_the_journal_are_taken_back(tmp_path: Path) -> None:
    import json

    from services.signaling.sessions import session_to_dict

    s = session()
    (tmp_path / "r1.json").write_text(json.dumps({**session_to_dict(s, None), "boot_id": "b"}))
    loaded = DialogStore(tmp_path, "b").load_all()
    assert [x.recording_id for x, _ in loaded] == ["r1"]
    assert not list(tmp_path.glob("*.json"))
    assert [x.recording_id for x, _ in DialogStore(tmp_path, "b").load_all()] == ["r1"]


def test_active_count_is_the_active_sessions() -> None:
    registry = SessionRegistry()
    first, second = session("r1"), session("r2")
    registry.add_session(first, None)
    registry.add_session(second, None)
    assert registry.active_count() == len(registry.active()) == 2
    first.ending = True
    registry.forget(first)  # as _end_leg does, in the same step
    assert registry.active_count() == len(registry.active()) == 1


def test_a_full_disk_never_stops_a_call_ending_and_never_tears_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    store = DialogStore(tmp_path, "boot")
    registry = SessionRegistry(store)
    first, second = session("r1"), session("r2")
    for s, call_id in ((first, "c1"), (second, "c2")):
        registry.add_session(s, None)
        registry.add_leg(s, leg(call_id))
        registry.persist(s)
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:  # the disk fills mid-line
        return real_write(fd, data[: len(data) // 2])

    monkeypatch.setattr(os, "write", short_write)
    registry.forget(first)  # logged, not raised: the BYE still reaches capture
    assert "r1" not in registry.sessions

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    registry.persist(second)  # logged, not raised
    monkeypatch.setattr(os, "write", real_write)
    registry.persist(second)  # space is back: the journal is written whole again
    loaded = DialogStore(tmp_path, "boot").load_all()
    assert [s.recording_id for s, _ in loaded] == ["r2"]
