"""HTTP Basic authentication against the users projection, with a short success cache.

scrypt costs ~50 ms and 16 MiB per check on purpose; an audio player issues many
Range requests per recording, so a verified (username, password) pair is remembered
for a minute. The cache is keyed by a hash (no plaintext kept) and re-checked against
the user's current password hash, so a password change or removal takes effect at once.

Password checks are throttled per source address (`throttle.py`) before any hash is
computed, and at most a few run at once, in threads, so a flood of bad logins neither
blocks the event loop nor queues in front of a real user from another address. The
same budget covers Basic, the login page and API tokens (`Authorization: Bearer`).

Browsers sign in on the login page and then carry a session cookie (`sessions.py`);
a session is only as good as its user: removed, disabled or with another password
since the login (on any node), it ends at its next request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import structlog

from callrec.metrics import Registry
from callrec.users import ROLE_RANK, User, UsersProjection, hash_password
from contracts.v1.events import Role

from .audit_log import AuditDraft
from .sessions import SessionStore, credential_stamp
from .throttle import LoginThrottle, address_key

log = structlog.get_logger(component="web")

REALM = "callrec"
CACHE_TTL_S = 60.0
CACHE_MAX = 4096
MAX_CREDENTIAL_LEN = 1024
HASH_CONCURRENCY = 4  # scrypt runs at once: 4 x 16 MiB, and 2 cores stay responsive


AuthMethod = Literal["basic", "session", "token"]


@dataclass(frozen=True)
class Principal:
    """Who is calling, with what they may see (read fresh from the projection).

    `numbers` are the participant numbers whose recordings they may see (None: all):
    a user's own extensions; a supervisor's plus every extension of every member of a
    group they supervise; an admin's None (see `UsersProjection.visible_numbers`)."""

    username: str
    role: Role
    extensions: tuple[str, ...]
    numbers: tuple[str, ...] | None
    via: AuthMethod = "basic"
    session_id: str | None = field(default=None, repr=False)

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def at_least(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def visible_numbers(self) -> list[str] | None:
        """None: sees everything; otherwise recordings with one of these participant numbers."""
        return None if self.numbers is None else list(self.numbers)

    def may_see(self, numbers: list[str]) -> bool:
        return self.numbers is None or any(n in self.numbers for n in numbers)

    def may_annotate(self) -> bool:
        """Notes and tags on a recording this principal may see (`visible_record` decides
        that): supervisors and admins; a plain user plays and downloads only."""
        return self.at_least("supervisor")





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


def principal_of(user: User, users: UsersProjection, via: AuthMethod = "basic",
                 session_id: str | None = None) -> Principal:
    numbers = users.visible_numbers(user)
    return Principal(user.username, user.role, tuple(user.extensions),
                     None if numbers is None else tuple(numbers), via, session_id)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header, None if it is not one."""
    if not header or len(header) > 4 * MAX_CREDENTIAL_LEN:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


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
        sessions: SessionStore | None = None,
    ) -> None:
        self.users = users
        self.audit = audit
        self.sessions = sessions if sessions is not None else SessionStore(None)
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
            or not user.can_log_in
        ):
            self._cache.pop(key, None)
            return None
        return principal_of(user, self.users)

    def remember(self, username: str, password: str, password_hash: str) -> None:
        now = self.clock()
        if len(self._cache) >= CACHE_MAX:
            for stale in [k for k, v in self._cache.items() if v[0] <= now]:
                del self._cache[stale]
            while len(self._cache) >= CACHE_MAX:
                del self._cache[next(iter(self._cache))]
        self._cache[self._key(username, password)] = (now + self.ttl_s, username, password_hash)

    async def authenticate(self, header: str | None, source: str | None = None) -> Principal | None:
        """The principal for these Basic credentials, None if they are missing or wrong.

        Raises `LoginThrottled` when `source` has used up its password checks, even
        for cached credentials: otherwise the cache would be a fast guessing oracle
        for a password someone else used in the last minute.
        """
        credentials = parse_basic(header)
        if credentials is None:
            return None  # nothing to check: the client gets the Basic challenge
        username, password = credentials
        user = await self.check_password(username, password, source, via="basic")
        return None if user is None else principal_of(user, self.users)

    async def check_password(self, username: str, password: str, source: str | None,
                             via: AuthMethod = "session",
                             audit_success: bool = True) -> User | None:
        """The user if the password is right and they may log in; throttled per address
        (`LoginThrottled`) for Basic, the login page and password changes alike. Each
        failure is audited; a success as a `login` (Basic: once an hour per client)."""
        key = address_key(source)
        wait = self.throttle.retry_after(key)
        if wait is None:
            if via == "basic" and self.cached(username, password) is not None:
                return self.users.users.get(username)
            wait = self.throttle.try_acquire(key)
        if wait is not None:
            self.m_throttled.inc()
            await self._audit(AuditDraft(action="login_failed", actor=username[:64],
                                         source_address=source, outcome="denied",
                                         detail={"method": via, "throttled": True}))
            raise LoginThrottled(wait)
        async with self._slots:
            user = await asyncio.to_thread(self.users.authenticate, username, password)
        if user is None or not user.password_hash:
            self.m_failed.inc()
            log.info("login_failed", source=key, username=username[:64], via=via,
                     tokens_left=round(self.throttle.tokens(key), 2))
            await self._audit(AuditDraft(action="login_failed", actor=username[:64],
                                         source_address=source, outcome="failed",
                                         detail={"method": via}))
            return None
        self.throttle.give_back(key)
        if audit_success:
            # Basic checks a password (not a cache hit) often: once an hour per client.
            await self._audit(AuditDraft(action="login", actor=username, source_address=source,
                                         detail={"method": via},
                                         repeat_s=3600.0 if via == "basic" else None))
        self.remember(username, password, user.password_hash)
        return user

    async def bearer(self, header: str | None, source: str | None) -> Principal | None:
        """The owner of this API token; a wrong token spends the address's budget."""
        token = bearer_token(header)
        if token is None:
            return None
        key = address_key(source)
        wait = self.throttle.retry_after(key)
        if wait is not None:
            self.m_throttled.inc()
            raise LoginThrottled(wait)
        user = self.users.user_for_token(token, datetime.now(UTC))
        if user is None:
            self.throttle.try_acquire(key)
            self.m_failed.inc()
            log.info("token_refused", source=key)
            await self._audit(AuditDraft(action="login_failed", source_address=source,
                                         outcome="failed", detail={"method": "token"}))
            return None
        return principal_of(user, self.users, via="token")

    def open_session(self, user: User, password_hash: str | None = None) -> str:
        """A new session for `user` (a fresh id: never one the browser brought), bound
        to `password_hash` (default: the user's current one)."""
        return self.sessions.create(
            user.username, credential_stamp(password_hash or user.password_hash))

    def session(self, session_id: str | None) -> Principal | None:
        """The principal of a live session whose user still may log in with the same
        password; anything else ends the session."""
        found = self.sessions.lookup(session_id)
        if found is None:
            return None
        user = self.users.users.get(found.username)
        if (user is None or not user.can_log_in
                or credential_stamp(user.password_hash) != found.stamp):
            self.sessions.end_hash(found.id_hash)
            return None
        return principal_of(user, self.users, via="session", session_id=session_id)

    async def audit_event(self, draft: AuditDraft) -> None:
        """An entry from the session layer (login, logout, password, tokens)."""
        await self._audit(draft)

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
