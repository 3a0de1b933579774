"""Sync service: the node's presence on the bus.

Today it announces this node once a second (core NATS, not stored) so peers and the
scheduler can tell it is alive; cross-node replication of recordings builds on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import structlog

from callrec.service import ServiceContext
from contracts import subjects

HEARTBEAT_INTERVAL = 1.0

log = structlog.get_logger()


def heartbeat_payload(ctx: ServiceContext, sequence: int) -> bytes:
    config = ctx.config
    return json.dumps({
        "node_id": config.node_id,
        "role": config.role,
        "priority": config.priority,
        "sequence": sequence,
        "sent_at": time.time(),
    }).encode()


async def main(ctx: ServiceContext) -> None:
    sent = ctx.metrics.counter("sync_heartbeats_sent_total", "heartbeats published")
    sequence = 0
    while not ctx.stopping.is_set():
        sequence += 1
        if ctx.nc.is_connected:
            await ctx.nc.publish(subjects.heartbeat(ctx.node_id),
                                 heartbeat_payload(ctx, sequence))
            sent.inc()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stopping.wait(), timeout=HEARTBEAT_INTERVAL)
