"""The recording UAS: SIP requests in, recording sessions and capture commands out.

Transactions absorb retransmissions (the cached response is sent again, nothing is
processed twice); final INVITE responses over UDP are retransmitted until the ACK.
Requests of one Call-ID are handled one at a time, so an ACK or BYE never overtakes
the INVITE whose capture ports are still being allocated.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

import structlog

from callrec.users import UsersProjection
from contracts.v1.events import Participant, RecordingMetadata
from contracts.v1.rpc import AllocateRequest, QuietStream, RtpSource, StreamSpec, UpdateRequest

from . import sdp, siprec
from .admission import RefusalReason, same_source
from .cucm import CucmLegError, parse_cucm_leg, session_key
from .dialogs import DialogStore
from .recorder import (
    Admission,
    Leg,
    RecordingSession,
    Stream,
    admit,
    merge_cucm_participants,
    number_of,
)
from .sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    build_response,
    parse_message,
    parse_name_addr,
    serialize,
)
from .sip.transport import Peer

log = structlog.get_logger()

T1, T2 = 0.5, 4.0
TRANSACTION_LIFETIME = 32.0
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, NOTIFY"
SUPPORTED_TAGS = {"siprec", "timer"}
SERVER = "callrec/0.1"
MAX_STREAMS = 4
MIN_SESSION_EXPIRES = 90
SWEEP_INTERVAL = 5.0
MEDIA_WATCH_INTERVAL = 1.0
MEDIA_REPORT_MAX_AGE = 3.0  # older capture reports are not acted on


class Backend(Protocol):
    """What the UAS needs from the rest of the node (NATS in production, fakes in tests)."""

    users: UsersProjection

    def can_record(self) -> tuple[bool, str | None]: ...
    async def allocate(self, request: AllocateRequest) -> dict[str, int]: ...
    async def update(self, request: UpdateRequest) -> None: ...
    async def release(self, recording_id: str, stream_id: str) -> None: ...
    async def finalize(
        self, recording_id: str, ended_at: datetime, metadata: RecordingMetadata
    ) -> None: ...
    async def recording_started(self, session: RecordingSession) -> None: ...
    async def recording_ended(self, session: RecordingSession, reason: str) -> None: ...
    def quiet_streams(self) -> tuple[float, list[QuietStream]] | None:
        """Capture's last report of streams without recent RTP, and when it was asked."""
        ...


class Refusals(Protocol):
    """Where the UAS reports an INVITE refused for admission (counted, logged)."""

    def refused(self, host: str, reason: RefusalReason) -> None: ...


class Sender(Protocol):
    def reply(self, peer: Peer, data: bytes, via_port: int | None, rport: bool) -> None: ...
    def send_request(self, peer: Peer, data: bytes) -> None: ...


@dataclass
class ServerTransaction:
    method: str
    peer: Peer
    created: float
    response: bytes | None = None
    status: int = 0
    request: SipRequest | None = None
    to_tag: str | None = None
    cancelled: bool = False


@dataclass
class Plan:
    """What an initial INVITE asks us to record, before any resource is taken."""

    kind: str  # cucm | siprec | sip
    session_key: str
    numbers: list[str]
    streams: list[StreamSpec]
    metadata: RecordingMetadata
    offer: sdp.SessionDescription | None
    siprec_metadata: siprec.RecordingMetadata | None = None


@dataclass
class _CallLock:
    """Serialises the requests of one Call-ID; dropped when nobody holds or waits."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Counters:
    received: int = 0
    malformed: int = 0
    retransmissions: int = 0
    responses: dict[int, int] = field(default_factory=dict)


class RecorderUas:
    def __init__(
        self,
        *,
        backend: Backend,
        sender: Sender,
        address: str,
        sip_port: int,
        record_all: bool,
        max_channels: int,
        dialog_store: DialogStore | None = None,
        pending_media_limit: int | None = None,
        media_timeout_s: float = 0.0,
        refusals: Refusals | None = None,
    ) -> None:
        self.backend = backend
        self.sender = sender
        self.address = address
        self.sip_port = sip_port
        self.record_all = record_all
        self.max_channels = max_channels
        self.transactions: dict[tuple[str, ...], ServerTransaction] = {}
        self.sessions: dict[str, RecordingSession] = {}
        self.by_key: dict[str, RecordingSession] = {}
        self.dialogs: dict[tuple[str, str], tuple[RecordingSession, Leg]] = {}
        self.retransmits: dict[tuple[str, int], asyncio.Task[None]] = {}
        self.locks: dict[str, _CallLock] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.counters = Counters()
        # Full SIPREC metadata per recording, to apply partial updates to.
        self.siprec_meta: dict[str, siprec.RecordingMetadata] = {}
        self.dialog_store = dialog_store
        # Recordings answered but without RTP on any leg yet, per source (keyed by
        # recording id, or "invite:<Call-ID>" while a new one is being answered):
        # capped, so one source that never sends media cannot take all licences.
        self.pending_media_limit = pending_media_limit
        self.media_timeout_s = media_timeout_s
        self.refusals = refusals
        self.awaiting_media: dict[str, str] = {}
        self.awaiting_by_source: dict[str, int] = {}
        if dialog_store is not None:
            self._restore(dialog_store)

    # ---- entry --------------------------------------------------------------------

    def on_message(self, data: bytes, peer: Peer) -> None:
        self.counters.received += 1
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self.counters.malformed += 1
            log.info("sip_malformed", peer=f"{peer.host}:{peer.port}", error=str(exc)[:200])
            self._answer_unparseable(data, peer)
            return
        if isinstance(message, SipResponse):
            return  # responses to our own BYEs: nothing to do
        task = asyncio.create_task(self._dispatch(message, peer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def active_recording_ids(self) -> list[str]:
        return list(self.sessions)

    async def _dispatch(self, request: SipRequest, peer: Peer) -> None:
        call_id = request.call_id
        if request.method == "CANCEL":
            # CANCEL must not wait behind the INVITE it cancels (which holds the lock
            # while capture ports are allocated); it only touches transaction state.
            try:
                await self._handle(request, peer)
            except Exception:
                log.exception("sip_handler_failed", method=request.method, call_id=call_id)
            return
        entry = self.locks.get(call_id)
        if entry is None:
            entry = self.locks[call_id] = _CallLock()
        entry.users += 1
        try:
            async with entry.lock:
                await self._handle(request, peer)
        except Exception:
            log.exception("sip_handler_failed", method=request.method, call_id=call_id)
            tx = self.transactions.get(_transaction_key(request))
            if request.method not in ("ACK",) and (tx is None or tx.status < 200):
                self._respond(request, peer, 500)
        finally:
            entry.users -= 1
            if entry.users == 0:
                self.locks.pop(call_id, None)

    async def _handle(self, request: SipRequest, peer: Peer) -> None:
        method = request.method
        if method == "ACK":
            self._on_ack(request)
            return
        key = _transaction_key(request)
        tx = self.transactions.get(key)
        if tx is not None:
            self.counters.retransmissions += 1
            if tx.response is not None:
                self._send(tx.peer, tx.response, request)
            return
        self.transactions[key] = ServerTransaction(method, peer, time.monotonic(), request=request)
        structlog.contextvars.bind_contextvars(call_id=request.call_id)
        try:
            handler = {
                "INVITE": self._on_invite,
                "BYE": self._on_bye,
                "CANCEL": self._on_cancel,
                "OPTIONS": self._on_options,
                "UPDATE": self._on_update,
                "INFO": self._on_in_dialog_ok,
                "NOTIFY": self._on_in_dialog_ok,
            }.get(method)
            if handler is not None:
                await handler(request, peer)
            elif method in ("REGISTER", "SUBSCRIBE", "MESSAGE", "PUBLISH", "REFER", "PRACK"):
                self._respond(request, peer, 405, headers=[("Allow", ALLOW)])
            else:
                self._respond(request, peer, 501, headers=[("Allow", ALLOW)])
        finally:
            structlog.contextvars.unbind_contextvars("call_id")

    # ---- INVITE ---------------------------------------------------------------------

    async def _on_invite(self, request: SipRequest, peer: Peer) -> None:
        try:
            await self._invite(request, peer)
        finally:
            self._media_arrived_key(f"invite:{request.call_id}")  # the reservation, if any

    async def _invite(self, request: SipRequest, peer: Peer) -> None:
        unsupported = _unsupported_required(request)
        if unsupported:
            self._respond(request, peer, 420, headers=[("Unsupported", ", ".join(unsupported))])
            return
        if request.to.tag is not None:
            await self._on_reinvite(request, peer)
            return
        self._respond(request, peer, 100)
        try:
            plan = self._plan(request)
        except BadRequest as exc:
            log.info("invite_rejected", status=exc.status, reason=exc.reason)
            self._respond(request, peer, exc.status, warning=exc.reason)
            return
        existing = self.by_key.get(plan.session_key)
        joins = existing is not None and not existing.ending
        if joins and existing is not None and self._refuse_other_source(request, peer, existing):
            return
        ok, why = self.backend.can_record()
        result = admit(
            numbers=plan.numbers,
            users=self.backend.users,
            record_all=self.record_all,
            can_record=ok,
            cannot_record_reason=why,
            active_recordings=sum(1 for s in self.sessions.values() if not s.ending),
            max_channels=self.max_channels,
            joins_existing=joins,
        )
        if result.admission is not Admission.ACCEPT:
            log.info("invite_refused", status=result.admission.value, reason=result.reason,
                     numbers=plan.numbers)
            extra = [("Retry-After", "5")] if result.admission is Admission.CANNOT_RECORD else []
            self._respond(request, peer, result.admission.value, warning=result.reason,
                          headers=extra)
            return
        if not joins and self._refuse_pending_media(request, peer):
            return

        now = datetime.now(UTC)
        metadata = plan.metadata.model_copy(update={"recorded_user": result.user})
        if existing is not None and joins:
            session = existing
            if plan.kind == "cucm":
                near, far = _cucm_parties(plan.metadata)
                session.metadata = merge_cucm_participants(
                    session.metadata, near, far, request.call_id
                )
            new_session = False
        else:
            session = RecordingSession(
                recording_id=uuid.uuid4().hex,
                session_key=plan.session_key,
                started_at=now,
                metadata=metadata,
                first_source=peer.host,
            )
            self.sessions[session.recording_id] = session
            self.by_key[session.session_key] = session
            if plan.siprec_metadata is not None:
                self.siprec_meta[session.recording_id] = plan.siprec_metadata
            new_session = True
        structlog.contextvars.bind_contextvars(recording_id=session.recording_id)
        tx = self.transactions.get(_transaction_key(request))
        try:
            ports = await self.backend.allocate(
                AllocateRequest(
                    recording_id=session.recording_id,
                    started_at=session.started_at,
                    streams=_with_sources(plan.streams, plan.offer),
                    metadata=session.metadata,
                )
            )
        except Exception as exc:
            log.error("allocate_failed", error=str(exc))
            if new_session and not session.legs:
                self._forget(session)
            if tx is None or not tx.cancelled:
                self._respond(request, peer, 503, warning="capture unavailable",
                              headers=[("Retry-After", "5")])
            return
        finally:
            structlog.contextvars.unbind_contextvars("recording_id")
        if tx is not None and tx.cancelled:
            # CANCELled while allocating: 487 has gone out; give the ports back.
            log.info("invite_cancelled", recording_id=session.recording_id)
            for spec in plan.streams:
                try:
                    await self.backend.release(session.recording_id, spec.stream_id)
                except Exception as exc:
                    log.error("release_failed", recording_id=session.recording_id,
                              error=str(exc))
            if new_session and not session.legs:
                self._forget(session)
            return

        local_tag = secrets.token_hex(8)
        streams = [
            Stream(s.stream_id, s.channel, s.label, ports[s.stream_id]) for s in plan.streams
        ]
        leg = Leg(request.call_id, local_tag, request.from_.tag or "", streams)
        leg.remote_target = _contact_uri(request)
        leg.remote_identity = request.headers.get("From") or ""
        leg.local_identity = f"{request.headers.get('To')};tag={local_tag}"
        leg.peer = peer
        leg.media_since = time.monotonic()
        self._refresh(leg, request)
        session.legs[request.call_id] = leg
        self.dialogs[(request.call_id, local_tag)] = (session, leg)
        if new_session:
            self._await_media_key(session.recording_id, peer.host)
        body = self._session_body(leg, plan.offer)
        await self._push_codecs(session, leg, plan.offer)
        self._persist(session)  # before the 200: a dialog the PBX has, we must know too
        self._respond(request, peer, 200, to_tag=local_tag, body=body.encode(),
                      content_type="application/sdp",
                      headers=self._dialog_headers(request, peer, plan.kind == "siprec"))
        log.info("leg_answered", recording_id=session.recording_id, kind=plan.kind,
                 ports=[s.port for s in streams], streams=[s.stream_id for s in streams])
        if new_session:
            await self.backend.recording_started(session)

    def _plan(self, request: SipRequest) -> Plan:
        offer, metadata_xml = _split_body(request)
        try:
            cucm = parse_cucm_leg(request.from_)
        except CucmLegError as exc:
            raise BadRequest(400, f"inconsistent CUCM recording parameters: {exc}") from exc
        if metadata_xml is not None or _requires(request, "siprec"):
            if offer is None:
                raise BadRequest(488, "SIPREC INVITE without an SDP offer")
            if metadata_xml is None:
                raise BadRequest(400, "SIPREC INVITE without recording metadata")
            return self._plan_siprec(request, offer, metadata_xml)
        if cucm is not None:
            near = Participant(role="near", number=cucm.near_addr, device=cucm.near_device,
                               channel=0)
            far = Participant(role="far", number=cucm.far_addr, device=cucm.far_device,
                              channel=1)
            side = cucm.side
            channel = 0 if side == "near" else 1
            if offer is not None and not any(_usable(m) for m in offer.media):
                raise BadRequest(488, "no usable audio stream in the offer")
            return Plan(
                kind="cucm",
                session_key=session_key(cucm),
                numbers=[cucm.near_addr] if cucm.near_addr else [],
                streams=[StreamSpec(stream_id=side, channel=channel, label=side)],
                metadata=RecordingMetadata(
                    source="cucm",
                    session_key=session_key(cucm),
                    refci=cucm.refci,
                    cluster_id=cucm.cluster_id,
                    sip_call_ids=[request.call_id],
                    participants=[near, far],
                    recorded_extension=cucm.near_addr,
                    user_agent=request.headers.get("User-Agent"),
                ),
                offer=offer,
            )
        # A plain INVITE: record its (first two) audio streams, From on the left.
        caller = number_of(str(request.from_.uri))
        callee = number_of(str(request.to.uri))
        if offer is not None:
            usable = [i for i, m in enumerate(offer.media) if _usable(m)][:2]
            if not usable:
                raise BadRequest(488, "no usable audio stream in the offer")
            if len(offer.media) > MAX_STREAMS:
                raise BadRequest(488, "too many media streams")
            streams = [StreamSpec(stream_id=f"m{i}", channel=min(n, 1), label=str(i))
                       for n, i in enumerate(usable)]
        else:
            streams = [StreamSpec(stream_id="m0", channel=0, label="0")]
        key = f"sip:{request.call_id}"
        return Plan(
            kind="sip",
            session_key=key,
            numbers=[n for n in (caller, callee) if n],
            streams=streams,
            metadata=RecordingMetadata(
                source="sip",
                session_key=key,
                sip_call_ids=[request.call_id],
                participants=[Participant(role="caller", number=caller, channel=0),
                              Participant(role="callee", number=callee, channel=1)],
                recorded_extension=caller,
                user_agent=request.headers.get("User-Agent"),
            ),
            offer=offer,
        )

    def _plan_siprec(
        self, request: SipRequest, offer: sdp.SessionDescription, metadata_xml: bytes
    ) -> Plan:
        try:
            meta = siprec.parse_metadata(metadata_xml)
        except siprec.MetadataError as exc:
            raise BadRequest(400, f"bad recording metadata: {exc}") from exc
        if len(offer.media) > MAX_STREAMS:
            raise BadRequest(488, "too many media streams")
        usable = [i for i, m in enumerate(offer.media) if _usable(m)]
        if not usable:
            raise BadRequest(488, "no usable audio stream in the offer")
        labels = [offer.media[i].label or str(i) for i in usable]
        channels = siprec.assign_channels(meta, labels)
        streams = [
            StreamSpec(stream_id=f"m{i}", channel=channels[label][0], label=label)
            for i, label in zip(usable, labels, strict=True)
        ]
        metadata = _siprec_metadata(meta, channels, request)
        return Plan(
            kind="siprec",
            session_key=metadata.session_key,
            numbers=metadata.numbers(),
            streams=streams,
            metadata=metadata,
            offer=offer,
            siprec_metadata=meta,
        )

    def _session_body(self, leg: Leg, offer: sdp.SessionDescription | None) -> str:
        session_id = int.from_bytes(leg.local_tag.encode()[:6], "big")
        if offer is None:
            leg.offer_pending = True
            return sdp.recorder_offer(leg.streams[0].port, self.address, session_id,
                                      leg.sdp_version)
        by_index = {int(s.stream_id[1:]): s.port for s in leg.streams
                    if s.stream_id.startswith("m")}
        if not by_index:  # a CUCM leg that came with an offer
            by_index = {i: leg.streams[0].port for i, m in enumerate(offer.media)
                        if _usable(m)}
        ports = [by_index.get(i, 0) for i in range(len(offer.media))]
        return sdp.recorder_answer(offer, ports, self.address, session_id, leg.sdp_version)

    async def _push_codecs(
        self, session: RecordingSession, leg: Leg, sdp_doc: sdp.SessionDescription | None
    ) -> None:
        """Tell capture which payload types mean which codec, and where the PBX sends
        each stream from, from the PBX's SDP (offer, or answer in the ACK)."""
        if sdp_doc is None:
            return
        self._note_hold(leg, sdp_doc)
        for stream in leg.streams:
            media = _media_for(stream.stream_id, sdp_doc)
            if media is None:
                continue
            codecs = sdp.payload_codecs(media)
            stream.payload_codecs.update(codecs)
            try:
                await self.backend.update(
                    UpdateRequest(recording_id=session.recording_id, stream_id=stream.stream_id,
                                  payload_codecs=codecs or None,
                                  source=_rtp_source(sdp_doc, media))
                )
            except Exception as exc:
                log.error("codec_update_failed", recording_id=session.recording_id,
                          error=str(exc))

    # ---- in-dialog -------------------------------------------------------------------

    def _on_ack(self, request: SipRequest) -> None:
        cseq, _ = request.cseq
        task = self.retransmits.pop((request.call_id, cseq), None)
        if task is not None:
            task.cancel()
        found = self.dialogs.get((request.call_id, request.to.tag or ""))
        if found is None:
            return
        session, leg = found
        leg.confirmed = True
        self._persist(session)
        if leg.offer_pending and request.body:
            leg.offer_pending = False
            self._persist(session)
            try:
                answer = sdp.parse_sdp(request.body.decode("utf-8", "replace"))
            except sdp.SdpError as exc:
                log.warning("ack_sdp_invalid", error=str(exc))
                return
            task2 = asyncio.create_task(self._push_codecs(session, leg, answer))
            self.tasks.add(task2)
            task2.add_done_callback(self.tasks.discard)

    async def _dialog_request(
        self, request: SipRequest, peer: Peer
    ) -> tuple[RecordingSession, Leg, sdp.SessionDescription | None] | None:
        """Common start of re-INVITE and UPDATE: the dialog, metadata applied, the offer.
        None when a response (481, 4xx for the body) has been sent already."""
        found = self.dialogs.get((request.call_id, request.to.tag or ""))
        if found is None:
            self._respond(request, peer, 481)
            return None
        session, leg = found
        try:
            offer, metadata_xml = _split_body(request)
        except BadRequest as exc:
            self._respond(request, peer, exc.status, warning=exc.reason)
            return None
        if metadata_xml is not None:
            await self._apply_metadata_update(session, metadata_xml)
        return session, leg, offer

    async def _on_reinvite(self, request: SipRequest, peer: Peer) -> None:
        found = await self._dialog_request(request, peer)
        if found is None:
            return
        session, leg, offer = found
        leg.sdp_version += 1
        if offer is not None and len(offer.media) < len(leg.streams):
            self._respond(request, peer, 488, warning="m-lines cannot be removed")
            return
        body = self._session_body(leg, offer)
        await self._push_codecs(session, leg, offer)
        self._refresh(leg, request)
        self._persist(session)
        self._respond(request, peer, 200, body=body.encode(), content_type="application/sdp",
                      headers=self._dialog_headers(request, peer, session.metadata.source
                                                   == "siprec"))
        log.info("reinvite_answered", recording_id=session.recording_id,
                 delayed_offer=offer is None)

    async def _on_update(self, request: SipRequest, peer: Peer) -> None:
        found = await self._dialog_request(request, peer)
        if found is None:
            return
        session, leg, offer = found
        srs = session.metadata.source == "siprec"
        self._refresh(leg, request)
        self._persist(session)
        if offer is None:
            self._respond(request, peer, 200,
                          headers=self._dialog_headers(request, peer, srs))
            return
        leg.sdp_version += 1
        body = self._session_body(leg, offer)
        leg.offer_pending = False
        self._persist(session)
        await self._push_codecs(session, leg, offer)
        self._respond(request, peer, 200, body=body.encode(), content_type="application/sdp",
                      headers=self._dialog_headers(request, peer, srs))

    async def _apply_metadata_update(self, session: RecordingSession, xml: bytes) -> None:
        try:
            update = siprec.parse_metadata(xml)
        except siprec.MetadataError as exc:
            log.warning("metadata_update_invalid", error=str(exc))
            return
        previous = session.metadata
        current = self.siprec_meta.get(session.recording_id)
        merged = siprec.merge_metadata(current, update) if current else update
        self.siprec_meta[session.recording_id] = merged
        labels = [s.label or "" for leg in session.legs.values() for s in leg.streams]
        channels = siprec.assign_channels(merged, labels)
        session.metadata = _siprec_metadata(merged, channels, None, previous)
        self._persist(session)
        try:
            await self.backend.update(
                UpdateRequest(recording_id=session.recording_id, metadata=session.metadata)
            )
        except Exception as exc:
            log.error("metadata_update_failed", error=str(exc))

    async def _on_bye(self, request: SipRequest, peer: Peer) -> None:
        found = self.dialogs.get((request.call_id, request.to.tag or ""))
        if found is None:
            self._respond(request, peer, 481)
            return
        self._respond(request, peer, 200)
        session, leg = found
        await self._end_leg(session, leg, "bye")

    async def _on_cancel(self, request: SipRequest, peer: Peer) -> None:
        invite_key = _transaction_key(request, method="INVITE")
        invite_tx = self.transactions.get(invite_key)
        if invite_tx is None:
            self._respond(request, peer, 481)
            return
        self._respond(request, peer, 200)
        if invite_tx.status < 200 and invite_tx.request is not None:
            # The INVITE is still being processed; the leg has not been created yet.
            # _on_invite sees the flag once allocation returns and releases the ports.
            invite_tx.cancelled = True
            self._respond(invite_tx.request, invite_tx.peer, 487)
            return
        # Already answered: the caller will send BYE; nothing to cancel.

    async def _on_options(self, request: SipRequest, peer: Peer) -> None:
        ok, why = self.backend.can_record()
        headers = [("Allow", ALLOW), ("Accept", "application/sdp, multipart/mixed"),
                   ("Supported", ", ".join(sorted(SUPPORTED_TAGS)))]
        if ok:
            self._respond(request, peer, 200, headers=headers)
        else:
            self._respond(request, peer, 503, warning=why or "cannot record",
                          headers=[*headers, ("Retry-After", "5")])

    async def _on_in_dialog_ok(self, request: SipRequest, peer: Peer) -> None:
        if (request.call_id, request.to.tag or "") in self.dialogs:
            self._respond(request, peer, 200)
        else:
            self._respond(request, peer, 481)

    async def _end_leg(self, session: RecordingSession, leg: Leg, reason: str) -> None:
        if leg.ended:
            return
        leg.ended = True
        self.dialogs.pop((leg.call_id, leg.local_tag), None)
        if session.live_legs() or session.ending:
            self._persist(session)
            return
        session.ending = True
        self._forget(session)
        ended_at = datetime.now(UTC)
        log.info("recording_ending", recording_id=session.recording_id, reason=reason)
        try:
            await self.backend.finalize(session.recording_id, ended_at, session.metadata)
        except Exception as exc:
            log.error("finalize_request_failed", recording_id=session.recording_id,
                      error=str(exc))
        await self.backend.recording_ended(session, reason)

    # ---- admission by source and media -------------------------------------------------

    def _refuse_other_source(
        self, request: SipRequest, peer: Peer, joining: RecordingSession
    ) -> bool:
        """A leg may join a call only from the source of the call's first leg: a guessed
        x-refci must not add someone's audio to another call. True when refused (403)."""
        first = joining.source()
        if first is None or same_source(first, peer.host):
            return False
        self._respond(request, peer, 403,
                      warning="this call's recording comes from another source")
        self._refused(peer.host, "leg_source")
        return True

    def _refuse_pending_media(self, request: SipRequest, peer: Peer) -> bool:
        """503 a new recording from a source with too many still without RTP, else
        reserve its place (concurrent INVITEs must not all pass at once)."""
        limit = self.pending_media_limit
        if limit is not None and self._awaiting_count(peer.host) >= limit:
            self._respond(request, peer, 503, headers=[("Retry-After", "5")],
                          warning="too many recordings from this source wait for media")
            self._refused(peer.host, "pending_media")
            return True
        self._await_media_key(f"invite:{request.call_id}", peer.host)
        return False

    def _refused(self, host: str, reason: RefusalReason) -> None:
        log.info("invite_refused", reason=reason, source=host)
        if self.refusals is not None:
            self.refusals.refused(host, reason)

    def _await_media_key(self, key: str, host: str) -> None:
        if key not in self.awaiting_media:
            self.awaiting_media[key] = host
            self.awaiting_by_source[host] = self.awaiting_by_source.get(host, 0) + 1

    def _media_arrived_key(self, key: str) -> None:
        host = self.awaiting_media.pop(key, None)
        if host is not None:
            left = self.awaiting_by_source.get(host, 1) - 1
            if left > 0:
                self.awaiting_by_source[host] = left
            else:
                self.awaiting_by_source.pop(host, None)

    def _awaiting_count(self, host: str) -> int:
        return sum(n for h, n in self.awaiting_by_source.items() if same_source(h, host))

    def _note_hold(self, leg: Leg, description: sdp.SessionDescription) -> None:
        held = _on_hold(description)
        if held != leg.on_hold:
            leg.on_hold = held
            leg.media_since = time.monotonic()  # silence counts again from the resume
            log.info("leg_hold" if held else "leg_resumed", call_id=leg.call_id)

    async def watch_media(self) -> None:
        """Apply capture's reports: mark legs that have media, end legs silent too long."""
        while True:
            await asyncio.sleep(MEDIA_WATCH_INTERVAL)
            report = self.backend.quiet_streams()
            if report is not None:
                await self.apply_media_report(*report, now=time.monotonic())

    async def apply_media_report(
        self, asked_at: float, quiet: list[QuietStream], *, now: float
    ) -> list[Leg]:
        """One capture report (asked for at `asked_at`, monotonic); the legs it ended."""
        if now - asked_at > MEDIA_REPORT_MAX_AGE:
            return []  # capture is not answering: never end calls on stale news
        by_stream = {(q.recording_id, q.stream_id): q for q in quiet}
        ended: list[Leg] = []
        for session, leg in list(self.dialogs.values()):
            if leg.media_since >= asked_at:
                continue  # answered (or resumed) after capture was asked: no news yet
            reports = [by_stream.get((session.recording_id, s.stream_id)) for s in leg.streams]
            if not leg.media_seen and any(r is None or r.packets > 0 for r in reports):
                leg.media_seen = True
                self._media_arrived_key(session.recording_id)
            timeout = self.media_timeout_s
            if (timeout <= 0 or leg.on_hold or not leg.streams
                    or now - leg.media_since < timeout
                    or any(r is None or r.silent_s < timeout for r in reports)):
                continue
            log.warning("media_timeout", recording_id=session.recording_id,
                        call_id=leg.call_id, timeout_s=timeout, media_seen=leg.media_seen)
            self._send_bye(leg)
            await self._end_leg(session, leg, "media timeout")
            ended.append(leg)
        return ended

    def _restore(self, store: DialogStore) -> None:
        """Take back the calls a previous process of this service was recording."""
        for session, meta in store.load_all():
            self.sessions[session.recording_id] = session
            self.by_key[session.session_key] = session
            if meta is not None:
                self.siprec_meta[session.recording_id] = meta
            for leg in session.live_legs():
                self.dialogs[(leg.call_id, leg.local_tag)] = (session, leg)
            source = session.source()
            if source is not None and not any(leg.media_seen for leg in session.legs.values()):
                self._await_media_key(session.recording_id, source)
            log.info("recording_restored", recording_id=session.recording_id,
                     legs=len(session.live_legs()))

    def _persist(self, session: RecordingSession) -> None:
        if self.dialog_store is None or session.recording_id not in self.sessions:
            return
        try:
            self.dialog_store.save(session, self.siprec_meta.get(session.recording_id))
        except OSError as exc:  # the call goes on; only a restart would forget it
            log.error("dialog_state_write_failed", recording_id=session.recording_id,
                      error=str(exc))

    def _forget(self, session: RecordingSession) -> None:
        self._media_arrived_key(session.recording_id)
        if self.dialog_store is not None:
            self.dialog_store.delete(session.recording_id)
        self.sessions.pop(session.recording_id, None)
        if self.by_key.get(session.session_key) is session:
            del self.by_key[session.session_key]
        self.siprec_meta.pop(session.recording_id, None)

    # ---- responses ---------------------------------------------------------------------

    def _dialog_headers(self, request: SipRequest, peer: Peer, srs: bool) -> list[tuple[str, str]]:
        transport = ";transport=tcp" if peer.transport == "TCP" else ""
        host = f"[{self.address}]" if ":" in self.address else self.address
        contact = f"<sip:callrec@{host}:{self.sip_port}{transport}>"
        headers = [
            ("Contact", contact + (";+sip.srs" if srs else "")),
            ("Allow", ALLOW),
            ("Supported", ", ".join(sorted(SUPPORTED_TAGS))),
        ]
        if srs:
            headers.append(("Require", "siprec"))
        expires = request.headers.get("Session-Expires")
        if expires and _supports(request, "timer"):
            value = expires.split(";", 1)[0].strip()
            if value.isdigit():
                headers.append(("Session-Expires", f"{value};refresher=uac"))
                headers.append(("Require", "timer"))
        return headers

    def _respond(
        self,
        request: SipRequest,
        peer: Peer,
        status: int,
        *,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        warning: str | None = None,
    ) -> None:
        extra = [("Server", SERVER), *headers]
        if warning:
            safe = warning.replace('"', "'").replace("\r", " ").replace("\n", " ")[:200]
            extra.append(("Warning", f'399 callrec "{safe}"'))
        if status >= 300 and to_tag is None and request.to.tag is None and status != 100:
            to_tag = secrets.token_hex(8)
        response = build_response(request, status, to_tag=to_tag, extra_headers=extra,
                                  body=body, content_type=content_type)
        data = serialize(response)
        self.counters.responses[status] = self.counters.responses.get(status, 0) + 1
        key = _transaction_key(request)
        tx = self.transactions.get(key)
        if tx is not None and status >= tx.status:
            tx.status = status
            tx.response = data
        self._send(peer, data, request)
        if request.method == "INVITE" and status >= 200 and peer.transport == "UDP":
            self._start_retransmit(request, peer, data, status)

    def _send(self, peer: Peer, data: bytes, request: SipRequest) -> None:
        via = request.vias[0]
        self.sender.reply(peer, data, via.port, via.rport_requested)

    def _start_retransmit(
        self, request: SipRequest, peer: Peer, data: bytes, status: int
    ) -> None:
        key = (request.call_id, request.cseq[0])
        old = self.retransmits.pop(key, None)
        if old is not None:
            old.cancel()

        async def resend() -> None:
            interval, waited = T1, 0.0
            while waited < TRANSACTION_LIFETIME:
                await asyncio.sleep(interval)
                waited += interval
                self._send(peer, data, request)
                interval = min(interval * 2, T2)
            self.retransmits.pop(key, None)
            log.warning("ack_timeout", call_id=request.call_id)
            if status < 300 and request.to.tag is None:
                await self._abandon_leg(request.call_id, "no ACK")

        self.retransmits[key] = asyncio.create_task(resend())

    def _answer_unparseable(self, data: bytes, peer: Peer) -> None:
        """Best effort 400 for requests we can frame but not accept; silence otherwise."""
        del data, peer  # Without trustworthy Via/Call-ID we cannot route a response.

    async def expire_transactions(self) -> None:
        """Forget old transactions; end legs whose session timer ran out."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            cutoff = now - TRANSACTION_LIFETIME
            for key in [k for k, tx in self.transactions.items() if tx.created < cutoff]:
                del self.transactions[key]
            for session, leg in list(self.dialogs.values()):
                if leg.expired(now):
                    log.warning("session_expired", recording_id=session.recording_id,
                                call_id=leg.call_id)
                    self._send_bye(leg)
                    await self._end_leg(session, leg, "session expired")

    def _refresh(self, leg: Leg, request: SipRequest) -> None:
        leg.refreshed_at = time.monotonic()
        value = (request.headers.get("Session-Expires") or "").split(";", 1)[0].strip()
        if value.isdigit() and _supports(request, "timer"):
            leg.session_expires = max(int(value), MIN_SESSION_EXPIRES)

    async def _abandon_leg(self, call_id: str, reason: str) -> None:
        for session, leg in list(self.dialogs.values()):
            if leg.call_id == call_id and not leg.confirmed:
                log.warning("leg_abandoned", recording_id=session.recording_id, reason=reason)
                self._send_bye(leg)
                await self._end_leg(session, leg, reason)

    def _send_bye(self, leg: Leg) -> None:
        """Tell the PBX we are ending its recording call (best effort, no retries)."""
        peer = leg.peer
        if not isinstance(peer, Peer) or not leg.remote_target:
            return
        leg.bye_cseq += 1
        transport = "TCP" if peer.transport == "TCP" else "UDP"
        host = f"[{self.address}]" if ":" in self.address else self.address
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{transport} {host}:{self.sip_port};"
                           f"branch=z9hG4bK{secrets.token_hex(8)};rport")
        headers.add("Max-Forwards", "70")
        headers.add("From", leg.local_identity)
        headers.add("To", leg.remote_identity)
        headers.add("Call-ID", leg.call_id)
        headers.add("CSeq", f"{leg.bye_cseq} BYE")
        headers.add("User-Agent", SERVER)
        bye = SipRequest("BYE", leg.remote_target, headers, b"")
        self.sender.send_request(peer, serialize(bye))

    async def shutdown(self) -> None:
        for task in list(self.retransmits.values()):
            task.cancel()


def _transaction_key(request: SipRequest, method: str | None = None) -> tuple[str, ...]:
    via = request.vias[0]
    branch = via.branch or ""
    method = method or request.method
    if branch.startswith("z9hG4bK"):
        return (branch, via.host, str(via.port), method)
    # RFC 2543 peers: match on the request's identity instead.
    return (request.call_id, str(request.cseq[0]), request.from_.tag or "", method)


def _split_body(request: SipRequest) -> tuple[sdp.SessionDescription | None, bytes | None]:
    if not request.body:
        return None, None
    content_type = request.content_type or ""
    sdp_bytes: bytes | None = None
    metadata: bytes | None = None
    if content_type == "application/sdp":
        sdp_bytes = request.body
    elif content_type == "application/rs-metadata+xml":
        metadata = request.body  # a metadata-only update (RFC 7866 6.1.2)
    elif content_type.startswith("multipart/"):
        try:
            parts = siprec.split_multipart(request.headers.get("Content-Type") or "",
                                           request.body)
        except siprec.MetadataError as exc:
            raise BadRequest(400, f"bad multipart body: {exc}") from exc
        for part in parts:
            if part.content_type == "application/sdp" and sdp_bytes is None:
                sdp_bytes = part.body
            elif part.content_type == "application/rs-metadata+xml" and metadata is None:
                metadata = part.body
    else:
        raise BadRequest(415, f"unsupported body type {content_type or 'none'}")
    offer = None
    if sdp_bytes is not None:
        try:
            offer = sdp.parse_sdp(sdp_bytes.decode("utf-8"))
        except (sdp.SdpError, UnicodeDecodeError) as exc:
            raise BadRequest(400, f"bad SDP: {exc}") from exc
    return offer, metadata


def _contact_uri(request: SipRequest) -> str:
    """Where in-dialog requests to the PBX go: its Contact, else its From URI."""
    contact = request.headers.get("Contact")
    if contact:
        try:
            return str(parse_name_addr(contact).uri)
        except SipParseError:
            pass
    return str(request.from_.uri)


def _media_for(
    stream_id: str, sdp_doc: sdp.SessionDescription
) -> sdp.MediaDescription | None:
    """The m-line of a stream: `m<i>` is the i-th; a CUCM leg's one stream the first usable."""
    if stream_id.startswith("m") and stream_id[1:].isdigit():
        index = int(stream_id[1:])
        return sdp_doc.media[index] if index < len(sdp_doc.media) else None
    usable = [m for m in sdp_doc.media if _usable(m)]
    return usable[0] if usable else None


def _rtp_source(sdp_doc: sdp.SessionDescription, media: sdp.MediaDescription) -> RtpSource:
    """The PBX's c= address and m= port for a stream, as written (capture interprets)."""
    return RtpSource(address=media.connection_address or sdp_doc.connection_address,
                     port=media.port)


def _with_sources(
    specs: list[StreamSpec], offer: sdp.SessionDescription | None
) -> list[StreamSpec]:
    """Streams to allocate, each with the RTP source the PBX's offer names, so capture
    admits only that source from the moment the port opens."""
    if offer is None:
        return specs
    out = []
    for spec in specs:
        media = _media_for(spec.stream_id, offer)
        out.append(spec if media is None
                   else spec.model_copy(update={"source": _rtp_source(offer, media)}))
    return out


def _usable(media: sdp.MediaDescription) -> bool:
    return media.port != 0 and sdp.choose_codecs(media) is not None


def _option_tags(request: SipRequest, header: str) -> set[str]:
    tags: set[str] = set()
    for value in request.headers.get_all(header):
        tags.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tags


def _requires(request: SipRequest, tag: str) -> bool:
    return tag in _option_tags(request, "Require")


def _supports(request: SipRequest, tag: str) -> bool:
    return tag in _option_tags(request, "Supported") | _option_tags(request, "Require")


def _unsupported_required(request: SipRequest) -> list[str]:
    return sorted(_option_tags(request, "Require") - SUPPORTED_TAGS)


def _cucm_parties(metadata: RecordingMetadata) -> tuple[Participant, Participant]:
    by_role = {p.role: p for p in metadata.participants}
    return by_role["near"], by_role["far"]


def _siprec_metadata(
    meta: siprec.RecordingMetadata,
    channels: dict[str, tuple[int, siprec.Participant | None]],
    request: SipRequest | None,
    previous: RecordingMetadata | None = None,
) -> RecordingMetadata:
    channel_of: dict[str, int] = {}
    for channel, participant in channels.values():
        if participant is not None:
            channel_of.setdefault(participant.id, channel)
    participants = []
    for position, p in enumerate(meta.participants):
        role: Literal["caller", "callee", "other"] = (
            "caller" if position == 0 else "callee" if position == 1 else "other"
        )
        aor = p.aors[0] if p.aors else None
        participants.append(Participant(
            role=role, number=number_of(aor), name=p.names[0] if p.names else None,
            aor=aor, channel=channel_of.get(p.id),
        ))
    if previous is not None:
        return previous.model_copy(update={
            "participants": participants,
            "siprec_session_ids": meta.session_ids or previous.siprec_session_ids,
        })
    assert request is not None
    return RecordingMetadata(
        source="siprec",
        session_key=f"siprec:{request.call_id}",
        siprec_session_ids=meta.session_ids,
        sip_call_ids=[request.call_id],
        participants=participants,
        recorded_extension=participants[0].number if participants else None,
        user_agent=request.headers.get("User-Agent"),
    )


def _on_hold(description: sdp.SessionDescription) -> bool:
    """The PBX will send us nothing on any audio stream (hold, pause; RFC 3264 8.4)."""
    audio = [m for m in description.media if m.media == "audio"]
    if not audio:
        return False
    for media in audio:
        address = media.connection_address or description.connection_address or ""
        held = (media.port == 0 or media.direction in ("inactive", "recvonly")
                or address in ("0.0.0.0", "::"))
        if not held:
            return False
    return True
