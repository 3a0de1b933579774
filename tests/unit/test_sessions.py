"""The session registry: legs and dialogs, pending-media counts, persistence."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from contracts.v1.events import RecordingMetadata
from services.signaling.recorder import Leg, RecordingSession, Stream
from services.signaling.sessions import DialogStore, SessionRegistry
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
    assert list(tmp_path.glob("*.json")) == []
    assert again.sessions == {} and again.by_key == {}
