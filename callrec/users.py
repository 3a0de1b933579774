"""Users as a projection of user events: who may log in, whose extensions are recorded.

Signaling asks it "may I record extension X?", web asks it "is this password right?";
both build it from the same events, so a user added on any node applies everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from contracts.v1.events import (
    Role,
    UserRemoved,
    UserTokenIssued,
    UserTokenRevoked,
    UserUpserted,
)

UserEvent = UserUpserted | UserRemoved | UserTokenIssued | UserTokenRevoked
ROLE_RANK: dict[Role, int] = {"user": 0, "supervisor": 1, "admin": 2}

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    """scrypt (stdlib, memory-hard) with a random salt, encoded as one string."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    salt_text = base64.b64encode(salt).decode()
    digest_text = base64.b64encode(digest).decode()
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt_text}${digest_text}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest_b64)
        digest = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt_b64),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


class RecordingDecision(Enum):
    RECORD = "record"
    UNKNOWN = "unknown"
    NOT_ENABLED = "not_enabled"


def token_hash(token: str) -> str:
    """How an API token is stored and looked up (never the token itself)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass
class User:
    username: str
    display_name: str | None
    password_hash: str | None
    admin: bool
    extensions: list[str]
    record: bool
    groups: list[str] = field(default_factory=list)
    role: Role = "user"
    supervises: list[str] = field(default_factory=list)
    disabled: bool = False

    @property
    def can_log_in(self) -> bool:
        return bool(self.password_hash) and not self.disabled

    def at_least(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


@dataclass(frozen=True)
class ApiToken:
    token_id: str
    username: str
    name: str
    token_hash: str
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class Group:
    """A group as the users state it: no group exists without a member or supervisor."""

    name: str
    members: tuple[str, ...]
    supervisors: tuple[str, ...]


@dataclass
class UsersProjection:
    users: dict[str, User] = field(default_factory=dict)
    by_extension: dict[str, str] = field(default_factory=dict)
    last_sequence: int = 0
    # Sourced streams can deliver a fact twice; applying an old one again would undo
    # a newer change, so each event applies once.
    applied: set[str] = field(default_factory=set)
    tokens: dict[str, ApiToken] = field(default_factory=dict)  # by token_hash
    # Revocations by token id, kept even before the issue arrives: facts from two
    # nodes may come in either order, and a revoked token must stay revoked.
    revoked_tokens: set[str] = field(default_factory=set)

    def apply(self, event: UserEvent, sequence: int = 0) -> None:
        self.last_sequence = max(self.last_sequence, sequence)
        if event.event_id in self.applied:
            return
        self.applied.add(event.event_id)
        if isinstance(event, UserTokenIssued):
            if event.token_id not in self.revoked_tokens:
                self.tokens[event.token_hash] = ApiToken(
                    event.token_id, event.username, event.name, event.token_hash,
                    event.occurred_at, event.expires_at)
            return
        if isinstance(event, UserTokenRevoked):
            self.revoked_tokens.add(event.token_id)
            for key in [k for k, t in self.tokens.items() if t.token_id == event.token_id]:
                del self.tokens[key]
            return
        if isinstance(event, UserRemoved):
            # A user created again under the same name does not inherit old tokens.
            for key in [k for k, t in self.tokens.items() if t.username == event.username]:
                del self.tokens[key]
        old = self.users.pop(event.username, None)
        if old is not None:
            for ext in old.extensions:
                if self.by_extension.get(ext) == old.username:
                    del self.by_extension[ext]
        if isinstance(event, UserUpserted):
            user = User(
                username=event.username,
                display_name=event.display_name,
                password_hash=event.password_hash,
                admin=event.effective_role == "admin",
                extensions=list(event.extensions),
                record=event.record,
                groups=list(event.groups),
                role=event.effective_role,
                supervises=list(event.supervises),
                disabled=event.disabled,
            )
            self.users[user.username] = user
            for ext in user.extensions:
                self.by_extension[ext] = user.username

    def user_for_extension(self, extension: str | None) -> User | None:
        if not extension:
            return None
        name = self.by_extension.get(extension)
        return self.users.get(name) if name else None

    def recording_decision(self, extensions: list[str]) -> tuple[RecordingDecision, User | None]:
        """Record when any party is an enabled user; 403 when known but none enabled."""
        known = [u for u in (self.user_for_extension(e) for e in extensions) if u is not None]
        for user in known:
            if user.record:
                return RecordingDecision.RECORD, user
        if known:
            return RecordingDecision.NOT_ENABLED, known[0]
        return RecordingDecision.UNKNOWN, None

    def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password is right and they may log in (not disabled)."""
        user = self.users.get(username)
        if user is None or not user.password_hash:
            # Spend the same time as a real check, so probing for names learns nothing.
            verify_password(password, _DUMMY_HASH)
            return None
        if not verify_password(password, user.password_hash):
            return None
        return user if user.can_log_in else None

    def user_for_token(self, token: str, now: datetime) -> User | None:
        """The owner of a live API token (not revoked, not expired, owner enabled)."""
        found = self.tokens.get(token_hash(token))
        if found is None or (found.expires_at is not None and found.expires_at <= now):
            return None
        user = self.users.get(found.username)
        return user if user is not None and not user.disabled else None

    def tokens_of(self, username: str) -> list[ApiToken]:
        return sorted((t for t in self.tokens.values() if t.username == username),
                      key=lambda t: t.created_at)

    def is_active_admin(self, user: User) -> bool:
        return user.role == "admin" and user.can_log_in

    def has_admin(self) -> bool:
        """Someone can administer: role admin, a password, not disabled."""
        return any(self.is_active_admin(u) for u in self.users.values())

    def groups(self) -> dict[str, Group]:
        """Every group named by a user, with its members and supervisors."""
        members: dict[str, list[str]] = {}
        supervisors: dict[str, list[str]] = {}
        for user in sorted(self.users.values(), key=lambda u: u.username):
            for name in user.groups:
                members.setdefault(name, []).append(user.username)
            for name in user.supervises:
                supervisors.setdefault(name, []).append(user.username)
        return {
            name: Group(name, tuple(members.get(name, ())), tuple(supervisors.get(name, ())))
            for name in sorted(set(members) | set(supervisors))
        }

    def visible_numbers(self, user: User) -> list[str] | None:
        """The participant numbers whose recordings `user` may see; None: all of them.

        A user: their own extensions. A supervisor: also every extension of every
        member of a group they supervise (membership: `User.groups`). An admin: all."""
        if user.role == "admin":
            return None
        numbers = list(user.extensions)
        if user.role == "supervisor" and user.supervises:
            supervised = set(user.supervises)
            for other in sorted(self.users.values(), key=lambda u: u.username):
                if supervised.intersection(other.groups):
                    numbers.extend(e for e in other.extensions if e not in numbers)
        return numbers


_DUMMY_HASH = hash_password("callrec-dummy")
