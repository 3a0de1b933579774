"""Which recordings a purge deletes: a pure decision over the projection (no I/O, no clock).

The age of a recording counts from the end of the call, so a long call is never
deleted before its full retention has passed since it was last heard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from contracts.v1.events import PurgeParams, RecordingCompleted


@dataclass(frozen=True)
class UserInfo:
    """What retention needs of a user: the numbers that identify them and their groups."""

    extensions: frozenset[str]
    groups: frozenset[str]


def user_retention(params: PurgeParams, username: str, groups: Iterable[str]) -> int:
    """Most specific wins: the user's own setting, then their groups' (the longest when
    several apply: keeping too long is recoverable, deleting too early is not), then global."""
    if username in params.user_retention_s:
        return params.user_retention_s[username]
    by_group = [params.group_retention_s[g] for g in groups if g in params.group_retention_s]
    return max(by_group) if by_group else params.retention_s


def users_of(recording: RecordingCompleted, users: Mapping[str, UserInfo]) -> list[str]:
    """Users involved in a call: their extension among its numbers, or named as recorded."""
    meta = recording.metadata
    numbers = set(meta.numbers())
    if meta.recorded_extension:
        numbers.add(meta.recorded_extension)
    return sorted(
        name for name, info in users.items()
        if name == meta.recorded_user or info.extensions & numbers
    )


def recording_retention(
    params: PurgeParams, recording: RecordingCompleted, users: Mapping[str, UserInfo]
) -> int:
    """Seconds to keep a recording: the longest retention of the users in it (global when
    no known user is involved)."""
    involved = users_of(recording, users)
    if not involved:
        return params.retention_s
    return max(user_retention(params, name, users[name].groups) for name in involved)


def expires_at(
    params: PurgeParams, recording: RecordingCompleted, users: Mapping[str, UserInfo]
) -> datetime:
    return recording.ended_at + timedelta(seconds=recording_retention(params, recording, users))


def purge_candidates(
    params: PurgeParams,
    recordings: Iterable[RecordingCompleted],
    held: Iterable[str],
    users: Mapping[str, UserInfo],
    now: datetime,
) -> list[RecordingCompleted]:
    """Expired recordings not under legal hold, oldest first (a stopped run has then
    removed the most overdue ones)."""
    on_hold = set(held)
    due = [
        rec for rec in recordings
        if rec.recording_id not in on_hold and expires_at(params, rec, users) <= now
    ]
    return sorted(due, key=lambda rec: (rec.ended_at, rec.recording_id))
