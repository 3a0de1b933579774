"""HTTP Basic authentication against the users projection, with a short success cache.

scrypt costs ~50 ms and 16 MiB per check on purpose; an audio player issues many
Range requests per recording, so a verified (username, password) pair is remembered
for a minute. The cache is keyed by a hash (no plaintext kept) and re-checked against
the user's current password hash, so a password change or removal takes effect at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from callrec.users import User, UsersProjection

REALM = "callrec"
CACHE_TTL_S = 60.0
CACHE_MAX = 4096
MAX_CREDENTIAL_LEN = 1024


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


def principal_of(user: User) -> Principal:
    return Principal(user.username, user.admin, tuple(user.extensions))


class Authenticator:
    """Verifies credentials off the event loop, at most a few scrypt runs at once."""

    def __init__(
        self,
        users: UsersProjection,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = CACHE_TTL_S,
        concurrency: int = 4,
    ) -> None:
        self.users = users
        self.clock = clock
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, str, str]] = {}
        self._slots = asyncio.Semaphore(concurrency)

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

    async def authenticate(self, header: str | None) -> Principal | None:
        credentials = parse_basic(header)
        if credentials is None:
            return None
        username, password = credentials
        hit = self.cached(username, password)
        if hit is not None:
            return hit
        async with self._slots:
            user = await asyncio.to_thread(self.users.authenticate, username, password)
        if user is None or not user.password_hash:
            return None
        self.remember(username, password, user.password_hash)
        return principal_of(user)
