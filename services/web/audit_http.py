"""Audit wiring for HTTP: routes declare their action, one middleware records it.

A route says what it does in its `opt` (`opt={"audit": "play"}`, optionally
`"audit_if": {"download": "download"}` to name another action when a query flag is
set); `AuditMiddleware` records every such request once its status is known, with the
principal the login guard found, the source address, the target from the path
parameters and the outcome from the status (2xx/3xx ok, 401/403/429 denied, else
failed). A read whose entry cannot be stored is answered 503 instead of its content.
Anything else (logins from the session layer) calls `audit(connection, ...)`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl

import structlog
from litestar.connection import ASGIConnection
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from callrec.metrics import Registry
from contracts import subjects
from contracts.v1.audit import EMPTY_HEAD, AuditHead, head_of
from contracts.v1.events import AuditAction, AuditOutcome, AuditRecorded, AuditValue
from contracts.v1.rpc import SyncStatus

from .audit_log import (
    REQUIRED_ACTIONS,
    AuditAppender,
    AuditDraft,
    Auditor,
    AuditUnavailable,
    ChainConflict,
    ChainStore,
)
from .audit_store import AUDIT_TYPE, AuditProjection

log = structlog.get_logger(component="web")

AUDIT = "audit"  # handler opt: the action this route performs
AUDIT_IF = "audit_if"  # handler opt: {query flag: action} when the flag is set
APP_STATE_KEY = "audit"
TARGET_PARAMS = ("recording_id", "username", "job_id", "name", "token_id")
READ_ACTIONS = frozenset({"search", "view", "play", "download", "audit_export"})
TRUE = frozenset({"1", "true", "yes", "on"})

Heads = Callable[[], Awaitable[Mapping[str, AuditHead | None] | None]]


@dataclass
class AuditService:
    """The node's audit: the writer, this node's copy, and the heads nodes announce."""

    auditor: Auditor
    projection: AuditProjection
    heads: Heads
    node_id: str

    async def record(self, draft: AuditDraft, required: bool | None = None) -> AuditRecorded | None:
        return await self.auditor.record(draft, required)


class MemoryChain:
    """A chain kept in this process, written straight into the projection: for an app
    without a bus (tests with a fake backend). The service uses JetStreamChain."""

    def __init__(self, node_id: str, projection: AuditProjection) -> None:
        self.node_id = node_id
        self.projection = projection
        self.entries: list[AuditRecorded] = []

    async def last(self) -> tuple[AuditHead, int]:
        if not self.entries:
            return EMPTY_HEAD, 0
        return head_of(self.entries[-1]), len(self.entries)

    async def append(self, entry: AuditRecorded, expected_last: int) -> int:
        if expected_last != len(self.entries):
            raise ChainConflict("wrong last sequence")
        self.entries.append(entry)
        seq = len(self.entries)
        self.projection.apply([(subjects.event(self.node_id, AUDIT_TYPE),
                                self.projection.last_sequence + 1,
                                entry.model_dump_json().encode())])
        return seq


def audit_service(connection: ASGIConnection[Any, Any, Any, Any]) -> AuditService:
    service: AuditService = connection.app.state[APP_STATE_KEY]
    return service


def _source(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0])[:64] if client else None


def _actor(scope: Scope) -> str | None:
    principal = (scope.get("state") or {}).get("principal")
    name = getattr(principal, "username", None)
    return str(name) if name is not None else None


async def audit(connection: ASGIConnection[Any, Any, Any, Any], action: AuditAction, *,
                actor: str | None = None, target: str | None = None,
                outcome: AuditOutcome = "ok", detail: Mapping[str, AuditValue] | None = None,
                required: bool | None = None) -> AuditRecorded | None:
    """Record one entry for this request's caller address (for logins, logouts,
    password changes, tokens: whatever no route opt covers). Raises AuditUnavailable
    only when `required` (or, by default, for reads of recordings)."""
    who = actor if actor is not None else _actor(connection.scope)
    draft = AuditDraft(action=action, actor=who, target=target,
                       source_address=_source(connection.scope), outcome=outcome,
                       detail=dict(detail or {}))
    return await audit_service(connection).record(draft, required)


def outcome_of(status: int) -> AuditOutcome:
    if status < 400:
        return "ok"
    return "denied" if status in (401, 403, 429) else "failed"


def draft_for(scope: Scope, opt: Mapping[str, Any], status: int) -> AuditDraft | None:
    """The entry a request to an audited route makes (None: the route is not audited)."""
    action = opt.get(AUDIT)
    if not action:
        return None
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=False)
    for flag, other in cast(dict[str, str], opt.get(AUDIT_IF) or {}).items():
        if any(k == flag and v.lower() in TRUE for k, v in query):
            action = other
    params = cast(dict[str, Any], scope.get("path_params") or {})
    target = next((str(params[name]) for name in TARGET_PARAMS if name in params),
                  next((str(v) for v in params.values()), None))
    handler = scope.get("route_handler")
    detail: dict[str, AuditValue]
    if action in READ_ACTIONS:
        detail = {k: v for k, v in query}
    else:  # a change: which handler, and the other path parameters (a tag's name)
        detail = {"op": str(getattr(handler, "handler_name", ""))[:64]}
        detail.update({k: str(v) for k, v in params.items()
                       if str(v) != target and k not in detail})
    return AuditDraft(action=cast(AuditAction, action), actor=_actor(scope),
                      target=target[:256] if target else None, source_address=_source(scope),
                      outcome=outcome_of(status), detail=detail)


UNAVAILABLE_BODY = json.dumps({
    "status_code": 503,
    "detail": "the audit trail cannot record this access right now: retry shortly",
}).encode()
UNAVAILABLE_START: HTTPResponseStartEvent = {
    "type": "http.response.start", "status": 503,
    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"2"),
                (b"cache-control", b"no-store")],
}
UNAVAILABLE_END: HTTPResponseBodyEvent = {
    "type": "http.response.body", "body": UNAVAILABLE_BODY, "more_body": False}


def audit_middleware(app: ASGIApp) -> ASGIApp:
    """Record the audited routes' requests (see the module docstring)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        opt = cast(dict[str, Any], getattr(handler, "opt", None) or {})
        if str(scope["type"]) != "http" or not opt.get(AUDIT):
            await app(scope, receive, send)
            return
        service: AuditService = scope["litestar_app"].state[APP_STATE_KEY]
        refused = False

        async def audited_send(message: Message) -> None:
            nonlocal refused
            if refused:
                return  # the content this access would have served is dropped
            if message["type"] == "http.response.start":
                status = int(message["status"])
                draft = draft_for(scope, opt, status)
                if draft is not None:
                    try:
                        await service.record(
                            draft, required=draft.action in REQUIRED_ACTIONS and status < 400)
                    except AuditUnavailable:
                        refused = True
                        await send(UNAVAILABLE_START)
                        await send(UNAVAILABLE_END)
                        return
            await send(message)

        await app(scope, receive, audited_send)

    return middleware


class _HasSyncStatus(Protocol):
    node_id: str

    async def sync_status(self) -> SyncStatus | None: ...


def announced_heads(backend: _HasSyncStatus) -> Heads:
    """Each node's audit head from its last heartbeat, as the sync service reports them."""

    async def heads() -> Mapping[str, AuditHead | None] | None:
        status = await backend.sync_status()
        if status is None:
            return None
        return {node.node_id: node.audit_head for node in status.nodes}

    return heads


def build_audit(backend: _HasSyncStatus, projection: AuditProjection, chain: ChainStore,
                registry: Registry) -> AuditService:
    return AuditService(auditor=Auditor(AuditAppender(chain, backend.node_id), registry),
                        projection=projection, heads=announced_heads(backend),
                        node_id=backend.node_id)


def audit_path(data_dir: Path) -> Path:
    return data_dir / "web" / "audit.sqlite"


def memory_audit(backend: _HasSyncStatus, data_dir: Path, registry: Registry) -> AuditService:
    projection = AuditProjection(audit_path(data_dir))
    return build_audit(backend, projection, MemoryChain(backend.node_id, projection), registry)
