"""Sync's pure domain: who holds which object, what to fetch next, how far we are done.

No I/O here, so the rules (idempotency by state, purge wins over a completion, never
fetch twice, the checkpoint never skips unfinished work) are unit-tested without NATS
or disks. Events may arrive twice and, across origins, in any order: every rule below
is a set operation that gives the same state whatever the order or repetition.
Whether a recording is purged is decided by `contracts.v1.holds` (hold wins) over all
its hold and purge facts; a late hold fact can void a purge already applied here, and
then the copy is fetched back from a node that kept it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from contracts.v1.events import (
    EventBase,
    LegalHoldChanged,
    RecordingCompleted,
    RecordingPurged,
    RecordingReplicated,
)
from contracts.v1.holds import HoldLedger
from contracts.v1.winner import better

REPLICA_FACTS: tuple[type[EventBase], ...] = (
    RecordingCompleted, RecordingReplicated, RecordingPurged, LegalHoldChanged,
)
"""The facts `ReplicaMap.apply` folds in (sync is sent only these and `LIVE_FACTS`)."""

MAX_BACKOFF_S = 5.0
FIRST_BACKOFF_S = 0.25


@dataclass
class Replica:
    """What the cluster has said about one recording's objects.

    A recording may be completed more than once (a peer's takeover copy and the
    origin's own): the fields describe the winner by `contracts.v1.winner`, and
    `by_key` knows who holds each copy, so a loser's copies can be deleted once the
    winner is held.
    """

    recording_id: str
    object_key: str = ""
    sha256: str = ""
    size: int = 0
    origin: str = ""
    completed: bool = False
    purged: bool = False
    best: RecordingCompleted | None = None
    by_key: dict[str, set[str]] = field(default_factory=dict)

    @property
    def holders(self) -> set[str]:
        """Nodes holding the winner's object."""
        return self.by_key.setdefault(self.object_key, set())

    def loser_keys(self) -> list[str]:
        return sorted(k for k in self.by_key if k and k != self.object_key)


@dataclass(frozen=True)
class Fetch:
    """A fetch to schedule: the recording and the sequence that asked for it
    ("restored": a hold voided a purge applied here, the copy must come back;
    "missing": a copy our own node made is not in our store, as on a node rebuilt
    empty after its host was lost)."""

    recording_id: str
    sequence: int
    reason: Literal["new", "restored", "missing"] = "new"


@dataclass(frozen=True)
class Purge:
    """Local copy (and any partial fetch) to delete; its sequence stays open (the
    checkpoint cannot pass it) until the adapter reports `purge_done`. `others`: the
    keys of other copies of the same call (a takeover's and the origin's)."""

    recording_id: str
    object_key: str
    sequence: int
    others: tuple[str, ...] = ()


@dataclass(frozen=True)
class Discard:
    """Our copy of a completion that lost to a better one (`contracts.v1.winner`); the
    adapter deletes it only if the winner's object is verified in our store."""

    recording_id: str
    object_key: str
    winner_key: str


Action = Fetch | Purge | Discard


class LowWaterMark:
    """Highest sequence at or below which every event is fully handled.

    Sequences are seen in increasing order; some stay open (a fetch in flight) while
    later ones finish. The checkpoint may only move past a sequence once it is done,
    so a restart from checkpoint + 1 never skips unfinished work.
    """

    def __init__(self, start: int = 0) -> None:
        self.last_seen = start
        self._open: list[int] = []
        self._open_set: set[int] = set()
        self._closed: set[int] = set()

    def seen(self, sequence: int) -> None:
        self.last_seen = max(self.last_seen, sequence)

    def open(self, sequence: int) -> None:
        self.seen(sequence)
        if sequence not in self._open_set:
            self._open_set.add(sequence)
            heapq.heappush(self._open, sequence)

    def close(self, sequence: int) -> None:
        if sequence in self._open_set:
            self._open_set.discard(sequence)
            self._closed.add(sequence)
        while self._open and self._open[0] in self._closed:
            self._closed.discard(heapq.heappop(self._open))

    @property
    def value(self) -> int:
        if self._open:
            return self._open[0] - 1
        return self.last_seen


class ReplicaMap:
    """The holder map of every recording, seen from node `me`."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.replicas: dict[str, Replica] = {}
        # Recordings we must fetch, with the sequence whose completion they block.
        self.wanted: dict[str, int] = {}
        self.mark = LowWaterMark()
        self.ledger = HoldLedger()

    def _get(self, recording_id: str) -> Replica:
        replica = self.replicas.get(recording_id)
        if replica is None:
            replica = self.replicas[recording_id] = Replica(recording_id)
        return replica

    # ---- applying facts -----------------------------------------------------------

    def apply(self, event: object, sequence: int, *, handled: bool = False) -> list[Action]:
        """Fold one event in; returns what the adapters must do.

        `handled` marks a replay of an event at or below the checkpoint: its work was
        finished before, so only the state is rebuilt (a foreign object is held).
        """
        self.mark.seen(sequence)
        if not isinstance(event, REPLICA_FACTS):
            return []
        if isinstance(event, RecordingCompleted):
            return self._completed(event, sequence, handled)
        if isinstance(event, RecordingReplicated):
            replica = self._get(event.recording_id)
            if event.node_id != self.me or not replica.purged:
                # (our own announcement may trail our purge: we no longer hold that copy)
                replica.by_key.setdefault(event.object_key, set()).add(event.node_id)
            if event.node_id == self.me and event.object_key == replica.object_key:
                self._done(event.recording_id)
                return list(self.discards(event.recording_id))
            return []
        if isinstance(event, RecordingPurged | LegalHoldChanged):
            return self._fact(event, sequence, handled)
        return []

    def _completed(self, event: RecordingCompleted, sequence: int,
                   handled: bool) -> list[Action]:
        replica = self._get(event.recording_id)
        replica.by_key.setdefault(event.object_key, set()).add(event.node_id)
        if not better(event, replica.best):
            # A copy that loses to the one we know: never fetched; ours goes if we hold it.
            return [] if replica.purged else list(self.discards(event.recording_id))
        replica.best = event
        replica.object_key = event.object_key
        replica.sha256 = event.sha256
        replica.size = event.size_bytes
        replica.origin = event.node_id
        replica.completed = True
        if replica.purged:
            return []
        if self.me in replica.holders:
            return list(self.discards(event.recording_id))
        if handled:
            replica.holders.add(self.me)
            return list(self.discards(event.recording_id))
        if event.recording_id in self.wanted:
            return []  # the fetch in flight reads the winner's key when it starts
        self.wanted[event.recording_id] = sequence
        self.mark.open(sequence)
        return [Fetch(event.recording_id, sequence)]

    def discards(self, recording_id: str) -> list[Discard]:
        """Our copies of losing completions, to delete now that we hold the winner."""
        replica = self.replicas.get(recording_id)
        if replica is None or replica.purged or self.me not in replica.holders:
            return []
        return [Discard(recording_id, key, replica.object_key) for key in replica.loser_keys()
                if self.me in replica.by_key[key]]

    def discarded(self, recording_id: str, object_key: str) -> None:
        replica = self.replicas.get(recording_id)
        if replica is not None and object_key != replica.object_key:
            replica.by_key.get(object_key, set()).discard(self.me)

    def _fact(self, event: RecordingPurged | LegalHoldChanged, sequence: int,
              handled: bool) -> list[Action]:
        """A hold or purge fact: act only when the shared rule's verdict flips."""
        replica = self._get(event.recording_id)
        if isinstance(event, RecordingPurged) and not replica.object_key:
            replica.object_key = event.object_key
        self.ledger.add(event)
        purged = self.ledger.purged(event.recording_id)
        if purged == replica.purged:
            return []
        replica.purged = purged
        if purged:
            return self._purged(replica, sequence, handled)
        return self._restored(replica, sequence, handled)

    def _purged(self, replica: Replica, sequence: int, handled: bool) -> list[Action]:
        self._done(replica.recording_id)
        # Other holders stay known: if a late hold voids this purge, the nodes that had
        # not applied it yet still hold their copy and are asked for it.
        for holders in replica.by_key.values():
            holders.discard(self.me)
        if handled:
            return []
        self.mark.open(sequence)
        return [Purge(replica.recording_id, replica.object_key, sequence,
                      tuple(replica.loser_keys()))]

    def _restored(self, replica: Replica, sequence: int, handled: bool) -> list[Action]:
        if not replica.completed:
            return []  # the completion will ask for the object when it arrives
        if handled:
            replica.holders.add(self.me)  # fetched back before the checkpoint passed
            return []
        replica.holders.discard(self.me)
        if replica.recording_id in self.wanted:
            return []
        self.wanted[replica.recording_id] = sequence
        self.mark.open(sequence)
        return [Fetch(replica.recording_id, sequence, "restored")]

    def missing_locally(self, recording_id: str, sequence: int) -> list[Action]:
        """Our own completion's object is not in our store: fetch it from a holder."""
        replica = self._get(recording_id)
        if replica.purged or not replica.completed:
            return []
        replica.holders.discard(self.me)
        if recording_id in self.wanted:
            return []
        self.wanted[recording_id] = sequence
        self.mark.open(sequence)
        return [Fetch(recording_id, sequence, "missing")]

    def purge_done(self, sequence: int) -> None:
        self.mark.close(sequence)

    # ---- fetch outcomes -------------------------------------------------------------

    def held_locally(self, recording_id: str, object_key: str | None = None) -> list[Discard]:
        """Our copy of `object_key` (default: the winner's) is verified and stored (the
        replicated event may come later); once it is the winner's, returns our copies of
        losing completions, now safe to delete."""
        replica = self._get(recording_id)
        key = replica.object_key if object_key is None else object_key
        if not replica.purged:
            replica.by_key.setdefault(key, set()).add(self.me)
        if key != replica.object_key:
            return []  # a better copy was completed meanwhile: that one is still wanted
        self._done(recording_id)
        return self.discards(recording_id)

    def _done(self, recording_id: str) -> None:
        sequence = self.wanted.pop(recording_id, None)
        if sequence is not None:
            self.mark.close(sequence)

    # ---- queries --------------------------------------------------------------------

    def needs_fetch(self, recording_id: str) -> bool:
        replica = self.replicas.get(recording_id)
        return (replica is not None and recording_id in self.wanted and not replica.purged
                and self.me not in replica.holders)

    def sources(self, recording_id: str, avoid: Iterable[str] = ()) -> list[str]:
        """Holders to ask, best first: the origin, then the others by name; holders
        that just failed us go last rather than never (they may have recovered)."""
        replica = self.replicas.get(recording_id)
        if replica is None:
            return []
        others = sorted(h for h in replica.holders if h not in (self.me, replica.origin))
        order = ([replica.origin] if replica.origin and replica.origin != self.me else [])
        order += others
        bad = set(avoid)
        return [h for h in order if h not in bad] + [h for h in order if h in bad]

    def recordings_held(self) -> int:
        return sum(1 for r in self.replicas.values()
                   if not r.purged and r.completed and self.me in r.holders)

    def pending_by_origin(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for recording_id in self.wanted:
            origin = self.replicas[recording_id].origin
            counts[origin] = counts.get(origin, 0) + 1
        return counts

    @property
    def checkpoint(self) -> int:
        return self.mark.value


def backoff(attempt: int) -> float:
    """Delay before retry `attempt` (1-based) when no holder answered: short at first,
    capped so a returning peer is noticed within seconds."""
    return float(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2.0 ** max(0, attempt - 1)))


def chunk_plan(have: int, size: int, chunk: int) -> tuple[int, int] | None:
    """Next (offset, length) to request given `have` bytes already on disk; None when
    the part file is complete. A part longer than the object is restarted by callers."""
    if have >= size:
        return None
    return have, min(chunk, size - have)


@dataclass
class PeerTable:
    """Nodes heard from (heartbeats), for liveness and status."""

    entries: dict[str, tuple[float, dict[str, object]]] = field(default_factory=dict)

    def heard(self, node_id: str, at: float, payload: dict[str, object]) -> bool:
        """Record a heartbeat; True the first time this node is seen."""
        new = node_id not in self.entries
        self.entries[node_id] = (at, payload)
        return new

    def alive(self, node_id: str, now: float, timeout: float) -> bool:
        entry = self.entries.get(node_id)
        return entry is not None and now - entry[0] <= timeout


SOURCE_STALL_S = 10.0
SOURCE_KICK_INTERVAL_S = 30.0


def stalled_sources(alive_peers: Iterable[str], contact_s: dict[str, float | None],
                    now: float, last_kick: dict[str, float],
                    stall_s: float = SOURCE_STALL_S,
                    interval_s: float = SOURCE_KICK_INTERVAL_S) -> list[str]:
    """Peers whose event source should be re-created: the peer is heard (so the link
    is up) but its source has not been in contact for `stall_s`. After a failed start
    the server retries sources with a back-off of up to minutes; re-creating one
    resumes from the last message stored, so it is cheap and loses nothing. At most
    once per `interval_s` per peer, so a slow server is not hammered."""
    result = []
    for peer in sorted(set(alive_peers)):
        if peer not in contact_s:
            continue  # not a source (yet): discovery adds it
        contact = contact_s[peer]
        if contact is not None and contact < stall_s:
            continue
        if now - last_kick.get(peer, float("-inf")) < interval_s:
            continue
        result.append(peer)
    return result
