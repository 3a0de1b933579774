"""HTTP Basic authentication against the users projection, with a short success cache.

scrypt costs ~50 ms and 16 MiB per check on purpose; an audio player issues many
Range requests per recording, so a verified (username, password) pair is remembered
for a minute. The cache is keyed by a hash (no plaintext kept) and re-checked against
the user's current password hash, so a password change or removal takes effect at once.

Password checks are throttled per source address (`throttle.py`) before any hash is
computed, and at most a few run at once, in threads, so a flood of bad logins neither
blocks the event loop nor queues in front of a real user from another address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from callrec.metrics import Registry
from callrec.users import User, UsersProjection, hash_password

from .audit_log import AuditDraft
from .throttle import LoginThrottle, address_key

log = structlog.get_logger(component="web")

REALM = "callrec"
CACHE_TTL_S = 60.0
CACHE_MAX = 4096
MAX_CREDENTIAL_LEN = 1024
HASH_CONCURRENCY = 4  # scrypt runs at once: 4 x 16 MiB, and 2 cores stay responsive


@dataclass(frozen=True)
class Principal:
    """Who is calling, with what they may see (read fresh from the projection)."""

    username: str
    admin: bool
    extensions: tuple[str, ...]

    def visible_numbers(self) -> list[str] | None:
        """None: sees everything; otherwise recordings with one of these participant numbers."""
        return None if self.admin else list(self.extensions)

    def may_see(self, numbers: list[str]) -> bool:
        return self.admin or any(n in self.extensions for n in numbers)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(username, password) from an `Authorization: Basic ...` header, None if unusable."""
    if not header or len(header) > 4 * MAX_CREDENTIAL_LEN:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username, sep, password = decoded.partition(":")
    if not sep or not username or len(username) > 64 or len(password) > MAX_CREDENTIAL_LEN:
        return None
    return username, password


class LoginThrottled(Exception):
    """Too many failed password checks from this address: answer 429, compute nothing."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"retry after {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


def principal_of(user: User) -> Principal:
    return Principal(user.username, user.admin, tuple(user.extensions))


class Authenticator:
    """Verifies credentials off the event loop, at most a few scrypt runs at once."""

    def __init__(
        self,
        users: UsersProjection,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = CACHE_TTL_S,
        concurrency: int = HASH_CONCURRENCY,
        throttle: LoginThrottle | None = None,
        metrics: Registry | None = None,
        audit: Callable[[AuditDraft], Awaitable[object]] | None = None,
    ) -> None:
        self.users = users
        self.audit = audit
        self.clock = clock
        self.ttl_s = ttl_s
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self._cache: dict[str, tuple[float, str, str]] = {}
        self._slots = asyncio.Semaphore(concurrency)
        registry = metrics if metrics is not None else Registry("web", "")
        self.m_failed = registry.counter(
            "web_logins_failed_total", "Password checks that failed (wrong or unknown user)")
        self.m_throttled = registry.counter(
            "web_logins_throttled_total",
            "Logins refused with 429 because their address failed too often (no hash computed)")

    @staticmethod
    def _key(username: str, password: str) -> str:
        return hashlib.sha256(f"{username}\0{password}".encode()).hexdigest()

    def cached(self, username: str, password: str) -> Principal | None:
        key = self._key(username, password)
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, cached_user, cached_hash = entry
        user = self.users.users.get(username)
        if (
            self.clock() >= expires
            or user is None
            or cached_user != username
            or user.password_hash != cached_hash
        ):
            self._cache.pop(key, None)
            return None
        return principal_of(user)

    def remember(self, username: str, password: str, password_hash: str) -> None:
        now = self.clock()
        if len(self._cache) >= CACHE_MAX:
            for stale in [k for k, v in self._cache.items() if v[0] <= now]:
                del self._cache[stale]
            while len(self._cache) >= CACHE_MAX:
                del self._cache[next(iter(self._cache))]
        self._cache[self._key(username, password)] = (now + self.ttl_s, username, password_hash)

    async def authenticate(self, header: str | None, source: str | None = None) -> Principal | None:
        """The principal for these credentials, None if they are missing or wrong.

        Raises `LoginThrottled` when `source` has used up its password checks, even
        for cached credentials: otherwise the cache would be a fast guessing oracle
        for a password someone else used in the last minute.
        """
        credentials = parse_basic(header)
        if credentials is None:
            return None  # nothing to check: the client gets the Basic challenge
        username, password = credentials
        key = address_key(source)
        wait = self.throttle.retry_after(key)
        if wait is None:
            hit = self.cached(username, password)
            if hit is not None:
                return hit
            wait = self.throttle.try_acquire(key)
        if wait is not None:
            self.m_throttled.inc()
            await self._audit(AuditDraft(action="login_failed", actor=username[:64],
                                         source_address=source, outcome="denied",
                                         detail={"method": "basic", "throttled": True}))
            raise LoginThrottled(wait)
        async with self._slots:
            user = await asyncio.to_thread(self.users.authenticate, username, password)
        if user is None or not user.password_hash:
            self.m_failed.inc()
            log.info("login_failed", source=key, username=username[:64],
                     tokens_left=round(self.throttle.tokens(key), 2))
            await self._audit(AuditDraft(action="login_failed", actor=username[:64],
                                         source_address=source, outcome="failed",
                                         detail={"method": "basic"}))
            return None
        self.throttle.give_back(key)
        # A checked password (not a cache hit): once an hour per client is enough.
        await self._audit(AuditDraft(action="login", actor=username, source_address=source,
                                     detail={"method": "basic"}, repeat_s=3600.0))
        self.remember(username, password, user.password_hash)
        return principal_of(user)

    async def _audit(self, draft: AuditDraft) -> None:
        """Never in the way of answering: failures are counted and logged by the auditor."""
        if self.audit is not None:
            try:
                await self.audit(draft)
            except Exception as exc:
                log.error("login_audit_failed", action=draft.action, error=str(exc)[:200])

    async def hash_password(self, password: str) -> str:
        """A new hash (user changes) under the same cap as password checks."""
        async with self._slots:
            return await asyncio.to_thread(hash_password, password)
