"""Appending to this node's audit chain: one appender per node, never a fork.

The web service is the node's one audit writer (one process). Entries are sealed
(contracts.v1.audit) under an asyncio lock after the chain's head, which is restored
at start from the node's own last `audit.recorded` in its stream, and published with
JetStream's expected-last-subject-sequence: if anything else appended meanwhile (a
second writer, a restored history), the publish is refused, the head is reloaded and
the entry sealed again, so two writers can never fork the chain.

When the bus cannot store an entry the caller decides (see `Auditor.record`): access
to recordings is refused (503) rather than served untraced; a failed login is dropped,
counted and logged (it is a refusal already, and under a flood the bus may be the
thing that is struggling); a change that is already stored keeps its answer and the
lost entry is logged and counted.

Floods cannot fill the disk: failed logins and anonymous refusals pass a token bucket
per source address and one overall; what is held back is counted and written as one
aggregate entry a minute. Repeats of a read (the many Range requests of one play,
an unchanged search re-run by a page) are recorded once per window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from callrec.metrics import Registry
from contracts import subjects
from contracts.v1.audit import EMPTY_HEAD, AuditHead, head_of, seal
from contracts.v1.events import AuditAction, AuditOutcome, AuditRecorded, AuditValue

from .throttle import LoginThrottle, address_key

log = structlog.get_logger(component="web")

AUDIT_TYPE = "audit.recorded"
APPEND_ATTEMPTS = 4
PUBLISH_TIMEOUT_S = 2.0
# Failed logins and anonymous refusals written one by one: per address 5 at once then
# one a minute, and 30 a minute from everyone together; the rest go into an aggregate.
FLOOD_BURST_PER_ADDRESS = 5
FLOOD_REFILL_PER_ADDRESS_S = 1 / 60.0
FLOOD_BURST_TOTAL = 30
FLOOD_REFILL_TOTAL_S = 0.5
AGGREGATE_EVERY_S = 60.0
# Reads recorded once per (who, what, target, address, detail) and window.
REPEAT_WINDOW_S: dict[str, float] = {"play": 600.0, "view": 600.0, "download": 60.0,
                                     "search": 60.0, "audit_export": 10.0}
LONGEST_REPEAT_S = 3600.0
MAX_REMEMBERED = 10_000
MAX_DETAIL_KEYS = 16
MAX_DETAIL_VALUE = 200
# Audit failures that refuse the request: reading recordings without a trace is not served.
REQUIRED_ACTIONS = frozenset({"search", "view", "play", "download", "audit_export"})


class AuditUnavailable(RuntimeError):
    """The entry could not be stored (bus down or busy): the caller answers 503."""


class ChainConflict(RuntimeError):
    """Someone else appended to this node's chain since we read its head."""


@dataclass(frozen=True)
class AuditDraft:
    """What happened, before it is sealed into the chain."""

    action: AuditAction
    actor: str | None = None
    target: str | None = None
    source_address: str | None = None
    outcome: AuditOutcome = "ok"
    detail: Mapping[str, AuditValue] = field(default_factory=dict)
    # Record this again only after so many seconds (None: the action's REPEAT_WINDOW_S).
    repeat_s: float | None = None

    def gated(self) -> bool:
        """Entries a stranger can cause at will: rate-limited and aggregated."""
        return self.action == "login_failed" or (self.actor is None and self.outcome != "ok")


def bounded_detail(detail: Mapping[str, Any]) -> dict[str, AuditValue]:
    """At most a few short values: a detail is a note, not a copy of the request."""
    result: dict[str, AuditValue] = {}
    for key, value in list(detail.items())[:MAX_DETAIL_KEYS]:
        if value is None or isinstance(value, bool | int):
            result[str(key)[:64]] = value
        else:
            result[str(key)[:64]] = str(value)[:MAX_DETAIL_VALUE]
    return result


class FloodGate:
    """Token buckets for gated entries, and what they held back (pure; clock injected)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.per_address = LoginThrottle(FLOOD_BURST_PER_ADDRESS, FLOOD_REFILL_PER_ADDRESS_S,
                                         clock)
        self.total = LoginThrottle(FLOOD_BURST_TOTAL, FLOOD_REFILL_TOTAL_S, clock)
        self.held: dict[AuditAction, int] = {}  # held back since the last aggregate
        self.sources: set[str] = set()
        self.since = clock()

    def admit(self, draft: AuditDraft) -> bool:
        """True: write this entry; False: it is counted into the next aggregate."""
        if not draft.gated():
            return True
        key = address_key(draft.source_address)
        if self.per_address.retry_after(key) is None and self.total.retry_after("*") is None:
            self.per_address.try_acquire(key)
            self.total.try_acquire("*")
            return True
        self.held[draft.action] = self.held.get(draft.action, 0) + 1
        if len(self.sources) < MAX_REMEMBERED:
            self.sources.add(key)
        return False

    def aggregate(self) -> list[AuditDraft]:
        """Once a minute: one entry per action for what was held back (and reset)."""
        now = self.clock()
        if not self.held or now - self.since < AGGREGATE_EVERY_S:
            return []
        sources = sorted(self.sources)
        window = round(now - self.since)
        drafts = [
            AuditDraft(
                action=action,
                source_address=sources[0] if len(sources) == 1 else None,
                outcome="denied" if action != "login_failed" else "failed",
                detail={"aggregated": count, "sources": len(sources), "window_s": window},
            )
            for action, count in sorted(self.held.items())
        ]
        self.held, self.sources, self.since = {}, set(), now
        return drafts


class RepeatFilter:
    """Reads already recorded in their window (pure; clock injected, bounded)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.seen: dict[str, float] = {}

    @staticmethod
    def _window(draft: AuditDraft) -> float | None:
        return draft.repeat_s if draft.repeat_s is not None else REPEAT_WINDOW_S.get(draft.action)

    @classmethod
    def _key(cls, draft: AuditDraft) -> str | None:
        if cls._window(draft) is None or draft.outcome != "ok":
            return None
        return json.dumps([draft.actor, draft.action, draft.target, draft.source_address,
                           sorted(draft.detail.items())], default=str)

    def is_repeat(self, draft: AuditDraft) -> bool:
        key = self._key(draft)
        if key is None:
            return False
        at = self.seen.get(key)
        window = self._window(draft) or 0.0
        return at is not None and self.clock() - at < window

    def remember(self, draft: AuditDraft) -> None:
        key = self._key(draft)
        if key is None:
            return
        now = self.clock()
        if len(self.seen) >= MAX_REMEMBERED:
            longest = max(LONGEST_REPEAT_S, *REPEAT_WINDOW_S.values())
            self.seen = {k: t for k, t in self.seen.items() if now - t < longest}
            while len(self.seen) >= MAX_REMEMBERED:
                del self.seen[next(iter(self.seen))]
        self.seen[key] = now


class ChainStore(Protocol):
    """Where this node's chain lives (JetStream in the service, a list in tests)."""

    async def last(self) -> tuple[AuditHead, int]:
        """The chain's head and its newest entry's sequence in the node's own stream
        (EMPTY_HEAD and 0: no entry yet)."""
        ...

    async def append(self, entry: AuditRecorded, expected_last: int) -> int:
        """Store `entry` if the chain's newest entry is still at `expected_last`; returns
        its own sequence. Raises ChainConflict if not, anything else if unavailable."""
        ...


class JetStreamChain:
    """The node's chain on its own stream: the subject `event(node, "audit.recorded")`."""

    def __init__(self, js: Any, node_id: str) -> None:
        self.js = js
        self.stream = subjects.events_stream(node_id)
        self.subject = subjects.event(node_id, AUDIT_TYPE)

    async def last(self) -> tuple[AuditHead, int]:
        from nats.js.errors import NotFoundError

        try:
            msg = await self.js.get_last_msg(self.stream, self.subject)
        except NotFoundError:
            return EMPTY_HEAD, 0
        return claimed_head(msg.data or b""), int(msg.seq or 0)

    async def append(self, entry: AuditRecorded, expected_last: int) -> int:
        from nats.js.errors import APIError

        try:
            ack = await self.js.publish(
                self.subject, entry.model_dump_json().encode(),
                headers={"Nats-Msg-Id": entry.event_id,
                         "Nats-Expected-Last-Subject-Sequence": str(expected_last)},
                timeout=PUBLISH_TIMEOUT_S,
            )
        except APIError as exc:
            if exc.err_code == 10071:  # JSStreamWrongLastSequenceErrF
                raise ChainConflict(str(exc)) from exc
            raise
        return int(ack.seq)


def claimed_head(data: bytes) -> AuditHead:
    """The head a stored entry states. Only this node's web and operator may publish
    on the chain's subject; if what is there does not decode, the chain continues after
    the seq and hash it claims (or from the start), and verification shows the break."""
    try:
        entry = AuditRecorded.model_validate_json(data)
        return head_of(entry)
    except ValueError as exc:
        log.error("audit_head_undecodable", error=str(exc)[:200])
    try:
        raw = json.loads(data)
        return AuditHead(seq=int(raw["seq"]), hash=str(raw["hash"])[:128])
    except (ValueError, KeyError, TypeError):
        return EMPTY_HEAD


class AuditAppender:
    """Seals and stores entries one at a time, continuing the stored chain."""

    def __init__(self, store: ChainStore, node_id: str,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.node_id = node_id
        self.now = now
        self.lock = asyncio.Lock()
        self.head: AuditHead | None = None  # None: to be (re)loaded from the store
        self.stored_seq = 0
        self.conflicts = 0

    async def _load(self) -> None:
        self.head, self.stored_seq = await self.store.last()

    async def append(self, draft: AuditDraft) -> AuditRecorded:
        async with self.lock:
            for _ in range(APPEND_ATTEMPTS):
                if self.head is None:
                    await self._load()
                assert self.head is not None
                entry = seal(self.head, node_id=self.node_id, at=self.now(), action=draft.action,
                             actor=draft.actor, target=draft.target,
                             source_address=draft.source_address, outcome=draft.outcome,
                             detail=bounded_detail(draft.detail))
                try:
                    self.stored_seq = await self.store.append(entry, self.stored_seq)
                except ChainConflict:
                    self.conflicts += 1
                    log.warning("audit_chain_moved", seq=entry.seq)
                    self.head = None
                    continue
                except Exception:
                    self.head = None  # stored or not, we no longer know: read it back
                    raise
                self.head = head_of(entry)
                return entry
            raise AuditUnavailable("the audit chain kept moving under this writer")


class Auditor:
    """The one way anything in the web records an audit entry."""

    def __init__(self, appender: AuditAppender, registry: Registry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.appender = appender
        self.gate = FloodGate(clock)
        self.repeats = RepeatFilter(clock)
        self.m_recorded = registry.counter("web_audit_recorded_total", "audit entries stored")
        self.m_held = registry.counter(
            "web_audit_aggregated_total",
            "failed logins and anonymous refusals held back into a per-minute aggregate entry")
        self.m_repeats = registry.counter(
            "web_audit_repeats_total", "repeated reads inside their window, not recorded again")
        self.m_failed = registry.counter(
            "web_audit_failures_total", "audit entries the bus could not store")

    async def record(self, draft: AuditDraft, required: bool | None = None) -> AuditRecorded | None:
        """Store `draft` (None when held back or a repeat). If storing fails: raise
        AuditUnavailable when `required` (default: reads of recordings, see
        REQUIRED_ACTIONS), else log, count and return None."""
        must = draft.action in REQUIRED_ACTIONS if required is None else required
        if self.repeats.is_repeat(draft):
            self.m_repeats.inc(action=draft.action)
            return None
        if not self.gate.admit(draft):
            self.m_held.inc(action=draft.action)
            return None
        try:
            entry = await self.appender.append(draft)
        except Exception as exc:
            self.m_failed.inc(action=draft.action)
            log.error("audit_not_stored", action=draft.action, actor=draft.actor,
                      target=draft.target, source=draft.source_address, required=must,
                      error=str(exc)[:200])
            if must:
                raise AuditUnavailable(str(exc)) from exc
            return None
        self.m_recorded.inc(action=draft.action)
        self.repeats.remember(draft)
        return entry

    async def flush_aggregates(self) -> int:
        """Write what the flood gate held back (called every few seconds)."""
        written = 0
        for draft in self.gate.aggregate():
            try:
                await self.appender.append(draft)
                written += 1
            except Exception as exc:
                self.m_failed.inc(action=draft.action)
                log.error("audit_aggregate_not_stored", action=draft.action,
                          detail=dict(draft.detail), error=str(exc)[:200])
        return written

    async def run(self, stopping: asyncio.Event, every_s: float = 5.0) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=every_s)
            await self.flush_aggregates()
