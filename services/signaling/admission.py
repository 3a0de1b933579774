"""Who may talk SIP to the recorder, and how much: pure rules, time passed in.

A recorder is only ever called by a handful of PBXs/SBCs, so SIP admission is an
allow-list of their networks. Everyone else is refused with 403 (a PBX missing from
the list then shows a clear refusal in its trunk status instead of silently failing
over), but only a few times a second per source and overall: beyond that we stay
silent, so the node cannot be used to reflect traffic at a spoofed address.
Allow-listed PBXs get a generous per-source rate (a CUCM node can legitimately send
hundreds of INVITEs a second); over it their new INVITEs get 503, so they fail over.

Everything here is deterministic given `now`; the transport and gate feed it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK_DEFAULT: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

# Strangers (not on the allow-list): a few 403s per source, and few overall.
STRANGER_RATE, STRANGER_BURST = 2.0, 10.0
STRANGERS_RATE, STRANGERS_BURST = 50.0, 100.0
# Buckets kept at most (least recently seen forgotten first): bounded memory under spoofing.
MAX_TRACKED_SOURCES = 65536
REFUSAL_LOG_INTERVAL = 60.0

RefusalReason = Literal[
    "not_allowed",        # source not on --sip-allow: 403
    "not_allowed_drop",   # same, beyond the refusal rate: silence
    "rate_limited",       # allow-listed source over --sip-rate: 503 to INVITE/OPTIONS
    "overloaded",         # a new INVITE waited over --sip-shed-after in our queue: 503
    "pending_media",      # too many legs from this source still waiting for RTP: 503
    "leg_source",         # a second CUCM leg from another source than the first: 403
    "tcp_source_cap",     # per-source TCP connection cap
    "tcp_global_cap",     # node-wide TCP connection cap
]
REFUSAL_REASONS: tuple[RefusalReason, ...] = (
    "not_allowed", "not_allowed_drop", "rate_limited", "overloaded", "pending_media",
    "leg_source",
    "tcp_source_cap", "tcp_global_cap",
)


@functools.lru_cache(maxsize=1024)
def source_ip(host: str) -> IpAddress | None:
    """The address a packet came from, IPv4-mapped IPv6 seen as IPv4 (dual-stack binds).
    Remembered: every datagram and every INVITE asks about the same few PBXs (the
    addresses are immutable values)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def same_source(a: str, b: str) -> bool:
    first, second = source_ip(a), source_ip(b)
    return first is not None and first == second


def parse_networks(cidrs: Iterable[str]) -> tuple[IpNetwork, ...]:
    """CIDRs (or single addresses) as networks; ValueError names the bad one."""
    networks: list[IpNetwork] = []
    for text in cidrs:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"--sip-allow {text!r}: not an address or CIDR network") from exc
    return tuple(networks)


def binds_loopback_only(bind: str) -> bool:
    address = source_ip(bind)
    return address is not None and address.is_loopback


@dataclass(frozen=True)
class AllowList:
    networks: tuple[IpNetwork, ...]
    # True when the node listens beyond loopback and nobody was allowed: refuse all, loudly.
    closed: bool = False

    @classmethod
    def for_node(cls, bind: str, configured: Iterable[str]) -> AllowList:
        """The configured networks; without any, only this host's own addresses
        (127.0.0.1 and ::1, not all of 127/8) on a loopback bind, else nobody."""
        networks = parse_networks(configured)
        if networks:
            return cls(networks)
        if binds_loopback_only(bind):
            return cls(parse_networks(LOOPBACK_DEFAULT))
        return cls((), closed=True)

    def allows(self, host: str) -> bool:
        address = source_ip(host)
        return address is not None and any(address in n for n in self.networks)

    def describe(self) -> str:
        return ", ".join(str(n) for n in self.networks) or "nobody"


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False


class SourceLimiter:
    """One token bucket per source address, the least recently seen forgotten first."""

    def __init__(self, rate: float, burst: float, max_sources: int = MAX_TRACKED_SOURCES) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, source: str, now: float) -> bool:
        bucket = self.buckets.get(source)
        if bucket is None:
            bucket = self.buckets[source] = TokenBucket(self.rate, self.burst, now)
            if len(self.buckets) > self.max_sources:
                self.buckets.popitem(last=False)
        else:
            self.buckets.move_to_end(source)
        return bucket.take(now)


Verdict = Literal["admit", "over_limit", "refuse", "drop"]


class SipAdmission:
    """The per-message decision: admit, over the PBX's limit, refuse (403) or drop."""

    def __init__(self, allow: AllowList, pbx_rate: float, pbx_burst: float, now: float) -> None:
        self.allow = allow
        self.pbx = SourceLimiter(pbx_rate, pbx_burst)
        self.stranger = SourceLimiter(STRANGER_RATE, STRANGER_BURST)
        self.strangers = TokenBucket(STRANGERS_RATE, STRANGERS_BURST, now)

    def classify(self, host: str, now: float) -> Verdict:
        if self.allow.allows(host):
            return "admit" if self.pbx.take(host, now) else "over_limit"
        # Spend the per-source budget first, so one loud stranger cannot use up the
        # shared budget that answers everyone else.
        if self.stranger.take(host, now) and self.strangers.take(now):
            return "refuse"
        return "drop"


class RefusalLog:
    """Log a refused source at most once per interval, with the count since its last line."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL,
                 max_sources: int = MAX_TRACKED_SOURCES) -> None:
        self.interval = interval
        self.max_sources = max_sources
        # source -> (time of last line, refusals since then)
        self.sources: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def note(self, source: str, reason: str, now: float) -> int | None:
        """Record one refusal; the number to log now (this one included), or None."""
        key = (source, reason)
        last = self.sources.get(key)
        if last is None or now - last[0] >= self.interval:
            count = (last[1] if last else 0) + 1
            self.sources[key] = (now, 0)
            self.sources.move_to_end(key)
            if len(self.sources) > self.max_sources:
                self.sources.popitem(last=False)
            return count
        self.sources[key] = (last[0], last[1] + 1)
        return None


class Throttle:
    """True at most once per interval: for warnings repeated while a condition lasts."""

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL) -> None:
        self.interval = interval
        self.last: float | None = None
        self.suppressed = 0

    def ready(self, now: float) -> bool:
        if self.last is None or now - self.last >= self.interval:
            self.last = now
            return True
        self.suppressed += 1
        return False


def queue_wait(received_at: float | None, now: float) -> float | None:
    """Seconds a request waited between reaching this host and being taken up (both
    wall clock); None when its arrival is not known. A clock stepped back reads as 0."""
    if received_at is None:
        return None
    return max(0.0, now - received_at)


def waited_too_long(wait: float | None, shed_after: float) -> bool:
    """Whether a new INVITE is shed (503) rather than answered.

    Under overload (a set-up burst beyond what the node's cores do, on top of
    finalizing) INVITEs queue in the socket's buffer and the loop. Answered late, each
    recording misses its first seconds and each PBX retransmission of a waiting INVITE
    is parsed again, which deepens the queue. Answered 503, the PBX records the call on
    its backup now, and the queue drains at the cost of a parse and a response. About
    a second: what the product lets a lost host cost a call. 0 turns it off."""
    return shed_after > 0 and wait is not None and wait > shed_after


def pending_media_limit(configured: int | None, max_channels: int) -> int:
    """Legs one source may have answered but not yet carrying RTP.

    A real PBX's legs get media within a second of the ACK, so only a burst of new
    calls is ever pending; by default half the licences, so a source that answers
    none of its legs with RTP can never hold all licences for the media timeout."""
    if configured is not None:
        return configured
    return max(1, max_channels // 2)


@dataclass(frozen=True)
class TcpLimits:
    per_source: int
    total: int

    @property
    def strangers(self) -> int:
        """Connections all non-allow-listed sources together may hold: a quarter of the
        total, so strangers can never take the slots allow-listed PBXs need."""
        return max(1, self.total // 4)


class TcpSlots:
    """Counts open TCP connections per source; says why a new one is refused."""

    def __init__(self, limits: TcpLimits) -> None:
        self.limits = limits
        self.by_source: dict[str, int] = {}
        self.total = 0
        self.strangers = 0

    def acquire(self, source: str, allowed: bool) -> RefusalReason | None:
        if self.by_source.get(source, 0) >= self.limits.per_source:
            return "tcp_source_cap"
        if self.total >= self.limits.total:
            return "tcp_global_cap"
        if not allowed and self.strangers >= self.limits.strangers:
            return "tcp_global_cap"
        self.by_source[source] = self.by_source.get(source, 0) + 1
        self.total += 1
        if not allowed:
            self.strangers += 1
        return None

    def release(self, source: str, allowed: bool) -> None:
        count = self.by_source.get(source, 0) - 1
        if count <= 0:
            self.by_source.pop(source, None)
        else:
            self.by_source[source] = count
        self.total = max(0, self.total - 1)
        if not allowed:
            self.strangers = max(0, self.strangers - 1)
