"""The audit chain's one canonical form, its hash, and its verification (pure).

Every copy of a node's audit trail (its own, a peer's projection, a CSV) is checked
with these functions, so the form is written once: a JSON object of the entry's own
fields plus `prev_hash`, keys sorted, no spaces, UTF-8, times in UTC with
microseconds. `hash` = sha256 of that, hex. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field

from contracts.v1.events import (
    AUDIT_GENESIS,
    AuditAction,
    AuditOutcome,
    AuditRecorded,
    AuditValue,
    new_id,
)

CANONICAL_VERSION = 1
_encode_string: Callable[[str], str] = json.encoder.encode_basestring
MAX_PROBLEMS = 10


class AuditHead(BaseModel):
    """The newest entry of a node's chain, as the node announces it in its heartbeat."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    seq: int = Field(ge=0)
    hash: str = Field(max_length=128)


EMPTY_HEAD = AuditHead(seq=0, hash=AUDIT_GENESIS)


class Linked(Protocol):
    """What verification walks: an entry's place in its chain and its stated hash."""

    @property
    def node_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def prev_hash(self) -> str: ...
    @property
    def hash(self) -> str: ...


class AuditFields(Linked, Protocol):
    """What the hash covers: an `AuditRecorded` or a row read back from a projection."""

    @property
    def event_id(self) -> str: ...
    @property
    def at(self) -> datetime: ...
    @property
    def actor(self) -> str | None: ...
    @property
    def action(self) -> str: ...
    @property
    def target(self) -> str | None: ...
    @property
    def source_address(self) -> str | None: ...
    @property
    def outcome(self) -> str: ...
    @property
    def detail(self) -> Mapping[str, AuditValue]: ...


L = TypeVar("L", bound=Linked)


def canonical_time(at: datetime) -> str:
    """UTC, microseconds, `+00:00`: one spelling per instant (naive means UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_detail(detail: Mapping[str, AuditValue]) -> str:
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_bytes(entry: AuditFields) -> bytes:
    """The bytes the hash covers: every field of the entry except `hash` itself."""
    return canonical_parts(
        event_id=entry.event_id, node_id=entry.node_id, seq=entry.seq,
        prev_hash=entry.prev_hash, at=canonical_time(entry.at), actor=entry.actor,
        action=entry.action, target=entry.target, source_address=entry.source_address,
        outcome=entry.outcome, detail=canonical_detail(entry.detail))


def _text(value: str | None) -> str:
    """`json.dumps(value, ensure_ascii=False)` for a str or None (what it calls itself)."""
    return "null" if value is None else _encode_string(str(value))


def canonical_parts(*, event_id: str, node_id: str, seq: int, prev_hash: str, at: str,
                    actor: str | None, action: str, target: str | None,
                    source_address: str | None, outcome: str, detail: str) -> bytes:
    """The canonical form from fields already spelled canonically (`at` by
    canonical_time, `detail` by canonical_detail), as a copy stores them: the same
    bytes as `json.dumps` of the whole object with sorted keys, built without it."""
    return (
        f'{{"action":{_text(action)},"actor":{_text(actor)},"at":{_text(at)},'
        f'"detail":{detail},"event_id":{_text(event_id)},"node_id":{_text(node_id)},'
        f'"outcome":{_text(outcome)},"prev_hash":{_text(prev_hash)},"seq":{int(seq)},'
        f'"source_address":{_text(source_address)},"target":{_text(target)},'
        f'"v":{CANONICAL_VERSION}}}'
    ).encode()


def entry_hash(entry: AuditFields) -> str:
    return hashlib.sha256(canonical_bytes(entry)).hexdigest()


def seal(
    head: AuditHead,
    *,
    node_id: str,
    at: datetime,
    action: AuditAction,
    actor: str | None = None,
    target: str | None = None,
    source_address: str | None = None,
    outcome: AuditOutcome = "ok",
    detail: Mapping[str, AuditValue] | None = None,
    event_id: str | None = None,
) -> AuditRecorded:
    """The next entry after `head`, with its hash."""
    draft = AuditRecorded(
        event_id=event_id or new_id(), node_id=node_id, occurred_at=at, seq=head.seq + 1,
        prev_hash=head.hash, hash="", at=at, actor=actor, action=action, target=target,
        source_address=source_address, outcome=outcome, detail=dict(detail or {}),
    )
    return draft.model_copy(update={"hash": entry_hash(draft)})


def head_of(entry: Linked) -> AuditHead:
    return AuditHead(seq=entry.seq, hash=entry.hash)


ChainStatus = Literal["verified", "unconfirmed", "behind", "head_mismatch", "broken", "empty"]


@dataclass
class ChainVerdict:
    """One node's chain as found in one copy.

    - verified: every link holds and the entry at the node's announced head matches it;
    - unconfirmed: every link holds, but the node announces no head (silent, old version);
    - behind: every link holds, the node announces entries this copy does not have yet
      (replication under way, or a copy truncated: it stays so if it does not catch up);
    - head_mismatch: every link holds, but the node's announced head differs from this
      copy's entry at that seq (the copy was rewritten consistently from some point);
    - broken: a link fails at `broken_seq` (`problems` says what differs);
    - empty: no entries and no head announced.
    """

    node_id: str
    status: ChainStatus
    entries: int = 0
    verified_seq: int = 0
    head: AuditHead | None = None
    announced: AuditHead | None = None
    broken_seq: int | None = None
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "status": self.status,
            "entries": self.entries,
            "verified_seq": self.verified_seq,
            "head": self.head.model_dump() if self.head else None,
            "announced": self.announced.model_dump() if self.announced else None,
            "broken_seq": self.broken_seq,
            "problems": list(self.problems),
        }


def _link_problem(chain: str, entry: L, expected_seq: int, prev_hash: str,
                  seen: set[int], hasher: Callable[[L], str]) -> str | None:
    if entry.node_id != chain:
        return (f"seq {entry.seq}: entry claims node {entry.node_id!r} "
                f"but was stored in {chain!r}'s chain (forged)")
    if entry.seq != expected_seq:
        if entry.seq in seen:
            return f"seq {entry.seq}: a second entry with this seq (fork or replay)"
        if entry.seq > expected_seq:
            return f"seq {expected_seq}: missing (next entry found is seq {entry.seq})"
        return f"seq {expected_seq}: out of order (found seq {entry.seq})"
    if entry.prev_hash != prev_hash:
        return (f"seq {entry.seq}: prev_hash {entry.prev_hash[:12]} does not match "
                f"the previous entry's hash {prev_hash[:12]} (an entry before it was "
                "removed, replaced or moved)")
    computed = hasher(entry)
    if computed != entry.hash:
        return (f"seq {entry.seq}: content does not match its hash "
                f"(stored {entry.hash[:12]}, computed {computed[:12]}): entry edited")
    return None


def verify_chain(
    node_id: str, entries: Iterable[L], announced: AuditHead | None = None,
    hasher: Callable[[L], str] | None = None,
) -> ChainVerdict:
    """Check one node's chain as stored (in stored order): seq continuity from 1, each
    prev link, each hash, then the node's announced head against this copy. `hasher`
    recomputes an entry's hash (default: `entry_hash` of its fields)."""
    rehash = hasher if hasher is not None else cast(Callable[[L], str], entry_hash)
    verdict = ChainVerdict(node_id=node_id, status="empty", announced=announced)
    expected, prev = 1, AUDIT_GENESIS
    seen: set[int] = set()
    at_announced: str | None = None
    last: L | None = None
    for entry in entries:
        verdict.entries += 1
        problem = _link_problem(node_id, entry, expected, prev, seen, rehash)
        if problem is not None:
            if verdict.broken_seq is None:
                verdict.broken_seq = min(entry.seq, expected)
            if len(verdict.problems) < MAX_PROBLEMS:
                verdict.problems.append(problem)
        elif verdict.broken_seq is None:
            verdict.verified_seq = entry.seq
        if announced is not None and entry.seq == announced.seq and at_announced is None:
            at_announced = entry.hash
        seen.add(entry.seq)
        # Go on from what is there, so one bad entry does not hide the rest.
        expected, prev, last = entry.seq + 1, entry.hash, entry
    verdict.head = head_of(last) if last is not None else None
    if verdict.broken_seq is not None:
        verdict.status = "broken"
        return verdict
    copy_seq = last.seq if last is not None else 0
    if announced is None:
        verdict.status = "unconfirmed" if last is not None else "empty"
    elif announced.seq > copy_seq:
        verdict.status = "behind"
        verdict.problems.append(
            f"the node announces seq {announced.seq}; this copy ends at seq {copy_seq}")
    elif announced.seq == 0 and copy_seq == 0:
        verdict.status = "verified"
    elif announced.seq == 0 or at_announced != announced.hash:
        verdict.status = "head_mismatch"
        verdict.problems.append(
            f"the node announces seq {announced.seq} with hash {announced.hash[:12]}; "
            f"this copy has {(at_announced or 'nothing')[:12]} at that seq")
    else:
        verdict.status = "verified"
    return verdict
