"""The registry of recordings, their legs and dialogs, kept on disk so a restarted
signaling service still knows its calls: capture keeps recording them, and the PBX's
re-INVITEs and BYEs still match.

One journal of JSON lines (DialogStore): a line per change (answer, ACK, re-INVITE,
UPDATE, metadata) and one when the recording ends. Only sessions of
the same node boot are taken back: after the whole node went down the PBX has moved
on, and capture finalizes those recordings from what reached the disk.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pydantic_core
import structlog

from contracts.v1.events import RecordingMetadata

from . import siprec
from .admission import same_source
from .recorder import Leg, RecordingSession, Stream
from .sip.transport import Peer

log = structlog.get_logger()


_LEG_FIELDS = tuple(f.name for f in dataclasses.fields(Leg)
                    if f.name not in ("streams", "peer", "refreshed_at"))
_STREAM_FIELDS = tuple(f.name for f in dataclasses.fields(Stream))


def session_to_dict(
    session: RecordingSession, siprec_meta: siprec.RecordingMetadata | None,
    metadata_json: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The session as JSON-able data (`metadata_json`: its metadata already dumped)."""
    now_wall, now_mono = time.time(), time.monotonic()
    legs = []
    for leg in session.legs.values():
        peer = leg.peer if isinstance(leg.peer, Peer) else None
        raw = {name: getattr(leg, name) for name in _LEG_FIELDS}
        raw["streams"] = [{name: getattr(s, name) for name in _STREAM_FIELDS}
                          for s in leg.streams]
        raw["peer"] = [peer.transport, peer.host, peer.port] if peer else None
        raw["refreshed_wall"] = now_wall - (now_mono - leg.refreshed_at)
        legs.append(raw)
    return {
        "recording_id": session.recording_id,
        "session_key": session.session_key,
        "started_at": session.started_at.isoformat(),
        "metadata": (metadata_json if metadata_json is not None
                     else session.metadata.model_dump(mode="json")),
        "legs": legs,
        "siprec": siprec.metadata_to_dict(siprec_meta) if siprec_meta else None,
    }


def journal_line(data: dict[str, Any]) -> bytes:
    """One journal line: compact JSON and a newline.

    pydantic-core's encoder (Rust) writes a CUCM session's line in a quarter of the
    time json.dumps takes; a session is saved at each INVITE and ACK, and json.dumps
    was 8% of signaling's busy time at 300 INVITEs/s (py-spy). Both read back the
    same with json.loads (this one writes UTF-8 where json.dumps writes \\u escapes).
    A string it cannot encode (a lone surrogate) goes through json.dumps instead."""
    try:
        return pydantic_core.to_json(data) + b"\n"
    except pydantic_core.PydanticSerializationError:
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"


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
        meta = siprec.metadata_from_dict(data["siprec"])
    return session, meta


class DialogStore:
    """The sessions as an append-only journal: one JSON line per change, the last line
    of a recording wins, a deletion is a line too.

    Why a journal: a file per recording replaced on every change cost an open, a write
    and a rename on the event loop for each INVITE and ACK (a quarter of signaling's
    CPU at 400 INVITEs/s); an append is one write to a file that stays open. The
    journal is rewritten with only the live sessions when it has grown well past them
    (amortized O(1) per change), and at start-up. A torn last line (a crash mid-write)
    is skipped. Like the files before, nothing is fsynced: this survives a crash of
    the service, not of the machine."""

    JOURNAL = "journal.jsonl"
    COMPACT_MIN = 1000  # appends before the journal may be rewritten ...
    COMPACT_FACTOR = 4  # ... and only once it holds this many lines per live session

    def __init__(self, directory: Path, boot_id: str = "") -> None:
        self.directory = directory
        self.boot_id = boot_id
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / self.JOURNAL
        self._live: dict[str, bytes] = {}  # recording id -> its last journal line
        self._lines = 0  # lines in the journal file
        self._fd = -1
        self._torn = False  # a write failed: the file may end mid-line
        # The last metadata dumped, per recording: a session is saved at the INVITE and
        # the ACK of each leg, its metadata changes far less often (pydantic models are
        # replaced, never changed in place, so identity says whether it changed).
        self._dumped: dict[str, tuple[RecordingMetadata, dict[str, Any]]] = {}

    def save(self, session: RecordingSession,
             siprec_meta: siprec.RecordingMetadata | None) -> None:
        hit = self._dumped.get(session.recording_id)
        if hit is None or hit[0] is not session.metadata:
            hit = (session.metadata, session.metadata.model_dump(mode="json"))
            self._dumped[session.recording_id] = hit
        data = {**session_to_dict(session, siprec_meta, hit[1]), "boot_id": self.boot_id}
        line = journal_line(data)
        self._live[session.recording_id] = line
        self._append(line)

    def delete(self, recording_id: str) -> None:
        self._dumped.pop(recording_id, None)
        if self._live.pop(recording_id, None) is not None:
            self._append(journal_line({"deleted": recording_id}))

    def recording_ids(self) -> list[str]:
        """The recordings whose state this store holds, in the order first saved."""
        return list(self._live)

    def load_all(self) -> list[tuple[RecordingSession, siprec.RecordingMetadata | None]]:
        """The sessions of this node boot; the journal is rewritten with only them."""
        state: dict[str, dict[str, Any]] = {}
        for path in sorted(self.directory.glob("*.json")):  # the layout before the journal
            try:
                data = json.loads(path.read_text())
                state[str(data["recording_id"])] = data
            except (ValueError, KeyError, TypeError) as exc:
                log.error("dialog_state_unreadable", path=str(path), error=str(exc))
            path.unlink(missing_ok=True)
        if self.path.exists():
            for number, raw in enumerate(self.path.read_bytes().splitlines(), 1):
                try:
                    data = json.loads(raw)
                    if "deleted" in data:
                        state.pop(str(data["deleted"]), None)
                    else:
                        state[str(data["recording_id"])] = data
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("dialog_state_unreadable", path=str(self.path), line=number,
                              error=str(exc))
        loaded = []
        self._live = {}
        for recording_id, data in state.items():
            if data.get("boot_id", "") != self.boot_id:
                log.info("dialog_state_from_previous_boot", recording_id=recording_id)
                continue
            try:
                loaded.append(session_from_dict(data))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("dialog_state_unreadable", recording_id=recording_id,
                          error=str(exc))
                continue
            self._live[recording_id] = journal_line(data)
        self._compact()
        return loaded

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, line: bytes) -> None:
        """Append ``line`` (already applied to ``_live``); after a failed or short write
        (a full disk) the journal may end in a torn line, so the next change rewrites
        it whole from ``_live`` instead of appending to it."""
        if self._torn:
            self._compact()
            return
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            written = os.write(self._fd, line)
        except OSError:
            self._torn = True
            raise
        if written != len(line):
            self._torn = True
            raise OSError(errno.ENOSPC, "short write to the dialog journal", str(self.path))
        self._lines += 1
        if self._lines >= max(self.COMPACT_MIN, self.COMPACT_FACTOR * len(self._live)):
            self._compact()

    def _compact(self) -> None:
        """Rewrite the journal with one line per live session (atomically)."""
        temp = self.path.with_suffix(".tmp")
        temp.write_bytes(b"".join(self._live.values()))
        os.replace(temp, self.path)
        self.close()
        self._lines = len(self._live)
        self._torn = False


DialogId = tuple[str, str]  # (Call-ID, our tag)


class SessionRegistry:
    """Every recording in progress, its legs and dialogs, and which recordings still
    wait for their first RTP (per source, for the pending-media cap)."""

    def __init__(self, store: DialogStore | None = None) -> None:
        self.store = store
        self.sessions: dict[str, RecordingSession] = {}
        self.by_key: dict[str, RecordingSession] = {}
        self.dialogs: dict[DialogId, tuple[RecordingSession, Leg]] = {}
        # Full SIPREC metadata per recording, to apply partial updates to.
        self.siprec_meta: dict[str, siprec.RecordingMetadata] = {}
        # Recordings answered but without RTP on any leg yet, per source (keyed by
        # recording id, or "invite:<Call-ID>" while a new one is being answered).
        self.awaiting_media: dict[str, str] = {}
        self.awaiting_by_source: dict[str, int] = {}
        if store is not None:
            self.restore(store)

    # ---- lookups --------------------------------------------------------------------

    def dialog(self, call_id: str, local_tag: str | None) -> tuple[RecordingSession, Leg] | None:
        return self.dialogs.get((call_id, local_tag or ""))

    def active(self) -> list[RecordingSession]:
        return [s for s in self.sessions.values() if not s.ending]

    def active_count(self) -> int:
        """len(active()) without walking every call on each INVITE: _end_leg marks a
        session ending and forgets it in the same step, so none in `sessions` is."""
        return len(self.sessions)

    def joinable(self, key: str) -> RecordingSession | None:
        existing = self.by_key.get(key)
        return existing if existing is not None and not existing.ending else None

    # ---- changes ----------------------------------------------------------------------

    def add_session(self, session: RecordingSession,
                    siprec_meta: siprec.RecordingMetadata | None) -> None:
        self.sessions[session.recording_id] = session
        self.by_key[session.session_key] = session
        if siprec_meta is not None:
            self.siprec_meta[session.recording_id] = siprec_meta

    def add_leg(self, session: RecordingSession, leg: Leg) -> None:
        session.legs[leg.call_id] = leg
        self.dialogs[(leg.call_id, leg.local_tag)] = (session, leg)

    def drop_dialog(self, leg: Leg) -> None:
        self.dialogs.pop((leg.call_id, leg.local_tag), None)

    def persist(self, session: RecordingSession) -> None:
        if self.store is None or session.recording_id not in self.sessions:
            return
        try:
            self.store.save(session, self.siprec_meta.get(session.recording_id))
        except OSError as exc:  # the call goes on; only a restart would forget it
            log.error("dialog_state_write_failed", recording_id=session.recording_id,
                      error=str(exc))

    def forget(self, session: RecordingSession) -> None:
        self.media_arrived(session.recording_id)
        if self.store is not None:
            try:
                self.store.delete(session.recording_id)
            except OSError as exc:  # a full disk must not stop the call's finalize
                log.error("dialog_state_write_failed", recording_id=session.recording_id,
                          error=str(exc))
        self.sessions.pop(session.recording_id, None)
        if self.by_key.get(session.session_key) is session:
            del self.by_key[session.session_key]
        self.siprec_meta.pop(session.recording_id, None)

    def restore(self, store: DialogStore) -> None:
        """Take back the calls a previous process of this service was recording."""
        for session, meta in store.load_all():
            self.add_session(session, meta)
            for leg in session.live_legs():
                self.dialogs[(leg.call_id, leg.local_tag)] = (session, leg)
            source = session.source()
            if source is not None and not any(leg.media_seen for leg in session.legs.values()):
                self.await_media(session.recording_id, source)
            log.info("recording_restored", recording_id=session.recording_id,
                     legs=len(session.live_legs()))

    # ---- recordings without RTP yet ------------------------------------------------------

    def await_media(self, key: str, host: str) -> None:
        if key not in self.awaiting_media:
            self.awaiting_media[key] = host
            self.awaiting_by_source[host] = self.awaiting_by_source.get(host, 0) + 1

    def media_arrived(self, key: str) -> None:
        host = self.awaiting_media.pop(key, None)
        if host is not None:
            left = self.awaiting_by_source.get(host, 1) - 1
            if left > 0:
                self.awaiting_by_source[host] = left
            else:
                self.awaiting_by_source.pop(host, None)

    def awaiting_count(self, host: str) -> int:
        return sum(n for h, n in self.awaiting_by_source.items() if same_source(h, host))
