"""The rules for changing users, in one place for the CLI and the web: a command in,
events out, or a `UserRuleError` saying why not.

Both front ends build a command, call one function here against the current users
projection, and publish what it returns. So an extension never gets two owners, the
last administrator cannot be demoted, disabled or removed, and a supervisor only
supervises groups that exist, whichever way the change arrives. Hashing passwords is
left to the caller (the web runs scrypt off its event loop, the CLI just runs it).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from contracts.v1.events import (
    Role,
    UserRemoved,
    UserTokenIssued,
    UserTokenRevoked,
    UserUpserted,
    new_id,
)

from .users import User, UsersProjection, token_hash

USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
EXTENSION = re.compile(r"^[0-9+*#]{1,32}$")
GROUP_NAME = re.compile(r"^[A-Za-z0-9._@ -]{1,64}$")
ROLES: tuple[Role, ...] = ("user", "supervisor", "admin")
MAX_DISPLAY_NAME = 200
MAX_EXTENSIONS = 100
MAX_GROUPS = 50
MAX_TOKENS_PER_USER = 20
TOKEN_PREFIX = "crt_"  # recognisable in logs and secret scanners; 43 random chars follow

MIN_PASSWORD = 8
MAX_PASSWORD = 1024

RuleKind = Literal["invalid", "conflict", "not_found"]


class UserRuleError(ValueError):
    """A change the rules refuse; `kind` maps to 400, 409 or 404 (the CLI prints it)."""

    def __init__(self, kind: RuleKind, message: str) -> None:
        super().__init__(message)
        self.kind: RuleKind = kind


def check_password(password: str) -> str:
    """The password policy (before hashing): long enough to resist the throttled guessing
    the web allows, short enough to hash cheaply."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise UserRuleError("invalid", f"a password has {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    return password


def valid_username(value: str) -> bool:
    return bool(USERNAME.fullmatch(value))


def clean_extensions(values: list[str] | tuple[str, ...]) -> list[str]:
    """Stripped, checked, without duplicates, in the order given."""
    cleaned: list[str] = []
    for ext in values:
        ext = ext.strip()
        if not EXTENSION.fullmatch(ext):
            raise UserRuleError("invalid",
                                f"extension {ext[:40]!r} must be 1-32 characters of 0-9 + * #")
        if ext not in cleaned:
            cleaned.append(ext)
    if len(cleaned) > MAX_EXTENSIONS:
        raise UserRuleError("invalid", f"at most {MAX_EXTENSIONS} extensions")
    return cleaned


def clean_groups(values: list[str] | tuple[str, ...]) -> list[str]:
    cleaned: list[str] = []
    for group in values:
        group = group.strip()
        if not GROUP_NAME.fullmatch(group):
            raise UserRuleError("invalid", f"group {group[:40]!r} must be 1-64 characters of "
                                           "A-Z a-z 0-9 . _ @ - and space")
        if group not in cleaned:
            cleaned.append(group)
    if len(cleaned) > MAX_GROUPS:
        raise UserRuleError("invalid", f"at most {MAX_GROUPS} groups")
    return cleaned


@dataclass(frozen=True)
class SaveUser:
    """The whole new state of a user (created if new). `password_hash` None keeps the
    current password (none for a new user: a recording-only user cannot log in)."""

    username: str
    role: Role = "user"
    display_name: str | None = None
    extensions: tuple[str, ...] = ()
    record: bool = True
    groups: tuple[str, ...] = ()
    supervises: tuple[str, ...] = ()
    disabled: bool = False
    password_hash: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, user: User) -> SaveUser:
        """The command that would store `user` as it is (to change a few fields)."""
        return cls(username=user.username, role=user.role, display_name=user.display_name,
                   extensions=tuple(user.extensions), record=user.record,
                   groups=tuple(user.groups), supervises=tuple(user.supervises),
                   disabled=user.disabled)


def _is_admin(role: Role, disabled: bool, password_hash: str | None) -> bool:
    return role == "admin" and not disabled and bool(password_hash)


def _other_admin(users: UsersProjection, username: str) -> bool:
    return any(users.is_active_admin(u) for u in users.users.values() if u.username != username)


def save_user(users: UsersProjection, command: SaveUser, node_id: str) -> UserUpserted:
    """The event that stores `command`, if the rules allow it."""
    if not valid_username(command.username):
        raise UserRuleError("invalid", "username must be 1-64 characters of A-Z a-z 0-9 . _ @ -")
    if command.role not in ROLES:
        raise UserRuleError("invalid", f"role must be one of {', '.join(ROLES)}")
    if command.display_name is not None and len(command.display_name) > MAX_DISPLAY_NAME:
        raise UserRuleError("invalid", f"display name: at most {MAX_DISPLAY_NAME} characters")
    extensions = clean_extensions(command.extensions)
    groups = clean_groups(command.groups)
    supervises = clean_groups(command.supervises)
    existing = users.users.get(command.username)

    for ext in extensions:
        owner = users.by_extension.get(ext)
        if owner is not None and owner != command.username:
            raise UserRuleError("conflict", f"extension {ext} belongs to {owner}")

    password_hash = command.password_hash or (existing.password_hash if existing else None)
    if command.role == "admin" and not password_hash:
        raise UserRuleError("invalid", "an administrator needs a password")

    if supervises and command.role != "supervisor":
        raise UserRuleError("invalid", "only a supervisor supervises groups "
                                       "(an administrator sees everything)")
    known = {g for u in users.users.values() if u.username != command.username
             for g in u.groups} | set(groups)
    unknown = [g for g in supervises if g not in known]
    if unknown:
        raise UserRuleError("invalid", f"unknown group {unknown[0]!r}: no user is a member")

    if (existing is not None and users.is_active_admin(existing)
            and not _is_admin(command.role, command.disabled, password_hash)
            and not _other_admin(users, command.username)):
        raise UserRuleError("conflict", "cannot demote or disable the last administrator")

    return UserUpserted(
        node_id=node_id,
        username=command.username,
        display_name=command.display_name,
        password_hash=password_hash,
        admin=command.role == "admin",  # what readers from before roles look at
        role=command.role,
        extensions=extensions,
        record=command.record,
        groups=groups,
        supervises=supervises,
        disabled=command.disabled,
    )


def remove_user(users: UsersProjection, username: str, node_id: str) -> UserRemoved:
    if not valid_username(username):
        raise UserRuleError("invalid", "invalid username")
    existing = users.users.get(username)
    if existing is None:
        raise UserRuleError("not_found", f"no user {username!r}")
    if users.is_active_admin(existing) and not _other_admin(users, username):
        raise UserRuleError("conflict", "cannot remove the last administrator")
    return UserRemoved(node_id=node_id, username=username)


def set_password(users: UsersProjection, username: str, password_hash: str,
                 node_id: str) -> UserUpserted:
    """A new password (own change or an admin's reset); every other field unchanged.
    Sessions opened with the old password end by themselves (see web/sessions.py)."""
    existing = users.users.get(username)
    if existing is None:
        raise UserRuleError("not_found", f"no user {username!r}")
    return save_user(users, replace(SaveUser.of(existing), password_hash=password_hash), node_id)


def issue_token(users: UsersProjection, username: str, name: str, node_id: str,
                expires_at: datetime | None = None) -> tuple[str, UserTokenIssued]:
    """A new API token for `username`: the token (shown once) and the fact to store."""
    user = users.users.get(username)
    if user is None:
        raise UserRuleError("not_found", f"no user {username!r}")
    name = name.strip()
    if not 1 <= len(name) <= 64:
        raise UserRuleError("invalid", "a token needs a name of 1-64 characters")
    if len(users.tokens_of(username)) >= MAX_TOKENS_PER_USER:
        raise UserRuleError("conflict", f"at most {MAX_TOKENS_PER_USER} tokens per user: "
                                        "revoke one first")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)  # 256 random bits
    event = UserTokenIssued(node_id=node_id, username=username, token_id=new_id(),
                            token_hash=token_hash(token), name=name, expires_at=expires_at)
    return token, event


def revoke_token(users: UsersProjection, username: str, token_id: str, revoked_by: str,
                 node_id: str) -> UserTokenRevoked:
    """Revoke one of `username`'s own tokens (another user's id is simply unknown)."""
    if not any(t.token_id == token_id for t in users.tokens_of(username)):
        raise UserRuleError("not_found", "unknown token")
    return UserTokenRevoked(node_id=node_id, username=username, token_id=token_id,
                            revoked_by=revoked_by)
