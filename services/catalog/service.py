"""Catalog adapters: follow recording events (completions, holds, purges, notes, tags)
into the projection, answer search/get/annotations RPCs.

SQLite work runs in a worker thread so a slow search never stalls event following
or the other RPCs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel

from callrec import bus
from callrec.service import ServiceContext
from contracts import subjects
from contracts.v1.events import RecordingCompleted
from contracts.v1.rpc import Annotations, GetRequest, SearchRequest, SearchResult, Waveform

from .projection import APPLIED_TYPES, Catalog

# A lazy proxy: binding now would freeze the pre-`setup_logging` (non-JSON) config.
log = structlog.get_logger(component="catalog")


def catalog_path(ctx: ServiceContext) -> Path:
    return ctx.config.data_dir / "catalog" / "catalog.sqlite3"


async def main(ctx: ServiceContext) -> None:
    path = catalog_path(ctx)
    catalog = await asyncio.to_thread(Catalog, path, ctx.config.numbers)
    log.info("catalog_opened", path=str(path), last_sequence=catalog.last_sequence,
             recordings=catalog.count, number_plan=catalog.plan.fingerprint())
    applied = ctx.metrics.counter(
        "catalog_events_applied_total", "Events applied to the catalog projection"
    )
    ctx.metrics.gauge("catalog_recordings", "Recordings in the catalog", lambda: catalog.count)
    ctx.metrics.gauge(
        "catalog_last_sequence", "Last event stream sequence applied", lambda: catalog.last_sequence
    )
    searches = ctx.metrics.counter("catalog_searches_total", "Catalog searches answered")

    async def apply(batch: list[tuple[Any, int]]) -> None:
        changed = await asyncio.to_thread(catalog.apply_batch, batch)
        for event, _ in batch:
            applied.inc(type=str(getattr(event, "type", "unknown")))
        for event, effect in changed:
            if effect == "restored":
                # A hold voided a purge this node had applied (it arrived late): say so.
                log.warning("recording_restored", recording_id=event.recording_id,
                            event_id=event.event_id, reason="purge voided by legal hold")
            else:
                log.info(f"recording_{effect}", recording_id=event.recording_id,
                         event_id=event.event_id)

    async def on_search(request: SearchRequest) -> BaseModel | None:
        searches.inc()
        result: SearchResult = await asyncio.to_thread(
            catalog.search, request, request.visible_numbers
        )
        return result

    async def on_get(request: GetRequest) -> BaseModel | None:
        # An unknown id is an ordinary answer (`ok`, `data: null`), not an error: raising
        # would log a traceback per miss in `bus.serve` and look like an outage to callers.
        found: RecordingCompleted | None = await asyncio.to_thread(
            catalog.get, request.recording_id
        )
        return found

    async def on_waveform(request: GetRequest) -> BaseModel | None:
        # None (no stored peaks) is an ordinary answer: the web then computes them.
        found: Waveform | None = await asyncio.to_thread(catalog.waveform, request.recording_id)
        return found

    async def on_annotations(request: GetRequest) -> BaseModel | None:
        found: Annotations = await asyncio.to_thread(catalog.annotations, request.recording_id)
        return found

    node = ctx.node_id
    await bus.serve(
        ctx.nc, subjects.rpc(node, subjects.CATALOG, subjects.CATALOG_SEARCH),
        SearchRequest, on_search,
    )
    await bus.serve(
        ctx.nc, subjects.rpc(node, subjects.CATALOG, subjects.CATALOG_GET), GetRequest, on_get
    )
    await bus.serve(
        ctx.nc, subjects.rpc(node, subjects.CATALOG, subjects.CATALOG_WAVEFORM), GetRequest,
        on_waveform,
    )
    await bus.serve(
        ctx.nc, subjects.rpc(node, subjects.CATALOG, subjects.CATALOG_ANNOTATIONS),
        GetRequest, on_annotations,
    )
    follower = asyncio.create_task(
        bus.follow_event_batches(
            ctx.js, node, [subjects.events_of_type(kind) for kind in APPLIED_TYPES],
            catalog.last_sequence + 1, apply
        )
    )
    stop = asyncio.create_task(ctx.stopping.wait())
    try:
        done, _ = await asyncio.wait({follower, stop}, return_when=asyncio.FIRST_COMPLETED)
        if follower in done:
            follower.result()  # re-raise: a dead follower must crash the service
    finally:
        for task in (follower, stop):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        await asyncio.to_thread(catalog.close)
        log.info("catalog_closed", last_sequence=catalog.last_sequence)
