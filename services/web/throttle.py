"""Login throttling per source address: a token bucket of password checks.

Every password check that is not answered from the success cache takes a token from
the bucket of the caller's address *before* the hash is computed; a success gives it
back, a failure keeps it spent. An empty bucket means 429 with Retry-After, at the
cost of a dictionary lookup. The key is the source address (an IPv6 /64, which one
host usually owns whole), never the username: a stranger flooding bad logins for
`admin` throttles only themself, the real admin at another address is not slowed.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# 10 password checks at once, then one every 6 s: a person mistyping a password
# never notices; a guesser gets 10 guesses a minute per address instead of 60 a second.
BURST = 10
REFILL_PER_S = 10 / 60.0
MAX_ADDRESSES = 10_000


def address_key(host: str | None) -> str:
    """The throttled unit for a source address: the IPv4 address, or the IPv6 /64."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class LoginThrottle:
    """Token buckets per address; pure (the clock is injected), bounded in memory."""

    def __init__(
        self,
        burst: int = BURST,
        refill_per_s: float = REFILL_PER_S,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.burst = float(burst)
        self.refill_per_s = refill_per_s
        self.clock = clock
        self.max_addresses = max_addresses
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.refill_per_s)
            bucket.updated = now
        return bucket

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.max_addresses:
            return
        full_after = (self.burst / self.refill_per_s) if self.refill_per_s > 0 else math.inf
        for key in [k for k, b in self._buckets.items() if now - b.updated >= full_after]:
            del self._buckets[key]  # refilled by now: forgetting it changes nothing
        while len(self._buckets) >= self.max_addresses:
            del self._buckets[next(iter(self._buckets))]  # the oldest address seen

    def try_acquire(self, key: str) -> float | None:
        """Take a token for one password check: None if granted, else seconds to wait."""
        wait = self.retry_after(key)
        if wait is None:
            self._buckets[key].tokens -= 1.0
        return wait

    def retry_after(self, key: str) -> float | None:
        """Seconds until this address may try again (None: it may now), taking nothing."""
        now = self.clock()
        bucket = self._bucket(key, now)
        if bucket.tokens >= 1.0:
            return None
        if self.refill_per_s <= 0:
            return math.inf
        return (1.0 - bucket.tokens) / self.refill_per_s

    def give_back(self, key: str) -> None:
        """A check that succeeded costs nothing: only failures use up the budget."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1.0)

    def tokens(self, key: str) -> float:
        return self._bucket(key, self.clock()).tokens

    def __len__(self) -> int:
        return len(self._buckets)
