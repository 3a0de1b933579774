"""Events: immutable facts, past tense, each with a unique id used as `Nats-Msg-Id`.

State anywhere in callrec (catalog, users, roles) is a projection of these; adding a
field is backwards compatible, changing one's meaning needs a v2.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def new_id() -> str:
    """Random 128-bit id as 32 hex chars: unique across nodes without coordination."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Participant(Frozen):
    """One party of a recorded call and the stereo channel carrying their voice."""

    role: Literal["near", "far", "caller", "callee", "other"]
    number: str | None = None
    name: str | None = None
    device: str | None = None
    aor: str | None = None
    channel: int | None = None
    # The sender asked to hide this identity (Privacy: id, RPID privacy=...): kept,
    # since the recorder belongs to the company whose PBX sent it, but marked.
    private: bool = False
    # Host[:port] of an address without a user part (never stored as a number).
    host: str | None = None
    # Where the name/number came from (P-Asserted-Identity, Remote-Party-ID, From,
    # CUCM From-URI parameters, SIPREC metadata).
    identity_source: Literal["pai", "rpid", "from", "cucm", "metadata"] | None = None


class RecordingMetadata(Frozen):
    """What signaling knows about a recorded call; it grows as legs and updates arrive."""

    source: Literal["cucm", "siprec", "sip"]
    session_key: str
    refci: str | None = None
    cluster_id: str | None = None
    siprec_session_ids: list[str] = Field(default_factory=list)
    sip_call_ids: list[str] = Field(default_factory=list)
    participants: list[Participant] = Field(default_factory=list)
    direction: Literal["inbound", "outbound", "internal", "unknown"] = "unknown"
    recorded_user: str | None = None
    recorded_extension: str | None = None
    user_agent: str | None = None
    # Cisco-Guid header: one id per call across CUCM and CUBE, linking a BiB
    # recording, a CUBE SIPREC recording and the segments of one call.
    cisco_guid: str | None = None
    # Call-IDs of the recorded call itself as the SRC reported them (SIPREC
    # metadata sipSessionID / Ribbon callData), for searching by the PBX's id.
    recorded_call_ids: list[str] = Field(default_factory=list)
    # When the recorded call started according to the SRC; None when unknown or
    # implausible (some SBCs send 1970-01-01).
    call_started_at: datetime | None = None

    def numbers(self) -> list[str]:
        return [p.number for p in self.participants if p.number]


class DtmfDigit(Frozen):
    digit: str
    at_ms: int
    duration_ms: int


class ChannelSummary(Frozen):
    """Per-channel (per-stream) reception statistics, kept for troubleshooting calls."""

    channel: int
    stream_id: str
    port: int
    packets_received: int = 0
    packets_lost: int = 0
    packets_duplicate: int = 0
    packets_invalid: int = 0
    packets_outside: int = 0
    unknown_payload: int = 0
    ssrc_changes: int = 0
    codecs: list[str] = Field(default_factory=list)
    dtmf: list[DtmfDigit] = Field(default_factory=list)
    # Packets that became audio, and the RTP payload types that arrived but mean
    # nothing we decode (no SDP mapped them): a silent channel explains itself.
    packets_decoded: int = 0
    unknown_payload_types: list[int] = Field(default_factory=list)
    # Why the channel has no audio at all (None: some audio was decoded): nothing
    # arrived, nothing that arrived was RTP in the call's time, only DTMF events,
    # or RTP whose payload could not be decoded.
    silent_reason: Literal["no_packets", "not_rtp", "dtmf_only", "undecodable"] | None = None


class EventBase(Frozen):
    event_id: str = Field(default_factory=new_id)
    node_id: str
    occurred_at: datetime = Field(default_factory=utcnow)


class RecordingStarted(EventBase):
    """Signaling answered the first leg of a recorded call."""

    type: Literal["recording.started"] = "recording.started"
    recording_id: str
    started_at: datetime
    metadata: RecordingMetadata


class RecordingEnded(EventBase):
    """Signaling saw the last leg of a recorded call end (BYE, CANCEL, failure)."""

    type: Literal["recording.ended"] = "recording.ended"
    recording_id: str
    ended_at: datetime
    reason: str


class RecordingCompleted(EventBase):
    """Capture stored the finished stereo recording; the object is in the node's store."""

    type: Literal["recording.completed"] = "recording.completed"
    recording_id: str
    started_at: datetime
    ended_at: datetime
    duration_ms: int
    object_key: str
    content_type: str = "audio/ogg"
    size_bytes: int
    sha256: str
    channels: list[ChannelSummary]
    metadata: RecordingMetadata
    recovered: bool = False
    # Made by a peer (node_id) from the audio it had replicated while the origin was
    # recording, after the origin fell silent mid-call: provisional while the origin may
    # come back with its own copy (the rule of `contracts.v1.winner` keeps one).
    interrupted: bool = False


class WaveformPeaks(Frozen):
    """What a recording page draws: per channel (0 near end, 1 far end) and per bucket of
    `bucket_ms`, the lowest and highest sample as int8 (int16 / 256, rounded outwards so
    any sound shows), interleaved (min, max, min, max, ...) and base64-encoded.
    `callrec.waveform` makes and reads them (one rule)."""

    bucket_ms: int = Field(ge=1)
    buckets: int = Field(ge=0, le=4000)
    channels: list[str] = Field(max_length=2)


class RecordingWaveformComputed(EventBase):
    """Capture computed the waveform peaks of a recording it finalized (`node_id`'s copy).

    A fact of its own, not a field of RecordingCompleted, so searches never carry peaks;
    published just before the completion, with a deterministic id (retries are dropped).
    """

    type: Literal["recording.waveform_computed"] = "recording.waveform_computed"
    recording_id: str
    duration_ms: int = Field(ge=0)
    peaks: WaveformPeaks


class RecordingFailed(EventBase):
    """Capture could not produce a recording; the raw packets are kept for an operator."""

    type: Literal["recording.failed"] = "recording.failed"
    recording_id: str
    reason: str


class RecordingReplicated(EventBase):
    """This node (`node_id`) now holds a verified copy of another node's recording."""

    type: Literal["recording.replicated"] = "recording.replicated"
    recording_id: str
    origin_node_id: str
    object_key: str
    sha256: str
    size_bytes: int


class RecordingPurged(EventBase):
    """The recording is deleted everywhere: every node removes its copy when it sees this."""

    type: Literal["recording.purged"] = "recording.purged"
    recording_id: str
    object_key: str
    reason: str
    requested_by: str | None = None


class RoleChanged(EventBase):
    """This node saw the maintenance role move (`holder` None: nobody it can see)."""

    type: Literal["role.changed"] = "role.changed"
    holder: str | None
    previous: str | None
    epoch: int
    reason: str


class LegalHoldChanged(EventBase):
    """A recording is put under (or released from) legal hold: purge never deletes it."""

    type: Literal["recording.hold_changed"] = "recording.hold_changed"
    recording_id: str
    hold: bool
    reason: str | None = None
    requested_by: str | None = None


class JobSchedule(Frozen):
    """Cron expression (crontab's five fields, local time of the node) or an interval."""

    cron: str | None = None
    interval_s: int | None = Field(default=None, ge=10)


class PurgeParams(Frozen):
    """Retention: the most specific setting wins (user, then group, then global); a
    recording of several users keeps the longest of their retentions."""

    retention_s: int = Field(ge=1)
    user_retention_s: dict[str, int] = Field(default_factory=dict)
    group_retention_s: dict[str, int] = Field(default_factory=dict)


class ExportParams(Frozen):
    target_dir: str
    path_template: str = "{date:%Y/%m/%d}/{start:%H%M%S}_{near}_{far}_{id}.{ext}"
    format: Literal["opus", "wav", "mp3"] = "opus"
    sidecar: bool = True


class JobConfigured(EventBase):
    """A maintenance job was created or changed (whole new definition)."""

    type: Literal["job.configured"] = "job.configured"
    job_id: str
    name: str
    kind: Literal["purge", "export"]
    schedule: JobSchedule
    paused: bool = False
    purge: PurgeParams | None = None
    export: ExportParams | None = None
    changed_by: str | None = None


class JobRemoved(EventBase):
    type: Literal["job.removed"] = "job.removed"
    job_id: str


class JobRunRequested(EventBase):
    """Someone asked for a run now; the node holding the maintenance role starts it."""

    type: Literal["job.run_requested"] = "job.run_requested"
    job_id: str
    dry_run: bool = False
    requested_by: str | None = None


class JobRunStarted(EventBase):
    type: Literal["job.run_started"] = "job.run_started"
    job_id: str
    run_id: str
    dry_run: bool = False
    role_epoch: int = 0
    trigger: str = "schedule"


class JobRunProgressed(EventBase):
    type: Literal["job.run_progressed"] = "job.run_progressed"
    job_id: str
    run_id: str
    done: int
    total: int
    bytes: int = 0


class JobRunFinished(EventBase):
    type: Literal["job.run_finished"] = "job.run_finished"
    job_id: str
    run_id: str
    processed: int
    skipped: int = 0
    bytes: int = 0
    # For a dry run of a purge: what would go.
    would_purge: list[str] = Field(default_factory=list)


class JobRunFailed(EventBase):
    """A run stopped on an error (target missing, full, not writable...); the job keeps
    its place (what was exported stays recorded) and the next run continues."""

    type: Literal["job.run_failed"] = "job.run_failed"
    job_id: str
    run_id: str
    error: str
    processed: int = 0


class RecordingExported(EventBase):
    """One recording was written by an export job: a backup that takes over continues
    after it, and never writes it again."""

    type: Literal["recording.exported"] = "recording.exported"
    job_id: str
    run_id: str
    recording_id: str
    path: str
    size_bytes: int


class JobTargetChecked(EventBase):
    """The maintenance role holder's answer for one definition of an export job
    (`config_event_id`, the `job.configured` fact): does its target folder exist and
    take files there? Only the holder writes exports, so only its answer counts;
    any node's web shows it after a save. Stated when the definition arrives and
    again by each new holder (`role_epoch`)."""

    type: Literal["job.target_checked"] = "job.target_checked"
    job_id: str
    config_event_id: str
    target_dir: str
    ok: bool
    detail: str = Field(max_length=2000)
    role_epoch: int = 0


Role = Literal["user", "supervisor", "admin"]
"""A user plays their own extensions' recordings; a supervisor also those of the groups
they supervise; an admin everything (delete, hold, users, jobs, audit)."""


class UserUpserted(EventBase):
    """A login and/or recording user was created or changed (whole new state).

    `role` None is an event from before roles: `admin` then decides (admin or user).
    """

    type: Literal["user.upserted"] = "user.upserted"
    username: str
    display_name: str | None = None
    password_hash: str | None = None
    admin: bool = False
    extensions: list[str] = Field(default_factory=list)
    record: bool = True
    groups: list[str] = Field(default_factory=list)
    role: Role | None = None
    supervises: list[str] = Field(default_factory=list)
    disabled: bool = False

    @property
    def effective_role(self) -> Role:
        if self.role is not None:
            return self.role
        return "admin" if self.admin else "user"


class UserRemoved(EventBase):
    type: Literal["user.removed"] = "user.removed"
    username: str


class UserTokenIssued(EventBase):
    """An API token of `username` (Authorization: Bearer). Only the sha256 of the
    token travels: it is 256 random bits, so a fast hash is enough, and a copy of the
    stream does not give anyone the token. A fact, so the token works on every node."""

    type: Literal["user.token_issued"] = "user.token_issued"
    username: str
    token_id: str = Field(min_length=1, max_length=64)
    token_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field(min_length=1, max_length=64)
    expires_at: datetime | None = None


class UserTokenRevoked(EventBase):
    """The token stops working everywhere; a revocation seen before its issue still wins."""

    type: Literal["user.token_revoked"] = "user.token_revoked"
    username: str
    token_id: str = Field(min_length=1, max_length=64)
    revoked_by: str


class RecordingParticipantsChanged(EventBase):
    """The parties of a recording in progress changed (a transfer, the real parties
    after a placeholder), effective from `at`; participants is the whole new list."""

    type: Literal["recording.participants_changed"] = "recording.participants_changed"
    recording_id: str
    at: datetime
    participants: list[Participant]


class RecordingNoteAdded(EventBase):
    """A note on a recording. Notes are append-only: a correction is another note."""

    type: Literal["recording.note_added"] = "recording.note_added"
    recording_id: str
    note_id: str = Field(default_factory=new_id)
    text: str = Field(min_length=1, max_length=4000)
    author: str


class RecordingTagChanged(EventBase):
    """A tag added to or removed from a recording. Per (recording, tag) the latest fact
    by (occurred_at, event_id) wins, so concurrent edits end the same on every node."""

    type: Literal["recording.tag_changed"] = "recording.tag_changed"
    recording_id: str
    tag: str = Field(min_length=1, max_length=64)
    added: bool
    changed_by: str


AuditAction = Literal[
    "login", "login_failed", "logout", "password_change", "token_created", "token_revoked",
    "search", "view", "play", "download", "note", "tag", "hold", "release", "delete",
    "job_change", "job_run", "user_change", "permission_change", "audit_export",
]
"""What an audit entry records; `login_failed` entries under a flood are aggregated."""
AuditOutcome = Literal["ok", "denied", "failed"]
AuditValue = str | int | bool | None
AUDIT_GENESIS = "0" * 64
"""`prev_hash` of a chain's first entry."""


class AuditRecorded(EventBase):
    """One entry of a node's audit trail: who did what, when, from where, with what result.

    Each node keeps one chain: `seq` counts 1, 2, ... and `hash` (contracts.v1.audit) covers
    the entry's own fields and `prev_hash`, the hash of the node's previous entry, so an
    edited, removed or reordered entry breaks the chain on every copy.
    """

    type: Literal["audit.recorded"] = "audit.recorded"
    seq: int = Field(ge=1)
    prev_hash: str = Field(max_length=128)
    hash: str = Field(max_length=128)
    at: datetime
    actor: str | None = Field(default=None, max_length=128)
    action: AuditAction
    target: str | None = Field(default=None, max_length=256)
    source_address: str | None = Field(default=None, max_length=64)
    outcome: AuditOutcome = "ok"
    detail: dict[str, AuditValue] = Field(default_factory=dict)


Event = Annotated[
    RecordingStarted
    | RecordingEnded
    | RecordingCompleted
    | RecordingFailed
    | RecordingReplicated
    | RecordingPurged
    | RoleChanged
    | LegalHoldChanged
    | JobConfigured
    | JobRemoved
    | JobRunRequested
    | JobRunStarted
    | JobRunProgressed
    | JobRunFinished
    | JobRunFailed
    | RecordingExported
    | JobTargetChecked
    | UserUpserted
    | UserRemoved
    | UserTokenIssued
    | UserTokenRevoked
    | RecordingParticipantsChanged
    | RecordingNoteAdded
    | RecordingTagChanged
    | RecordingWaveformComputed
    | AuditRecorded,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def type_of(event_class: type[EventBase]) -> str:
    """An event class's `type` (the last token of its subject)."""
    return str(event_class.model_fields["type"].default)


def parse_event(data: bytes) -> Event:
    """Decode any v1 event from its JSON bytes (raises pydantic.ValidationError)."""
    return EVENT_ADAPTER.validate_json(data)
