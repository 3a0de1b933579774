"""Validation of admin input for users: names and extensions end up in events forever.

Hostile or sloppy input is rejected here with a message fit for a 400, before
anything is published.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from callrec.usercommands import EXTENSION, GROUP_NAME, USERNAME
from contracts.v1.events import Role

RECORDING_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def valid_username(value: str) -> bool:
    return bool(USERNAME.fullmatch(value))


def valid_recording_id(value: str) -> bool:
    """Ids end up in cache file names: no separators, no dot-dot."""
    return bool(RECORDING_ID.fullmatch(value)) and ".." not in value



class UserInput(BaseModel):
    """Body of `POST /api/users`; a missing password keeps the existing one."""

    model_config = ConfigDict(extra="forbid")

    username: str
    password: str | None = Field(default=None, min_length=1, max_length=1024)
    admin: bool = False
    extensions: list[str] = Field(default_factory=list, max_length=100)
    record: bool = True
    display_name: str | None = Field(default=None, max_length=200)
    groups: list[str] = Field(default_factory=list, max_length=50)
    role: Role | None = None  # None: `admin` decides (admin or user), as before roles
    supervises: list[str] = Field(default_factory=list, max_length=50)
    disabled: bool = False

    @field_validator("groups", "supervises")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        cleaned: list[str] = []
        for group in value:
            group = group.strip()
            if not GROUP_NAME.fullmatch(group):
                raise ValueError(f"group {group[:40]!r} must be 1-64 characters of "
                                 "A-Z a-z 0-9 . _ @ - and space")
            if group not in cleaned:
                cleaned.append(group)
        return cleaned

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not valid_username(value):
            raise ValueError("username must be 1-64 characters of A-Z a-z 0-9 . _ @ -")
        return value

    @field_validator("extensions")
    @classmethod
    def _extensions(cls, value: list[str]) -> list[str]:
        cleaned: list[str] = []
        for ext in value:
            ext = ext.strip()
            if not EXTENSION.fullmatch(ext):
                raise ValueError(f"extension {ext[:40]!r} must be 1-32 characters of 0-9 + * #")
            if ext not in cleaned:
                cleaned.append(ext)
        return cleaned
