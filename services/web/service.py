"""Web adapters: users from events, catalog over NATS RPC, metrics scatter, uvicorn.

uvicorn runs inside the service's event loop (one process per service) and leaves
signal handling to `callrec.service.run`, which sets `ctx.stopping`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Generator
from collections.abc import Set as AbstractSet
from typing import Any

import structlog
import uvicorn
from nats.aio.msg import Msg

from callrec import bus
from callrec.service import SERVICES, ServiceContext
from callrec.store import open_store
from callrec.users import UserEvent, UsersProjection
from contracts import subjects
from contracts.v1.events import (
    EventBase,
    LegalHoldChanged,
    RecordingCompleted,
    RecordingNoteAdded,
    RecordingPurged,
    RecordingTagChanged,
    UserRemoved,
    UserTokenIssued,
    UserTokenRevoked,
    UserUpserted,
)
from contracts.v1.holds import HoldLedger
from contracts.v1.rpc import (
    Annotations,
    Empty,
    GetRequest,
    JobsStatus,
    RolesStatus,
    SearchRequest,
    SearchResult,
    SyncStatus,
    Waveform,
)

from .app import BackendUnavailable, create_app
from .audit_http import audit_path, build_audit
from .audit_log import JetStreamChain
from .audit_store import AuditProjection
from .missed import MissedPage, MissedQuery
from .missed_stream import read_missed
from .recording_page import shows

# A lazy proxy: binding now would freeze the pre-`setup_logging` (non-JSON) config.
log = structlog.get_logger(component="web")

# How long a scrape waits for the services that have not answered (each answers in
# milliseconds unless its loop is busy: capture at its capacity took over 0.3 s).
SCATTER_WINDOW_S = 1.5
USER_APPLY_WAIT_S = 2.0
PURGE_APPLY_WAIT_S = 2.0
HOLD_APPLY_WAIT_S = 2.0
ANNOTATION_APPLY_WAIT_S = 2.0
STATUS_TIMEOUT_S = 1.0


class NatsBackend:
    """The `Backend` port of the app, over the node's NATS connection."""

    def __init__(self, ctx: ServiceContext, users: UsersProjection) -> None:
        self.ctx = ctx
        self.node_id = ctx.node_id
        self.users = users
        self.follower: asyncio.Task[None] | None = None
        # Hold and purge facts under the cluster's one rule (order-independent).
        self.holds = HoldLedger()
        self.held_sequence = 0  # stream sequence of the last hold fact applied to `held`
        self._search = subjects.rpc(ctx.node_id, subjects.CATALOG, subjects.CATALOG_SEARCH)
        self._get = subjects.rpc(ctx.node_id, subjects.CATALOG, subjects.CATALOG_GET)
        self._sync_status = subjects.rpc(ctx.node_id, subjects.SYNC, subjects.SYNC_STATUS)
        self._roles = subjects.rpc(ctx.node_id, subjects.SCHEDULER, subjects.SCHEDULER_ROLES)
        self._jobs = subjects.rpc(ctx.node_id, subjects.SCHEDULER, subjects.SCHEDULER_JOBS)
        self._waveform = subjects.rpc(ctx.node_id, subjects.CATALOG, subjects.CATALOG_WAVEFORM)
        self._annotations = subjects.rpc(ctx.node_id, subjects.CATALOG,
                                         subjects.CATALOG_ANNOTATIONS)

    async def search(
        self, request: SearchRequest, visible_numbers: list[str] | None, timeout: float = 5.0
    ) -> SearchResult:
        payload = SearchRequest.model_validate(
            {**request.model_dump(), "visible_numbers": visible_numbers}
        )
        try:
            result = await bus.call(self.ctx.nc, self._search, payload, SearchResult, timeout)
        except bus.RpcError as exc:
            raise BackendUnavailable(str(exc)) from exc
        if result is None:
            raise BackendUnavailable("catalog returned no result")
        return result

    async def get(self, recording_id: str, timeout: float = 2.0) -> RecordingCompleted | None:
        """None for unknown ids: the catalog answers `data: null` (or an error saying so)."""
        try:
            return await bus.call(
                self.ctx.nc,
                self._get,
                GetRequest(recording_id=recording_id),
                RecordingCompleted,
                timeout,
            )
        except bus.RpcError as exc:
            if "not found" in str(exc):
                return None
            raise BackendUnavailable(str(exc)) from exc

    async def publish_user_event(self, event: UserEvent) -> None:
        """Publish, then wait for our own projection so the next request sees the change.

        Waits for the event itself: `bus.publish_event` answers the sequence in this
        node's own stream, which in a cluster is not the projection's (the CLUSTER
        stream's) numbering."""
        try:
            seq = await bus.publish_event(self.ctx.js, event)
        except Exception as exc:
            raise BackendUnavailable(f"could not store the change: {exc}") from exc
        deadline = time.monotonic() + USER_APPLY_WAIT_S
        while event.event_id not in self.users.applied and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if event.event_id not in self.users.applied:
            log.warning("user_event_not_applied_yet", seq=seq, username=event.username)

    async def purge_recording(self, event: RecordingPurged) -> bool:
        """Publish, then wait (bounded) until the local catalog has dropped the recording,
        so a GET right after the DELETE answers 404."""
        try:
            await bus.publish_event(self.ctx.js, event)
        except Exception as exc:
            raise BackendUnavailable(f"could not store the purge: {exc}") from exc
        deadline = time.monotonic() + PURGE_APPLY_WAIT_S
        while True:
            try:
                if await self.get(event.recording_id, timeout=0.5) is None:
                    return True
            except BackendUnavailable:
                pass  # the catalog may be restarting; the purge is stored anyway
            if time.monotonic() >= deadline:
                log.warning("purge_not_applied_yet", recording_id=event.recording_id)
                return False
            await asyncio.sleep(0.05)

    async def waveform(self, recording_id: str, timeout: float = 2.0) -> Waveform | None:
        try:
            return await bus.call(self.ctx.nc, self._waveform,
                                  GetRequest(recording_id=recording_id), Waveform, timeout)
        except bus.RpcError as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def annotations(self, recording_id: str, timeout: float = 2.0) -> Annotations:
        try:
            found = await bus.call(self.ctx.nc, self._annotations,
                                   GetRequest(recording_id=recording_id), Annotations, timeout)
        except bus.RpcError as exc:
            raise BackendUnavailable(str(exc)) from exc
        return found if found is not None else Annotations(recording_id=recording_id)

    async def annotate(self, event: RecordingNoteAdded | RecordingTagChanged) -> bool:
        """Publish, then wait (bounded) until the local catalog shows the change, so a
        GET right after the POST or PUT sees it; stored either way."""
        try:
            await bus.publish_event(self.ctx.js, event)
        except Exception as exc:
            raise BackendUnavailable(f"could not store the change: {exc}") from exc
        deadline = time.monotonic() + ANNOTATION_APPLY_WAIT_S
        while True:
            try:
                if shows(await self.annotations(event.recording_id, timeout=0.5), event):
                    return True
            except BackendUnavailable:
                pass  # the catalog may be restarting; the change is stored anyway
            if time.monotonic() >= deadline:
                log.warning("annotation_not_applied_yet", recording_id=event.recording_id,
                            event_id=event.event_id)
                return False
            await asyncio.sleep(0.05)

    async def sync_status(self) -> SyncStatus | None:
        try:
            return await bus.call(self.ctx.nc, self._sync_status, Empty(), SyncStatus,
                                  STATUS_TIMEOUT_S)
        except bus.RpcError as exc:
            log.warning("sync_status_unavailable", error=str(exc))
            return None

    async def roles_status(self) -> RolesStatus | None:
        try:
            return await bus.call(self.ctx.nc, self._roles, Empty(), RolesStatus,
                                  STATUS_TIMEOUT_S)
        except bus.RpcError as exc:
            log.warning("roles_status_unavailable", error=str(exc))
            return None

    async def jobs_status(self) -> JobsStatus | None:
        try:
            return await bus.call(self.ctx.nc, self._jobs, Empty(), JobsStatus,
                                  STATUS_TIMEOUT_S)
        except bus.RpcError as exc:
            log.warning("jobs_status_unavailable", error=str(exc))
            return None

    async def publish_event(self, event: EventBase) -> None:
        """Store a fact; a hold change is waited for (bounded) in `held`, so a DELETE
        right after `PUT .../hold` is refused on this node."""
        try:
            seq = await bus.publish_event(self.ctx.js, event)
        except Exception as exc:
            raise BackendUnavailable(f"could not store the change: {exc}") from exc
        if isinstance(event, LegalHoldChanged):
            deadline = time.monotonic() + HOLD_APPLY_WAIT_S
            while self.held_sequence < seq and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self.held_sequence < seq:
                log.warning("hold_not_applied_yet", seq=seq, recording_id=event.recording_id)

    @property
    def held(self) -> AbstractSet[str]:
        """Recordings under legal hold now, by the rule every node applies."""
        return self.holds.held_ids

    async def metrics_texts(self) -> list[str]:
        """Scatter/gather: every service of the node answers, or the window ends."""
        try:
            replies = await bus.scatter_gather(
                self.ctx.nc, subjects.metrics_scatter(self.node_id), len(SERVICES),
                SCATTER_WINDOW_S)
        except Exception as exc:
            log.warning("metrics_scatter_failed", error=str(exc))
            return []
        return [reply.decode("utf-8", "replace") for reply in replies]

    async def missed_calls(self, query: MissedQuery) -> MissedPage:
        """This node's refused INVITEs (services/web/missed.py)."""
        return await read_missed(self.ctx.js, self.ctx.node_id, query)

    async def health(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        checks["nats"] = "ok" if self.ctx.nc.is_connected else "disconnected"
        try:
            # A point lookup: cheap however large the catalog (a search would count rows).
            await self.get("healthz-probe", timeout=1.0)
            checks["catalog"] = "ok"
        except BackendUnavailable as exc:
            checks["catalog"] = f"unavailable: {exc}"[:200]
        follower = self.follower
        checks["users"] = "ok" if follower is not None and not follower.done() else "stopped"
        return checks


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service life cycle owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def follow_audit(ctx: ServiceContext, projection: AuditProjection) -> None:
    """Every node's audit entries into this node's copy, filed by the subject they came on."""
    applied = ctx.metrics.counter("web_audit_entries_applied_total",
                                  "audit entries of every node copied into the projection")
    foreign = ctx.metrics.counter(
        "web_audit_entries_forged_total",
        "audit entries claiming another node than the one whose subject they came on")
    try:
        info = await ctx.js.stream_info(subjects.CLUSTER_STREAM)
        if projection.last_sequence > int(info.state.last_seq or 0):
            log.warning("audit_projection_reset", had=projection.last_sequence,
                        stream=info.state.last_seq)
            await asyncio.to_thread(projection.reset)
    except Exception as exc:
        log.warning("audit_stream_info_failed", error=str(exc)[:200])

    async def apply(messages: list[Msg]) -> None:
        items = [(m.subject, m.metadata.sequence.stream, m.data) for m in messages]
        stats = await asyncio.to_thread(projection.apply, items)
        applied.inc(stats.applied)
        foreign.inc(len(stats.foreign))

    await bus.follow_message_batches(ctx.js, subjects.events_of_type("audit.recorded"),
                                     projection.last_sequence + 1, apply)


async def _last_user_sequence(ctx: ServiceContext) -> int:
    return await bus.last_sequence_of(ctx.js, subjects.events_of_type("user.*"))


async def main(ctx: ServiceContext) -> None:
    users = UsersProjection()
    applied = ctx.metrics.counter("web_user_events_applied_total", "User events applied")
    ctx.metrics.gauge("web_users", "Users known to the web service", lambda: len(users.users))

    async def apply_user(event: Any, seq: int) -> None:
        if isinstance(event, UserUpserted | UserRemoved | UserTokenIssued | UserTokenRevoked):
            users.apply(event, seq)
            applied.inc(type=event.type)

    backend = NatsBackend(ctx, users)

    async def apply_hold(event: Any, seq: int) -> None:
        backend.holds.add(event)
        backend.held_sequence = max(backend.held_sequence, seq)

    projection = AuditProjection(audit_path(ctx.config.data_dir))
    audit = build_audit(backend, projection, JetStreamChain(ctx.js, ctx.node_id), ctx.metrics)

    async def follow() -> None:
        await asyncio.gather(
            follow_audit(ctx, projection),
            audit.auditor.run(ctx.stopping),
            bus.follow_events(ctx.js, ctx.node_id, subjects.events_of_type("user.*"), 1,
                              apply_user),
            bus.follow_events(ctx.js, ctx.node_id,
                              subjects.events_of_type("recording.hold_changed"), 1, apply_hold),
        )

    backend.follower = asyncio.create_task(follow())
    # Serve only once the users are loaded, or the first logins after a start would fail.
    head = await _last_user_sequence(ctx)
    deadline = time.monotonic() + 10.0
    while users.last_sequence < head and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    log.info("users_loaded", users=len(users.users), seq=users.last_sequence)

    app = create_app(backend, open_store(ctx.config.data_dir), ctx.config.data_dir, ctx.metrics,
                     audit, numbers=ctx.config.numbers)
    server = _Server(
        uvicorn.Config(
            app,
            host=ctx.config.bind,
            port=ctx.config.http_port,
            log_config=None,
            access_log=False,
            # The peer address is the client: X-Forwarded-For from a local process would
            # otherwise let it pick the address that login throttling counts against.
            proxy_headers=False,
            server_header=False,
            lifespan="on",
        )
    )
    serving = asyncio.create_task(server.serve())
    stop = asyncio.create_task(ctx.stopping.wait())
    log.info("http_starting", bind=ctx.config.bind, port=ctx.config.http_port)
    try:
        done, _ = await asyncio.wait(
            {serving, stop, backend.follower}, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (serving, backend.follower):
            if task in done:
                task.result()  # re-raise a crash of the server or of the users follower
                raise RuntimeError("http server stopped unexpectedly")
    finally:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(serving, timeout=4.0)
        stop.cancel()
        backend.follower.cancel()
        with contextlib.suppress(BaseException):
            await backend.follower
