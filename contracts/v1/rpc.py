"""Requests and replies between services of one node (core NATS request/reply).

Commands are not facts: they are not stored, and the caller handles timeouts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.v1.audit import AuditHead
from contracts.v1.events import RecordingCompleted, RecordingMetadata, WaveformPeaks

T = TypeVar("T")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Reply(Message, Generic[T]):
    """Envelope of every reply: `ok` false carries a human-readable error."""

    ok: bool = True
    error: str | None = None
    data: T | None = None


class Empty(Message):
    pass


class RtpSource(Message):
    """Where the peer's SDP says a stream's RTP comes from: its c= address and m= port,
    as written. Capture decides what placeholders (0.0.0.0, port 0 or 9) mean."""

    address: str | None = Field(default=None, max_length=64)
    port: int | None = Field(default=None, ge=0, le=65535)


class StreamSpec(Message):
    stream_id: str
    channel: int
    label: str | None = None
    # None: no SDP from the peer yet (delayed offer); the first source latches.
    source: RtpSource | None = None
    # A port from capture's reserve that signaling has already answered with (None:
    # capture draws one now and the reply names it).
    port: int | None = Field(default=None, ge=1, le=65535)


class AllocateRequest(Message):
    """Open (idempotently) RTP ports for streams of a recording, creating it if new."""

    recording_id: str
    started_at: datetime
    streams: list[StreamSpec]
    metadata: RecordingMetadata
    # With reserved ports (StreamSpec.port): the capture process whose reserve they came
    # from, and the wall-clock time our 200 OK gave them to the PBX. Packets that
    # reached a port before that time cannot be the PBX's and are dropped.
    capture_id: str | None = Field(default=None, max_length=64)
    answered_at: float | None = None


MAX_RESERVE = 512


class ReserveRequest(Message):
    """Bind up to `count` more RTP ports ahead of the INVITEs that will use them, so a
    new leg is answered at once and its allocate follows the 200 OK (issue 11: the
    allocate round trip was most of INVITE->200 in a burst)."""

    count: int = Field(ge=1, le=MAX_RESERVE)


class ReserveReply(Message):
    """Ports bound and held (unread) for signaling until `lease_seconds` from now, when
    capture closes the unused ones. `capture_id` names this capture process: a
    restarted one holds none of its predecessor's reserve."""

    capture_id: str
    ports: list[int]
    lease_seconds: float


class AllocateReply(Message):
    ports: dict[str, int]


class UpdateRequest(Message):
    """Payload-type map and RTP source (after SDP negotiation) and/or new call metadata."""

    recording_id: str
    stream_id: str | None = None
    payload_codecs: dict[int, str] | None = None
    # The peer's SDP for `stream_id` (required with it): a moved source re-latches.
    source: RtpSource | None = None
    metadata: RecordingMetadata | None = None


class ReleaseRequest(Message):
    """Drop a stream that never carried media (CANCEL, failed negotiation)."""

    recording_id: str
    stream_id: str


class FinalizeRequest(Message):
    recording_id: str
    ended_at: datetime
    metadata: RecordingMetadata | None = None


class QuietStream(Message):
    """A live stream that has carried no RTP yet, or none for a while."""

    recording_id: str
    stream_id: str
    packets: int  # stored so far; 0: still waiting for its first packet
    silent_s: float  # since its last packet (or since the recording began)


class CaptureHealth(Message):
    can_record: bool
    reason: str | None = None
    active_recordings: int = 0
    active_streams: int = 0
    free_ports: int = 0
    store_free_bytes: int = 0
    # Set while the live encoding is over --max-live-lag behind: why new calls are
    # refused. Calls in progress go on and their other legs still join them.
    over_capacity: str | None = None
    # Streams without a packet yet or silent for QUIET_AFTER_S: signaling applies the
    # media timeout (it knows which legs are on hold) and the per-source cap on legs
    # still waiting for media. Every other live stream has had a packet recently.
    quiet_streams: list[QuietStream] = Field(default_factory=list)
    # The capture process that answered (ReserveReply.capture_id): a new one means the
    # ports reserved from the last one are gone.
    capture_id: str = ""


QUIET_AFTER_S = 1.0


class ActiveRecordings(Message):
    recording_ids: list[str] = Field(default_factory=list)


SearchSort = Literal["started", "duration"]
SearchOrder = Literal["asc", "desc"]
Direction = Literal["inbound", "outbound", "internal", "unknown"]


class SearchRequest(Message):
    """A page of recordings. Every filter is optional and they all combine with AND;
    every field has a default so an old caller's request still means what it meant."""

    # Start time range, UTC instants (the page converts the browser's local time):
    # start_from <= started_at < start_to.
    start_from: datetime | None = None
    start_to: datetime | None = None
    # A participant number containing this (the old API's `number`).
    number: str | None = Field(default=None, max_length=64)
    # A participant number or name containing this (case-insensitive).
    number_or_name: str | None = Field(default=None, max_length=64)
    # Only recordings with one of these numbers (exactly, or as the extension the node's
    # number plan maps them to): the web resolves a user or group filter to this.
    # ANDed with `visible_numbers`; [] matches nothing.
    numbers_any: list[str] | None = Field(default=None, max_length=10_000)
    direction: Direction | None = None
    min_duration_ms: int | None = Field(default=None, ge=0)
    tag: str | None = Field(default=None, max_length=64)
    # Words that must all appear in one of the recording's notes (prefixes match).
    note_text: str | None = Field(default=None, max_length=200)
    node_id: str | None = Field(default=None, max_length=63)
    # True: only interrupted (takeover) copies; False: only complete ones.
    interrupted: bool | None = None
    sort: SearchSort = "started"
    order: SearchOrder = "desc"
    # None: no restriction (admin); a list: only recordings with one of these numbers.
    visible_numbers: list[str] | None = Field(default=None, max_length=10_000)
    limit: int = Field(default=50, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class SearchResult(Message):
    total: int
    items: list[RecordingCompleted]
    # Current tags of the listed recordings (recordings without tags are left out).
    tags: dict[str, list[str]] = Field(default_factory=dict)


class GetRequest(Message):
    recording_id: str


class Note(Message):
    note_id: str
    author: str
    at: datetime
    text: str


class Annotations(Message):
    """A recording's notes (oldest first) and current tags, as the catalog projects them."""

    recording_id: str
    notes: list[Note] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


class Waveform(Message):
    """A recording's waveform peaks: `stored` were computed by capture at finalize and
    replicated as a fact; `computed` by the web from the audio (older recordings, a
    peer's interrupted copy) and cached on that node's disk."""

    recording_id: str
    duration_ms: int
    peaks: WaveformPeaks
    source: Literal["stored", "computed"] = "stored"


class ReadObjectRequest(Message):
    """A chunk of an object from a peer's store (sync replication), or, with `live` set
    to a recording id, of the Ogg/Opus file that node is still recording (live.opus):
    the in-flight replication of a call in progress (`object_key` then unused)."""

    object_key: str = ""
    offset: int = Field(ge=0)
    length: int = Field(gt=0, le=4 * 1024 * 1024)
    live: str | None = Field(default=None, max_length=128)


MAX_LIVE_RANGES = 256
"""Ranges in one ReadLiveRequest (what a peer following many calls asks at once)."""


class LiveRange(Message):
    """New bytes of one recording's live.opus that a peer asks its origin for."""

    recording_id: str = Field(min_length=1, max_length=128)
    offset: int = Field(ge=0)
    length: int = Field(gt=0, le=4 * 1024 * 1024)


class ReadLiveRequest(Message):
    """The new bytes of several recordings in progress on the node asked, in one round
    trip: a peer following hundreds of calls asks for all their new pages at once
    rather than once per call and live step (each request and reply costs both nodes'
    services and servers far more than the kilobyte a step adds)."""

    ranges: list[LiveRange] = Field(min_length=1, max_length=MAX_LIVE_RANGES)


class LivePart(Message):
    """What a ReadLiveRequest's reply holds for one of its ranges, in request order."""

    recording_id: str
    offset: int = Field(ge=0)
    length: int = Field(ge=0)  # bytes of this part in the body (0: none yet, or an error)
    size: int | None = Field(default=None, ge=0)  # the live file's size when it was read
    error: str | None = None
    skipped: bool = False  # not read: the reply was full; ask again


class ReadLiveReply(Message):
    """The first line of a ReadLiveRequest's reply body (one JSON line); the parts'
    bytes follow it, concatenated in order, raw (no base64)."""

    parts: list[LivePart] = Field(max_length=MAX_LIVE_RANGES)


class LiveProgress(Message):
    """Capture flushed more of a recording in progress: `bytes` of live.opus (ending on
    a complete Ogg page) cover `duration_ms` of audio; `final` once it is finalized."""

    recording_id: str
    node_id: str
    bytes: int = Field(ge=0)
    duration_ms: int = Field(ge=0)
    final: bool = False


MAX_PROGRESS_BATCH = 512
"""Updates in one LiveProgressBatch (about 60 KB of JSON)."""


class LiveProgressBatch(Message):
    """The progress of several of a node's recordings after one round of live steps,
    in one message: one message per recording and step cost the bus and the peers
    more than the kilobyte of audio a step adds."""

    node_id: str
    updates: list[LiveProgress] = Field(min_length=1, max_length=MAX_PROGRESS_BATCH)


class PeerLag(Message):
    node_id: str
    events_lag: int | None = None
    events_last_contact_s: float | None = None
    objects_pending: int = 0


class NodeStatus(Message):
    """One node as seen from the node answering (from heartbeats)."""

    node_id: str
    configured_role: str
    priority: int
    alive: bool
    last_heartbeat_age_s: float | None = None
    recordings: int | None = None
    current_role: str | None = None
    # That node's replication lag behind each of its peers (from its heartbeats).
    lag: list[PeerLag] = Field(default_factory=list)
    # The head of that node's audit chain as it announced it (None: not announced).
    audit_head: AuditHead | None = None


class SyncStatus(Message):
    node_id: str
    nodes: list[NodeStatus]
    lag: list[PeerLag]
    recordings_held: int


class RolesStatus(Message):
    node_id: str
    holder: str | None
    epoch: int
    since: datetime | None = None
    previous: str | None = None  # the holder before `since` (a dead node's lost role)


class JobRunView(Message):
    run_id: str
    job_id: str
    node_id: str
    started_at: datetime
    trigger: str = "schedule"
    dry_run: bool = False
    state: str = "running"  # running | finished | failed | interrupted
    ended_at: datetime | None = None
    done: int = 0
    total: int = 0
    bytes: int = 0
    processed: int = 0
    skipped: int = 0
    error: str | None = None
    would_purge: list[str] = Field(default_factory=list)


class TargetCheckView(Message):
    """The last `job.target_checked` of an export job (`current`: it checked the job's
    definition in force now, by the node holding the maintenance role now)."""

    ok: bool
    detail: str
    node_id: str
    checked_at: datetime
    target_dir: str
    config_event_id: str
    current: bool = False


class JobView(Message):
    job_id: str
    name: str
    kind: str
    schedule: dict[str, object]
    paused: bool
    params: dict[str, object]
    next_run: datetime | None = None
    runs_on: str | None = None  # the node holding the maintenance role
    last_runs: list[JobRunView] = Field(default_factory=list)
    exported: int | None = None
    config_event_id: str | None = None  # the job.configured fact in force
    target_check: TargetCheckView | None = None  # export jobs


class JobsStatus(Message):
    node_id: str
    holder: str | None
    jobs: list[JobView]
