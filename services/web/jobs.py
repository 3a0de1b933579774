"""Maintenance jobs: list, create, edit, pause, resume, run now, remove, preview.

The rules (which job a reference names, unique names, what pause and run publish) are
`callrec.jobcommands`, shared with `callrec jobs`; this controller translates HTTP to
them and back. Changes are facts (`job.*`); the scheduler of whichever node holds the
maintenance role acts on them. Each change waits (bounded) for the local scheduler to
show it, so a GET right after a POST sees it; saving an export job also waits
(bounded) for the role holder's `job.target_checked` answer, which arrives here
replicated from whichever node holds the role, and reports it.
Plain users see what runs when and how it went, not targets, parameters or errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.params import FromPath
from pydantic import ValidationError

from callrec import jobcommands
from callrec.jobcommands import JobRuleError
from callrec.jobspec import (
    MAX_BODY,
    JobInput,
    PreviewInput,
    RunInput,
    definition_of,
    describe_errors,
    field_errors,
    find_job,
    preview,
    reflects,
)
from contracts.v1.events import JobConfigured
from contracts.v1.rpc import JobsStatus, JobView

from .audit_http import AUDIT
from .security import ADMIN
from .state import SCHEDULER_SILENT, WebState, read_body, web_state

log = structlog.get_logger(component="web")

JOB_CHANGE = {AUDIT: "job_change"}
TARGET_CHECK_WAIT_S = 5.0
"""How long a save waits for the role holder's check of the export target (it travels
to this node as a replicated fact; well under a second when the cluster is healthy)."""

_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409, "unreadable": 503}


def _refuse(exc: JobRuleError) -> HTTPException:
    if exc.kind == "not_found":
        return NotFoundException(detail="unknown job")
    if exc.kind == "invalid":
        return ValidationException(detail=exc.message)
    return HTTPException(status_code=_STATUS[exc.kind], detail=exc.message)


async def _jobs_status(web: WebState) -> JobsStatus:
    status = await web.backend.jobs_status()
    if status is None:
        raise HTTPException(status_code=503, detail=SCHEDULER_SILENT, headers={"Retry-After": "2"})
    return status


async def _known(web: WebState, job_id: str) -> tuple[JobsStatus, JobView]:
    try:
        jobcommands.check_job_id(job_id)
        status = await _jobs_status(web)
        return status, jobcommands.find(status, job_id)
    except JobRuleError as exc:
        raise _refuse(exc) from None


async def _definition(request: Request[Any, Any, Any]) -> JobInput:
    """The body as a job definition; a 400 names each problem and, in `extra.fields`,
    the field it belongs to (the form shows it there)."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise HTTPException(status_code=413, detail="request body too large")
    try:
        return JobInput.model_validate_json(raw)
    except ValidationError as exc:
        raise ValidationException(detail=describe_errors(exc),
                                  extra={"fields": field_errors(exc)}) from None


def redact(status: JobsStatus) -> dict[str, Any]:
    """`/api/jobs` for a plain user: no targets or parameters, no error texts (they name
    paths), no recording ids of a dry run, no node names (cluster internals)."""
    body = status.model_dump(mode="json")
    body["holder"] = None
    for job in body["jobs"]:
        job.update(params={}, target_check=None, config_event_id=None, runs_on=None)
        for run in job["last_runs"]:
            run.update(error=None, would_purge=[], node_id="")
    body["internals"] = False
    return body


def _admin_view(status: JobsStatus) -> dict[str, Any]:
    body = status.model_dump(mode="json")
    by_id = {job.job_id: job for job in status.jobs}
    for job in body["jobs"]:
        try:
            job["definition"] = definition_of(by_id[job["job_id"]])
        except (ValueError, ValidationError):
            job["definition"] = None  # shown as unreadable; editing replaces it
    body["internals"] = True
    return body


async def _settle(web: WebState, done: Callable[[JobsStatus], bool], wait_s: float) -> bool:
    """Poll the local scheduler (bounded) until it shows a change just published."""
    deadline = time.monotonic() + wait_s
    while True:
        status = await web.backend.jobs_status()
        if status is not None and done(status):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


async def _configure(web: WebState, event: JobConfigured) -> bool:
    await web.backend.publish_event(event)
    applied = await _settle(web, lambda s: reflects(find_job(s, event.job_id), event),
                            web.job_apply_wait_s)
    log.info("job_configured", job_id=event.job_id, name=event.name, kind=event.kind,
             paused=event.paused, by=event.changed_by, applied_locally=applied)
    return applied


async def target_check(web: WebState, event: JobConfigured, wait_s: float) -> dict[str, Any]:
    """The role holder's check of a saved export job's target, as it reaches this node:
    `state` ok / failed / pending (no holder, or no answer within `wait_s`)."""
    if event.kind != "export" or event.export is None:
        return {"state": "none"}
    found: list[Any] = []
    holder: list[str | None] = [None]

    def answered(status: JobsStatus) -> bool:
        holder[0] = status.holder
        job = find_job(status, event.job_id)
        check = job.target_check if job is not None else None
        if check is not None and check.config_event_id == event.event_id:
            found[:] = [check]
            return True
        return status.holder is None  # nobody to answer: do not wait

    await _settle(web, answered, wait_s)
    if found:
        check = found[0]
        return {"state": "ok" if check.ok else "failed", "detail": check.detail,
                "node_id": check.node_id, "checked_at": check.checked_at.isoformat()}
    if holder[0] is None:
        detail = ("no node holds the maintenance role now: the target will be checked by "
                  "the node that takes it")
    else:
        detail = (f"{holder[0]} (the maintenance role holder) has not answered yet; its "
                  "check will show in the jobs list")
    return {"state": "pending", "detail": detail, "node_id": holder[0]}


async def _save(
    request: Request[Any, Any, Any], ref: str | None
) -> tuple[JobConfigured, dict[str, Any]]:
    web = web_state(request)
    principal = await web.require(request)
    if ref is not None:
        status: JobsStatus | None = (await _known(web, ref))[0]
    else:
        # A new definition needs no current state: stored now, applied when it is back.
        status = await web.backend.jobs_status()
    data = await _definition(request)
    try:
        event = jobcommands.configure(status, data, web.backend.node_id, principal.username,
                                      ref)
    except JobRuleError as exc:
        raise _refuse(exc) from None
    applied = await _configure(web, event)
    check = await target_check(web, event, web.target_check_wait_s)
    if event.kind == "export":
        log.info("job_target_check_reported", job_id=event.job_id, state=check["state"],
                 node=check.get("node_id"))
    return event, {"job_id": event.job_id, "event_id": event.event_id, "applied": applied,
                   "target_check": check}


async def _set_paused(request: Request[Any, Any, Any], job_id: str, paused: bool) -> Response[Any]:
    web = web_state(request)
    principal = await web.require(request)
    status, job = await _known(web, job_id)
    try:
        event = jobcommands.set_paused(status, job.job_id, paused, web.backend.node_id,
                                       principal.username)
    except JobRuleError as exc:
        log.warning("job_definition_unreadable", job_id=job.job_id)
        raise _refuse(exc) from None
    if event is None:
        return Response(content={"job_id": job.job_id, "paused": paused, "applied": True})
    applied = await _configure(web, event)
    return Response(content={"job_id": job.job_id, "paused": paused,
                             "event_id": event.event_id, "applied": applied})


class JobsController(Controller):
    path = "/api/jobs"

    @get("/")
    async def list_jobs(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Every job with its schedule, next run and last runs; for an admin also its
        definition (in days) and the role holder's last check of an export target."""
        web = web_state(request)
        principal = await web.require(request)
        status = await _jobs_status(web)
        body = _admin_view(status) if principal.admin else redact(status)
        return Response(content=body, headers={"Cache-Control": "no-store"})

    @post("/", guards=[ADMIN], opt=JOB_CHANGE)
    async def create_job(self, request: Request[Any, Any, Any]) -> Response[Any]:
        _, body = await _save(request, None)
        return Response(content=body, status_code=201)

    @put("/{job_id:str}", guards=[ADMIN], opt=JOB_CHANGE)
    async def edit_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        _, body = await _save(request, job_id)
        return Response(content=body)

    @post("/preview", status_code=200, guards=[ADMIN])
    async def preview_job(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """What a form means while it is typed: the next runs of its schedule and the
        example path of its template, or the error each would get when saved."""
        data = await read_body(request, PreviewInput)
        return Response(content=preview(data, datetime.now(UTC)),
                        headers={"Cache-Control": "no-store"})

    @post("/{job_id:str}/pause", status_code=200, guards=[ADMIN], opt=JOB_CHANGE)
    async def pause_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        return await _set_paused(request, job_id, True)

    @post("/{job_id:str}/resume", status_code=200, guards=[ADMIN], opt=JOB_CHANGE)
    async def resume_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        return await _set_paused(request, job_id, False)

    @post("/{job_id:str}/run", status_code=202, guards=[ADMIN], opt={AUDIT: "job_run"})
    async def run_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        """Ask for a run now; whichever node holds the maintenance role starts it. Answers
        with the new run's id when the local scheduler shows it in time."""
        web = web_state(request)
        principal = await web.require(request)
        status, job = await _known(web, job_id)
        data = await read_body(request, RunInput, optional=True)
        before = {run.run_id for run in job.last_runs}
        event = jobcommands.request_run(status, job.job_id, data.dry_run, web.backend.node_id,
                                        principal.username)
        await web.backend.publish_event(event)
        started: list[str] = []

        def new_run(current_status: JobsStatus) -> bool:
            current = find_job(current_status, job.job_id)
            started[:] = [r.run_id for r in (current.last_runs if current else [])
                          if r.run_id not in before]
            return bool(started)

        await _settle(web, new_run, web.job_apply_wait_s)
        log.info("job_run_requested", job_id=job.job_id, dry_run=data.dry_run,
                 by=principal.username, run_id=started[0] if started else None)
        return Response(
            content={"job_id": job.job_id, "event_id": event.event_id,
                     "dry_run": data.dry_run, "run_id": started[0] if started else None},
            status_code=202,
        )

    @delete("/{job_id:str}", status_code=200, guards=[ADMIN], opt=JOB_CHANGE)
    async def remove_job(
        self, request: Request[Any, Any, Any], job_id: FromPath[str]
    ) -> Response[Any]:
        web = web_state(request)
        principal = await web.require(request)
        status, job = await _known(web, job_id)
        event = jobcommands.remove(status, job.job_id, web.backend.node_id)
        await web.backend.publish_event(event)
        applied = await _settle(web, lambda s: find_job(s, job.job_id) is None,
                                web.job_apply_wait_s)
        log.info("job_removed", job_id=job.job_id, by=principal.username, applied_locally=applied)
        return Response(
            content={"job_id": job.job_id, "event_id": event.event_id, "applied": applied}
        )
