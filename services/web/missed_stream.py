"""Reading this node's MISSED stream newest first (the NATS side of missed.py).

JetStream consumers read forward only, so a page is read backwards in chunks: an
ordered consumer from `upper - CHUNK + 1` to `upper`, filtered, then the chunk
below, until the page is full, the stream's start is reached, messages stored
before the query's `since` are reached, or SCAN_MAX records have been looked at
(then the page says so and where to go on). The stream itself is bounded (64 MiB),
so even a full scan is bounded.
"""

from __future__ import annotations

from datetime import datetime

import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from contracts import subjects
from contracts.v1.missed import MissedCall

from .missed import MissedPage, MissedQuery, matches
from .state import BackendUnavailable

log = structlog.get_logger(component="web")

CHUNK = 500
SCAN_MAX = 20_000
READ_TIMEOUT_S = 2.0


async def read_missed(js: JetStreamContext, node_id: str, query: MissedQuery,
                      *, chunk: int = CHUNK, scan_max: int = SCAN_MAX) -> MissedPage:
    stream = subjects.missed_stream(node_id)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return MissedPage()
    except Exception as exc:
        raise BackendUnavailable(f"missed-calls stream: {exc}") from exc
    first, last = int(info.state.first_seq), int(info.state.last_seq)
    if not info.state.messages:
        return MissedPage()
    upper = last if query.before is None else min(last, query.before - 1)
    page = MissedPage()
    while upper >= first:
        lower = max(first, upper - chunk + 1)
        batch = await _read_range(js, node_id, lower, upper)
        page.scanned += upper - lower + 1
        older = False
        for seq, stored_at, record in reversed(batch):
            if query.since is not None and stored_at < query.since:
                older = True  # stored before `since`: it and all below ended before it
                break
            if record is not None and matches(record, query):
                page.items.append((seq, record))
                if len(page.items) >= query.limit:
                    page.next_before = seq if seq > first else None
                    return page
        if older:
            return page
        upper = lower - 1
        if page.scanned >= scan_max and upper >= first:
            page.next_before = upper + 1
            page.truncated = True
            return page
    return page


async def _read_range(js: JetStreamContext, node_id: str, lower: int, upper: int
                      ) -> list[tuple[int, datetime, MissedCall | None]]:
    """Stream sequences lower..upper (those still there), oldest first."""
    try:
        sub = await js.subscribe(
            subjects.missed(node_id), stream=subjects.missed_stream(node_id),
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                  opt_start_seq=lower),
        )
    except Exception as exc:
        raise BackendUnavailable(f"missed-calls stream: {exc}") from exc
    out: list[tuple[int, datetime, MissedCall | None]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            except TimeoutError:
                break  # nothing more (the range's top was removed by age or size)
            meta = msg.metadata
            seq = int(meta.sequence.stream)
            if seq > upper:
                break
            try:
                record: MissedCall | None = MissedCall.model_validate_json(msg.data)
            except ValidationError as exc:
                log.warning("missed_record_undecodable", seq=seq, error=str(exc)[:200])
                record = None
            out.append((seq, meta.timestamp, record))
            if seq >= upper or meta.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out
