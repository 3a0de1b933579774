"""Maintenance job definitions as people write them (API body, CLI): one validation.

A job definition becomes a `JobConfigured` fact that every node keeps forever and the
node holding the maintenance role acts on, possibly months later: a cron that does
not parse, a template that writes outside the target folder or a zero retention must
be refused here, with a message fit for a 400, before anything is published.
"""

from __future__ import annotations

import os
import re
import string
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from contracts.v1.events import (
    ExportParams,
    JobConfigured,
    JobSchedule,
    PurgeParams,
)
from contracts.v1.rpc import JobsStatus, JobView

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
GROUP = re.compile(r"^[A-Za-z0-9._@ -]{1,64}$")
USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
TEMPLATE_FIELDS = ("date", "start", "near", "far", "id", "ext", "node", "duration")
DEFAULT_TEMPLATE = ExportParams.model_fields["path_template"].default
MAX_RETENTION_S = 100 * 366 * 86400  # a century: anything longer is a typo
MAX_INTERVAL_S = 366 * 86400
MAX_BODY = 64 * 1024


def valid_job_id(value: str) -> bool:
    return bool(JOB_ID.fullmatch(value))


def check_cron(expression: str) -> str:
    """The scheduler runs crons with APScheduler's crontab parser: the same check here."""
    from apscheduler.triggers.cron import CronTrigger

    text = " ".join(expression.split())
    if not text or len(text) > 200:
        raise ValueError("cron must be a crontab expression of five fields")
    try:
        CronTrigger.from_crontab(text)
    except Exception as exc:  # APScheduler raises ValueError, but hostile input may differ
        raise ValueError(f"invalid cron expression {text!r}: {exc}") from None
    return text


_SAMPLE = {
    "date": datetime(2024, 5, 1, 9, 30, 15, tzinfo=UTC),
    "start": datetime(2024, 5, 1, 9, 30, 15, tzinfo=UTC),
    "near": "1001",
    "far": "2002",
    "id": "0123456789abcdef0123456789abcdef",
    "ext": "opus",
    "node": "n1",
    "duration": 61,
}


def check_template(template: str) -> str:
    """Only the known fields, no attribute or index access, and a result that stays
    inside the target folder; `{id}` is required so two recordings never share a file."""
    if not template or len(template) > 500 or "\0" in template:
        raise ValueError("path_template must be 1-500 characters")
    used: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"path_template: {exc}") from None
    for _, field_name, spec, conversion in parsed:
        if field_name is None:
            continue
        if field_name not in TEMPLATE_FIELDS:
            raise ValueError(
                f"path_template: unknown field {{{field_name}}}; use "
                + ", ".join(f"{{{f}}}" for f in TEMPLATE_FIELDS)
            )
        if conversion is not None or (spec and ("{" in spec or "}" in spec)):
            raise ValueError(f"path_template: unsupported format of {{{field_name}}}")
        used.add(field_name)
    if "id" not in used:
        raise ValueError("path_template must contain {id} so every recording gets its own file")
    try:
        sample = template.format(**_SAMPLE)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"path_template does not render: {exc}") from None
    parts = sample.replace("\\", "/").split("/")
    if sample.startswith(("/", "\\")) or ".." in parts or "" in parts[:-1] or not parts[-1]:
        raise ValueError("path_template must give a relative path inside target_dir "
                         f"(sample: {sample[:200]!r})")
    return template


class ScheduleInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(default=None, max_length=200)
    interval_s: int | None = Field(default=None, ge=10, le=MAX_INTERVAL_S)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @model_validator(mode="after")
    def _one(self) -> ScheduleInput:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("schedule needs exactly one of cron or interval_s")
        return self


def _retention_map(value: dict[str, int], pattern: re.Pattern[str], what: str) -> dict[str, int]:
    if len(value) > 1000:
        raise ValueError(f"at most 1000 {what} retentions")
    for key, seconds in value.items():
        if not pattern.fullmatch(key):
            raise ValueError(f"invalid {what} name {key[:40]!r}")
        if not 1 <= seconds <= MAX_RETENTION_S:
            raise ValueError(f"retention of {what} {key!r} must be a positive number of seconds")
    return value


class PurgeInput(BaseModel):
    """Either `retention_s` or `retention_days` (friendlier; stored as seconds)."""

    model_config = ConfigDict(extra="forbid")

    retention_s: int | None = Field(default=None, ge=1, le=MAX_RETENTION_S)
    retention_days: float | None = Field(default=None, gt=0, le=MAX_RETENTION_S / 86400)
    user_retention_s: dict[str, int] = Field(default_factory=dict)
    group_retention_s: dict[str, int] = Field(default_factory=dict)

    @field_validator("user_retention_s")
    @classmethod
    def _users(cls, value: dict[str, int]) -> dict[str, int]:
        return _retention_map(value, USERNAME, "user")

    @field_validator("group_retention_s")
    @classmethod
    def _groups(cls, value: dict[str, int]) -> dict[str, int]:
        return _retention_map(value, GROUP, "group")

    @model_validator(mode="after")
    def _one(self) -> PurgeInput:
        if (self.retention_s is None) == (self.retention_days is None):
            raise ValueError("purge needs exactly one of retention_s or retention_days")
        return self

    def params(self) -> PurgeParams:
        seconds = self.retention_s
        if seconds is None:
            seconds = max(1, round((self.retention_days or 0) * 86400))
        return PurgeParams(retention_s=seconds, user_retention_s=self.user_retention_s,
                           group_retention_s=self.group_retention_s)


class ExportInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_dir: str = Field(min_length=1, max_length=4096)
    path_template: str = DEFAULT_TEMPLATE
    format: Literal["opus", "wav", "mp3"] = "opus"
    sidecar: bool = True

    @field_validator("target_dir")
    @classmethod
    def _target(cls, value: str) -> str:
        if "\0" in value or any(ord(c) < 32 for c in value):
            raise ValueError("target_dir contains control characters")
        if not os.path.isabs(value):
            raise ValueError("target_dir must be an absolute path (the export folder's mount)")
        return value

    @field_validator("path_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value)

    def params(self) -> ExportParams:
        return ExportParams(**self.model_dump())


class JobInput(BaseModel):
    """Body of `POST /api/jobs` and `PUT /api/jobs/{id}`: a whole job definition."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    kind: Literal["purge", "export"]
    schedule: ScheduleInput
    paused: bool = False
    purge: PurgeInput | None = None
    export: ExportInput | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("name must be printable text")
        return value

    @model_validator(mode="after")
    def _params(self) -> JobInput:
        own, other = (self.purge, self.export) if self.kind == "purge" else (
            self.export, self.purge)
        if own is None:
            raise ValueError(f"a {self.kind} job needs its {self.kind!r} parameters")
        if other is not None:
            raise ValueError(f"a {self.kind} job takes only {self.kind!r} parameters")
        return self

    def event(self, node_id: str, job_id: str, changed_by: str | None) -> JobConfigured:
        return JobConfigured(
            node_id=node_id,
            job_id=job_id,
            name=self.name,
            kind=self.kind,
            schedule=JobSchedule(cron=self.schedule.cron, interval_s=self.schedule.interval_s),
            paused=self.paused,
            purge=self.purge.params() if self.purge is not None else None,
            export=self.export.params() if self.export is not None else None,
            changed_by=changed_by,
        )


class RunInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dry_run: bool = False


class HoldInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


def describe_errors(exc: ValidationError) -> str:
    """One readable line per problem ("schedule.cron: invalid cron ..."), for a 400."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)[:2000]


def find_job(status: JobsStatus, job_id: str) -> JobView | None:
    return next((job for job in status.jobs if job.job_id == job_id), None)


def view_params(job: JobView) -> dict[str, Any]:
    """The kind's parameters of a job as the scheduler reports them (flat, or nested
    under the kind's name)."""
    nested = job.params.get(job.kind)
    return dict(nested) if isinstance(nested, dict) else dict(job.params)


def event_from_view(
    job: JobView, node_id: str, changed_by: str | None, paused: bool
) -> JobConfigured:
    """The job's current definition again with `paused` changed (pause/resume): the
    fact carries the whole definition, so the rest must be what the scheduler has."""
    params = view_params(job)
    purge = PurgeParams.model_validate(params) if job.kind == "purge" else None
    export = ExportParams.model_validate(params) if job.kind == "export" else None
    if job.kind not in ("purge", "export"):
        raise ValueError(f"unknown job kind {job.kind!r}")
    return JobConfigured(
        node_id=node_id,
        job_id=job.job_id,
        name=job.name,
        kind=job.kind,  # type: ignore[arg-type]  # checked just above
        schedule=JobSchedule.model_validate(job.schedule),
        paused=paused,
        purge=purge,
        export=export,
        changed_by=changed_by,
    )


def reflects(job: JobView | None, event: JobConfigured) -> bool:
    """Whether the scheduler's view of a job already shows a configuration."""
    if job is None:
        return False
    wanted = event.schedule.model_dump(exclude_none=True)
    return (job.name == event.name and job.kind == event.kind and job.paused == event.paused
            and all(job.schedule.get(key) == value for key, value in wanted.items()))
