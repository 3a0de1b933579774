"""Missed calls (administrators only): the INVITEs this node refused or could not record.

`GET /api/missed` pages through the node's MISSED stream newest first, with filters
(time range, reason, status, number, source); `/missed` is its page. The records are
this node's own: each node answers the PBX on its own and keeps its own misses (the
page says which node it shows).

The filter rule is pure (`matches`); reading the stream is the backend's
(`MissedSource`, implemented over NATS in missed_stream.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from litestar import Controller, Request, Response, get
from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.response import Template

from contracts.v1.missed import MISSED_REASONS, REASON_TEXT, MissedCall, MissedReason, clean

from .pages import page
from .security import ADMIN
from .state import BackendUnavailable, parse_when, web_state

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


@dataclass(frozen=True)
class MissedQuery:
    since: datetime | None = None
    until: datetime | None = None
    reason: MissedReason | None = None
    status: int | None = None
    number: str | None = None
    source: str | None = None
    before: int | None = None  # stream sequence: continue below it
    limit: int = DEFAULT_LIMIT


@dataclass
class MissedPage:
    """Newest first; `next_before` continues it (None: nothing older)."""

    items: list[tuple[int, MissedCall]] = field(default_factory=list)
    next_before: int | None = None
    scanned: int = 0
    # The scan stopped at its bound before the page was full: continue with next_before.
    truncated: bool = False


@runtime_checkable
class MissedSource(Protocol):
    """What the missed-calls API needs of the backend (NatsBackend has it)."""

    async def missed_calls(self, query: MissedQuery) -> MissedPage: ...


def matches(record: MissedCall, query: MissedQuery) -> bool:
    """Whether a record answers the query; a record spans [at, until] and matches a
    time range it overlaps."""
    last = record.until or record.at
    if query.since is not None and last < query.since:
        return False
    if query.until is not None and record.at > query.until:
        return False
    if query.reason is not None and record.reason != query.reason:
        return False
    if query.status is not None and record.status != query.status:
        return False
    if query.source is not None and not record.source.startswith(query.source):
        return False
    if query.number is not None:
        wanted = query.number.lower()
        texts = [record.from_number, record.to_number, record.from_name, record.to_name,
                 *record.numbers]
        if not any(text and wanted in text.lower() for text in texts):
            return False
    return True


def parse_query(params: dict[str, str]) -> MissedQuery:
    """The query string as a MissedQuery; every bad value a 400 naming it."""
    text = params.get("reason") or None
    reason = _REASONS.get(text) if text is not None else None
    if text is not None and reason is None:
        raise ValidationException(detail=f"reason: one of {', '.join(MISSED_REASONS)}")
    return MissedQuery(
        since=parse_when(params.get("since"), "since"),
        until=parse_when(params.get("until"), "until"),
        reason=reason,
        status=_int(params.get("status"), "status", 100, 699),
        number=clean(params.get("number"), 64),
        source=clean(params.get("source"), 64),
        before=_int(params.get("before"), "before", 1, 2**63),
        limit=_int(params.get("limit"), "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT,
    )


_REASONS: dict[str, MissedReason] = {reason: reason for reason in MISSED_REASONS}


def _int(value: str | None, name: str, low: int, high: int) -> int | None:
    if value is None or value.strip() == "":
        return None
    text = value.strip()
    if not text.isdigit() or len(text) > 20 or not low <= int(text) <= high:
        raise ValidationException(detail=f"{name}: a whole number from {low} to {high}")
    return int(text)


def record_json(seq: int, record: MissedCall) -> dict[str, Any]:
    return {"seq": seq, **record.model_dump(mode="json"), "description": record.describe(),
            "reason_text": REASON_TEXT[record.reason]}


class MissedController(Controller):
    path = "/api/missed"

    @get("/", guards=[ADMIN])
    async def list_missed(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """This node's refused INVITEs, newest first. Query: since, until (ISO 8601),
        reason, status, number (part of a number or name), source (address prefix),
        limit (≤ 200), before (the `next_before` of the previous page)."""
        web = web_state(request)
        await web.require(request)
        query = parse_query(dict(request.query_params))
        backend = web.backend
        if not isinstance(backend, MissedSource):
            raise BackendUnavailable("missed calls are not available on this backend")
        result = await backend.missed_calls(query)
        return Response(
            content={
                "node_id": backend.node_id,
                "items": [record_json(seq, record) for seq, record in result.items],
                "next_before": result.next_before,
                "scanned": result.scanned,
                "truncated": result.truncated,
                "reasons": {reason: REASON_TEXT[reason] for reason in MISSED_REASONS},
            },
            headers={"Cache-Control": "no-store"},
        )


@get("/missed", include_in_schema=False, guards=[ADMIN])
async def missed_page(request: Request[Any, Any, Any]) -> Template:
    """The page; its script (/static/missed.js) reads `/api/missed`."""
    web = web_state(request)
    principal = await web.require(request)
    return page("missed", request, principal,
                reasons=[(reason, REASON_TEXT[reason]) for reason in MISSED_REASONS])


MISSED: list[type[Controller] | HTTPRouteHandler] = [MissedController, missed_page]
