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
from enum import Enum

from contracts.v1.events import UserRemoved, UserUpserted

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


@dataclass
class User:
    username: str
    display_name: str | None
    password_hash: str | None
    admin: bool
    extensions: list[str]
    record: bool
    groups: list[str] = field(default_factory=list)


@dataclass
class UsersProjection:
    users: dict[str, User] = field(default_factory=dict)
    by_extension: dict[str, str] = field(default_factory=dict)
    last_sequence: int = 0
    # Sourced streams can deliver a fact twice; applying an old one again would undo
    # a newer change, so each event applies once.
    applied: set[str] = field(default_factory=set)

    def apply(self, event: UserUpserted | UserRemoved, sequence: int = 0) -> None:
        self.last_sequence = max(self.last_sequence, sequence)
        if event.event_id in self.applied:
            return
        self.applied.add(event.event_id)
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
                admin=event.admin,
                extensions=list(event.extensions),
                record=event.record,
                groups=list(event.groups),
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
        user = self.users.get(username)
        if user is None or not user.password_hash:
            # Spend the same time as a real check, so probing for names learns nothing.
            verify_password(password, _DUMMY_HASH)
            return None
        return user if verify_password(password, user.password_hash) else None

    def has_admin(self) -> bool:
        return any(u.admin and u.password_hash for u in self.users.values())


_DUMMY_HASH = hash_password("callrec-dummy")
