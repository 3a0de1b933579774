"""Missed calls: every INVITE refused or not recorded becomes a record, boundedly.

An admin asks "why is this call not recorded?"; the answer is the refusal we sent
(404 unknown user, 403 stranger, 486 licences, 503 cannot record ...), with the
numbers and the time. A scanner can send thousands of INVITEs a second, so what
is stored is bounded by `MissedAggregator` (pure, time passed in):

- per (source, reason), the first `per_source` refusals of each window (a minute)
  are records of their own;
- beyond that, one aggregate record per (source, reason) and window, with a count
  and the first and last time, written when the window closes;
- at most `individual_cap` single records and `aggregate_cap` aggregates per window
  in all; refusals beyond those (many spoofed sources) fold into one aggregate per
  reason with source "*";
- retransmissions of one INVITE (same source, Call-ID and CSeq) are one miss.

So the counts of the records always add up to the refusals (retransmissions
aside), and a window yields at most individual_cap + aggregate_cap + one per reason
records, whatever arrives. The records go to a bounded stream (see
callrec.bus.ensure_missed_stream); `MissedPublisher` queues them with a bound too,
and every record it cannot store is counted.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog

from callrec.metrics import Counter, Registry
from contracts.v1.missed import TEXT_MAX, MissedCall, MissedReason, clean

from .sip.message import SipParseError, SipRequest, parse_message
from .sip.transport import Peer

log = structlog.get_logger()

WINDOW_S = 60.0
PER_SOURCE = 5
INDIVIDUAL_CAP = 60
AGGREGATE_CAP = 60
# A UDP INVITE is retransmitted for up to 64*T1 = 32 s (RFC 3261 Timer B).
RETRANSMISSION_S = 32.0
RETRANSMISSION_KEYS = 4096
OVERFLOW_SOURCE = "*"
OVERFLOW_SOURCES_COUNTED = 1000
QUEUE_MAX = 2000
PUBLISH_ATTEMPTS = 3

Outcome = Literal["recorded", "aggregated", "overflow", "retransmission"]

_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]{1,256})", re.IGNORECASE)
_CSEQ = re.compile(rb"\r\ncseq[ \t]*:[ \t]*([0-9]{1,10})", re.IGNORECASE)


@dataclass(frozen=True)
class CallInfo:
    """What a refused INVITE said about the call (texts cleaned by MissedCall)."""

    from_number: str | None = None
    from_name: str | None = None
    to_number: str | None = None
    to_name: str | None = None
    numbers: tuple[str, ...] = ()
    call_id: str | None = None
    user_agent: str | None = None
    transport: Literal["UDP", "TCP"] | None = None
    kind: Literal["cucm", "siprec", "sip"] | None = None


def describe_request(request: SipRequest, peer: Peer, *, numbers: Sequence[str] = (),
                     kind: Literal["cucm", "siprec", "sip"] | None = None) -> CallInfo:
    def party(which: str) -> tuple[str | None, str | None]:
        try:
            address = request.from_ if which == "from" else request.to
        except SipParseError:
            return None, None
        return address.uri.user, address.display

    from_number, from_name = party("from")
    to_number, to_name = party("to")
    return CallInfo(
        from_number=from_number, from_name=from_name, to_number=to_number, to_name=to_name,
        numbers=tuple(numbers), call_id=request.headers.get("Call-ID"),
        user_agent=request.headers.get("User-Agent"),
        transport="TCP" if peer.transport == "TCP" else "UDP", kind=kind,
    )


def describe_raw(data: bytes, peer: Peer) -> CallInfo:
    """The same from bytes the gate did not parse (parsed only when a record is due)."""
    try:
        message = parse_message(data)
    except SipParseError:
        match = _CALL_ID.search(data)
        call_id = match.group(1).decode("utf-8", "replace") if match else None
        return CallInfo(call_id=call_id, transport="TCP" if peer.transport == "TCP" else "UDP")
    if isinstance(message, SipRequest):
        return describe_request(message, peer)
    return CallInfo()


def is_invite(data: bytes) -> bool:
    """Cheap: does this message start with an INVITE request line?"""
    return data.lstrip(b"\r\n")[:7] == b"INVITE "


def raw_key(data: bytes) -> str | None:
    """Call-ID and CSeq number without parsing: what retransmissions share."""
    call_id, cseq = _CALL_ID.search(data), _CSEQ.search(data)
    if call_id is None:
        return None
    number = cseq.group(1).decode() if cseq else ""
    return f"{call_id.group(1).decode('utf-8', 'replace').strip()} {number}"


def request_key(request: SipRequest) -> str | None:
    try:
        return f"{request.call_id} {request.cseq[0]}"
    except SipParseError:
        return None


@dataclass
class _Aggregate:
    source: str
    reason: MissedReason
    status: int | None
    detail: str | None
    info: CallInfo
    first: datetime
    last: datetime
    count: int = 0
    sources: set[str] = field(default_factory=set)


class MissedAggregator:
    """Refusals in, a bounded number of records out (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        *,
        window_s: float = WINDOW_S,
        per_source: int = PER_SOURCE,
        individual_cap: int = INDIVIDUAL_CAP,
        aggregate_cap: int = AGGREGATE_CAP,
        retransmission_s: float = RETRANSMISSION_S,
        retransmission_keys: int = RETRANSMISSION_KEYS,
    ) -> None:
        self.node_id = node_id
        self.window_s = window_s
        self.per_source = per_source
        self.individual_cap = individual_cap
        self.aggregate_cap = aggregate_cap
        self.retransmission_s = retransmission_s
        self.retransmission_keys = retransmission_keys
        self.window: float | None = None  # start of the current window (epoch seconds)
        self.individual: dict[tuple[str, MissedReason], int] = {}
        self.individual_total = 0
        self.aggregates: dict[tuple[str, MissedReason], _Aggregate] = {}
        self.overflow: dict[MissedReason, _Aggregate] = {}
        self.recent: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.outcomes: dict[Outcome, int] = {
            "recorded": 0, "aggregated": 0, "overflow": 0, "retransmission": 0}
        self.last_outcome: Outcome | None = None

    def note(
        self,
        now: datetime,
        source: str,
        reason: MissedReason,
        status: int | None,
        detail: str | None = None,
        *,
        key: str | None = None,
        info: Callable[[], CallInfo] = CallInfo,
    ) -> list[MissedCall]:
        """One refusal at `now`; the records to store now (closed windows included).
        `info` is called only when a record needs the call's details."""
        t = now.timestamp()
        if key is not None and self._retransmitted(source, key, t):
            self._outcome("retransmission")
            return []
        out = self._roll(t)
        slot = (source, reason)
        if (self.individual.get(slot, 0) < self.per_source
                and self.individual_total < self.individual_cap):
            self.individual[slot] = self.individual.get(slot, 0) + 1
            self.individual_total += 1
            self._outcome("recorded")
            out.append(self._record(source, reason, status, detail, info(), now))
            return out
        aggregate = self.aggregates.get(slot)
        if aggregate is None and len(self.aggregates) < self.aggregate_cap:
            aggregate = self.aggregates[slot] = _Aggregate(
                source, reason, status, detail, info(), now, now)
        if aggregate is not None:
            self._outcome("aggregated")
        else:
            aggregate = self.overflow.get(reason)
            if aggregate is None:
                aggregate = self.overflow[reason] = _Aggregate(
                    OVERFLOW_SOURCE, reason, status, detail, info(), now, now)
            if len(aggregate.sources) < OVERFLOW_SOURCES_COUNTED:
                aggregate.sources.add(source)
            self._outcome("overflow")
        aggregate.count += 1
        aggregate.last = max(aggregate.last, now)
        return out

    def tick(self, now: datetime) -> list[MissedCall]:
        """The aggregates of a window that has closed by `now`."""
        return self._roll(now.timestamp())

    def flush(self) -> list[MissedCall]:
        """Every pending aggregate now (at shutdown), the window's budgets kept."""
        out = [self._aggregate_record(a) for a in self.aggregates.values()]
        out += [self._aggregate_record(a) for a in self.overflow.values()]
        self.aggregates.clear()
        self.overflow.clear()
        return out

    # ---- internals -------------------------------------------------------------------

    def _outcome(self, outcome: Outcome) -> None:
        self.outcomes[outcome] += 1
        self.last_outcome = outcome

    def _retransmitted(self, source: str, key: str, t: float) -> bool:
        recent = self.recent
        while recent:
            oldest_key, oldest_t = next(iter(recent.items()))
            if t - oldest_t < self.retransmission_s and len(recent) <= self.retransmission_keys:
                break
            del recent[oldest_key]
        seen = recent.get((source, key))
        if seen is not None and 0 <= t - seen < self.retransmission_s:
            return True
        recent[(source, key)] = t
        recent.move_to_end((source, key))
        if len(recent) > self.retransmission_keys:
            recent.popitem(last=False)
        return False

    def _roll(self, t: float) -> list[MissedCall]:
        start = t - t % self.window_s
        if self.window is None:
            self.window = start
            return []
        if start <= self.window:  # same window, or the wall clock stepped back
            return []
        out = self.flush()
        self.window = start
        self.individual.clear()
        self.individual_total = 0
        return out

    def _record(self, source: str, reason: MissedReason, status: int | None,
                detail: str | None, info: CallInfo, now: datetime) -> MissedCall:
        return MissedCall(
            node_id=self.node_id, at=now, source=source, status=status, reason=reason,
            detail=detail, transport=info.transport, from_number=info.from_number,
            from_name=info.from_name, to_number=info.to_number, to_name=info.to_name,
            numbers=list(info.numbers), call_id=info.call_id, user_agent=info.user_agent,
            kind=info.kind,
        )

    def _aggregate_record(self, aggregate: _Aggregate) -> MissedCall:
        record = self._record(aggregate.source, aggregate.reason, aggregate.status,
                              aggregate.detail, aggregate.info, aggregate.first)
        detail = aggregate.detail
        if aggregate.source == OVERFLOW_SOURCE:
            many = len(aggregate.sources)
            plus = "+" if many >= OVERFLOW_SOURCES_COUNTED else ""
            detail = f"from {many}{plus} sources" + (f"; first: {detail}" if detail else "")
        return record.model_copy(update={
            "until": aggregate.last, "count": aggregate.count, "aggregated": True,
            "detail": clean(detail, TEXT_MAX),
        })


class MissedCalls:
    """The port gate and UAS report refused INVITEs to: aggregates them and hands
    the records to `sink` (the publisher's queue)."""

    def __init__(
        self,
        aggregator: MissedAggregator,
        sink: Callable[[MissedCall], None],
        metrics: Registry | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.aggregator = aggregator
        self.sink = sink
        self.clock = clock
        self.counter: Counter | None = metrics.counter(
            "signaling_missed_total",
            "refused INVITEs by how they were kept: recorded (a record of their own), "
            "aggregated, overflow (many sources in one record), retransmission (not counted "
            "again)") if metrics is not None else None

    def request(self, request: SipRequest, peer: Peer, reason: MissedReason,
                status: int | None, detail: str | None = None, *,
                numbers: Sequence[str] = (),
                kind: Literal["cucm", "siprec", "sip"] | None = None) -> None:
        self._note(peer.host, reason, status, detail, request_key(request),
                   lambda: describe_request(request, peer, numbers=numbers, kind=kind))

    def raw(self, data: bytes, peer: Peer, reason: MissedReason, status: int | None,
            detail: str | None = None) -> None:
        """A refused message the gate did not parse: only INVITEs are misses."""
        if not is_invite(data):
            return
        self._note(peer.host, reason, status, detail, raw_key(data),
                   lambda: describe_raw(data, peer))

    def tick(self) -> None:
        self._emit(self.aggregator.tick(self.clock()))

    def flush(self) -> None:
        self._emit(self.aggregator.flush())

    async def run(self, interval: float = 1.0) -> None:
        """Write each window's aggregates soon after it closes."""
        while True:
            await asyncio.sleep(interval)
            self.tick()

    def _note(self, source: str, reason: MissedReason, status: int | None,
              detail: str | None, key: str | None, info: Callable[[], CallInfo]) -> None:
        try:
            records = self.aggregator.note(self.clock(), source, reason, status, detail,
                                           key=key, info=info)
        except Exception:  # a miss must never cost the call handling
            log.exception("missed_note_failed", source=source, reason=reason)
            return
        outcome = self.aggregator.last_outcome
        if self.counter is not None and outcome is not None:
            self.counter.inc(outcome=outcome)
        self._emit(records)

    def _emit(self, records: list[MissedCall]) -> None:
        for record in records:
            self.sink(record)


class MissedPublisher:
    """A bounded queue in front of the stream: a slow or absent bus drops records
    (counted), never blocks or grows the SIP path."""

    def __init__(self, publish: Callable[[MissedCall], Awaitable[None]],
                 metrics: Registry | None = None, max_queue: int = QUEUE_MAX,
                 retry_delay: float = 0.5) -> None:
        self.publish = publish
        self.queue: asyncio.Queue[MissedCall] = asyncio.Queue(max_queue)
        self.retry_delay = retry_delay
        self.counter: Counter | None = metrics.counter(
            "signaling_missed_records_total",
            "missed-call records: stored, or dropped because the queue was full or the "
            "stream refused them") if metrics is not None else None

    def put(self, record: MissedCall) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self._count("queue_full")

    async def run(self) -> None:
        while True:
            record = await self.queue.get()
            await self._store(record)

    async def drain(self, timeout: float) -> None:
        """Store what is queued (at shutdown), for at most `timeout` seconds."""
        async def empty() -> None:
            while not self.queue.empty():
                await self._store(self.queue.get_nowait())
        try:
            await asyncio.wait_for(empty(), timeout)
        except TimeoutError:
            self._count("queue_full", float(self.queue.qsize()))

    async def _store(self, record: MissedCall) -> None:
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                await self.publish(record)
                self._count("stored")
                return
            except Exception as exc:
                if attempt == PUBLISH_ATTEMPTS - 1:
                    log.warning("missed_record_dropped", error=str(exc)[:200],
                                reason=record.reason, source=record.source)
                    self._count("publish_failed")
                    return
                await asyncio.sleep(self.retry_delay * (attempt + 1))

    def _count(self, result: str, amount: float = 1.0) -> None:
        if self.counter is not None:
            self.counter.inc(amount, result=result)
