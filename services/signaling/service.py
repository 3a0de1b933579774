"""Signaling service adapter: SIP listeners, the NATS-backed Backend, health polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from datetime import datetime

import structlog

from callrec import bus
from callrec.fdlimit import raise_open_files
from callrec.service import ServiceContext
from callrec.supervisor import BOOT_ID_ENV
from callrec.users import UsersProjection
from contracts import subjects
from contracts.v1.events import (
    RecordingEnded,
    RecordingMetadata,
    RecordingParticipantsChanged,
    RecordingStarted,
    UserRemoved,
    UserUpserted,
)
from contracts.v1.missed import MissedCall
from contracts.v1.rpc import (
    MAX_RESERVE,
    ActiveRecordings,
    AllocateReply,
    AllocateRequest,
    CaptureHealth,
    Empty,
    FinalizeRequest,
    QuietStream,
    ReleaseRequest,
    ReserveReply,
    ReserveRequest,
    UpdateRequest,
)

from .admission import AllowList, TcpLimits, pending_media_limit
from .gate import SipGate
from .missed import MissedAggregator, MissedCalls, MissedPublisher
from .recorder import RecordingSession
from .reserve import PortReserve
from .sessions import DialogStore
from .sip.transport import SipTransports
from .uas import RecorderUas

HEALTH_INTERVAL = 1.0
HEALTH_STALE_AFTER = 3.5
RPC_TIMEOUT = 2.0
# Ports kept in reserve, asked for once at least RESERVE_BATCH_MIN are missing, one
# request at a time. A request asks for what is missing when it leaves, and the legs
# meanwhile use up to a round trip's worth, so the reserve keeps pace only if it holds
# two round trips of legs: at 200 calls/s (400 legs/s) the round trip took 0.2-0.58 s
# in a burst, which 128 ports did not cover (a burst's first 3 s fell back to
# allocating first for 499 legs).
RESERVE_TARGET = 512
RESERVE_BATCH_MIN = 32
FD_RESERVE = 256  # descriptors kept for RTP-less work: NATS, files, logs
ANSWER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Bounds of the INVITE answer-time histogram, in seconds: fine around the tens of
milliseconds a PBX expects its 200 OK in, coarse out to its retransmission timers."""

log = structlog.get_logger()


class NatsBackend:
    """The UAS's view of the node: capture over RPC, facts into JetStream."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.users = UsersProjection()
        self.capture_health: CaptureHealth | None = None
        self.health_at = 0.0
        self.health_asked_at = 0.0
        self.users_ready = False
        self.reserve = PortReserve(target=RESERVE_TARGET)
        self.reserve_low = asyncio.Event()

    def _subject(self, operation: str) -> str:
        return subjects.rpc(self.ctx.node_id, subjects.CAPTURE, operation)

    def can_record(self) -> tuple[bool, str | None]:
        if not self.ctx.nc.is_connected:
            return False, "message bus unavailable"
        if not self.users_ready:
            return False, "starting"
        health = self._fresh_health()
        if health is None:
            return False, "capture service not answering"
        if not health.can_record:
            return False, health.reason or "capture cannot record"
        return True, None

    def over_capacity(self) -> str | None:
        health = self._fresh_health()
        return None if health is None else health.over_capacity  # None: can_record says

    def _fresh_health(self) -> CaptureHealth | None:
        """Capture's last health report, unless it is too old to act on."""
        if time.monotonic() - self.health_at > HEALTH_STALE_AFTER:
            return None
        return self.capture_health

    async def poll_health(self) -> None:
        while True:
            asked = time.monotonic()
            try:
                reply = await bus.call(self.ctx.nc, self._subject(subjects.CAPTURE_HEALTH),
                                       Empty(), CaptureHealth, timeout=1.0)
                self.capture_health = reply
                self.health_at = time.monotonic()
                if reply is not None:
                    self.reserve.capture_seen(reply.capture_id)
                self.health_asked_at = asked
            except bus.RpcError as exc:
                log.debug("capture_health_failed", error=str(exc))
            await asyncio.sleep(HEALTH_INTERVAL)

    def quiet_streams(self) -> tuple[float, list[QuietStream]] | None:
        if self.capture_health is None:
            return None
        return self.health_asked_at, self.capture_health.quiet_streams

    def reserved_ports(self, count: int) -> tuple[str, list[int]] | None:
        health = self._fresh_health()
        if health is None or not health.can_record:
            return None
        now = time.monotonic()
        ports = self.reserve.take(count, health.capture_id, now)
        if self.reserve.wanted(now) >= RESERVE_BATCH_MIN:
            self.reserve_low.set()
        return None if ports is None else (health.capture_id, ports)

    async def keep_reserve(self) -> None:
        """Keep capture's reserve of ports at its target: one request at a time, asked
        again as soon as INVITEs take ports (or after a second, leases running out);
        none while capture is not known to be recording."""
        while True:
            now = time.monotonic()
            wanted = self.reserve.wanted(now)
            health = self._fresh_health()
            worth_asking = wanted >= RESERVE_BATCH_MIN or 0 < wanted == self.reserve.target
            if not worth_asking or health is None or not health.can_record:
                await self._reserve_wait()
                continue
            try:
                reply = await bus.call(self.ctx.nc, self._subject(subjects.CAPTURE_RESERVE),
                                       ReserveRequest(count=min(wanted, MAX_RESERVE)),
                                       ReserveReply, timeout=RPC_TIMEOUT)
            except bus.RpcError as exc:
                log.debug("port_reserve_failed", error=str(exc))
                await self._reserve_wait()
                continue
            assert reply is not None
            self.reserve.add(reply.capture_id, reply.ports, reply.lease_seconds,
                             time.monotonic())
            if len(reply.ports) < min(wanted, MAX_RESERVE):
                await self._reserve_wait()  # capture has no more room for now

    async def _reserve_wait(self) -> None:
        self.reserve_low.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.reserve_low.wait(), timeout=HEALTH_INTERVAL)

    async def allocate(self, request: AllocateRequest) -> dict[str, int]:
        reply = await bus.call(self.ctx.nc, self._subject(subjects.CAPTURE_ALLOCATE), request,
                               AllocateReply, timeout=RPC_TIMEOUT)
        assert reply is not None
        if request.capture_id is not None and request.capture_id != self.reserve.capture_id:
            # Answered from a capture process that has since restarted: the new one
            # may have reserved the same ports for us again.
            self.reserve.discard(set(reply.ports.values()))
        return reply.ports

    async def update(self, request: UpdateRequest) -> None:
        await bus.call(self.ctx.nc, self._subject(subjects.CAPTURE_UPDATE), request, None,
                       timeout=RPC_TIMEOUT)

    async def release(self, recording_id: str, stream_id: str) -> None:
        await bus.call(self.ctx.nc, self._subject(subjects.CAPTURE_RELEASE),
                       ReleaseRequest(recording_id=recording_id, stream_id=stream_id), None,
                       timeout=RPC_TIMEOUT)

    async def finalize(
        self, recording_id: str, ended_at: datetime, metadata: RecordingMetadata
    ) -> None:
        request = FinalizeRequest(recording_id=recording_id, ended_at=ended_at,
                                  metadata=metadata)
        delay = 0.2
        for attempt in range(5):
            try:
                await bus.call(self.ctx.nc, self._subject(subjects.CAPTURE_FINALIZE), request,
                               None, timeout=RPC_TIMEOUT)
                return
            except bus.RpcError:
                if attempt == 4:
                    raise
                await asyncio.sleep(delay)
                delay *= 2

    async def recording_started(self, session: RecordingSession) -> None:
        await self._publish(RecordingStarted(
            node_id=self.ctx.node_id, recording_id=session.recording_id,
            started_at=session.started_at, metadata=session.metadata,
        ))

    async def recording_ended(self, session: RecordingSession, reason: str) -> None:
        await self._publish(RecordingEnded(
            node_id=self.ctx.node_id, recording_id=session.recording_id,
            ended_at=datetime.now(session.started_at.tzinfo), reason=reason,
        ))

    async def participants_changed(self, session: RecordingSession, at: datetime) -> None:
        await self._publish(RecordingParticipantsChanged(
            node_id=self.ctx.node_id, recording_id=session.recording_id, at=at,
            participants=session.metadata.participants,
        ))

    async def _publish(
        self, event: RecordingStarted | RecordingEnded | RecordingParticipantsChanged
    ) -> None:
        try:
            await bus.publish_event(self.ctx.js, event)
        except Exception as exc:
            log.error("event_publish_failed", type=event.type, error=str(exc))

    async def store_missed(self, record: MissedCall) -> None:
        """One missed-call record into the node's bounded stream (de-duplicated by id)."""
        await self.ctx.js.publish(
            subjects.missed(self.ctx.node_id), record.model_dump_json().encode(),
            headers={"Nats-Msg-Id": record.record_id}, timeout=2.0)

    async def follow_users(self) -> None:
        """Keep the user list current; calls get 503 until it is loaded, never a wrong 404."""
        filter_subject = subjects.events_of_type("user.*")
        stream = subjects.CLUSTER_STREAM
        while True:
            try:
                info = await self.ctx.js.stream_info(stream, subjects_filter=filter_subject)
                break
            except Exception as exc:
                log.debug("users_count_failed", error=str(exc))
                await asyncio.sleep(0.2)
        expected = sum((info.state.subjects or {}).values())
        applied = 0
        self.users_ready = expected == 0

        async def apply(event: object, seq: int) -> None:
            nonlocal applied
            if isinstance(event, UserUpserted | UserRemoved):
                self.users.apply(event, seq)
            applied += 1
            if applied >= expected:
                self.users_ready = True

        await bus.follow_events(self.ctx.js, self.ctx.node_id, filter_subject, 1, apply)


async def main(ctx: ServiceContext) -> None:
    config = ctx.config
    backend = NatsBackend(ctx)
    gate = SipGate(allow=AllowList.for_node(config.bind, config.sip_allow),
                   pbx_rate=config.sip_rate, pbx_burst=max(config.sip_rate, 10.0),
                   metrics=ctx.metrics)
    publisher = MissedPublisher(backend.store_missed, metrics=ctx.metrics)
    missed = MissedCalls(MissedAggregator(ctx.node_id, window_s=config.missed_window_s),
                         publisher.put, metrics=ctx.metrics)
    transports = SipTransports(gate.on_message, is_allowed=gate.is_allowed,
                               on_refused=gate.refused,
                               tcp_limits=_tcp_limits(config.sip_tcp_per_source,
                                                      config.sip_tcp_max))
    answer_times = ctx.metrics.histogram(
        "signaling_invite_answer_seconds",
        "seconds from an INVITE's transaction to its first final response (any status)",
        ANSWER_BUCKETS)
    queue_waits = ctx.metrics.histogram(
        "signaling_invite_queue_seconds",
        "seconds a new INVITE waited between reaching the host and being read "
        "(over --sip-shed-after: answered 503)",
        ANSWER_BUCKETS)
    uas = RecorderUas(
        backend=backend,
        sender=transports,
        address=config.media_address,
        sip_port=config.sip_port,
        record_all=config.record_all,
        max_channels=config.max_channels,
        dialog_store=DialogStore(config.data_dir / "signaling" / "dialogs",
                                 os.environ.get(BOOT_ID_ENV, "")),
        pending_media_limit=pending_media_limit(config.sip_pending_media, config.max_channels),
        media_timeout_s=config.media_timeout_s,
        refusals=gate,
        missed=missed,
        answered=answer_times.observe,
        shed_after_s=config.sip_shed_after_s,
        waited=queue_waits.observe,
    )
    gate.connect(uas.on_message, uas.on_message_over_limit, transports, missed)
    metrics = ctx.metrics
    metrics.gauge("signaling_active_recordings", "recordings in progress",
                  lambda: float(len(uas.sessions)))
    metrics.gauge("signaling_sip_messages_received", "SIP messages received",
                  lambda: float(uas.counters.received))
    metrics.gauge("signaling_sip_malformed", "SIP messages dropped as malformed",
                  lambda: float(uas.counters.malformed))
    metrics.gauge("signaling_sip_unanswerable", "malformed SIP requests dropped unanswered "
                  "(no request line or Via to answer)",
                  lambda: float(uas.counters.unanswerable))
    metrics.gauge("signaling_sip_retransmissions", "retransmitted requests absorbed",
                  lambda: float(uas.counters.retransmissions))
    metrics.gauge("signaling_invites_shed", "new INVITEs answered 503 after waiting over "
                  "--sip-shed-after in the node's queue (overload)",
                  lambda: float(uas.counters.shed))
    metrics.gauge("signaling_ports_reserved", "ports capture holds for answering new legs "
                  "at once (the allocate follows the 200 OK)",
                  lambda: float(len(backend.reserve)))
    metrics.gauge("signaling_legs_answered_from_reserve", "new legs answered at once with "
                  "reserved ports", lambda: float(uas.counters.answered_from_reserve))
    metrics.gauge("signaling_legs_answered_after_allocate", "new legs answered only after "
                  "capture allocated their ports (the reserve had too few)",
                  lambda: float(uas.counters.answered_after_allocate))
    metrics.gauge("signaling_legs_lost_after_answer", "legs answered from the reserve whose "
                  "allocate capture never took (ended with a BYE)",
                  lambda: float(uas.counters.lost_after_answer))
    metrics.gauge("signaling_calls_over_capacity", "new calls answered 503 because "
                  "capture's live encoding was over --max-live-lag behind",
                  lambda: float(uas.counters.over_capacity))
    metrics.gauge("signaling_sip_udp_send_failures", "SIP replies over UDP the kernel "
                  "would not take (left to the peer's retransmission)",
                  lambda: float(transports.udp.send_failures))
    metrics.gauge("signaling_sip_tcp_connections", "open SIP TCP connections",
                  lambda: float(len(transports.tcp.connections)))
    metrics.gauge("signaling_recordings_awaiting_media",
                  "recordings answered (or being answered) without RTP yet",
                  lambda: float(len(uas.awaiting_media)))
    metrics.gauge("signaling_users_ready", "1 once the user list is loaded",
                  lambda: 1.0 if backend.users_ready else 0.0)
    metrics.gauge("signaling_can_record", "1 when this node accepts recordings",
                  lambda: 1.0 if backend.can_record()[0] else 0.0)
    metrics.gauge("signaling_admits_new_calls",
                  "1 when this node accepts new calls: it can record and is not over "
                  "capacity (capture's live encoding within --max-live-lag)",
                  lambda: 1.0 if backend.can_record()[0] and not backend.over_capacity()
                  else 0.0)

    async def active(_: Empty) -> ActiveRecordings:
        return ActiveRecordings(recording_ids=uas.active_recording_ids())

    await bus.serve(ctx.nc, subjects.rpc(ctx.node_id, subjects.SIGNALING,
                                         subjects.SIGNALING_ACTIVE), Empty, active)
    tasks = [
        asyncio.create_task(backend.follow_users()),
        asyncio.create_task(backend.poll_health()),
        asyncio.create_task(backend.keep_reserve()),
        asyncio.create_task(uas.resume_allocations()),
        asyncio.create_task(uas.expire_transactions()),
        asyncio.create_task(uas.watch_media()),
        asyncio.create_task(missed.run()),
        asyncio.create_task(publisher.run()),
    ]
    await transports.start(config.bind, config.sip_port)
    gate.warn_if_closed(config.bind)
    log.info("sip_listening", bind=config.bind, port=config.sip_port,
             media_address=config.media_address)
    await ctx.stopping.wait()
    transports.close()
    await uas.shutdown()
    missed.flush()
    await publisher.drain(timeout=2.0)
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _tcp_limits(per_source: int, total: int) -> TcpLimits:
    """The configured caps, the total kept below what this process may open: at
    EMFILE asyncio stops accepting for a second, which would lock out every PBX."""
    soft = raise_open_files(total + FD_RESERVE)
    if soft != resource.RLIM_INFINITY and soft - FD_RESERVE < total:
        fitted = max(1, soft - FD_RESERVE)
        log.warning("sip_tcp_cap_lowered", configured=total, cap=fitted, fd_limit=soft)
        total = fitted
    return TcpLimits(per_source=min(per_source, total), total=total)
