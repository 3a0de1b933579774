"""The recording UAS, as the transaction user: SIP requests in, recording sessions and
capture commands out.

It wires the layers below it (arrows only downward):

- `transactions` absorbs retransmissions and retransmits final INVITE responses
  (Timers G/H/I/J, T1/T2 as parameters) and tells us when an ACK never came;
- `planning` decides, purely, what a request asks us to record and what to answer;
- `sessions` keeps the recordings, legs and dialogs (and their copy on disk);
- the `Backend` port reaches capture and the event log.

Requests of one Call-ID are handled one at a time, so an ACK or BYE never overtakes
the INVITE whose capture ports are still being allocated. Every leg has a way out:
a BYE, Timer H (no ACK), the session timer, or the media timeout (a hold included,
after `max_hold_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog

from callrec.users import UsersProjection
from contracts.v1.events import Participant, RecordingMetadata
from contracts.v1.missed import MissedReason
from contracts.v1.rpc import AllocateRequest, QuietStream, StreamSpec, UpdateRequest

from . import sdp, siprec
from .admission import RefusalReason, queue_wait, same_source, waited_too_long
from .missed import MissedCalls
from .planning import (
    ALLOW,
    MAX_STREAMS,
    SUPPORTED_TAGS,
    BadRequest,
    Kind,
    Plan,
    answer_sdp,
    contact_uri,
    cucm_update,
    media_for,
    offer_sdp,
    on_hold,
    plan_invite,
    rtp_source,
    siprec_metadata,
    split_body,
    supports,
    unsupported_required,
    with_sources,
)
from .recorder import (
    Admission,
    Leg,
    RecordingSession,
    Stream,
    admit,
    merge_cucm_participants,
)
from .sessions import DialogStore, SessionRegistry
from .sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    build_response,
    error_response,
    parse_message,
    serialize,
)
from .sip.transport import Peer
from .transactions import (
    T1,
    T2,
    TRYING_AFTER,
    ServerTransaction,
    ServerTransactions,
    StatelessAnswers,
    TransactionKey,
    transaction_key,
)

log = structlog.get_logger()

# Re-exported for callers that knew them here.
__all__ = ["ALLOW", "MAX_STREAMS", "BadRequest", "Plan", "RecorderUas", "media_for",
           "rtp_source", "with_sources"]
_media_for, _rtp_source, _with_sources = media_for, rtp_source, with_sources

SERVER = "callrec/0.1"
# On every 503: the PBX records the call on its backup and tries this node again later.
RETRY_AFTER = ("Retry-After", "5")
MIN_SESSION_EXPIRES = 90
SWEEP_INTERVAL = 5.0
MEDIA_WATCH_INTERVAL = 1.0
# A leg answered from the reserve: its allocate is tried this often, 0.2 s apart and
# doubling (3 s in all, through a capture restart), before the leg is given up.
ALLOCATE_ATTEMPTS = 5
ALLOCATE_RETRY_DELAY = 0.2
MEDIA_REPORT_MAX_AGE = 3.0  # older capture reports are not acted on
# A hold exempts a leg from the media timeout, but not forever: a PBX that put the
# recording on hold and then vanished (no BYE, no session timer) must not keep it.
MAX_HOLD_S = 4 * 3600.0


class Backend(Protocol):
    """What the UAS needs from the rest of the node (NATS in production, fakes in tests)."""

    users: UsersProjection

    def can_record(self) -> tuple[bool, str | None]: ...
    def over_capacity(self) -> str | None:
        """Why new calls are refused while calls in progress go on (None: they are not)."""
        ...
    async def allocate(self, request: AllocateRequest) -> dict[str, int]: ...
    def reserved_ports(self, count: int) -> tuple[str, list[int]] | None:
        """`count` ports from capture's reserve and whose they are, or None (none to
        spare, capture not known to be recording): then allocate before answering."""
        ...
    async def update(self, request: UpdateRequest) -> None: ...
    async def release(self, recording_id: str, stream_id: str) -> None: ...
    async def finalize(
        self, recording_id: str, ended_at: datetime, metadata: RecordingMetadata
    ) -> None: ...
    async def recording_started(self, session: RecordingSession) -> None: ...
    async def recording_ended(self, session: RecordingSession, reason: str) -> None: ...
    async def participants_changed(self, session: RecordingSession, at: datetime) -> None:
        """The recording's parties changed at `at` (session.metadata has the new ones)."""
        ...
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
class _CallLock:
    """Serialises the requests of one Call-ID; dropped when nobody holds or waits."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class Counters:
    received: int = 0
    malformed: int = 0
    retransmissions: int = 0
    # Malformed requests that could not be answered (no request line or Via to address).
    unanswerable: int = 0
    # New INVITEs answered 503 because they waited too long in the queue (overload).
    shed: int = 0
    # New calls answered 503 because capture's live encoding was too far behind.
    over_capacity: int = 0
    # Legs answered from the reserve whose allocate failed for good (ended with a BYE).
    lost_after_answer: int = 0
    # New legs answered: with reserved ports at once, or after an allocate (the reserve
    # had too few: many of these in a burst mean it does not keep pace).
    answered_from_reserve: int = 0
    answered_after_allocate: int = 0
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
        missed: MissedCalls | None = None,
        t1: float = T1,
        t2: float = T2,
        trying_after: float = TRYING_AFTER,
        sweep_interval: float = SWEEP_INTERVAL,
        max_hold_s: float = MAX_HOLD_S,
        answered: Callable[[float], None] | None = None,
        shed_after_s: float = 0.0,
        waited: Callable[[float], None] | None = None,
    ) -> None:
        self.backend = backend
        self.sender = sender
        self.address = address
        self.sip_port = sip_port
        self.record_all = record_all
        self.max_channels = max_channels
        self.registry = SessionRegistry(dialog_store)
        self.transactions = ServerTransactions(self, t1=t1, t2=t2,
                                               trying_after=trying_after, answered=answered)
        self.stateless = StatelessAnswers(lifetime=64 * t1)
        self.locks: dict[str, _CallLock] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.counters = Counters()
        # Recordings answered but without RTP on any leg yet are capped per source, so
        # one source that never sends media cannot take all licences.
        self.pending_media_limit = pending_media_limit
        self.media_timeout_s = media_timeout_s
        self.max_hold_s = max_hold_s
        self.sweep_interval = sweep_interval
        self.refusals = refusals
        self.missed = missed
        # New INVITEs that waited longer in the queue get 503 (admission.waited_too_long);
        # `waited` is told every new INVITE's wait (a histogram in production).
        self.shed_after_s = shed_after_s
        self.waited = waited

    # ---- the registry's views (metrics, tests) -------------------------------------------

    @property
    def sessions(self) -> dict[str, RecordingSession]:
        return self.registry.sessions

    @property
    def by_key(self) -> dict[str, RecordingSession]:
        return self.registry.by_key

    @property
    def dialogs(self) -> dict[tuple[str, str], tuple[RecordingSession, Leg]]:
        return self.registry.dialogs

    @property
    def siprec_meta(self) -> dict[str, siprec.RecordingMetadata]:
        return self.registry.siprec_meta

    @property
    def awaiting_media(self) -> dict[str, str]:
        return self.registry.awaiting_media

    @property
    def awaiting_by_source(self) -> dict[str, int]:
        return self.registry.awaiting_by_source

    # ---- entry --------------------------------------------------------------------

    def on_message(self, data: bytes, peer: Peer, received_at: float | None = None) -> None:
        self._take(data, peer, received_at, over_limit=False)

    def on_message_over_limit(self, data: bytes, peer: Peer,
                              received_at: float | None = None) -> None:
        """A message from an allow-listed PBX over its --sip-rate (the gate's verdict).

        New work (an INVITE outside a dialog, OPTIONS) gets 503 + Retry-After so the PBX
        records the call on its backup; requests in dialogs still go through, as
        dropping them would leave calls and licences hanging. A retransmission of an
        INVITE admitted before gets that INVITE's own answer from its transaction,
        never a contradicting 503; the 503 itself is sent without a transaction and
        remembered (StatelessAnswers), so its retransmissions get the same 503 even
        once the PBX is back under its rate."""
        self._take(data, peer, received_at, over_limit=True)

    def _take(self, data: bytes, peer: Peer, received_at: float | None, *,
              over_limit: bool) -> None:
        self.counters.received += 1
        try:
            message = parse_message(data)
        except SipParseError as exc:
            self.counters.malformed += 1
            log.info("sip_malformed", peer=f"{peer.host}:{peer.port}", error=str(exc)[:200])
            status = self._answer_unparseable(data, peer, str(exc))
            if self.missed is not None:
                self.missed.raw(data, peer, "malformed", status, str(exc))
            return
        if isinstance(message, SipResponse):
            return  # responses to our own BYEs, or strays: nothing to do
        message.received_at = received_at
        if message.method != "ACK":
            key = transaction_key(message)
            refused = self.stateless.get(key)
            if refused is not None:  # a retransmission of a request refused statelessly
                self.counters.retransmissions += 1
                self.send(peer, refused, message)
                return
            new_invite = message.method == "INVITE" and message.to.tag is None
            if over_limit and (new_invite or message.method == "OPTIONS") \
                    and key not in self.transactions:
                self._refuse_over_limit(message, peer, key)
                return
            # The transaction layer takes a request as it is read (RFC 3261 17.2.3): a
            # retransmission is absorbed here, its answer (if any) sent again, without
            # a task or the call's lock; in a backlog every INVITE may come twice.
            if self.transactions.receive(message, peer, key) is None:
                self.counters.retransmissions += 1
                return
            if new_invite and self._shed_if_late(message, peer):
                return
        task = asyncio.create_task(self._dispatch(message, peer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def active_recording_ids(self) -> list[str]:
        return list(self.registry.sessions)

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
        if request.method == "ACK":
            self.transactions.ack_answered(request)
        try:
            async with self._call_lock(call_id):
                await self._handle(request, peer)
        except Exception:
            log.exception("sip_handler_failed", method=request.method, call_id=call_id)
            tx = self.transactions.get(request)
            if request.method != "ACK" and (tx is None or tx.status < 200):
                self._respond(request, peer, 500)
                self._missed(request, peer, "internal_error", 500, "handler failed")

    @contextlib.asynccontextmanager
    async def _call_lock(self, call_id: str) -> AsyncIterator[None]:
        """Hold the Call-ID's lock (requests of one Call-ID one at a time)."""
        entry = self.locks.get(call_id)
        if entry is None:
            entry = self.locks[call_id] = _CallLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                self.locks.pop(call_id, None)

    async def _handle(self, request: SipRequest, peer: Peer) -> None:
        method = request.method
        if method == "ACK":
            self._on_ack(request)
            return
        structlog.contextvars.bind_contextvars(call_id=request.call_id)
        try:
            unsupported = unsupported_required(request)
            if unsupported and method not in ("CANCEL", "BYE"):
                # RFC 3261 8.2.2.3 (not for CANCEL; a BYE is honoured whatever it needs).
                self._respond(request, peer, 420,
                              headers=[("Unsupported", ", ".join(unsupported))])
                self._missed(request, peer, "bad_request", 420,
                             f"unsupported extension {', '.join(unsupported)}")
                return
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

    # ---- the transaction layer's callbacks ---------------------------------------------

    def send(self, peer: Peer, data: bytes, request: SipRequest) -> None:
        via = request.vias[0]
        self.sender.reply(peer, data, via.port, via.rport_requested)

    async def on_no_ack(self, transaction: ServerTransaction) -> None:
        """Timer H: a 2xx to a new INVITE never acknowledged ends the leg it created."""
        request = transaction.request
        if transaction.status >= 300 or request.to.tag is not None:
            return
        found = self.registry.dialog(request.call_id, transaction.to_tag)
        if found is None:
            return
        session, leg = found
        if leg.confirmed:
            return
        log.warning("leg_abandoned", recording_id=session.recording_id, reason="no ACK")
        self._send_bye(leg)
        await self._end_leg(session, leg, "no ACK")

    # ---- INVITE ---------------------------------------------------------------------

    async def _on_invite(self, request: SipRequest, peer: Peer) -> None:
        try:
            await self._invite(request, peer)
        finally:
            self.registry.media_arrived(f"invite:{request.call_id}")  # the reservation

    async def _invite(self, request: SipRequest, peer: Peer) -> None:
        if request.to.tag is not None:
            await self._on_reinvite(request, peer)
            return
        self.transactions.trying_unless_answered(
            request, lambda: self._respond(request, peer, 100))
        try:
            plan = plan_invite(request)
        except BadRequest as exc:
            log.info("invite_rejected", status=exc.status, reason=exc.reason)
            self._respond(request, peer, exc.status, warning=exc.reason)
            self._missed(request, peer,
                         "unsupported_media" if exc.status == 488 else "bad_request",
                         exc.status, exc.reason)
            return
        existing = self.registry.joinable(plan.session_key)
        joins = existing is not None
        if existing is not None and self._refuse_other_source(request, peer, existing, plan):
            return
        ok, why = self.backend.can_record()
        result = admit(
            numbers=plan.numbers,
            users=self.backend.users,
            record_all=self.record_all,
            can_record=ok,
            cannot_record_reason=why,
            active_recordings=self.registry.active_count(),
            max_channels=self.max_channels,
            joins_existing=joins,
            over_capacity=self.backend.over_capacity(),
        )
        if result.admission is not Admission.ACCEPT:
            log.info("invite_refused", status=result.admission.value, reason=result.reason,
                     numbers=plan.numbers)
            extra = [RETRY_AFTER] if result.admission is Admission.CANNOT_RECORD else []
            self._respond(request, peer, result.admission.value, warning=result.reason,
                          headers=extra)
            if result.missed == "over_capacity":
                self.counters.over_capacity += 1
            self._missed(request, peer, result.missed, result.admission.value, result.reason,
                         plan)
            return
        if not joins and self._refuse_pending_media(request, peer, plan):
            return

        if existing is not None:
            session = existing
            if plan.kind == "cucm":
                near, far = _cucm_parties(plan.metadata)
                merged = merge_cucm_participants(session.metadata, near, far, request.call_id)
                if merged.cisco_guid is None and plan.metadata.cisco_guid is not None:
                    merged = merged.model_copy(update={"cisco_guid": plan.metadata.cisco_guid})
                session.metadata = merged
            new_session = False
        else:
            session = RecordingSession(
                recording_id=uuid.uuid4().hex,
                session_key=plan.session_key,
                started_at=datetime.now(UTC),
                metadata=plan.metadata.model_copy(update={"recorded_user": result.user}),
                first_source=peer.host,
            )
            self.registry.add_session(session, plan.siprec_metadata)
            new_session = True
        reserved = self._reserved_for(session, plan)
        if reserved is not None:
            await self._answer_from_reserve(request, peer, session, plan, new_session,
                                            *reserved)
            return
        structlog.contextvars.bind_contextvars(recording_id=session.recording_id)
        tx = self.transactions.get(request)
        try:
            # Built unvalidated: every part is a validated model or our own value.
            ports = await self.backend.allocate(
                AllocateRequest.model_construct(
                    recording_id=session.recording_id,
                    started_at=session.started_at,
                    streams=with_sources(plan.streams, plan.offer),
                    metadata=session.metadata,
                )
            )
        except Exception as exc:
            log.error("allocate_failed", error=str(exc))
            if new_session and not session.legs:
                self.registry.forget(session)
            if tx is None or not tx.cancelled:
                self._respond(request, peer, 503, warning="capture unavailable",
                              headers=[RETRY_AFTER])
                self._missed(request, peer, "cannot_record", 503, "capture unavailable",
                             plan)
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
                self.registry.forget(session)
            return

        leg = self._add_leg(request, peer, session, plan, ports, new_session)
        body = self._session_body(session, leg, plan.offer)
        await self._push_codecs(session, leg, plan.offer)
        self._answer(request, peer, session, leg, plan, body)
        if new_session:
            await self.backend.recording_started(session)

    def _reserved_for(
        self, session: RecordingSession, plan: Plan
    ) -> tuple[str, dict[str, int]] | None:
        """Ports from capture's reserve for the plan's streams, when they are all new to
        the recording (capture keeps the port of a stream it has): (capture, ports)."""
        known = {s.stream_id for leg in session.legs.values() for s in leg.streams}
        if any(spec.stream_id in known for spec in plan.streams):
            return None
        reserved = self.backend.reserved_ports(len(plan.streams))
        if reserved is None:
            return None
        capture_id, ports = reserved
        return capture_id, {spec.stream_id: port for spec, port in zip(plan.streams, ports,
                                                                         strict=True)}

    async def _answer_from_reserve(
        self, request: SipRequest, peer: Peer, session: RecordingSession, plan: Plan,
        new_session: bool, capture_id: str, ports: dict[str, int],
    ) -> None:
        """Answer at once with reserved ports, then tell capture whose they are.

        The allocate still runs under the call's lock, so the leg's ACK, re-INVITE or
        BYE reaches capture after it; what reaches the ports meanwhile waits in their
        sockets with its arrival time."""
        leg = self._add_leg(request, peer, session, plan, ports, new_session)
        leg.answered_at = time.time()  # before the 200: no PBX knew the ports earlier
        leg.reserved_from = capture_id
        body = self._session_body(session, leg, plan.offer)
        self._answer(request, peer, session, leg, plan, body)
        specs = [spec.model_copy(update={"port": ports[spec.stream_id]})
                 for spec in with_sources(plan.streams, plan.offer)]
        if not await self._allocate_answered(session, leg, specs):
            self._missed(request, peer, "cannot_record", 200,
                         "answered, but capture never took the ports: ended with a BYE", plan)
            return
        await self._push_codecs(session, leg, plan.offer)
        if new_session:
            await self.backend.recording_started(session)

    async def _allocate_answered(
        self, session: RecordingSession, leg: Leg, specs: list[StreamSpec]
    ) -> bool:
        """Tell capture the ports `leg` was answered with, retrying through a capture
        restart (about as long as finalize retries); if it never takes them the leg
        cannot be recorded: BYE, so the PBX does not think it is. True on success."""
        request = AllocateRequest.model_construct(
            recording_id=session.recording_id, started_at=session.started_at,
            streams=specs, metadata=session.metadata, capture_id=leg.reserved_from,
            answered_at=leg.answered_at,
        )
        delay = ALLOCATE_RETRY_DELAY
        for attempt in range(1, ALLOCATE_ATTEMPTS + 1):
            try:
                await self.backend.allocate(request)
            except Exception as exc:
                if attempt == ALLOCATE_ATTEMPTS or leg.ended:
                    log.error("allocate_after_answer_failed", recording_id=session.recording_id,
                              call_id=leg.call_id, error=str(exc), attempts=attempt)
                    break
                log.warning("allocate_after_answer_retry", recording_id=session.recording_id,
                            call_id=leg.call_id, error=str(exc), attempt=attempt)
                await asyncio.sleep(delay)
                delay *= 2
                continue
            leg.answered_at = None
            leg.reserved_from = None
            leg.media_since = time.monotonic()  # capture reports on its streams from now
            return True
        self.counters.lost_after_answer += 1
        if not leg.ended:
            self._send_bye(leg)
            await self._end_leg(session, leg, "capture unavailable")
        return False

    async def resume_allocations(self) -> None:
        """After a restart: send again the allocates of legs answered from the reserve
        that capture had not confirmed (capture takes each port from its reserve, or
        binds it again). The PBX's SDP of an early offer is not kept, so such a leg
        latches the first source after the answer."""
        for session in list(self.registry.sessions.values()):
            for leg in list(session.legs.values()):
                if leg.answered_at is None or leg.ended:
                    continue
                specs = [StreamSpec(stream_id=s.stream_id, channel=s.channel, label=s.label,
                                    port=s.port) for s in leg.streams]
                log.info("allocate_resumed", recording_id=session.recording_id,
                         call_id=leg.call_id)
                async with self._call_lock(leg.call_id):
                    await self._allocate_answered(session, leg, specs)

    def _add_leg(self, request: SipRequest, peer: Peer, session: RecordingSession, plan: Plan,
                 ports: dict[str, int], new_session: bool) -> Leg:
        local_tag = secrets.token_hex(8)
        streams = [
            Stream(s.stream_id, s.channel, s.label, ports[s.stream_id]) for s in plan.streams
        ]
        leg = Leg(request.call_id, local_tag, request.from_.tag or "", streams)
        leg.remote_target = contact_uri(request)
        leg.remote_identity = request.headers.get("From") or ""
        leg.local_identity = f"{request.headers.get('To')};tag={local_tag}"
        leg.peer = peer
        leg.media_since = time.monotonic()
        self._refresh(leg, request)
        self.registry.add_leg(session, leg)
        if new_session:
            self.registry.await_media(session.recording_id, peer.host)
        return leg

    def _answer(self, request: SipRequest, peer: Peer, session: RecordingSession, leg: Leg,
                plan: Plan, body: str) -> None:
        self.registry.persist(session)  # before the 200: a dialog the PBX has, we know too
        if leg.answered_at is not None:
            self.counters.answered_from_reserve += 1
        else:
            self.counters.answered_after_allocate += 1
        self._respond(request, peer, 200, to_tag=leg.local_tag, body=body.encode(),
                      content_type="application/sdp",
                      headers=self._dialog_headers(request, peer, plan.kind == "siprec"))
        log.info("leg_answered", recording_id=session.recording_id, kind=plan.kind,
                 ports=[s.port for s in leg.streams],
                 streams=[s.stream_id for s in leg.streams],
                 delayed_offer=plan.offer is None, reserved=leg.answered_at is not None)

    def _refuse_over_limit(self, request: SipRequest, peer: Peer, key: TransactionKey) -> None:
        """503 to new work from a PBX over its rate, without a transaction (see
        StatelessAnswers); counted and logged (once a minute per source) by the gate,
        kept as a missed call when it is an INVITE."""
        if self.refusals is not None:
            self.refusals.refused(peer.host, "rate_limited")
        warning = "over the SIP rate for this source"
        response = self._response(request, 503, to_tag=secrets.token_hex(8),
                                  headers=[RETRY_AFTER], warning=warning)
        self.stateless.remember(key, response)
        self.send(peer, response, request)
        self._missed(request, peer, "rate_limited", 503, warning)

    def _shed_if_late(self, request: SipRequest, peer: Peer) -> bool:
        """Answer 503 to a new INVITE that waited too long in the node's queue: the PBX
        records the call on its backup now, and the queue drains. Done as the INVITE is
        read, without a task or the call's lock, so that shedding costs little more
        than the parse. Not logged one by one (an overload would log thousands):
        counted by the gate, kept as missed calls. True when it was answered so."""
        wait = queue_wait(request.received_at, time.time())
        if wait is None:
            return False
        if self.waited is not None:
            self.waited(wait)
        if not waited_too_long(wait, self.shed_after_s):
            return False
        self.counters.shed += 1
        if self.refusals is not None:
            self.refusals.refused(peer.host, "overloaded")
        self._respond(request, peer, 503, warning="overloaded, try the backup",
                      headers=[RETRY_AFTER])
        self._missed(request, peer, "overloaded", 503,
                     f"waited {wait:.2f} s in the node's queue")
        return True

    def _session_body(self, session: RecordingSession, leg: Leg,
                      offer: sdp.SessionDescription | None) -> str:
        session_id = int.from_bytes(leg.local_tag.encode()[:6], "big")
        if offer is None:
            leg.offer_pending = True
            streams = leg.streams if session.metadata.source == "siprec" else leg.streams[:1]
            return offer_sdp(streams, self.address, session_id, leg.sdp_version)
        return answer_sdp(offer, leg.streams, self.address, session_id, leg.sdp_version)

    async def _push_codecs(
        self, session: RecordingSession, leg: Leg, sdp_doc: sdp.SessionDescription | None
    ) -> None:
        """Tell capture which payload types mean which codec, and where the PBX sends
        each stream from, from the PBX's SDP (offer, or answer in the ACK)."""
        if sdp_doc is None:
            return
        self._note_hold(leg, sdp_doc)
        for stream in leg.streams:
            media = media_for(stream.stream_id, sdp_doc)
            if media is None:
                continue
            codecs = sdp.payload_codecs(media)
            stream.payload_codecs.update(codecs)
            try:
                await self.backend.update(
                    UpdateRequest(recording_id=session.recording_id, stream_id=stream.stream_id,
                                  payload_codecs=codecs or None,
                                  source=rtp_source(sdp_doc, media))
                )
            except Exception as exc:
                log.error("codec_update_failed", recording_id=session.recording_id,
                          error=str(exc))

    # ---- in-dialog -------------------------------------------------------------------

    def _on_ack(self, request: SipRequest) -> None:
        """An ACK ends its INVITE transaction's retransmissions and confirms the dialog:
        matched by Call-ID and CSeq (RFC 3261 17.2.1), so one without a To-tag (a broken
        peer) still confirms the leg its INVITE created."""
        tx = self.transactions.ack(request)
        to_tag = request.to.tag
        if to_tag is None and tx is not None and tx.status < 300:
            to_tag = tx.to_tag
            log.info("ack_without_to_tag", call_id=request.call_id)
        found = self.registry.dialog(request.call_id, to_tag)
        if found is None:
            return
        session, leg = found
        leg.confirmed = True
        answer_pending = leg.offer_pending and bool(request.body)
        leg.offer_pending = leg.offer_pending and not answer_pending
        self.registry.persist(session)
        if answer_pending:
            try:
                answer = sdp.parse_sdp(request.body.decode("utf-8", "replace"))
            except sdp.SdpError as exc:
                log.warning("ack_sdp_invalid", error=str(exc))
                return
            task = asyncio.create_task(self._push_codecs(session, leg, answer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _dialog_request(
        self, request: SipRequest, peer: Peer
    ) -> tuple[RecordingSession, Leg, sdp.SessionDescription | None] | None:
        """Common start of re-INVITE and UPDATE: the dialog, metadata applied, the offer.
        None when a response (481, 4xx for the body) has been sent already."""
        found = self.registry.dialog(request.call_id, request.to.tag)
        if found is None:
            self._respond(request, peer, 481)
            return None
        session, leg = found
        try:
            offer, metadata_xml = split_body(request)
        except BadRequest as exc:
            self._respond(request, peer, exc.status, warning=exc.reason)
            return None
        if metadata_xml is not None:
            await self._apply_metadata_update(session, metadata_xml)
        elif session.metadata.source == "cucm":
            changed = cucm_update(session.metadata, request)
            if changed is not None:
                await self._set_metadata(session, changed)
        return session, leg, offer

    async def _on_reinvite(self, request: SipRequest, peer: Peer) -> None:
        found = await self._dialog_request(request, peer)
        if found is None:
            return
        session, leg, offer = found
        if offer is not None and len(offer.media) < len(leg.streams):
            self._respond(request, peer, 488, warning="m-lines cannot be removed")
            return
        leg.sdp_version += 1
        body = self._session_body(session, leg, offer)
        await self._push_codecs(session, leg, offer)
        self._refresh(leg, request)
        self.registry.persist(session)
        self._respond(request, peer, 200, body=body.encode(), content_type="application/sdp",
                      headers=self._dialog_headers(request, peer, session.metadata.source
                                                   == "siprec"))
        log.info("reinvite_answered", recording_id=session.recording_id,
                 delayed_offer=offer is None, on_hold=leg.on_hold)

    async def _on_update(self, request: SipRequest, peer: Peer) -> None:
        found = await self._dialog_request(request, peer)
        if found is None:
            return
        session, leg, offer = found
        srs = session.metadata.source == "siprec"
        self._refresh(leg, request)
        self.registry.persist(session)
        if offer is None:
            self._respond(request, peer, 200,
                          headers=self._dialog_headers(request, peer, srs))
            return
        leg.sdp_version += 1
        body = self._session_body(session, leg, offer)
        leg.offer_pending = False
        self.registry.persist(session)
        await self._push_codecs(session, leg, offer)
        self._respond(request, peer, 200, body=body.encode(), content_type="application/sdp",
                      headers=self._dialog_headers(request, peer, srs))

    async def _apply_metadata_update(self, session: RecordingSession, xml: bytes) -> None:
        try:
            update = siprec.parse_metadata(xml)
        except siprec.MetadataError as exc:
            log.warning("metadata_update_invalid", error=str(exc))
            return
        current = self.registry.siprec_meta.get(session.recording_id)
        merged = siprec.merge_metadata(current, update) if current else update
        self.registry.siprec_meta[session.recording_id] = merged
        labels = [s.label or "" for leg in session.legs.values() for s in leg.streams]
        channels = siprec.assign_channels(merged, labels)
        await self._set_metadata(session, siprec_metadata(merged, channels, None,
                                                          session.metadata))

    async def _set_metadata(self, session: RecordingSession, metadata: RecordingMetadata
                            ) -> None:
        """A mid-call change of what is known about the call: capture's copy follows,
        and a change of parties is a fact of its own, with the time it happened."""
        at = datetime.now(UTC)
        parties_changed = metadata.participants != session.metadata.participants
        session.metadata = metadata
        self.registry.persist(session)
        try:
            await self.backend.update(
                UpdateRequest(recording_id=session.recording_id, metadata=session.metadata)
            )
        except Exception as exc:
            log.error("metadata_update_failed", error=str(exc))
        if parties_changed:
            log.info("participants_changed", recording_id=session.recording_id,
                     numbers=metadata.numbers())
            try:
                await self.backend.participants_changed(session, at)
            except Exception as exc:
                log.error("participants_event_failed", error=str(exc))

    async def _on_bye(self, request: SipRequest, peer: Peer) -> None:
        found = self.registry.dialog(request.call_id, request.to.tag)
        if found is None:
            self._respond(request, peer, 481)
            return
        self._respond(request, peer, 200)
        session, leg = found
        await self._end_leg(session, leg, "bye")

    async def _on_cancel(self, request: SipRequest, peer: Peer) -> None:
        invite_tx = self.transactions.get(request, method="INVITE")
        if invite_tx is None:
            self._respond(request, peer, 481)
            return
        self._respond(request, peer, 200)
        if invite_tx.status < 200:
            # The INVITE is still being processed; the leg has not been created yet.
            # _invite sees the flag once allocation returns and releases the ports.
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
                          headers=[*headers, RETRY_AFTER])

    async def _on_in_dialog_ok(self, request: SipRequest, peer: Peer) -> None:
        if self.registry.dialog(request.call_id, request.to.tag) is not None:
            self._respond(request, peer, 200)
        else:
            self._respond(request, peer, 481)

    async def _end_leg(self, session: RecordingSession, leg: Leg, reason: str) -> None:
        if leg.ended:
            return
        leg.ended = True
        self.registry.drop_dialog(leg)
        if session.live_legs() or session.ending:
            self.registry.persist(session)
            return
        session.ending = True
        self.registry.forget(session)
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
        self, request: SipRequest, peer: Peer, joining: RecordingSession, plan: Plan
    ) -> bool:
        """A leg may join a call only from the source of the call's first leg: a guessed
        x-refci must not add someone's audio to another call. True when refused (403)."""
        first = joining.source()
        if first is None or same_source(first, peer.host):
            return False
        warning = "this call's recording comes from another source"
        self._respond(request, peer, 403, warning=warning)
        self._refused(peer.host, "leg_source")
        self._missed(request, peer, "leg_source", 403, warning, plan)
        return True

    def _refuse_pending_media(self, request: SipRequest, peer: Peer, plan: Plan) -> bool:
        """503 a new recording from a source with too many still without RTP, else
        reserve its place (concurrent INVITEs must not all pass at once)."""
        limit = self.pending_media_limit
        if limit is not None and self.registry.awaiting_count(peer.host) >= limit:
            warning = "too many recordings from this source wait for media"
            self._respond(request, peer, 503, headers=[RETRY_AFTER], warning=warning)
            self._refused(peer.host, "pending_media")
            self._missed(request, peer, "pending_media", 503, warning, plan)
            return True
        self.registry.await_media(f"invite:{request.call_id}", peer.host)
        return False

    def _refused(self, host: str, reason: RefusalReason) -> None:
        log.info("invite_refused", reason=reason, source=host)
        if self.refusals is not None:
            self.refusals.refused(host, reason)

    def _missed(self, request: SipRequest, peer: Peer, reason: MissedReason,
                status: int, detail: str, plan: Plan | None = None) -> None:
        """Keep a refused new INVITE for the missed-calls page (re-INVITEs are not calls)."""
        if self.missed is None or request.method != "INVITE" or request.to.tag is not None:
            return
        kind: Kind | None = plan.kind if plan is not None else None
        self.missed.request(request, peer, reason, status, detail,
                            numbers=plan.numbers if plan is not None else (), kind=kind)

    def _note_hold(self, leg: Leg, description: sdp.SessionDescription) -> None:
        held = on_hold(description)
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
        for session, leg in list(self.registry.dialogs.values()):
            if leg.media_since >= asked_at:
                continue  # answered (or resumed) after capture was asked: no news yet
            reports = [by_stream.get((session.recording_id, s.stream_id)) for s in leg.streams]
            if not leg.media_seen and any(r is None or r.packets > 0 for r in reports):
                leg.media_seen = True
                self.registry.media_arrived(session.recording_id)
            timeout = self.media_timeout_s
            if timeout <= 0 or not leg.streams:
                continue
            if leg.on_hold:
                # Exempt while on hold, up to max_hold_s (a vanished PBX's hold).
                if now - leg.media_since < self.max_hold_s:
                    continue
                reason = "hold too long"
            elif (now - leg.media_since < timeout
                    or any(r is None or r.silent_s < timeout for r in reports)):
                continue
            else:
                reason = "media timeout"
            log.warning("media_timeout", recording_id=session.recording_id,
                        call_id=leg.call_id, timeout_s=timeout, media_seen=leg.media_seen,
                        reason=reason)
            self._send_bye(leg)
            await self._end_leg(session, leg, reason)
            ended.append(leg)
        return ended

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
        if expires and supports(request, "timer"):
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
        if status >= 300 and to_tag is None and request.to.tag is None:
            to_tag = secrets.token_hex(8)
        response = self._response(request, status, to_tag=to_tag, headers=headers, body=body,
                                  content_type=content_type, warning=warning)
        self.transactions.respond(request, peer, response, status, to_tag)

    def _response(self, request: SipRequest, status: int, *, to_tag: str | None,
                  headers: Iterable[tuple[str, str]] = (), body: bytes = b"",
                  content_type: str | None = None, warning: str | None = None) -> bytes:
        """A response as sent (Server, Warning when given), counted by status."""
        extra = [("Server", SERVER), *headers]
        if warning:
            extra.append(("Warning", _warning(warning)))
        # A 400 says what was wrong in its reason phrase too (RFC 3261 21.4.1).
        reason = (f"Bad Request ({_safe(warning)[:120]})" if status == 400 and warning
                  else None)
        response = build_response(request, status, reason, to_tag=to_tag,
                                  extra_headers=extra, body=body, content_type=content_type)
        self.counters.responses[status] = self.counters.responses.get(status, 0) + 1
        return serialize(response)

    def _answer_unparseable(self, data: bytes, peer: Peer, problem: str) -> int | None:
        """400 naming the problem wherever a response can be addressed (a request line
        other than ACK and a parseable top Via: RFC 3261 8.2, 16.3); a counted drop
        otherwise. The status sent, if any."""
        status = 505 if problem.startswith("unsupported SIP version") else 400
        answer = error_response(data, status, problem, to_tag=secrets.token_hex(8),
                                extra_headers=[("Server", SERVER)])
        if answer is None:
            self.counters.unanswerable += 1
            return None
        response, via = answer
        self.counters.responses[status] = self.counters.responses.get(status, 0) + 1
        self.sender.reply(peer, response, via.port, via.rport_requested)
        return status

    # ---- timers ------------------------------------------------------------------------

    async def expire_transactions(self) -> None:
        """Forget old transactions; end legs whose session timer ran out."""
        while True:
            await asyncio.sleep(self.sweep_interval)
            now = time.monotonic()
            self.transactions.expire(now)
            for session, leg in list(self.registry.dialogs.values()):
                if leg.expired(now):
                    log.warning("session_expired", recording_id=session.recording_id,
                                call_id=leg.call_id)
                    self._send_bye(leg)
                    await self._end_leg(session, leg, "session expired")

    def _refresh(self, leg: Leg, request: SipRequest) -> None:
        leg.refreshed_at = time.monotonic()
        value = (request.headers.get("Session-Expires") or "").split(";", 1)[0].strip()
        if value.isdigit() and supports(request, "timer"):
            leg.session_expires = max(int(value), MIN_SESSION_EXPIRES)

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
        self.transactions.shutdown()


def _safe(text: str) -> str:
    return "".join(" " if ord(c) < 32 or ord(c) == 127 else c
                   for c in text.replace('"', "'"))[:200]


def _warning(text: str) -> str:
    return f'399 callrec "{_safe(text)}"'


def _cucm_parties(metadata: RecordingMetadata) -> tuple[Participant, Participant]:
    by_role = {p.role: p for p in metadata.participants}
    return by_role["near"], by_role["far"]
