"""The job rules both the web API and `callrec jobs` apply: a command in, an event out.

They used to be written twice and differed (the CLI found jobs by name, the web only
by id; the web created a job without the unique-name check when the scheduler was
silent; only the web could remove a job). Each function here takes the scheduler's
current view (`JobsStatus`) and the command, and returns the fact to publish or
raises `JobRuleError`, whose `kind` the web maps to an HTTP status and the CLI to a
message. Publishing and waiting stay with the callers.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import ValidationError

from contracts.v1.events import JobConfigured, JobRemoved, JobRunRequested
from contracts.v1.rpc import JobsStatus, JobView

from .jobspec import MAX_BODY, JobInput, describe_errors, event_from_view, valid_job_id

RuleErrorKind = Literal["invalid", "not_found", "conflict", "unreadable"]


class JobRuleError(Exception):
    """A command the rules refuse; `kind` says which way (400, 404, 409, 503)."""

    def __init__(self, kind: RuleErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: RuleErrorKind = kind
        self.message = message


def parse_definition(raw: bytes | str) -> JobInput:
    """A job definition (the API's JSON body, `callrec jobs add`'s argument)."""
    if len(raw) > MAX_BODY:
        raise JobRuleError("invalid", "job definition too large")
    try:
        return JobInput.model_validate_json(raw)
    except ValidationError as exc:
        raise JobRuleError("invalid", describe_errors(exc)) from None


def find(status: JobsStatus, ref: str) -> JobView:
    """A job by id, else by its (unique) name."""
    by_id = [job for job in status.jobs if job.job_id == ref]
    matches = by_id or [job for job in status.jobs if job.name == ref]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise JobRuleError("not_found", f"no job {ref[:100]!r}")
    raise JobRuleError("conflict", f"several jobs are named {ref[:100]!r}: use the job id")


def configure(
    status: JobsStatus | None, definition: JobInput, node_id: str, by: str | None,
    ref: str | None = None,
) -> JobConfigured:
    """Create a job (`ref` None: a new id) or replace the definition of `ref`. Names
    are how people and `callrec jobs run NAME` refer to jobs: they stay unique among
    the jobs the scheduler knows. A new job may be stored while the scheduler is silent
    (`status` None: nothing to compare with); an edit needs the job it replaces."""
    if status is None:
        if ref is not None:
            raise JobRuleError("unreadable", "the scheduler did not answer: retry shortly")
        return definition.event(node_id, uuid.uuid4().hex, by)
    job_id = find(status, ref).job_id if ref is not None else uuid.uuid4().hex
    clash = next((j for j in status.jobs if j.name == definition.name and j.job_id != job_id),
                 None)
    if clash is not None:
        raise JobRuleError("conflict",
                           f"a job named {definition.name!r} already exists ({clash.job_id})")
    return definition.event(node_id, job_id, by)


def set_paused(
    status: JobsStatus, ref: str, paused: bool, node_id: str, by: str | None
) -> JobConfigured | None:
    """The job's whole definition again with `paused` changed; None when it already is."""
    job = find(status, ref)
    if job.paused == paused:
        return None
    try:
        return event_from_view(job, node_id, by, paused)
    except (ValueError, ValidationError):
        raise JobRuleError("unreadable", "the scheduler reported a job definition this node "
                           "cannot read; edit the job instead") from None


def request_run(
    status: JobsStatus, ref: str, dry_run: bool, node_id: str, by: str | None
) -> JobRunRequested:
    """Whichever node holds the maintenance role starts the run."""
    job = find(status, ref)
    return JobRunRequested(node_id=node_id, job_id=job.job_id, dry_run=dry_run, requested_by=by)


def remove(status: JobsStatus, ref: str, node_id: str) -> JobRemoved:
    return JobRemoved(node_id=node_id, job_id=find(status, ref).job_id)


def check_job_id(job_id: str) -> str:
    """Ids in URLs: plain tokens only (a name is looked up through `find`)."""
    if not valid_job_id(job_id):
        raise JobRuleError("invalid", "invalid job id")
    return job_id
