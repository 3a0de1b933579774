"""The HTTP API as a Litestar app built over a `Backend` port.

Handlers only translate HTTP to backend calls and back; NATS lives in `service.py`,
so the app can be exercised with a fake backend. Every hostile input maps to a 4xx
here (validation, unknown ids, ranges), and backend outages to a 503, never a 500.
Cross-site refusals, authentication (before any body is read), throttling and the
security headers live in `security.py` as app-level guards and a before_send hook.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import structlog
from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.exceptions import (
    HTTPException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.static_files import create_static_files_router
from pydantic import BaseModel, ValidationError

from callrec.jobspec import (
    MAX_BODY,
    HoldInput,
    JobInput,
    RunInput,
    describe_errors,
    event_from_view,
    find_job,
    reflects,
    valid_job_id,
)
from callrec.metrics import Counter, Registry
from callrec.store import ObjectStore, StoreKeyError, file_chunks
from callrec.users import UsersProjection
from contracts.v1.events import (
    EventBase,
    JobConfigured,
    JobRemoved,
    JobRunRequested,
    LegalHoldChanged,
    RecordingCompleted,
    RecordingPurged,
    UserRemoved,
    UserUpserted,
    new_id,
)
from contracts.v1.rpc import (
    JobsStatus,
    JobView,
    RolesStatus,
    SearchRequest,
    SearchResult,
    SyncStatus,
)

from .auth import Authenticator, Principal
from .cluster import cluster_page, cluster_view
from .jobs_page import jobs_page
from .media import AudioMissing, WavCache, download_name
from .prom import CONTENT_TYPE as PROM_CONTENT_TYPE
from .prom import merge_texts
from .ranges import RangeNotSatisfiable, content_range, parse_range
from .security import (
    ADMIN_ONLY,
    MAX_BODY_BYTES,
    PUBLIC,
    add_security_headers,
    authenticate,
    login_guard,
    same_origin_guard,
)
from .validation import UserInput, valid_recording_id, valid_username

# A lazy proxy: binding now would freeze the pre-`setup_logging` (non-JSON) config.
log = structlog.get_logger(component="web")

MAX_OFFSET = 10_000_000
JOB_APPLY_WAIT_S = 2.0
SCHEDULER_SILENT = (
    "the scheduler service did not answer: jobs are unavailable right now, retry shortly"
)
B = TypeVar("B", bound=BaseModel)


class BackendUnavailable(RuntimeError):
    """A service behind the web (catalog, NATS) did not answer: the client gets a 503."""


class Backend(Protocol):
    """What the HTTP layer needs from the rest of the node."""

    node_id: str
    users: UsersProjection
    @property
    def held(self) -> AbstractSet[str]: ...  # recording ids under legal hold (contracts.v1.holds)

    async def search(
        self, request: SearchRequest, visible_numbers: list[str] | None
    ) -> SearchResult: ...

    async def get(self, recording_id: str) -> RecordingCompleted | None: ...

    async def publish_user_event(self, event: UserUpserted | UserRemoved) -> None: ...

    async def purge_recording(self, event: RecordingPurged) -> bool:
        """Store the purge; True once the local catalog no longer lists the recording."""
        ...

    async def sync_status(self) -> SyncStatus | None:
        """This node's replication view; None when the sync service does not answer."""
        ...

    async def roles_status(self) -> RolesStatus | None:
        """The maintenance role as this node sees it; None when the scheduler is silent."""
        ...

    async def jobs_status(self) -> JobsStatus | None:
        """The maintenance jobs as this node's scheduler sees them; None when silent."""
        ...

    async def publish_event(self, event: EventBase) -> None:
        """Store a fact (jobs, legal hold); raises BackendUnavailable when it cannot."""
        ...

    async def metrics_texts(self) -> list[str]: ...

    async def health(self) -> dict[str, str]: ...


@dataclass
class WebState:
    backend: Backend
    store: ObjectStore
    wav: WavCache
    auth: Authenticator
    csrf_refused: Counter
    # How long a change waits for the local scheduler to show it (so a GET right
    # after a POST sees it); the change is stored either way.
    job_apply_wait_s: float = JOB_APPLY_WAIT_S

    async def require(self, request: Request[Any, Any, Any]) -> Principal:
        """The caller, as the login guard authenticated them before the body was read."""
        return await authenticate(request)

    async def require_admin(self, request: Request[Any, Any, Any]) -> Principal:
        principal = await self.require(request)
        if not principal.admin:
            raise PermissionDeniedException(detail="administrator role required")
        return principal

    async def visible_record(self, principal: Principal, recording_id: str) -> RecordingCompleted:
        """The recording if it exists and this user may see it; 404 either way otherwise."""
        if not valid_recording_id(recording_id):
            raise ValidationException(detail="invalid recording id")
        record = await self.backend.get(recording_id)
        if record is None or not principal.may_see(record.metadata.numbers()):
            raise NotFoundException(detail="unknown recording")
        return record


def _state(request: Request[Any, Any, Any]) -> WebState:
    state: WebState = request.app.state["web"]
    return state


def parse_when(value: str | None, name: str) -> datetime | None:
    """ISO 8601 datetime from a query parameter; naive values are taken as UTC."""
    if value is None or value == "":
        return None
    text = value.strip()
    if len(text) > 64:
        raise ValidationException(detail=f"{name}: not an ISO 8601 datetime")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            # A '+' of a UTC offset often arrives as a space after URL decoding.
            parsed = datetime.fromisoformat(text.replace(" ", "+"))
        except ValueError:
            raise ValidationException(detail=f"{name}: not an ISO 8601 datetime") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _record_json(record: RecordingCompleted, held: AbstractSet[str]) -> dict[str, Any]:
    return {**record.model_dump(mode="json"), "legal_hold": record.recording_id in held}


# --------------------------------------------------------------------------- recordings


@get("/api/recordings")
async def list_recordings(
    request: Request[Any, Any, Any],
    from_: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
    to: Annotated[str | None, QueryParameter(max_length=64)] = None,
    number: Annotated[str | None, QueryParameter(max_length=64)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 50,
    offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    web = _state(request)
    principal = await web.require(request)
    start_from = parse_when(from_, "from")
    start_to = parse_when(to, "to")
    if start_from and start_to and start_from > start_to:
        raise ValidationException(detail="from must not be after to")
    query = SearchRequest(
        start_from=start_from,
        start_to=start_to,
        number=(number.strip() or None) if number else None,
        limit=limit,
        offset=offset,
    )
    result = await web.backend.search(query, principal.visible_numbers())
    items = [_record_json(r, web.backend.held) for r in result.items]
    return {"total": result.total, "items": items}


@get("/api/recordings/{recording_id:str}")
async def recording_metadata(
    request: Request[Any, Any, Any], recording_id: FromPath[str]
) -> dict[str, Any]:
    web = _state(request)
    principal = await web.require(request)
    record = await web.visible_record(principal, recording_id)
    return _record_json(record, web.backend.held)


@get("/api/recordings/{recording_id:str}/audio")
async def recording_audio(
    request: Request[Any, Any, Any],
    recording_id: FromPath[str],
    fmt: Annotated[str, QueryParameter(name="format", max_length=8)] = "ogg",
    download: FromQuery[bool] = False,
) -> Response[Any]:
    web = _state(request)
    principal = await web.require(request)
    if fmt not in ("ogg", "opus", "wav"):
        raise ValidationException(detail="format must be ogg or wav")
    record = await web.visible_record(principal, recording_id)
    chunks: Any
    try:
        if fmt == "wav":
            path = await web.wav.ensure(record)
            size = path.stat().st_size
            media_type, etag, extension = "audio/wav", f'"{record.sha256}-wav"', "wav"

            def chunks(first: int, last: int) -> Iterator[bytes]:
                return file_chunks(path, first, last + 1)

        else:
            size = web.store.size(record.object_key)
            media_type, etag, extension = record.content_type, f'"{record.sha256}"', "ogg"

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


@delete("/api/recordings/{recording_id:str}", status_code=202, opt=ADMIN_ONLY)
async def purge_recording(
    request: Request[Any, Any, Any], recording_id: FromPath[str]
) -> Response[Any]:
    """Delete everywhere: a `recording.purged` fact that every node applies to its copy.
    A recording under legal hold is refused (409) until the hold is released."""
    web = _state(request)
    principal = await web.require_admin(request)
    record = await web.visible_record(principal, recording_id)
    if record.recording_id in web.backend.held:
        log.warning("held_recording_purge_refused", recording_id=record.recording_id,
                    by=principal.username)
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


# --------------------------------------------------------------------------- users


def _user_json(web: WebState, username: str) -> dict[str, Any]:
    user = web.backend.users.users[username]
    return {
        "username": user.username,
        "display_name": user.display_name,
        "admin": user.admin,
        "extensions": list(user.extensions),
        "record": user.record,
        "groups": list(user.groups),
        "has_password": bool(user.password_hash),
    }


def _other_admins(web: WebState, username: str) -> bool:
    return any(
        u.admin and u.password_hash and u.username != username
        for u in web.backend.users.users.values()
    )


@get("/api/users", opt=ADMIN_ONLY)
async def list_users(request: Request[Any, Any, Any]) -> dict[str, Any]:
    web = _state(request)
    await web.require_admin(request)
    names = sorted(web.backend.users.users)
    return {"items": [_user_json(web, name) for name in names]}


@post("/api/users", opt=ADMIN_ONLY)
async def upsert_user(request: Request[Any, Any, Any], data: JSONBody[UserInput]) -> Response[Any]:
    web = _state(request)
    principal = await web.require_admin(request)
    users = web.backend.users
    existing = users.users.get(data.username)
    for ext in data.extensions:
        owner = users.by_extension.get(ext)
        if owner is not None and owner != data.username:
            raise HTTPException(status_code=409, detail=f"extension {ext} belongs to {owner}")
    demoting = existing is not None and existing.admin and not data.admin
    if demoting and not _other_admins(web, data.username):
        raise HTTPException(status_code=409, detail="cannot demote the last administrator")
    if data.password is not None:
        password_hash: str | None = await web.auth.hash_password(data.password)
    else:
        password_hash = existing.password_hash if existing else None
    event = UserUpserted(
        node_id=web.backend.node_id,
        username=data.username,
        display_name=data.display_name,
        password_hash=password_hash,
        admin=data.admin,
        extensions=data.extensions,
        record=data.record,
        groups=data.groups,
    )
    await web.backend.publish_user_event(event)
    log.info("user_upserted", username=data.username, by=principal.username, admin=data.admin)
    body = (
        _user_json(web, data.username)
        if data.username in users.users
        else {"username": data.username, "pending": True}
    )
    return Response(content=body, status_code=200 if existing else 201)


@delete("/api/users/{username:str}", status_code=204, opt=ADMIN_ONLY)
async def remove_user(request: Request[Any, Any, Any], username: FromPath[str]) -> None:
    web = _state(request)
    principal = await web.require_admin(request)
    if not valid_username(username):
        raise ValidationException(detail="invalid username")
    existing = web.backend.users.users.get(username)
    if existing is None:
        raise NotFoundException(detail="unknown user")
    if existing.admin and existing.password_hash and not _other_admins(web, username):
        raise HTTPException(status_code=409, detail="cannot remove the last administrator")
    await web.backend.publish_user_event(
        UserRemoved(node_id=web.backend.node_id, username=username)
    )
    log.info("user_removed", username=username, by=principal.username)


# --------------------------------------------------------------------------- legal hold


async def _set_hold(
    request: Request[Any, Any, Any], recording_id: str, hold: bool
) -> Response[Any]:
    """Legal hold is a fact like any other: every node's purge sees it and skips the
    recording, wherever the purge job runs."""
    web = _state(request)
    principal = await web.require_admin(request)
    record = await web.visible_record(principal, recording_id)
    body = await _body(request, HoldInput, optional=True)
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


@put("/api/recordings/{recording_id:str}/hold", opt=ADMIN_ONLY)
async def hold_recording(
    request: Request[Any, Any, Any], recording_id: FromPath[str]
) -> Response[Any]:
    return await _set_hold(request, recording_id, True)


@delete("/api/recordings/{recording_id:str}/hold", status_code=200, opt=ADMIN_ONLY)
async def release_recording(
    request: Request[Any, Any, Any], recording_id: FromPath[str]
) -> Response[Any]:
    return await _set_hold(request, recording_id, False)


# --------------------------------------------------------------------------- jobs


async def _body(request: Request[Any, Any, Any], model: type[B], optional: bool = False) -> B:
    """The JSON body as `model`, every problem as one readable 400 (not Litestar's
    generic "validation failed")."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HTTPException(status_code=413, detail="request body too large")
    if optional and not raw.strip():
        return model()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationException(detail=describe_errors(exc)) from None


async def _jobs_status(web: WebState) -> JobsStatus:
    status = await web.backend.jobs_status()
    if status is None:
        raise HTTPException(status_code=503, detail=SCHEDULER_SILENT, headers={"Retry-After": "2"})
    return status


async def _known_job(web: WebState, job_id: str) -> tuple[JobsStatus, JobView]:
    if not valid_job_id(job_id):
        raise ValidationException(detail="invalid job id")
    status = await _jobs_status(web)
    job = find_job(status, job_id)
    if job is None:
        raise NotFoundException(detail="unknown job")
    return status, job


def _check_name(status: JobsStatus | None, name: str, job_id: str) -> None:
    """Names are how people (and `callrec jobs run NAME`) refer to jobs: keep them unique."""
    if status is not None and any(j.name == name and j.job_id != job_id for j in status.jobs):
        raise HTTPException(status_code=409, detail=f"a job named {name!r} already exists")


async def _settle(web: WebState, done: Callable[[JobsStatus], bool]) -> bool:
    """Poll the local scheduler (bounded) until it shows a change just published."""
    deadline = time.monotonic() + web.job_apply_wait_s
    while True:
        status = await web.backend.jobs_status()
        if status is not None and done(status):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


async def _configure(web: WebState, event: JobConfigured) -> bool:
    await web.backend.publish_event(event)
    applied = await _settle(web, lambda s: reflects(find_job(s, event.job_id), event))
    log.info(
        "job_configured",
        job_id=event.job_id,
        name=event.name,
        kind=event.kind,
        paused=event.paused,
        by=event.changed_by,
        applied_locally=applied,
    )
    return applied


@get("/api/jobs")
async def list_jobs(request: Request[Any, Any, Any]) -> Response[Any]:
    web = _state(request)
    await web.require(request)
    status = await _jobs_status(web)
    return Response(content=status.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


@post("/api/jobs", opt=ADMIN_ONLY)
async def create_job(request: Request[Any, Any, Any]) -> Response[Any]:
    web = _state(request)
    principal = await web.require_admin(request)
    data = await _body(request, JobInput)
    job_id = new_id()
    _check_name(await web.backend.jobs_status(), data.name, job_id)
    event = data.event(web.backend.node_id, job_id, principal.username)
    applied = await _configure(web, event)
    return Response(
        content={"job_id": job_id, "event_id": event.event_id, "applied": applied}, status_code=201
    )


@put("/api/jobs/{job_id:str}", opt=ADMIN_ONLY)
async def edit_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    web = _state(request)
    principal = await web.require_admin(request)
    status, job = await _known_job(web, job_id)
    data = await _body(request, JobInput)
    _check_name(status, data.name, job.job_id)
    event = data.event(web.backend.node_id, job.job_id, principal.username)
    applied = await _configure(web, event)
    return Response(content={"job_id": job.job_id, "event_id": event.event_id, "applied": applied})


async def _set_paused(request: Request[Any, Any, Any], job_id: str, paused: bool) -> Response[Any]:
    web = _state(request)
    principal = await web.require_admin(request)
    _, job = await _known_job(web, job_id)
    if job.paused == paused:
        return Response(content={"job_id": job.job_id, "paused": paused, "applied": True})
    try:
        event = event_from_view(job, web.backend.node_id, principal.username, paused)
    except (ValueError, ValidationError) as exc:
        log.warning("job_definition_unreadable", job_id=job.job_id, error=str(exc)[:300])
        raise HTTPException(
            status_code=503,
            detail="the scheduler reported a job definition "
            "this node cannot read; edit the job instead",
        ) from None
    applied = await _configure(web, event)
    return Response(
        content={
            "job_id": job.job_id,
            "paused": paused,
            "event_id": event.event_id,
            "applied": applied,
        }
    )


@post("/api/jobs/{job_id:str}/pause", status_code=200, opt=ADMIN_ONLY)
async def pause_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    return await _set_paused(request, job_id, True)


@post("/api/jobs/{job_id:str}/resume", status_code=200, opt=ADMIN_ONLY)
async def resume_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    return await _set_paused(request, job_id, False)


@post("/api/jobs/{job_id:str}/run", status_code=202, opt=ADMIN_ONLY)
async def run_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    """Ask for a run now; whichever node holds the maintenance role starts it. Answers
    with the new run's id when the local scheduler shows it in time."""
    web = _state(request)
    principal = await web.require_admin(request)
    _, job = await _known_job(web, job_id)
    data = await _body(request, RunInput, optional=True)
    before = {run.run_id for run in job.last_runs}
    event = JobRunRequested(
        node_id=web.backend.node_id,
        job_id=job.job_id,
        dry_run=data.dry_run,
        requested_by=principal.username,
    )
    await web.backend.publish_event(event)
    started: list[str] = []

    def new_run(status: JobsStatus) -> bool:
        current = find_job(status, job.job_id)
        started[:] = [
            r.run_id for r in (current.last_runs if current else []) if r.run_id not in before
        ]
        return bool(started)

    await _settle(web, new_run)
    log.info(
        "job_run_requested",
        job_id=job.job_id,
        dry_run=data.dry_run,
        by=principal.username,
        run_id=started[0] if started else None,
    )
    return Response(
        content={
            "job_id": job.job_id,
            "event_id": event.event_id,
            "dry_run": data.dry_run,
            "run_id": started[0] if started else None,
        },
        status_code=202,
    )


@delete("/api/jobs/{job_id:str}", status_code=200, opt=ADMIN_ONLY)
async def remove_job(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    web = _state(request)
    principal = await web.require_admin(request)
    _, job = await _known_job(web, job_id)
    event = JobRemoved(node_id=web.backend.node_id, job_id=job.job_id)
    await web.backend.publish_event(event)
    applied = await _settle(web, lambda s: find_job(s, job.job_id) is None)
    log.info("job_removed", job_id=job.job_id, by=principal.username, applied_locally=applied)
    return Response(content={"job_id": job.job_id, "event_id": event.event_id, "applied": applied})


@get("/jobs")
async def jobs_html(request: Request[Any, Any, Any]) -> Response[Any]:
    """The jobs dashboard: static HTML whose script (/static/jobs.js) polls `/api/jobs`
    (same Basic auth); the security headers come from `security.add_security_headers`."""
    web = _state(request)
    principal = await web.require(request)
    return Response(
        content=jobs_page(principal.username, principal.admin),
        media_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


# --------------------------------------------------------------------------- operations


@get("/healthz", opt={PUBLIC: True})
async def healthz(request: Request[Any, Any, Any]) -> Response[Any]:
    checks = await _state(request).backend.health()
    healthy = all(value == "ok" for value in checks.values())
    return Response(
        content={"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
        headers={"Cache-Control": "no-store"},
    )


async def _cluster(web: WebState) -> dict[str, Any]:
    sync, roles = await asyncio.gather(web.backend.sync_status(), web.backend.roles_status())
    return cluster_view(web.backend.node_id, sync, roles)


@get("/api/cluster")
async def cluster(request: Request[Any, Any, Any]) -> Response[Any]:
    """Nodes, roles and replication lag as this node sees them; 200 even when partial."""
    web = _state(request)
    await web.require(request)
    return Response(content=await _cluster(web), headers={"Cache-Control": "no-store"})


@get("/cluster")
async def cluster_html(request: Request[Any, Any, Any]) -> Response[Any]:
    web = _state(request)
    await web.require(request)
    return Response(
        content=cluster_page(await _cluster(web)),
        media_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


@get("/metrics", opt={PUBLIC: True})
async def metrics(request: Request[Any, Any, Any]) -> Response[Any]:
    texts = await _state(request).backend.metrics_texts()
    return Response(
        content=merge_texts(texts).encode(),
        media_type=PROM_CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


@get("/")
async def index(request: Request[Any, Any, Any]) -> Response[Any]:
    """A bare page for now; the browser UI with its own login replaces it."""
    web = _state(request)
    principal = await web.require(request)
    result = await web.backend.search(SearchRequest(limit=100), principal.visible_numbers())
    rows = []
    for rec in result.items:
        rid = html.escape(rec.recording_id)
        numbers = html.escape(", ".join(rec.metadata.numbers()))
        rows.append(
            f"<tr><td>{html.escape(rec.started_at.isoformat())}</td><td>{numbers}</td>"
            f"<td>{rec.duration_ms / 1000:.1f} s</td>"
            f'<td><audio controls preload="none" src="/api/recordings/{rid}/audio"></audio></td>'
            f'<td><a href="/api/recordings/{rid}/audio?format=wav&amp;download=true">WAV</a></td>'
            "</tr>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>callrec</title></head>"
        "<body><nav><a href='/jobs'>Jobs</a> · <a href='/cluster'>Cluster</a></nav>"
        f"<h1>Recordings</h1><p>{result.total} recordings, signed in as "
        f"{html.escape(principal.username)}</p><table><tr><th>Started</th><th>Numbers</th>"
        f"<th>Duration</th><th>Play</th><th></th></tr>{''.join(rows)}</table></body></html>"
    )
    return Response(content=page, media_type="text/html")


def _unavailable(request: Request[Any, Any, Any], exc: BackendUnavailable) -> Response[Any]:
    log.warning("backend_unavailable", path=request.url.path, error=str(exc))
    return Response(
        content={"status_code": 503, "detail": "service temporarily unavailable"},
        status_code=503,
        headers={"Retry-After": "2"},
    )


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Litestar's own logging is off (it would reconfigure the root logger, non-JSON).
    log.error("http_internal_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return Response(
        content={"status_code": 500, "detail": "internal server error"}, status_code=500
    )


STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    backend: Backend, store: ObjectStore, data_dir: Path, registry: Registry | None = None
) -> Litestar:
    """The app for one node; `data_dir` holds the WAV cache, `registry` gets the security
    counters (the service's; a private one in tests)."""
    registry = registry if registry is not None else Registry("web", backend.node_id)
    state = WebState(
        backend=backend,
        store=store,
        wav=WavCache(store, data_dir / "cache" / "wav"),
        auth=Authenticator(backend.users, metrics=registry),
        csrf_refused=registry.counter(
            "web_csrf_refused_total",
            "State-changing requests refused: cross-site, cross-origin or not JSON"),
    )
    static = create_static_files_router(
        path="/static", directories=[STATIC_DIR], opt={PUBLIC: True},
        include_in_schema=False, name="static",
    )
    return Litestar(
        route_handlers=[
            list_recordings,
            recording_metadata,
            recording_audio,
            purge_recording,
            list_users,
            upsert_user,
            remove_user,
            hold_recording,
            release_recording,
            list_jobs,
            create_job,
            edit_job,
            pause_job,
            resume_job,
            run_job,
            remove_job,
            jobs_html,
            healthz,
            metrics,
            cluster,
            cluster_html,
            index,
            static,
        ],
        # Order matters: a cross-site request is refused before its credentials are
        # checked, and both happen before any handler reads (or validates) a body.
        guards=[same_origin_guard, login_guard],
        before_send=[add_security_headers],
        request_max_body_size=MAX_BODY_BYTES,
        state=State({"web": state}),
        exception_handlers={BackendUnavailable: _unavailable, 500: _internal_error},
        openapi_config=None,
        logging_config=None,
    )
