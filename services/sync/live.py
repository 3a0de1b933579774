"""In-flight replication and takeover, the pure part: what to pull, what to take over.

A peer follows every other node's recordings in progress: the origin announces each
flush of its live Ogg/Opus file (LiveProgress, core NATS), and we pull the new byte
range into our own copy. When the origin has been silent (no heartbeat, no progress)
for longer than the takeover timeout and the recording has no completion or failure,
we finalize what we hold as an interrupted, provisional recording of our own.

Silence is measured from the latest of: the origin's last heartbeat, the recording's
last progress, and the moment this node learned of the recording (so a node that is
replaying history or just started gives the origin a full timeout to be heard).
A partition looks exactly like a death: that is why the takeover copy is only
provisional, and why `contracts.v1.winner` (most audio wins) decides once both exist.
So a takeover does not end the following: if the origin's progress resumes (it was
only cut off), we pull its file again and, should it fall silent again, take over
again with more audio; only the origin's own completion or failure, or a purge, ends it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts import subjects
from contracts.v1.events import (
    EventBase,
    RecordingCompleted,
    RecordingFailed,
    RecordingPurged,
    RecordingStarted,
)
from contracts.v1.rpc import LiveProgress, LiveProgressBatch

from .ogg import Chain, follow

LIVE_FACTS: tuple[type[EventBase], ...] = (
    RecordingStarted, RecordingPurged, RecordingCompleted, RecordingFailed,
)
"""The facts `LiveBook.apply` folds in (sync is sent only these and `REPLICA_FACTS`)."""

PULL_BYTES = 256 * 1024


def progress_of(subject: str, data: bytes) -> tuple[list[LiveProgress], int]:
    """The progress a live message carries, and how many of its updates were left out.

    A round of capture's steps (`subjects.live_batch`) or one recording a message
    (`subjects.live`, as capture sent it before the batches: a cluster upgraded one
    node at a time has both). Raises ValueError when the message does not match its
    subject; an update for another node's recording is left out (a node speaks for
    its own only)."""
    parts = subject.split(".")
    if len(parts) == 4:
        batch = LiveProgressBatch.model_validate_json(data)
        node, updates = batch.node_id, batch.updates
    else:
        update = LiveProgress.model_validate_json(data)
        if len(parts) != 5 or parts[4] != update.recording_id:
            raise ValueError("subject does not match the progress it carries")
        node, updates = update.node_id, [update]
    if parts[2] != node:
        raise ValueError("subject does not match the progress it carries")
    subjects.check_node_id(node)
    own = [update for update in updates if update.node_id == node]
    return own, len(updates) - len(own)


@dataclass
class Live:
    """One recording in progress on another node, as this node follows it."""

    recording_id: str
    origin: str
    learned_at: float
    started: RecordingStarted | None = None
    origin_bytes: int = 0  # announced by the origin (ends on a complete page)
    origin_duration_ms: int = 0
    chain: Chain = field(default_factory=Chain)  # our copy, as followed page by page
    last_progress_at: float | None = None
    final: bool = False
    taken: bool = False  # we published a takeover copy
    taken_mark: float = float("-inf")  # last progress seen when we did

    @property
    def have(self) -> int:
        """Bytes in our copy."""
        return self.chain.offset


class LiveBook:
    """Recordings in progress elsewhere, seen from node `me`."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.live: dict[str, Live] = {}
        # Recordings that need nothing more (completed or failed by their origin, purged).
        self.closed: set[str] = set()

    def _entry(self, recording_id: str, origin: str, now: float) -> Live | None:
        if origin == self.me or recording_id in self.closed:
            return None
        entry = self.live.get(recording_id)
        if entry is None:
            entry = self.live[recording_id] = Live(recording_id, origin, now)
        return entry

    def apply(self, event: object, now: float) -> list[str]:
        """Fold a recording fact in; returns recording ids whose local copy is now useless."""
        if not isinstance(event, LIVE_FACTS):
            return []
        if isinstance(event, RecordingStarted):
            entry = self._entry(event.recording_id, event.node_id, now)
            if entry is not None:
                entry.started = event
                entry.origin = event.node_id
            return []
        if isinstance(event, RecordingPurged):
            return self.close(event.recording_id)
        if isinstance(event, RecordingCompleted | RecordingFailed):
            entry = self.live.get(event.recording_id)
            origin = event.node_id == (entry.origin if entry is not None else event.node_id)
            if isinstance(event, RecordingCompleted) and event.interrupted and (
                    entry is None or not origin):
                # A takeover copy (ours, replayed after a restart, or another peer's):
                # the origin may still come back; ours is remembered as done.
                if entry is not None and event.node_id == self.me:
                    entry.taken = True
                    entry.taken_mark = max(entry.taken_mark,
                                           entry.last_progress_at or float("-inf"))
                return []
            if origin:
                return self.close(event.recording_id)
        return []

    def close(self, recording_id: str) -> list[str]:
        self.closed.add(recording_id)
        return [recording_id] if self.live.pop(recording_id, None) is not None else []

    def progress(self, update: LiveProgress, now: float) -> bool:
        """The origin flushed more; True when there is something to pull."""
        entry = self._entry(update.recording_id, update.node_id, now)
        if entry is None or entry.origin != update.node_id:
            return False
        # A max: progress may arrive out of order. An origin that lost the tail of its
        # file (a machine crash) announces less than before and then writes other bytes
        # where we hold the old ones: the page chain catches that join when we pull
        # past what we hold (`pulled`), and until then our copy is a valid recording.
        entry.origin_bytes = max(entry.origin_bytes, update.bytes)
        entry.origin_duration_ms = max(entry.origin_duration_ms, update.duration_ms)
        entry.last_progress_at = now
        entry.final = entry.final or update.final
        return entry.have < entry.origin_bytes

    def resumed(self, recording_id: str, chain: Chain) -> None:
        """What our copy already holds (after a restart of this service)."""
        entry = self.live.get(recording_id)
        if entry is not None:
            entry.chain = chain

    def next_pull(self, recording_id: str, chunk: int = PULL_BYTES) -> tuple[int, int] | None:
        """(offset, length) of the next range to pull from the origin, None when level."""
        entry = self.live.get(recording_id)
        if entry is None or entry.have >= entry.origin_bytes:
            return None
        return entry.have, min(chunk, entry.origin_bytes - entry.have)

    def next_pulls(self, due: set[str], max_ranges: int, max_bytes: int
                   ) -> list[tuple[str, int, int]]:
        """The next ranges to ask one origin for in a single request, from the recordings
        in `due` (ours to pull from it): at most `max_ranges`, and `max_bytes` in all
        after the first. Recordings that are level (or no longer followed) leave `due`."""
        ranges: list[tuple[str, int, int]] = []
        total = 0
        for recording_id in list(due):
            if len(ranges) >= max_ranges:
                break
            step = self.next_pull(recording_id)
            if step is None:
                due.discard(recording_id)
                continue
            offset, length = step
            if ranges and total + length > max_bytes:
                continue  # too big for this request: the next one
            ranges.append((recording_id, offset, length))
            total += length
        return ranges

    def taken_over(self, recording_id: str) -> None:
        """We published our copy (and deleted the live copy): following goes on from
        the start of the origin's file should its progress resume."""
        entry = self.live.get(recording_id)
        if entry is not None:
            entry.taken = True
            entry.taken_mark = entry.last_progress_at or float("-inf")
            entry.chain = Chain()

    def pulled(self, recording_id: str, data: bytes) -> bool:
        """Bytes pulled for the end of our copy: True when they continue it (write them),
        False when they break its page chain: the origin's file is no longer what we
        copied (it lost its tail and wrote on), so our copy is dropped and the next pull
        starts again from 0 (the caller empties the file)."""
        entry = self.live.get(recording_id)
        if entry is None:
            return False
        chain = follow(entry.chain, data)
        if chain is None:
            entry.chain = Chain()
            return False
        entry.chain = chain
        return True

    def due(self, now: float, last_heard: dict[str, float], timeout: float) -> list[Live]:
        """Recordings to take over now: the origin silent past `timeout`, the start fact
        known (it carries the metadata), nothing terminal seen."""
        due = []
        for entry in self.live.values():
            if entry.started is None:
                continue
            if entry.taken and (entry.last_progress_at is None
                                or entry.last_progress_at <= entry.taken_mark):
                continue  # taken over, and nothing new from the origin since
            heard = [entry.learned_at, last_heard.get(entry.origin, float("-inf"))]
            if entry.last_progress_at is not None:
                heard.append(entry.last_progress_at)
            if now - max(heard) > timeout:
                due.append(entry)
        return sorted(due, key=lambda e: e.recording_id)
