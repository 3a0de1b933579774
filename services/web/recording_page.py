"""One recording: its page, its waveform, its notes and tags.

Every route reaches the recording through `WebState.visible_record` (404 for another
user's recording, exactly as for an unknown id), so the waveform, notes and tags are no
easier to reach than the audio. Notes and tags are facts (`recording.note_added`,
`recording.tag_changed`) replicated like every other; a change is published and then
waited for (bounded) in the local catalog, so the next GET shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import structlog
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.exceptions import NotFoundException, PermissionDeniedException, ValidationException
from litestar.params import FromPath
from litestar.response import Template
from litestar.types import ControllerRouterHandler
from pydantic import BaseModel, ConfigDict, Field

from callrec.store import StoreKeyError
from contracts.v1.events import (
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    RecordingNoteAdded,
    RecordingTagChanged,
)
from contracts.v1.rpc import Annotations
from contracts.v1.tags import normalize_tag

from .audit_http import AUDIT
from .auth import Principal
from .media import AudioMissing
from .pages import page
from .state import read_body, web_state

log = structlog.get_logger(component="web")

MAX_TAG = 64
MAX_NOTE = 4000


def shows(annotations: Annotations, event: RecordingNoteAdded | RecordingTagChanged) -> bool:
    """Whether the catalog's annotations already reflect `event`."""
    if isinstance(event, RecordingNoteAdded):
        return any(note.note_id == event.note_id for note in annotations.notes)
    return (normalize_tag(event.tag) in annotations.tags) == event.added


# --------------------------------------------------------------------------- page model

PartyKind = Literal["agent", "customer", "other"]
"""Agent: the recorded party (the extension the recorder records); customer: whom they
talk to from outside (inbound or outbound calls); other: a colleague or unknown."""


@dataclass(frozen=True, slots=True)
class Party:
    kind: PartyKind
    participant: Participant

    @property
    def label(self) -> str:
        return {"agent": "Agent (recorded)", "customer": "Customer",
                "other": "Other party"}[self.kind]


def party_kind(participant: Participant, metadata: RecordingMetadata) -> PartyKind:
    """Which side a participant is on: the recorded extension (or CUCM's near end) is
    the agent; the others are customers unless the call stayed inside the company."""
    recorded = metadata.recorded_extension
    if recorded is not None and participant.number == recorded:
        return "agent"
    if recorded is None and participant.role == "near":
        return "agent"
    if metadata.direction in ("inbound", "outbound"):
        return "customer"
    return "other"


def parties(record: RecordingCompleted) -> list[Party]:
    """The participants, agent first, each with the side they are on."""
    found = [Party(party_kind(p, record.metadata), p) for p in record.metadata.participants]
    order = {"agent": 0, "customer": 1, "other": 2}
    return sorted(found, key=lambda party: order[party.kind])


def lane_names(record: RecordingCompleted) -> list[str]:
    """What each waveform lane (stereo channel 0, 1) carries, for its caption."""
    names: list[str] = []
    for channel in (0, 1):
        on = [party for party in parties(record) if party.participant.channel == channel]
        if on:
            who = on[0].participant.name or on[0].participant.number or on[0].participant.role
            names.append(f"{on[0].label}: {who}")
        else:
            names.append("near end (left)" if channel == 0 else "far end (right)")
    return names


def warnings(record: RecordingCompleted) -> list[str]:
    """What a listener should know before trusting the recording."""
    out: list[str] = []
    reasons = {
        "no_packets": "no audio arrived",
        "not_rtp": "what arrived was not RTP of this call",
        "dtmf_only": "only DTMF events arrived, no voice",
        "undecodable": "audio arrived in a codec the recorder could not decode",
    }
    for channel in record.channels:
        if channel.silent_reason is not None:
            side = "near end" if channel.channel == 0 else "far end"
            out.append(f"Silent {side} channel ({channel.stream_id}): "
                       f"{reasons[channel.silent_reason]}.")
    if record.interrupted:
        out.append(f"Interrupted: the recording node stopped mid-call; node {record.node_id} "
                   "kept the audio it had replicated up to then.")
    if record.recovered:
        out.append("Recovered after a restart of the recorder: a fraction of a second "
                   "may be missing.")
    return out


@get("/recordings/{recording_id:str}", include_in_schema=False, opt={AUDIT: "view"})
async def recording_page(request: Request[Any, Any, Any], recording_id: FromPath[str]) -> Template:
    """Player, waveform, parties, statistics, notes and tags; its script calls the API."""
    web = web_state(request)
    principal = await web.require(request)
    record = await web.visible_record(principal, recording_id)
    codecs = sorted({name for channel in record.channels for name in channel.codecs})
    dtmf = sorted(((c.channel, d) for c in record.channels for d in c.dtmf),
                  key=lambda item: item[1].at_ms)
    return page("recording", request, principal, record=record, parties=parties(record),
                lanes=lane_names(record), warnings=warnings(record), codecs=codecs, dtmf=dtmf,
                held=record.recording_id in web.backend.held,
                may_annotate=principal.may_annotate())


# --------------------------------------------------------------------------- API


class NoteInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_NOTE)


def _tag(text: str) -> str:
    tag = normalize_tag(text)
    if not tag or len(tag) > MAX_TAG or any(ord(c) < 32 or c == "/" for c in tag):
        raise ValidationException(detail=f"a tag is 1 to {MAX_TAG} characters, no '/'")
    return tag


class RecordingPageController(Controller):
    """`/api/recordings/{id}/waveform`, `.../annotations`, `.../notes`, `.../tags/{tag}`."""

    path = "/api/recordings/{recording_id:str}"

    @get("/waveform")
    async def waveform(
        self, request: Request[Any, Any, Any], recording_id: FromPath[str]
    ) -> dict[str, Any]:
        """Peaks stored at finalize; else computed from this node's audio, once."""
        web = web_state(request)
        principal = await web.require(request)
        record = await web.visible_record(principal, recording_id)
        found = await web.backend.waveform(record.recording_id)
        if found is None:
            try:
                found = await web.media.waveform(record)
            except (FileNotFoundError, AudioMissing, StoreKeyError):
                raise NotFoundException(detail="audio not available on this node") from None
            log.info("waveform_computed", recording_id=record.recording_id,
                     buckets=found.peaks.buckets)
        return found.model_dump(mode="json")

    @get("/annotations")
    async def annotations(
        self, request: Request[Any, Any, Any], recording_id: FromPath[str]
    ) -> dict[str, Any]:
        web = web_state(request)
        principal = await web.require(request)
        record = await web.visible_record(principal, recording_id)
        found = await web.backend.annotations(record.recording_id)
        return {**found.model_dump(mode="json"), "may_annotate": principal.may_annotate()}

    @post("/notes", status_code=201, opt={AUDIT: "note"})
    async def add_note(
        self, request: Request[Any, Any, Any], recording_id: FromPath[str]
    ) -> Response[Any]:
        web = web_state(request)
        principal, record = await self._annotator(request, recording_id)
        body = await read_body(request, NoteInput)
        if not body.text.strip():
            raise ValidationException(detail="a note needs some text")
        event = RecordingNoteAdded(node_id=web.backend.node_id,
                                   recording_id=record.recording_id, text=body.text,
                                   author=principal.username)
        applied = await web.backend.annotate(event)
        log.info("note_added", recording_id=record.recording_id, note_id=event.note_id,
                 by=principal.username)
        return Response(content={"recording_id": record.recording_id, "note_id": event.note_id,
                                 "event_id": event.event_id, "applied_locally": applied},
                        status_code=201)

    @put("/tags/{tag:str}", opt={AUDIT: "tag"})
    async def add_tag(
        self, request: Request[Any, Any, Any], recording_id: FromPath[str], tag: FromPath[str]
    ) -> Response[Any]:
        return await self._tag(request, recording_id, tag, True)

    @delete("/tags/{tag:str}", status_code=200, opt={AUDIT: "tag"})
    async def remove_tag(
        self, request: Request[Any, Any, Any], recording_id: FromPath[str], tag: FromPath[str]
    ) -> Response[Any]:
        return await self._tag(request, recording_id, tag, False)

    async def _tag(self, request: Request[Any, Any, Any], recording_id: str, text: str,
                   added: bool) -> Response[Any]:
        web = web_state(request)
        principal, record = await self._annotator(request, recording_id)
        tag = _tag(text)
        event = RecordingTagChanged(node_id=web.backend.node_id,
                                    recording_id=record.recording_id, tag=tag, added=added,
                                    changed_by=principal.username)
        applied = await web.backend.annotate(event)
        log.info("tag_changed", recording_id=record.recording_id, tag=tag, added=added,
                 by=principal.username)
        return Response(content={"recording_id": record.recording_id, "tag": tag,
                                 "added": added, "event_id": event.event_id,
                                 "applied_locally": applied})

    async def _annotator(self, request: Request[Any, Any, Any],
                         recording_id: str) -> tuple[Principal, RecordingCompleted]:
        """The caller and the recording, when the caller may see and annotate it: a
        recording they cannot see is unknown (404) before their role is judged (403)."""
        web = web_state(request)
        principal = await web.require(request)
        record = await web.visible_record(principal, recording_id)
        if not principal.may_annotate():
            raise PermissionDeniedException(detail="supervisor or administrator role required")
        return principal, record


RECORDING_PAGE: list[ControllerRouterHandler] = [RecordingPageController, recording_page]
