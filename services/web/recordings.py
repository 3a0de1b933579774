"""Recordings: search, metadata, audio (with HTTP Range), purge and legal hold.

Every route reaches a recording through `WebState.visible_record`, so one rule decides
who sees what: an id the caller may not see answers 404, exactly like an unknown one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import structlog
from litestar import Controller, Request, Response, delete, get, put
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Stream
from pydantic import ValidationError as PydanticValidationError

from callrec.jobspec import HoldInput, describe_errors
from callrec.store import StoreKeyError, file_chunks
from callrec.users import UsersProjection
from contracts.v1.events import LegalHoldChanged, RecordingPurged
from contracts.v1.rpc import SearchRequest

from .audit_http import AUDIT, AUDIT_IF
from .media import AudioMissing, download_name
from .ranges import RangeNotSatisfiable, content_range, parse_range
from .security import ADMIN
from .state import MAX_OFFSET, parse_when, read_body, record_json, web_state

log = structlog.get_logger(component="web")

AUDIO_FORMATS = {"ogg": "audio/ogg", "opus": "audio/ogg", "wav": "audio/wav",
                 "mp3": "audio/mpeg"}
"""`?format=` of the audio route and its media type (ogg and opus: the stored object)."""


def _text(value: str | None) -> str | None:
    """A query parameter's text, None when absent or blank."""
    return (value.strip() or None) if value else None


def _extensions_of(users: UsersProjection, username: str | None,
                   group: str | None) -> list[str] | None:
    """The extensions a user and/or group filter stands for (None: no such filter).
    An unknown user or group stands for no extension, so it finds nothing."""
    if username is None and group is None:
        return None
    members = [u for u in users.users.values()
               if (username is None or u.username == username)
               and (group is None or group in u.groups)]
    return sorted({ext for u in members for ext in u.extensions})


async def _set_hold(
    request: Request[Any, Any, Any], recording_id: str, hold: bool
) -> Response[Any]:
    """Legal hold is a fact like any other: every node's purge sees it and skips the
    recording, wherever the purge job runs."""
    web = web_state(request)
    principal = await web.require(request)
    record = await web.visible_record(principal, recording_id)
    body = await read_body(request, HoldInput, optional=True)
    event = LegalHoldChanged(
        node_id=web.backend.node_id,
        recording_id=record.recording_id,
        hold=hold,
        reason=body.reason,
        requested_by=principal.username,
    )
    await web.backend.publish_event(event)
    log.info(
        "legal_hold_changed", recording_id=record.recording_id, hold=hold, by=principal.username
    )
    return Response(
        content={
            "recording_id": record.recording_id,
            "legal_hold": hold,
            "event_id": event.event_id,
        }
    )


class RecordingsController(Controller):
    """`/api/recordings`: one resource, its sub-resources (audio, hold) included."""

    path = "/api/recordings"

    @get("/", opt={AUDIT: "search"})
    async def list_recordings(
        self,
        request: Request[Any, Any, Any],
        from_: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
        to: Annotated[str | None, QueryParameter(max_length=64)] = None,
        number: Annotated[str | None, QueryParameter(max_length=64)] = None,
        number_or_name: Annotated[str | None, QueryParameter(max_length=64)] = None,
        user: Annotated[str | None, QueryParameter(max_length=64)] = None,
        group: Annotated[str | None, QueryParameter(max_length=64)] = None,
        direction: Annotated[str | None, QueryParameter(max_length=16)] = None,
        min_duration_s: Annotated[int | None, QueryParameter(ge=0, le=86_400)] = None,
        tag: Annotated[str | None, QueryParameter(max_length=64)] = None,
        note_text: Annotated[str | None, QueryParameter(max_length=200)] = None,
        node: Annotated[str | None, QueryParameter(max_length=63)] = None,
        interrupted: Annotated[bool | None, QueryParameter()] = None,
        sort: Annotated[str, QueryParameter(max_length=16)] = "started",
        order: Annotated[str, QueryParameter(max_length=4)] = "desc",
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
    ) -> dict[str, Any]:
        """A page of the recordings the caller may see, filtered; every filter narrows
        (a user or group filter included: it can never widen what the caller sees)."""
        web = web_state(request)
        principal = await web.require(request)
        start_from = parse_when(from_, "from")
        start_to = parse_when(to, "to")
        if start_from and start_to and start_from > start_to:
            raise ValidationException(detail="from must not be after to")
        try:
            query = SearchRequest.model_validate({
                "start_from": start_from,
                "start_to": start_to,
                "number": _text(number),
                "number_or_name": _text(number_or_name),
                "numbers_any": _extensions_of(web.backend.users, _text(user), _text(group)),
                "direction": _text(direction),
                "min_duration_ms": min_duration_s * 1000 if min_duration_s else None,
                "tag": _text(tag),
                "note_text": _text(note_text),
                "node_id": _text(node),
                "interrupted": interrupted,
                "sort": sort,
                "order": order,
                "limit": limit,
                "offset": offset,
            })
        except PydanticValidationError as exc:
            raise ValidationException(detail=describe_errors(exc)) from None
        result = await web.backend.search(query, principal.visible_numbers())
        items = [{**record_json(r, web.backend.held), "tags": result.tags.get(r.recording_id, [])}
                 for r in result.items]
        return {"total": result.total, "limit": limit, "offset": offset, "items": items}

    @get("/{recording_id:str}", opt={AUDIT: "view"})
    async def recording_metadata(
        self, request: Request[Any, Any, Any], recording_id: FromPath[str]
    ) -> dict[str, Any]:
        web = web_state(request)
        principal = await web.require(request)
        record = await web.visible_record(principal, recording_id)
        return record_json(record, web.backend.held)

    @get("/{recording_id:str}/audio",
         opt={AUDIT: "play", AUDIT_IF: {"download": "download"}})
    async def recording_audio(
        self,
        request: Request[Any, Any, Any],
        recording_id: FromPath[str],
        fmt: Annotated[str, QueryParameter(name="format", max_length=8)] = "ogg",
        download: FromQuery[bool] = False,
    ) -> Response[Any]:
        """The stored Ogg/Opus (`ogg`, or `opus` to download it named .opus), or a
        transcode made once (`wav`, `mp3`); HTTP Range in every format."""
        web = web_state(request)
        principal = await web.require(request)
        if fmt not in AUDIO_FORMATS:
            raise ValidationException(detail="format must be ogg, opus, wav or mp3")
        record = await web.visible_record(principal, recording_id)
        chunks: Any
        try:
            if fmt in ("wav", "mp3"):
                path = await web.media.ensure(record, "wav" if fmt == "wav" else "mp3")
                size = path.stat().st_size
                media_type, etag, extension = AUDIO_FORMATS[fmt], f'"{record.sha256}-{fmt}"', fmt

                def chunks(first: int, last: int) -> Iterator[bytes]:
                    return file_chunks(path, first, last + 1)

            else:
                size = web.store.size(record.object_key)
                media_type, etag, extension = record.content_type, f'"{record.sha256}"', fmt

                def chunks(first: int, last: int) -> Iterator[bytes]:
                    return web.store.read_range(record.object_key, first, last + 1)

        except (FileNotFoundError, AudioMissing, StoreKeyError):
            log.warning("audio_missing", recording_id=record.recording_id, key=record.object_key)
            raise NotFoundException(detail="audio not available on this node") from None

        headers = {
            "Accept-Ranges": "bytes",
            "ETag": etag,
            "Cache-Control": "no-store",  # call audio never sits in a browser or proxy cache
        }
        if download:
            headers["Content-Disposition"] = (
                f'attachment; filename="{download_name(record, extension)}"'
            )
        range_header = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if range_header and if_range and if_range.strip() != etag:
            range_header = None  # the client's cached copy is stale: send everything
        if not range_header and request.headers.get("if-none-match", "").strip() == etag:
            return Response(content=b"", status_code=304, headers=headers)
        try:
            wanted = parse_range(range_header, size)
        except RangeNotSatisfiable:
            headers["Content-Range"] = f"bytes */{size}"
            return Response(
                content={"status_code": 416, "detail": "range not satisfiable"},
                status_code=416,
                headers=headers,
            )
        if wanted is None:
            first, last, status = 0, size - 1, 200
        else:
            first, last = wanted
            status = 206
            headers["Content-Range"] = content_range(first, last, size)
        headers["Content-Length"] = str(max(0, last - first + 1))
        log.info(
            "audio_served",
            recording_id=record.recording_id,
            user=principal.username,
            format=extension,
            status=status,
            first=first,
            last=last,
        )
        body = chunks(first, last) if size > 0 else iter(())
        return Stream(body, status_code=status, media_type=media_type, headers=headers)

    @delete("/{recording_id:str}", status_code=202, guards=[ADMIN], opt={AUDIT: "delete"})
    async def purge_recording(
        self, request: Request[Any, Any, Any], recording_id: FromPath[str]
    ) -> Response[Any]:
        """Delete everywhere: a `recording.purged` fact that every node applies to its copy.
        A recording under legal hold is refused (409) until the hold is released."""
        web = web_state(request)
        principal = await web.require(request)
        record = await web.visible_record(principal, recording_id)
        if record.recording_id in web.backend.held:
            log.warning(
                "held_recording_purge_refused",
                recording_id=record.recording_id,
                by=principal.username,
            )
            raise HTTPException(
                status_code=409,
                detail="recording is under legal hold: release the hold before deleting it",
            )
        event = RecordingPurged(
            node_id=web.backend.node_id,
            recording_id=record.recording_id,
            object_key=record.object_key,
            reason=f"deleted by {principal.username}",
            requested_by=principal.username,
        )
        gone = await web.backend.purge_recording(event)
        log.info(
            "recording_purge_requested",
            recording_id=record.recording_id,
            by=principal.username,
            applied_locally=gone,
        )
        return Response(
            content={
                "recording_id": record.recording_id,
                "event_id": event.event_id,
                "applied_locally": gone,
            },
            status_code=202,
        )

    @put("/{recording_id:str}/hold", guards=[ADMIN], opt={AUDIT: "hold"})
    async def hold_recording(
        self, request: Request[Any, Any, Any], recording_id: FromPath[str]
    ) -> Response[Any]:
        return await _set_hold(request, recording_id, True)

    @delete("/{recording_id:str}/hold", status_code=200,
            guards=[ADMIN], opt={AUDIT: "release"})
    async def release_recording(
        self, request: Request[Any, Any, Any], recording_id: FromPath[str]
    ) -> Response[Any]:
        return await _set_hold(request, recording_id, False)
