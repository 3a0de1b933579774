"""Scheduler service: who runs the maintenance jobs.

It watches the nodes' heartbeats and reports the maintenance role; the purge and
export jobs it will run come with the maintenance issue.
"""

from __future__ import annotations

import json
import time

import structlog
from nats.aio.msg import Msg

from callrec.service import ServiceContext
from contracts import subjects

log = structlog.get_logger()


async def main(ctx: ServiceContext) -> None:
    last_seen: dict[str, float] = {}

    async def on_heartbeat(msg: Msg) -> None:
        try:
            beat = json.loads(msg.data)
            last_seen[str(beat["node_id"])] = time.time()
        except (ValueError, KeyError, TypeError):
            log.warning("heartbeat_undecodable")

    ctx.metrics.gauge(
        "scheduler_self_heartbeat_age_seconds",
        "seconds since this node's own heartbeat was seen",
        lambda: time.time() - last_seen.get(ctx.node_id, 0.0) if ctx.node_id in last_seen
        else -1.0,
    )
    ctx.metrics.gauge(
        "scheduler_maintenance_role", "1 when this node holds the maintenance role",
        lambda: 1.0 if ctx.config.role == "primary" else 0.0,
    )
    await ctx.nc.subscribe(subjects.heartbeat(ctx.node_id), cb=on_heartbeat)
    await ctx.stopping.wait()
