"""Recording sessions as signaling sees them, and the admission policy.

Pure domain logic, no network: which status a new recording INVITE gets, how the
CUCM legs of one call are grouped into one recording, what the metadata says.

Admission follows how PBXs route: a 5xx (or no answer) makes CUCM try the next
recorder, so only "this node cannot record" is a 503. Who is (not) recorded and a
full licence are answers the next node would give too, so they are 404/403/486.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from callrec.users import RecordingDecision, UsersProjection
from contracts.v1.events import Participant, RecordingMetadata
from contracts.v1.missed import MissedReason


class Admission(Enum):
    ACCEPT = 200
    UNKNOWN_USER = 404
    NOT_ENABLED = 403
    NO_LICENCE = 486
    CANNOT_RECORD = 503


@dataclass(frozen=True)
class AdmissionResult:
    admission: Admission
    reason: str
    # What the missed-calls record says (one refusal, one reason; ACCEPT never has one).
    missed: MissedReason = "internal_error"
    user: str | None = None


def admit(
    *,
    numbers: list[str],
    users: UsersProjection,
    record_all: bool,
    can_record: bool,
    cannot_record_reason: str | None,
    active_recordings: int,
    max_channels: int,
    joins_existing: bool,
    over_capacity: str | None = None,
) -> AdmissionResult:
    """Decide how to answer a new recording leg; checks run in the order a PBX needs.

    Over capacity (`over_capacity`, capture's live encoding too far behind) refuses
    new calls only, after the users' checks (a call nobody records need not move):
    another leg of a call being recorded still joins it, or that call would be
    recorded half here and half on the backup."""
    if not can_record:
        return AdmissionResult(Admission.CANNOT_RECORD, cannot_record_reason or "cannot record",
                               "cannot_record")
    decision, user = users.recording_decision(numbers)
    username = user.username if user else None
    if not record_all:
        if decision is RecordingDecision.UNKNOWN:
            return AdmissionResult(Admission.UNKNOWN_USER,
                                   f"no recording user for {', '.join(numbers) or 'this call'}",
                                   "unknown_user")
        if decision is RecordingDecision.NOT_ENABLED:
            return AdmissionResult(Admission.NOT_ENABLED,
                                   f"user {username or '?'} is not recorded",
                                   "not_enabled", username)
    if not joins_existing and over_capacity is not None:
        return AdmissionResult(Admission.CANNOT_RECORD, over_capacity, "over_capacity",
                               username)
    if not joins_existing and active_recordings >= max_channels:
        return AdmissionResult(Admission.NO_LICENCE,
                               f"licence limit of {max_channels} concurrent calls reached",
                               "no_licence", username)
    return AdmissionResult(Admission.ACCEPT, "ok", user=username)


@dataclass
class Stream:
    stream_id: str
    channel: int
    label: str | None
    port: int
    payload_codecs: dict[int, str] = field(default_factory=dict)


@dataclass
class Leg:
    """One SIP dialog (CUCM sends two per call; SIPREC one with several streams)."""

    call_id: str
    local_tag: str
    remote_tag: str
    streams: list[Stream]
    confirmed: bool = False
    ended: bool = False
    sdp_version: int = 1
    offer_pending: bool = False  # our 200 OK carried an offer; the ACK brings the answer
    # What is needed to send the PBX a BYE ourselves (session timer expiry, no ACK).
    remote_target: str = ""
    local_identity: str = ""
    remote_identity: str = ""
    peer: object | None = None
    bye_cseq: int = 1
    # RFC 4028: the PBX refreshes; if it stops (it died, the link broke) we end the leg.
    session_expires: int | None = None
    refreshed_at: float = 0.0
    # Media timeout (monotonic, same boot): silence counts from the answer or the end of
    # a hold; a leg on hold (SDP inactive/recvonly, port 0, c=0.0.0.0) is exempt.
    media_seen: bool = False
    on_hold: bool = False
    media_since: float = 0.0
    # Answered with ports from capture's reserve (reserve.py) whose allocate capture has
    # not confirmed yet: when (wall clock) and whose reserve. Kept on disk, so a
    # signaling restart in between sends the allocate again.
    answered_at: float | None = None
    reserved_from: str | None = None

    def expired(self, now: float) -> bool:
        return self.session_expires is not None and now - self.refreshed_at > self.session_expires


@dataclass
class RecordingSession:
    recording_id: str
    session_key: str
    started_at: datetime
    metadata: RecordingMetadata
    legs: dict[str, Leg] = field(default_factory=dict)
    ending: bool = False
    # Where the first leg came from, known before any leg is answered (a second leg
    # arriving while the first is still being set up must already be checked).
    first_source: str | None = None

    def live_legs(self) -> list[Leg]:
        return [leg for leg in self.legs.values() if not leg.ended]

    def source(self) -> str | None:
        """The address the call's legs come from (all legs of one call share it)."""
        if self.first_source is not None:
            return self.first_source
        for leg in self.legs.values():
            host = getattr(leg.peer, "host", None)
            if isinstance(host, str):
                return host
        return None


def _fill(known: Participant | None, other: Participant) -> Participant:
    if known is None:
        return other
    missing = {name: getattr(other, name) for name in ("number", "name", "device", "aor")
               if getattr(known, name) is None and getattr(other, name) is not None}
    if other.private and not known.private:
        missing["private"] = True
    return known.model_copy(update=missing) if missing else known


def merge_cucm_participants(
    metadata: RecordingMetadata, near: Participant, far: Participant, call_id: str
) -> RecordingMetadata:
    """Both legs carry the same parties; fill in what the first leg lacked (each leg's
    identity headers name the party on whose behalf CUCM sent it)."""
    by_role = {p.role: p for p in metadata.participants}
    participants = [_fill(by_role.get("near"), near), _fill(by_role.get("far"), far)]
    call_ids = [*metadata.sip_call_ids]
    if call_id not in call_ids:
        call_ids.append(call_id)
    return metadata.model_copy(update={"participants": participants, "sip_call_ids": call_ids})
