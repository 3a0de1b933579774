"""Job definitions are facts kept forever and acted on later by another node: the web
refuses bad ones up front (cron, template, paths, retention), with readable messages."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from callrec.jobspec import (
    JobInput,
    check_template,
    describe_errors,
    event_from_view,
    reflects,
    valid_job_id,
)
from contracts.v1.events import ExportParams, JobSchedule, PurgeParams
from contracts.v1.rpc import JobView


def export_job(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "nightly export",
        "kind": "export",
        "schedule": {"cron": "0 2 * * *"},
        "export": {"target_dir": "/mnt/archive", "format": "wav"},
    }
    body.update(changes)
    return body


def purge_job(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "retention",
        "kind": "purge",
        "schedule": {"interval_s": 3600},
        "purge": {"retention_days": 30},
    }
    body.update(changes)
    return body


def error_of(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        JobInput.model_validate(body)
    return describe_errors(info.value)


def test_valid_export_becomes_a_whole_definition() -> None:
    event = JobInput.model_validate(export_job()).event("n1", "j1", "admin")
    assert event.kind == "export" and event.purge is None
    assert event.schedule == JobSchedule(cron="0 2 * * *")
    assert event.export == ExportParams(target_dir="/mnt/archive", format="wav")
    assert event.changed_by == "admin" and event.job_id == "j1" and not event.paused


def test_retention_days_are_stored_as_seconds() -> None:
    event = JobInput.model_validate(purge_job(purge={
        "retention_days": 1.5, "user_retention_s": {"alice": 60},
        "group_retention_s": {"sales team": 120}})).event("n1", "j1", None)
    assert event.purge == PurgeParams(retention_s=129600, user_retention_s={"alice": 60},
                                      group_retention_s={"sales team": 120})
    seconds = JobInput.model_validate(purge_job(purge={"retention_s": 10})).event("n", "j", None)
    assert seconds.purge is not None and seconds.purge.retention_s == 10


def test_cron_spacing_is_normalised() -> None:
    event = JobInput.model_validate(export_job(schedule={"cron": " 0  2 * * mon-fri "}))
    assert event.schedule.cron == "0 2 * * mon-fri"


@pytest.mark.parametrize("cron", ["bad", "* * * *", "60 * * * *", "", "0 2 * * * *",
                                  "0 25 * * *", "x" * 300])
def test_bad_cron_is_refused_with_the_reason(cron: str) -> None:
    message = error_of(export_job(schedule={"cron": cron}))
    assert message.startswith("schedule.cron:"), message


@pytest.mark.parametrize("schedule", [{}, {"cron": "0 2 * * *", "interval_s": 60},
                                      {"interval_s": 5}, {"interval_s": -1},
                                      {"interval_s": 10**12}, {"every": 5}, None, "daily"])
def test_schedule_needs_exactly_one_sane_trigger(schedule: Any) -> None:
    assert "schedule" in error_of(export_job(schedule=schedule))


@pytest.mark.parametrize("template, why", [
    ("{foo}_{id}.{ext}", "unknown field {foo}"),
    ("{date.year}_{id}", "unknown field {date.year}"),
    ("{id[0]}", "unknown field {id[0]}"),
    ("{}_{id}", "unknown field {}"),
    ("{0}_{id}", "unknown field {0}"),
    ("{id!r}", "unsupported format"),
    ("{date:{near}}_{id}", "unsupported format"),
    ("{start:%Y}.{ext}", "must contain {id}"),
    ("/{id}.{ext}", "relative path"),
    ("../{id}.{ext}", "relative path"),
    ("a//{id}", "relative path"),
    ("{id}/", "relative path"),
    ("{id", "path_template"),
    ("{near:>}x{id}", None),  # a valid spec on a string: accepted
    ("{duration:05d}_{id}", None),
    ("{id:d}", "does not render"),
    ("", "path_template"),
])
def test_path_template_uses_only_known_fields_inside_the_target(
    template: str, why: str | None
) -> None:
    if why is None:
        assert check_template(template) == template
        return
    message = error_of(export_job(export={"target_dir": "/x", "path_template": template}))
    assert message.startswith("export.path_template:"), message
    assert why in message, message


def test_default_template_is_valid() -> None:
    check_template(ExportParams(target_dir="/x").path_template)


@pytest.mark.parametrize("target", ["relative/dir", "", "./x", "/mnt/a\nb", "/mnt/\0"])
def test_target_dir_must_be_absolute_and_plain(target: str) -> None:
    assert "export.target_dir" in error_of(export_job(export={"target_dir": target}))


@pytest.mark.parametrize("purge", [
    {"retention_s": 0}, {"retention_s": -5}, {"retention_days": 0}, {},
    {"retention_s": 10, "retention_days": 1}, {"retention_s": "soon"},
    {"retention_s": 10, "user_retention_s": {"alice": 0}},
    {"retention_s": 10, "user_retention_s": {"../x": 10}},
    {"retention_s": 10, "group_retention_s": {"g": -1}},
    {"retention_s": 10, "bogus": 1},
])
def test_retention_must_be_positive(purge: dict[str, Any]) -> None:
    assert "purge" in error_of(purge_job(purge=purge))


def test_kind_and_parameters_must_match() -> None:
    assert "needs its 'purge'" in error_of(purge_job(purge=None))
    assert "takes only 'export'" in error_of(export_job(purge={"retention_s": 5}))
    assert "kind" in error_of(export_job(kind="backup"))


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 101, 5])
def test_name_is_printable_text(name: Any) -> None:
    assert error_of(export_job(name=name)).startswith("name")


def test_unknown_fields_are_refused() -> None:
    assert "owner" in error_of(export_job(owner="me"))


def test_job_ids_are_plain_tokens() -> None:
    assert valid_job_id("0123456789abcdef0123456789abcdef")
    for bad in ("", "../x", "a b", "x" * 65, "-x"):
        assert not valid_job_id(bad)


def view(params: dict[str, Any], kind: str = "export", paused: bool = False) -> JobView:
    return JobView(job_id="j1", name="n", kind=kind,
                   schedule={"cron": "0 2 * * *", "interval_s": None},
                   paused=paused, params=params)


@pytest.mark.parametrize("params", [
    {"target_dir": "/x", "path_template": "{id}.{ext}", "format": "mp3", "sidecar": False},
    {"export": {"target_dir": "/x", "path_template": "{id}.{ext}", "format": "mp3",
                "sidecar": False}},
])
def test_pause_keeps_the_rest_of_the_definition(params: dict[str, Any]) -> None:
    event = event_from_view(view(params), "n1", "admin", paused=True)
    assert event.paused and event.job_id == "j1" and event.name == "n"
    assert event.schedule == JobSchedule(cron="0 2 * * *")
    assert event.export == ExportParams(target_dir="/x", path_template="{id}.{ext}",
                                        format="mp3", sidecar=False)
    assert reflects(view(params, paused=True), event)
    assert not reflects(view(params, paused=False), event)
    assert not reflects(None, event)


def test_unreadable_definition_is_an_error_not_a_guess() -> None:
    with pytest.raises(ValidationError):
        event_from_view(view({}, kind="purge"), "n1", None, paused=True)
    with pytest.raises(ValueError):
        event_from_view(view({}, kind="archive"), "n1", None, paused=True)
