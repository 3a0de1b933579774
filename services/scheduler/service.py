"""Scheduler service: who runs the maintenance jobs.

It feeds the nodes' heartbeats (core NATS) into a `RoleTracker`, learns the
cluster's highest role epoch from `role.changed` facts, and records a change as a
fact only when this node is affected (it takes or loses the role), so each change
is stored once per affected node rather than by every node. The maintenance jobs
(purge, export) run in a `JobEngine` fed with every cluster event and told of each
role change; it only acts on the node holding the role.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from nats.aio.msg import Msg
from pydantic import BaseModel

from callrec import bus
from callrec.service import ServiceContext
from callrec.store import open_store
from contracts import subjects
from contracts.v1.events import EventBase, RoleChanged
from contracts.v1.rpc import Empty, RolesStatus

from .engine import JobEngine
from .jobs import APPLIED_TYPES
from .roles import RoleChange, RoleTracker

TICK_S = 0.25
EPOCH_CATCH_UP_S = 10.0
"""Longest wait for past `role.changed` facts before electing with what we know."""
JOBS_CATCH_UP_S = 20.0
"""Longest wait for the past events before the job engine acts on what it has."""

# A lazy proxy: binding now would freeze the pre-`setup_logging` (non-JSON) config.
log = structlog.get_logger(component="scheduler")


def parse_heartbeat(data: bytes) -> tuple[str, str, int] | None:
    """(node_id, configured role, priority) of a heartbeat, None when unusable."""
    try:
        beat = json.loads(data)
        node_id = subjects.check_node_id(str(beat["node_id"]))
        role = str(beat.get("role") or "backup")
        priority = int(beat.get("priority") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return node_id, role, priority


async def _last_role_sequence(ctx: ServiceContext) -> int:
    return await bus.last_sequence_of(ctx.js, subjects.events_of_type("role.changed"))


async def main(ctx: ServiceContext) -> None:
    node = ctx.node_id
    tracker = RoleTracker(node, ctx.config.role_timeout_s, time.monotonic())
    since: datetime | None = None
    previous: str | None = None
    role_seq = 0
    self_seen: float | None = None

    ctx.metrics.gauge(
        "scheduler_self_heartbeat_age_seconds",
        "seconds since this node's own heartbeat was seen (-1: never)",
        lambda: time.monotonic() - self_seen if self_seen is not None else -1.0,
    )
    ctx.metrics.gauge(
        "scheduler_maintenance_role", "1 when this node holds the maintenance role",
        lambda: 1.0 if tracker.holds else 0.0,
    )
    ctx.metrics.gauge("scheduler_role_epoch", "latest role epoch known here",
                      lambda: float(tracker.epoch))
    changes = ctx.metrics.counter(
        "scheduler_role_changes_total", "changes of the maintenance holder seen by this node"
    )

    async def publish(event: EventBase) -> None:
        await bus.publish_event(ctx.js, event)

    engine = JobEngine(node, open_store(ctx.config.data_dir), publish)
    for name, help_text in (("runs", "job runs started here"),
                            ("failed", "job runs that failed here"),
                            ("purged", "recordings purged by jobs run here"),
                            ("exported", "recordings exported by jobs run here"),
                            ("exported_bytes", "bytes exported by jobs run here")):
        ctx.metrics.gauge(f"scheduler_jobs_{name}", help_text,
                          lambda name=name: float(engine.counts[name]))  # type: ignore[misc]
    ctx.metrics.gauge("scheduler_jobs_running", "job runs in progress here",
                      lambda: float(len(engine.running)))

    async def on_heartbeat(msg: Msg) -> None:
        nonlocal self_seen
        parsed = parse_heartbeat(msg.data)
        if parsed is None:
            log.warning("heartbeat_undecodable", subject=msg.subject)
            return
        node_id, role, priority = parsed
        # Local receive time, not the sender's clock: node clocks may disagree.
        now = time.monotonic()
        tracker.heartbeat(node_id, role, priority, now)
        if node_id == node:
            self_seen = now

    async def on_role_event(event: Any, seq: int) -> None:
        nonlocal role_seq
        role_seq = seq
        if isinstance(event, RoleChanged):
            tracker.observe_epoch(event.epoch)

    async def on_roles(_: Empty) -> BaseModel | None:
        return RolesStatus(node_id=node, holder=tracker.holder, epoch=tracker.epoch, since=since,
                           previous=previous)

    async def on_jobs(_: Empty) -> BaseModel | None:
        return engine.status()

    # The events the job book applies, and the newest of them at start: the engine's
    # catch-up target.
    jobs_filter = [subjects.events_of_type(event_type) for event_type in APPLIED_TYPES]
    jobs_head = await bus.last_sequence_of(ctx.js, jobs_filter)
    if jobs_head == 0:
        engine.set_ready()

    async def on_events(batch: list[tuple[Any, int]]) -> None:
        for event, seq in batch:
            engine.apply(event)
            if seq >= jobs_head:
                engine.set_ready()

    pending: asyncio.Queue[RoleChange] = asyncio.Queue()

    async def publisher() -> None:
        """Store changes in order, off the tick loop (publishing retries while JS is down)."""
        while True:
            change = await pending.get()
            event = RoleChanged(node_id=node, holder=change.holder, previous=change.previous,
                                epoch=change.epoch, reason=change.reason)
            try:
                await bus.publish_event(ctx.js, event)
            except Exception as exc:
                log.error("role_change_not_stored", epoch=change.epoch, error=str(exc))

    await ctx.nc.subscribe(subjects.all_heartbeats(), cb=on_heartbeat)
    await bus.serve(ctx.nc, subjects.rpc(node, subjects.SCHEDULER, subjects.SCHEDULER_ROLES),
                    Empty, on_roles)
    await bus.serve(ctx.nc, subjects.rpc(node, subjects.SCHEDULER, subjects.SCHEDULER_JOBS),
                    Empty, on_jobs)
    follower = asyncio.create_task(bus.follow_events(
        ctx.js, node, subjects.events_of_type("role.changed"), 1, on_role_event
    ))
    jobs_follower = asyncio.create_task(bus.follow_event_batches(
        ctx.js, node, jobs_filter, 1, on_events
    ))
    engine.start()
    jobs_deadline = time.monotonic() + JOBS_CATCH_UP_S
    publishing = asyncio.create_task(publisher())
    head = await _last_role_sequence(ctx)
    catch_up_deadline = time.monotonic() + EPOCH_CATCH_UP_S

    async def ticks() -> None:
        nonlocal since, previous
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if not engine.ready and now >= jobs_deadline:
                log.warning("jobs_catch_up_incomplete", head=jobs_head)
                engine.set_ready()
            if role_seq < head and now < catch_up_deadline:
                continue  # an epoch from the past may still be on its way
            change = tracker.tick(now)
            if change is None:
                continue
            engine.set_role(change.holder, change.epoch)
            since, previous = datetime.now(UTC), change.previous
            changes.inc()
            affected = node in (change.holder, change.previous)
            log.info("role_changed", holder=change.holder, previous=change.previous,
                     epoch=change.epoch, reason=change.reason, recorded=affected)
            if affected:
                pending.put_nowait(change)

    ticking = asyncio.create_task(ticks())
    stop: asyncio.Task[Any] = asyncio.create_task(ctx.stopping.wait())
    tasks: set[asyncio.Task[Any]] = {follower, jobs_follower, publishing, ticking}
    try:
        done, _ = await asyncio.wait({*tasks, stop}, return_when=asyncio.FIRST_COMPLETED)
        for crashed in tasks & done:
            crashed.result()  # re-raise: a dead loop must crash the service
            raise RuntimeError("scheduler task stopped unexpectedly")
    finally:
        await engine.shutdown()
        for task in (*tasks, stop):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
