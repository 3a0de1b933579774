"""Maintenance jobs: list, create, edit, pause, resume, run now, remove.

Changes are facts (`job.*`); the scheduler of whichever node holds the maintenance
role acts on them. Each change waits (bounded) for the local scheduler to show it,
so a GET right after a POST sees it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.params import FromPath
from pydantic import ValidationError

from callrec.jobspec import (
    JobInput,
    RunInput,
    event_from_view,
    find_job,
    reflects,
    valid_job_id,
)
from contracts.v1.events import JobConfigured, JobRemoved, JobRunRequested, new_id
from contracts.v1.rpc import JobsStatus, JobView

from .security import ADMIN_ONLY
from .state import SCHEDULER_SILENT, WebState, read_body, web_state

log = structlog.get_logger(component="web")


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


async def _set_paused(request: Request[Any, Any, Any], job_id: str, paused: bool) -> Response[Any]:
    web = web_state(request)
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


class JobsController(Controller):
    path = "/api/jobs"

    @get("/")
    async def list_jobs(self, request: Request[Any, Any, Any]) -> Response[Any]:
        web = web_state(request)
        await web.require(request)
        status = await _jobs_status(web)
        return Response(
            content=status.model_dump(mode="json"), headers={"Cache-Control": "no-store"}
        )

    @post("/", opt=ADMIN_ONLY)
    async def create_job(self, request: Request[Any, Any, Any]) -> Response[Any]:
        web = web_state(request)
        principal = await web.require_admin(request)
        data = await read_body(request, JobInput)
        job_id = new_id()
        _check_name(await web.backend.jobs_status(), data.name, job_id)
        event = data.event(web.backend.node_id, job_id, principal.username)
        applied = await _configure(web, event)
        return Response(
            content={"job_id": job_id, "event_id": event.event_id, "applied": applied},
            status_code=201,
        )

    @put("/{job_id:str}", opt=ADMIN_ONLY)
    async def edit_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        web = web_state(request)
        principal = await web.require_admin(request)
        status, job = await _known_job(web, job_id)
        data = await read_body(request, JobInput)
        _check_name(status, data.name, job.job_id)
        event = data.event(web.backend.node_id, job.job_id, principal.username)
        applied = await _configure(web, event)
        return Response(
            content={"job_id": job.job_id, "event_id": event.event_id, "applied": applied}
        )

    @post("/{job_id:str}/pause", status_code=200, opt=ADMIN_ONLY)
    async def pause_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        return await _set_paused(request, job_id, True)

    @post("/{job_id:str}/resume", status_code=200, opt=ADMIN_ONLY)
    async def resume_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        return await _set_paused(request, job_id, False)

    @post("/{job_id:str}/run", status_code=202, opt=ADMIN_ONLY)
    async def run_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        """Ask for a run now; whichever node holds the maintenance role starts it. Answers
        with the new run's id when the local scheduler shows it in time."""
        web = web_state(request)
        principal = await web.require_admin(request)
        _, job = await _known_job(web, job_id)
        data = await read_body(request, RunInput, optional=True)
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

    @delete("/{job_id:str}", status_code=200, opt=ADMIN_ONLY)
    async def remove_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        web = web_state(request)
        principal = await web.require_admin(request)
        _, job = await _known_job(web, job_id)
        event = JobRemoved(node_id=web.backend.node_id, job_id=job.job_id)
        await web.backend.publish_event(event)
        applied = await _settle(web, lambda s: find_job(s, job.job_id) is None)
        log.info("job_removed", job_id=job.job_id, by=principal.username, applied_locally=applied)
        return Response(
            content={"job_id": job.job_id, "event_id": event.event_id, "applied": applied}
        )
