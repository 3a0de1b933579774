"""NATS adapters shared by all services: connect, publish facts, serve and call RPCs.

Facts go to JetStream with their event id as `Nats-Msg-Id` (server-side de-dup);
projections still de-duplicate by event id themselves, because JetStream's window is
finite and sourced streams do not keep it across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from contracts import subjects
from contracts.v1.events import EventBase, parse_event
from contracts.v1.rpc import Reply

from .logs import get_logger

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

log = get_logger(component="bus")


class RpcError(RuntimeError):
    """The remote service answered with an error, or did not answer in time."""


async def connect(
    url: str, name: str, identity: str | None = None, password: str | None = None
) -> NatsClient:
    """Connect and keep reconnecting forever: a service outlives nats-server restarts.

    With an identity, log in as it and take replies on its private inbox prefix
    (callrec.buspolicy), the only inbox its permissions let it read."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=str(exc))

    async def on_disconnect() -> None:
        log.warning("nats_disconnected")

    async def on_reconnect() -> None:
        log.info("nats_reconnected")

    login: dict[str, Any] = {}
    if identity is not None:
        login = {"user": identity, "password": password,
                 "inbox_prefix": subjects.inbox_prefix(identity)}
    return await nats.connect(
        url,
        name=name,
        **login,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=2,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


async def ensure_streams(js: JetStreamContext, node_id: str) -> None:
    """Create the node's own event stream and its cluster aggregate (idempotent).

    The events are the source of truth, so when JetStream runs out of room they
    refuse new writes rather than drop old facts: discard NEW, no age or count
    limit, and no byte limit of their own (the server's `max_file_store`,
    callrec.natsserver, bounds them and refuses with "insufficient resources";
    capture turns the node to 503 before that, callrec.diskspace). A stream made by
    an older version (discard OLD) is switched over."""
    name = subjects.events_stream(node_id)
    await _ensure_stream(js, _fact_stream(name, subjects=[subjects.node_events(node_id)]))
    await _ensure_stream(js, _fact_stream(subjects.CLUSTER_STREAM,
                                          sources=[StreamSource(name=name)]))


MISSED_MAX_BYTES = 64 * 1024 * 1024
MISSED_MAX_MSG_SIZE = 16 * 1024


def missed_stream_config(node_id: str, retention_days: float,
                         max_bytes: int = MISSED_MAX_BYTES) -> StreamConfig:
    """A node's missed calls (refused INVITEs): not facts, so bounded by age and size,
    the oldest dropped first; what a scanner sends can never fill the disk."""
    return StreamConfig(
        name=subjects.missed_stream(node_id),
        subjects=[subjects.missed(node_id)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=retention_days * 86400.0,
        max_bytes=max_bytes,
        max_msg_size=MISSED_MAX_MSG_SIZE,
        max_msgs=-1,
        duplicate_window=min(120.0, retention_days * 86400.0),
    )


async def ensure_missed_stream(js: JetStreamContext, node_id: str, retention_days: float,
                               max_bytes: int = MISSED_MAX_BYTES) -> None:
    """Create the missed-calls stream, or apply a changed retention or size to it."""
    config = missed_stream_config(node_id, retention_days, max_bytes)
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    existing = info.config
    wanted = (config.max_age, config.max_bytes, config.discard, config.max_msg_size,
              config.duplicate_window)
    if (existing.max_age, existing.max_bytes, existing.discard, existing.max_msg_size,
            existing.duplicate_window) != wanted:
        existing.max_age, existing.max_bytes, existing.discard = wanted[:3]
        existing.max_msg_size, existing.duplicate_window = wanted[3:]
        await js.update_stream(existing)
        log.info("missed_stream_limits_set", stream=config.name,
                 max_age_days=retention_days, max_bytes=config.max_bytes)


def _fact_stream(name: str, **where: Any) -> StreamConfig:
    """A stream of facts: on file, kept for good, refusing new writes when full."""
    return StreamConfig(
        name=name,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=120.0,
        max_msgs=-1,
        max_bytes=-1,
        **where,
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    existing = info.config
    if existing.discard != DiscardPolicy.NEW:
        existing.discard = DiscardPolicy.NEW
        await js.update_stream(existing)
        log.info("stream_discard_policy_set", stream=config.name, discard="new")


Filter = str | Sequence[str]
"""One subject filter, or several: the server then sends only what matches any of them
(a projection that applies a few event types is not sent, nor parses, the rest)."""


async def last_sequence_of(js: JetStreamContext, filter_subject: Filter) -> int:
    """CLUSTER sequence of the newest event matching a filter (0: none, or unknown):
    how far a projection must read before its view of the past is complete."""
    if not isinstance(filter_subject, str):  # side by side: a slow server times out once
        heads = await asyncio.gather(*(last_sequence_of(js, one) for one in filter_subject))
        return max(heads, default=0)
    try:
        msg = await js.get_last_msg(subjects.CLUSTER_STREAM, filter_subject)
    except NotFoundError:
        return 0
    except Exception as exc:
        log.warning("last_sequence_unknown", subject=filter_subject, error=str(exc))
        return 0
    return int(msg.seq or 0)


async def cluster_sources(js: JetStreamContext) -> set[str]:
    info = await js.stream_info(subjects.CLUSTER_STREAM)
    return {source.name for source in info.config.sources or []}


async def add_peer_source(js: JetStreamContext, peer_node_id: str) -> bool:
    """Make this node's aggregate source a peer's event stream; a new one catches up
    from its first message. Returns False when it was already a source."""
    info = await js.stream_info(subjects.CLUSTER_STREAM)
    config = info.config
    sources = list(config.sources or [])
    name = subjects.events_stream(peer_node_id)
    if any(source.name == name for source in sources):
        return False
    sources.append(StreamSource(
        name=name, external=ExternalStream(api=subjects.js_api_prefix(peer_node_id))
    ))
    config.sources = sources
    await js.update_stream(config)
    return True


async def publish_event(js: JetStreamContext, event: EventBase) -> int:
    """Store a fact; returns its stream sequence. Retries while JetStream is unavailable."""
    subject = subjects.event(event.node_id, getattr(event, "type"))  # noqa: B009
    payload = event.model_dump_json().encode()
    delay = 0.2
    for attempt in range(8):
        try:
            ack = await js.publish(
                subject, payload, headers={"Nats-Msg-Id": event.event_id}, timeout=2.0
            )
            return int(ack.seq)
        except Exception as exc:
            if attempt == 7:
                raise
            log.warning("publish_retry", subject=subject, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


Handler = Callable[[M], Awaitable[BaseModel | None]]
_AnyReply = Reply[Any]
"""Parametrised once: `Reply[Any]` per message cost an eighth of capture's RPC handling."""


async def serve(
    nc: NatsClient,
    subject: str,
    request_model: type[M],
    handler: Callable[[M], Awaitable[BaseModel | None]],
) -> None:
    """Answer requests on `subject`; bad input and handler errors become error replies."""

    async def on_msg(msg: Msg) -> None:
        try:
            request = request_model.model_validate_json(msg.data or b"{}")
        except ValidationError as exc:
            await _respond(msg, _AnyReply(ok=False, error=f"invalid request: {exc}"))
            return
        try:
            result = await handler(request)
        except Exception as exc:
            log.exception("rpc_handler_failed", subject=subject)
            await _respond(msg, _AnyReply(ok=False, error=f"{type(exc).__name__}: {exc}"))
            return
        data = result.model_dump(mode="json") if result is not None else None
        await _respond(msg, _AnyReply(ok=True, data=data))

    await nc.subscribe(subject, cb=on_msg)


async def _respond(msg: Msg, reply: Reply[Any]) -> None:
    if msg.reply:
        await msg.respond(reply.model_dump_json().encode())


async def call(
    nc: NatsClient,
    subject: str,
    request: BaseModel,
    reply_model: type[R] | None,
    timeout: float = 2.0,
) -> R | None:
    """Send a request and decode the reply; raises RpcError for errors and timeouts."""
    try:
        msg = await nc.request(subject, request.model_dump_json().encode(), timeout=timeout)
    except Exception as exc:
        raise RpcError(f"{subject}: {type(exc).__name__}: {exc}") from exc
    try:
        envelope = json.loads(msg.data)
    except ValueError as exc:
        raise RpcError(f"{subject}: undecodable reply") from exc
    if not envelope.get("ok"):
        raise RpcError(f"{subject}: {envelope.get('error')}")
    if reply_model is None or envelope.get("data") is None:
        return None
    return reply_model.model_validate(envelope["data"])


async def scatter_gather(nc: NatsClient, subject: str, expected: int,
                         window: float) -> list[bytes]:
    """Publish one request to every subscriber of `subject` and collect their replies
    until `expected` have come or `window` seconds have passed.

    Why wait for a count rather than a fixed time: every reply usually comes within
    milliseconds, but a service whose loop is busy (capture at its capacity) answers
    late, and a short fixed window dropped its metrics exactly when they mattered."""
    replies: list[bytes] = []
    all_in = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        replies.append(msg.data)
        if len(replies) >= expected:
            all_in.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush(timeout=1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), window)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return list(replies)


async def _subscribe_ordered(
    js: JetStreamContext, filter_subject: Filter, start_sequence: int,
    cb: Callable[[Msg], Awaitable[None]],
) -> JetStreamContext.PushSubscription:
    """An ordered consumer of CLUSTER from `start_sequence`, its messages handed to `cb`."""
    filters = [filter_subject] if isinstance(filter_subject, str) else list(filter_subject)
    while True:
        try:
            return await js.subscribe(
                filters[0],
                stream=subjects.CLUSTER_STREAM,
                cb=cb,
                ordered_consumer=True,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=max(1, start_sequence),
                    filter_subjects=filters if len(filters) > 1 else None,
                ),
            )
        except Exception as exc:
            log.warning("subscribe_retry", subject=",".join(filters), error=str(exc))
            await asyncio.sleep(0.5)


FOLLOW_BATCH = 500  # messages a follower takes from its queue at a time


async def _ordered_batches(
    js: JetStreamContext, filter_subject: Filter, start_sequence: int, max_batch: int,
) -> AsyncGenerator[list[Msg], None]:
    """An ordered consumer's messages, in batches of what has arrived (at most
    `max_batch`), in stream order.

    Taken by a callback that only queues them: awaiting each message from the
    subscription (`next_msg` with a timeout, or its iterator) made a task or a timer
    per message, three times the CPU of the callback on a real nats-server (22 against
    7 µs a message), and every service follows events. Back-pressure is kept: past
    two batches the callback waits for room, so the rest stays in the client's
    pending queue and its flow control holds the server, as before."""
    arrived: deque[Msg] = deque()
    ready = asyncio.Event()
    room = asyncio.Event()
    room.set()
    high_water = 2 * max_batch

    async def on_msg(msg: Msg) -> None:
        arrived.append(msg)
        ready.set()
        if len(arrived) >= high_water:
            room.clear()
            await room.wait()

    sub = await _subscribe_ordered(js, filter_subject, start_sequence, on_msg)
    try:
        while True:
            await ready.wait()
            ready.clear()
            while arrived:
                batch = [arrived.popleft() for _ in range(min(max_batch, len(arrived)))]
                if len(arrived) < high_water:
                    room.set()
                yield batch
    finally:
        room.set()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _decode(msg: Msg) -> tuple[Any, int] | None:
    seq = msg.metadata.sequence.stream
    try:
        return parse_event(msg.data), seq
    except ValidationError as exc:
        log.error("event_undecodable", seq=seq, error=str(exc)[:200])
        return None


async def follow_events(
    js: JetStreamContext,
    node_id: str,
    filter_subject: Filter,
    start_sequence: int,
    apply: Callable[[Any, int], Awaitable[None]],
) -> None:
    """Feed the cluster's events matching `filter_subject` to `apply(event, seq)`, forever.

    An ordered consumer: no server-side state to clean up, and it recreates itself
    after reconnects, so projections keep their own checkpoint (the last sequence).
    Undecodable messages are logged and skipped, never fatal.
    """
    del node_id  # every node reads its own CLUSTER aggregate
    batches = _ordered_batches(js, filter_subject, start_sequence, FOLLOW_BATCH)
    try:
        async for batch in batches:
            for msg in batch:
                decoded = _decode(msg)
                if decoded is not None:
                    await apply(*decoded)
    finally:
        await batches.aclose()


async def follow_event_batches(
    js: JetStreamContext,
    node_id: str,
    filter_subject: Filter,
    start_sequence: int,
    apply: Callable[[list[tuple[Any, int]]], Awaitable[None]],
    max_batch: int = FOLLOW_BATCH,
) -> None:
    """Like follow_events, but hands over whatever has already arrived as one batch,
    so a node catching up on a long history applies it in few transactions."""
    del node_id

    async def decoded(messages: list[Msg]) -> None:
        batch = [d for d in (_decode(m) for m in messages) if d is not None]
        if batch:
            await apply(batch)

    await follow_message_batches(js, filter_subject, start_sequence, decoded, max_batch)


async def follow_message_batches(
    js: JetStreamContext,
    filter_subject: Filter,
    start_sequence: int,
    apply: Callable[[list[Msg]], Awaitable[None]],
    max_batch: int = FOLLOW_BATCH,
) -> None:
    """Like follow_event_batches with the raw messages, for a projection that must know
    the subject a fact was stored under (whose stream it came from), not only what the
    fact says about itself."""
    batches = _ordered_batches(js, filter_subject, start_sequence, max_batch)
    try:
        async for messages in batches:
            await apply(messages)
    finally:
        await batches.aclose()
