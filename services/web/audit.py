"""The audit trail over HTTP (administrators only): entries with filters and paging,
a CSV export with the same filters, each node's chain verified, and the `/audit` page.

Entries come from this node's copy of every node's chain (`audit_store`); verification
recomputes that copy and compares each chain with the head its node announces in its
heartbeat (through the sync service's status).
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, get_args

from litestar import Controller, Request, get
from litestar.exceptions import ValidationException
from litestar.params import QueryParameter
from litestar.response import Stream, Template

from contracts.v1.audit import AuditHead
from contracts.v1.events import AuditAction

from .audit_http import AUDIT, audit_service
from .audit_store import MAX_PAGE, AuditProjection, AuditQuery, AuditRow
from .pages import page
from .security import ADMIN
from .state import parse_when, web_state

ACTIONS: tuple[str, ...] = get_args(AuditAction)
CSV_COLUMNS = ("node", "seq", "at", "actor", "action", "target", "source_address", "outcome",
               "detail", "hash", "prev_hash")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
Text = Annotated[str | None, QueryParameter(max_length=256)]


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet shows as text: one starting like a formula gets a quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_lines(rows: Iterable[AuditRow], header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for row in rows:
        data = row.as_json()
        data["detail"] = _detail_text(data["detail"])
        writer.writerow([csv_cell(data[name]) for name in CSV_COLUMNS])
    return out.getvalue()


def _detail_text(detail: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}={v}" for k, v in sorted(detail.items()))


def query_of(actor: str | None, action: str | None, node: str | None, target: str | None,
             start: str | None, end: str | None, limit: int = 50, offset: int = 0) -> AuditQuery:
    if action and action not in ACTIONS:
        raise ValidationException(detail=f"unknown action {action[:32]!r}")
    start_at, end_at = parse_when(start, "from"), parse_when(end, "to")
    if start_at and end_at and start_at > end_at:
        raise ValidationException(detail="from must not be after to")
    return AuditQuery(actor=actor or None, action=action or None, node=node or None,
                      target=target or None, start=start_at, end=end_at, limit=limit,
                      offset=offset)


async def _export(projection: AuditProjection, query: AuditQuery) -> AsyncIterator[bytes]:
    batches = projection.export(query)
    header = True
    while True:
        batch = await asyncio.to_thread(next, batches, None)
        if batch is None:
            if header:
                yield csv_lines([], True).encode()
            return
        yield csv_lines(batch, header).encode()
        header = False


class AuditController(Controller):
    """`/api/audit*`: the trail as this node holds it; administrators only."""

    path = "/api"
    guards = (ADMIN,)

    @get("/audit")
    async def list_entries(
        self, request: Request[Any, Any, Any],
        actor: Text = None, action: Text = None, node: Text = None, target: Text = None,
        from_: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
        to: Annotated[str | None, QueryParameter(max_length=64)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=10_000_000)] = 0,
    ) -> dict[str, Any]:
        await web_state(request).require(request)
        query = query_of(actor, action, node, target, from_, to, limit, offset)
        total, rows = await asyncio.to_thread(audit_service(request).projection.query, query)
        return {"total": total, "limit": limit, "offset": offset,
                "items": [row.as_json() for row in rows]}

    @get("/audit.csv", opt={AUDIT: "audit_export"})
    async def export_csv(
        self, request: Request[Any, Any, Any],
        actor: Text = None, action: Text = None, node: Text = None, target: Text = None,
        from_: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
        to: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> Stream:
        await web_state(request).require(request)
        query = query_of(actor, action, node, target, from_, to)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        service = audit_service(request)
        return Stream(
            _export(service.projection, query), media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition":
                     f'attachment; filename="audit-{service.node_id}-{stamp}.csv"',
                     "Cache-Control": "no-store"})

    @get("/audit/verify")
    async def verify(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Each node's chain in this node's copy, checked against the head it announces."""
        await web_state(request).require(request)
        service = audit_service(request)
        heads: Mapping[str, AuditHead | None] = await service.heads() or {}
        began = time.perf_counter()
        verdicts = await asyncio.to_thread(service.projection.verify, heads)
        return {
            "node_id": service.node_id,
            "checked_at": datetime.now(UTC).isoformat(),
            "took_ms": round((time.perf_counter() - began) * 1000, 1),
            "heads_known": bool(heads),
            "chains": [v.as_json() for v in verdicts],
        }


@get("/audit", include_in_schema=False, guards=[ADMIN])
async def audit_page(request: Request[Any, Any, Any]) -> Template:
    web = web_state(request)
    principal = await web.require(request)
    return page("audit", request, principal, actions=ACTIONS)


AUDIT_ROUTES: list[Any] = [AuditController, audit_page]
