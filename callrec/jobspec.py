"""Maintenance job definitions as people write them (API body, CLI): one validation.

A job definition becomes a `JobConfigured` fact that every node keeps forever and the
node holding the maintenance role acts on, possibly months later: a cron that does
not parse, a template that writes outside the target folder or a zero retention must
be refused here, with a message fit for a 400, before anything is published.
"""

from __future__ import annotations

import math
import os
import re
import string
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
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
MIN_INTERVAL_S = 10
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


def check_interval(seconds: int) -> int:
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        raise ValueError(f"the interval must be between {MIN_INTERVAL_S} s and 366 days")
    return seconds


class ScheduleInput(BaseModel):
    """A crontab expression, or an interval as a duration with its unit (`"6h"`);
    `interval_s` (seconds) is the first API's form."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(default=None, max_length=200)
    interval: StrictStr | None = Field(default=None, max_length=40)
    interval_s: int | None = Field(default=None, ge=MIN_INTERVAL_S, le=MAX_INTERVAL_S)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str | None) -> str | None:
        if value is not None:
            check_interval(parse_duration(value, bare=None))
        return value

    @model_validator(mode="after")
    def _one(self) -> ScheduleInput:
        given = [v for v in (self.cron, self.interval, self.interval_s) if v is not None]
        if len(given) != 1:
            raise ValueError("schedule needs exactly one of cron or interval")
        return self

    def schedule(self) -> JobSchedule:
        seconds = self.interval_s
        if self.interval is not None:
            seconds = parse_duration(self.interval, bare=None)
        return JobSchedule(cron=self.cron, interval_s=seconds)


# ---- durations: the one unit people write --------------------------------------

DurationUnit = Literal["s", "min", "h", "d", "w"]
UNIT_SECONDS: dict[DurationUnit, int] = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_UNIT_NAMES: dict[str, DurationUnit] = {
    "s": "s", "sec": "s", "second": "s", "seconds": "s",
    "min": "min", "minute": "min", "minutes": "min",
    "h": "h", "hour": "h", "hours": "h",
    "d": "d", "day": "d", "days": "d",
    "w": "w", "week": "w", "weeks": "w",
}
DurationText = StrictStr | StrictInt | StrictFloat
"""A duration as written (`parse_duration` reads it); strict, so `true` is no duration."""
_DURATION = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,6})?)\s*([a-z]*)\s*$")


def parse_duration(value: object, bare: DurationUnit | None = "d") -> int:
    """Seconds of a duration as people write it: `365`, `"365"`, `"365d"`, `"2w"`, `"12h"`,
    `"90min"`, `"30s"` (a bare number counts in `bare`, days for retention; with
    `bare=None` a unit is required). No months or years: their length varies, and a
    retention a day short deletes recordings early; write `2557d` for seven years."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number with a unit, e.g. 365d or 12h")
    if isinstance(value, int | float):
        number, unit_text = float(value), ""
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value.lower())
        if match is None:
            raise ValueError(f"{value[:40]!r} is not a duration: write e.g. 365d, 2w, 12h, "
                             "90min or 30s")
        number, unit_text = float(match.group(1)), match.group(2)
    else:
        raise ValueError("a duration is a number with a unit, e.g. 365d or 12h")
    if unit_text:
        unit = _UNIT_NAMES.get(unit_text)
        if unit is None:
            raise ValueError(f"unknown unit {unit_text!r}: use s, min, h, d or w "
                             "(no months or years: write 2557d for seven years)")
    elif bare is None:
        raise ValueError("give a unit, e.g. 90s, 15min, 6h or 1d")
    else:
        unit = bare
    if not math.isfinite(number) or number <= 0:
        raise ValueError("a duration must be more than zero")
    seconds = round(number * UNIT_SECONDS[unit])
    if seconds < 1:
        raise ValueError("a duration must be at least one second")
    return seconds


def format_duration(seconds: int) -> str:
    """The inverse people read back: days when whole (`"365d"`), else the largest unit
    that divides it (`"12h"`, `"90min"`, `"8s"`); `parse_duration` gives `seconds` back."""
    units: tuple[DurationUnit, ...] = ("d", "h", "min")
    for unit in units:
        size = UNIT_SECONDS[unit]
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _check_retention(seconds: int, what: str) -> int:
    if not 1 <= seconds <= MAX_RETENTION_S:
        raise ValueError(f"{what} must be between 1 s and 100 years")
    return seconds


def _retention_map(
    value: dict[str, Any], pattern: re.Pattern[str], what: str, bare: DurationUnit | None
) -> dict[str, int]:
    """Per-user or per-group retentions: valid names, each a duration (`bare` unit for
    plain numbers: days in the current form, seconds in the old `*_retention_s` form)."""
    if len(value) > 1000:
        raise ValueError(f"at most 1000 {what} retentions")
    out: dict[str, int] = {}
    for key, raw in value.items():
        if not pattern.fullmatch(key):
            raise ValueError(f"invalid {what} name {key[:40]!r}")
        try:
            if (bare == "s" and not isinstance(raw, int)) or isinstance(raw, bool):
                raise ValueError("a whole number of seconds")
            seconds = parse_duration(raw, bare)
        except ValueError as exc:
            raise ValueError(f"retention of {what} {key!r}: {exc}") from None
        out[key] = _check_retention(seconds, f"retention of {what} {key!r}")
    return out


class PurgeInput(BaseModel):
    """Retention in one unit: `retention` and the per-user/per-group overrides are
    durations (a number is days: `365`, `"365d"`, `"2w"`); the fact stores seconds.
    The first API's `retention_s`/`retention_days` and `*_retention_s` maps (seconds)
    are still read so that existing scripts keep working."""

    model_config = ConfigDict(extra="forbid")

    retention: DurationText | None = None
    user_retention: dict[str, DurationText] = Field(default_factory=dict)
    group_retention: dict[str, DurationText] = Field(default_factory=dict)
    retention_s: int | None = Field(default=None, ge=1, le=MAX_RETENTION_S)
    retention_days: float | None = Field(default=None, gt=0, le=MAX_RETENTION_S / 86400)
    user_retention_s: dict[str, int] = Field(default_factory=dict)
    group_retention_s: dict[str, int] = Field(default_factory=dict)

    @field_validator("retention")
    @classmethod
    def _retention(cls, value: DurationText | None) -> DurationText | None:
        if value is not None:
            _check_retention(parse_duration(value), "retention")
        return value

    @field_validator("user_retention", "user_retention_s")
    @classmethod
    def _users(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        _retention_map(value, USERNAME, "user", "s" if info.field_name.endswith("_s") else "d")
        return value

    @field_validator("group_retention", "group_retention_s")
    @classmethod
    def _groups(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        _retention_map(value, GROUP, "group", "s" if info.field_name.endswith("_s") else "d")
        return value

    @model_validator(mode="after")
    def _one(self) -> PurgeInput:
        given = [v for v in (self.retention, self.retention_s, self.retention_days)
                 if v is not None]
        if len(given) != 1:
            raise ValueError("purge needs a retention (e.g. \"retention\": \"365d\")"
                             if not given else "give the retention once (retention)")
        for what in ("user", "group"):
            both = set(getattr(self, f"{what}_retention")) & set(
                getattr(self, f"{what}_retention_s"))
            if both:
                raise ValueError(f"{what} {sorted(both)[0]!r} has two retentions")
        return self

    def params(self) -> PurgeParams:
        if self.retention is not None:
            seconds = parse_duration(self.retention)
        elif self.retention_s is not None:
            seconds = self.retention_s
        else:
            seconds = max(1, round((self.retention_days or 0) * 86400))
        users = {**_retention_map(self.user_retention_s, USERNAME, "user", "s"),
                 **_retention_map(self.user_retention, USERNAME, "user", "d")}
        groups = {**_retention_map(self.group_retention_s, GROUP, "group", "s"),
                  **_retention_map(self.group_retention, GROUP, "group", "d")}
        return PurgeParams(retention_s=seconds, user_retention_s=users,
                           group_retention_s=groups)


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
            schedule=self.schedule.schedule(),
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


def field_errors(exc: ValidationError) -> dict[str, str]:
    """Problems by the field they belong to (`"purge.retention"`, `"schedule.cron"`; a
    problem of the whole definition under `""`), so a form shows each at its field."""
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        fields.setdefault(where, message[:500])
    return fields


def example_path(template: str, fmt: str = "opus") -> str:
    """Where an export would write the sample recording (a call from 1001 to 2002 on
    2024-05-01 09:30:15 UTC), below the target folder; raises ValueError like the save."""
    check_template(template)
    return template.format(**{**_SAMPLE, "ext": fmt})


def next_runs(schedule: JobSchedule, now: datetime, count: int = 3) -> list[datetime]:
    """The next fire times of a schedule saved `now` (crons in this host's time zone,
    as the scheduler runs them; an interval counts from the save)."""
    if schedule.interval_s:
        return [now + timedelta(seconds=schedule.interval_s * (i + 1)) for i in range(count)]
    if not schedule.cron:
        return []
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(schedule.cron)
    fires: list[datetime] = []
    previous: datetime | None = None
    current = now
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, current)
        if fire is None:
            break
        fires.append(fire)
        previous, current = fire, fire + timedelta(microseconds=1)
    return fires


class PreviewInput(BaseModel):
    """Body of `POST /api/jobs/preview`: the parts of a form to explain while typing."""

    model_config = ConfigDict(extra="forbid")

    schedule: dict[str, Any] | None = None
    path_template: str | None = Field(default=None, max_length=500)
    format: Literal["opus", "wav", "mp3"] = "opus"


def preview(data: PreviewInput, now: datetime) -> dict[str, Any]:
    """Next runs of a schedule and the example path of a template, or the error each
    would get at save (by field, as `field_errors`)."""
    out: dict[str, Any] = {"errors": {}}
    if data.schedule is not None:
        try:
            schedule = ScheduleInput.model_validate(data.schedule).schedule()
            out["next_runs"] = [fire.isoformat() for fire in next_runs(schedule, now)]
        except ValidationError as exc:
            out["errors"].update({f"schedule.{k}".rstrip("."): v
                                  for k, v in field_errors(exc).items()})
    if data.path_template is not None:
        try:
            out["example_path"] = example_path(data.path_template, data.format)
        except ValueError as exc:
            out["errors"]["export.path_template"] = str(exc)[:500]
    return out


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


def definition_of(job: JobView) -> dict[str, Any]:
    """A job as a `JobInput` body in the unit people write (retention in days, an
    interval with its unit): what the edit form and `callrec jobs show` start from,
    and what `JobInput` reads back to the same fact."""
    params = view_params(job)
    schedule: dict[str, Any] = {}
    if job.schedule.get("cron"):
        schedule["cron"] = job.schedule["cron"]
    elif isinstance(job.schedule.get("interval_s"), int):
        schedule["interval"] = format_duration(int(job.schedule["interval_s"]))  # type: ignore[call-overload]
    body: dict[str, Any] = {"name": job.name, "kind": job.kind, "schedule": schedule,
                            "paused": job.paused}
    if job.kind == "purge":
        purge = PurgeParams.model_validate(params)
        body["purge"] = {
            "retention": format_duration(purge.retention_s),
            "user_retention": {k: format_duration(v) for k, v in purge.user_retention_s.items()},
            "group_retention": {k: format_duration(v)
                                for k, v in purge.group_retention_s.items()},
        }
    elif job.kind == "export":
        body["export"] = ExportParams.model_validate(params).model_dump(mode="json")
    return body


def summary(job: JobView) -> str:
    """One line of what a job does, for listings (`callrec jobs list`)."""
    try:
        body = definition_of(job)
    except (ValueError, ValidationError):
        return "(unreadable parameters)"
    if job.kind == "purge":
        purge = body["purge"]
        overrides = len(purge["user_retention"]) + len(purge["group_retention"])
        return f"keep {purge['retention']}" + (f" ({overrides} overrides)" if overrides else "")
    export = body.get("export", {})
    return f"to {export.get('target_dir')} as {export.get('format')}"


def schedule_text(schedule: JobSchedule | dict[str, Any]) -> str:
    """`cron 0 2 * * *` or `every 6h`."""
    data = schedule.model_dump() if isinstance(schedule, JobSchedule) else schedule
    if data.get("cron"):
        return f"cron {data['cron']}"
    if isinstance(data.get("interval_s"), int):
        return f"every {format_duration(data['interval_s'])}"
    return "-"
