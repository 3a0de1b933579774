"""One unit for retention: people write days (or a duration with its unit), the fact
keeps seconds, and what they read back parses to the same seconds."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from callrec.jobspec import (
    JobInput,
    definition_of,
    describe_errors,
    format_duration,
    parse_duration,
    schedule_text,
)
from contracts.v1.events import JobSchedule
from contracts.v1.rpc import JobView


@pytest.mark.parametrize(("text", "seconds"), [
    (365, 365 * 86400), ("365", 365 * 86400), ("365d", 365 * 86400), ("365 days", 365 * 86400),
    ("2w", 14 * 86400), ("12h", 43200), ("90min", 5400), ("30s", 30), ("1.5d", 129600),
    (0.5, 43200), (" 7D ", 7 * 86400), ("1 day", 86400),
])
def test_durations_are_days_unless_a_unit_says_otherwise(text: Any, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "d", "-1d", "0", 0, "0d", "1y", "6m", "1 month", "1e3d", "1d2h", "ten days",
    True, None, [1], float("nan"), float("inf"), "1" * 12, "0.0000001s",
])
def test_nonsense_durations_are_refused_with_a_reason(text: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    assert str(info.value)


def test_months_and_years_are_refused_pointing_at_days() -> None:
    with pytest.raises(ValueError, match="2557d"):
        parse_duration("7y")


def test_a_unit_can_be_required() -> None:
    assert parse_duration("6h", bare=None) == 21600
    with pytest.raises(ValueError, match="unit"):
        parse_duration("6", bare=None)


@pytest.mark.parametrize("seconds", [1, 8, 59, 60, 5400, 3600, 43200, 86400, 365 * 86400,
                                     86400 + 1, 7 * 86400])
def test_what_is_shown_parses_back_to_the_same_seconds(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds


def test_whole_days_are_shown_in_days() -> None:
    assert format_duration(365 * 86400) == "365d"
    assert format_duration(14 * 86400) == "14d"
    assert format_duration(43200) == "12h"


def purge(**params: Any) -> dict[str, Any]:
    return {"name": "retention", "kind": "purge", "schedule": {"cron": "0 2 * * *"},
            "purge": params}


def test_retention_and_overrides_share_the_unit_and_the_fact_keeps_seconds() -> None:
    event = JobInput.model_validate(purge(
        retention="365d", user_retention={"alice": 30, "bob": "2w"},
        group_retention={"sales": "90"})).event("n1", "j1", "admin")
    assert event.purge is not None
    assert event.purge.retention_s == 365 * 86400
    assert event.purge.user_retention_s == {"alice": 30 * 86400, "bob": 14 * 86400}
    assert event.purge.group_retention_s == {"sales": 90 * 86400}


def test_the_first_api_in_seconds_still_reads_the_same() -> None:
    old = JobInput.model_validate(purge(retention_days=365, user_retention_s={"alice": 3600}))
    new = JobInput.model_validate(purge(retention=365, user_retention={"alice": "1h"}))
    assert old.event("n", "j", None).purge == new.event("n", "j", None).purge


@pytest.mark.parametrize(("params", "where"), [
    ({"retention": "0d"}, "purge.retention"),
    ({"retention": "soon"}, "purge.retention"),
    ({"retention": "200000d"}, "purge.retention"),
    ({"retention": True}, "purge.retention"),
    ({"retention": 30, "retention_days": 30}, "purge"),
    ({}, "purge"),
    ({"retention": 30, "user_retention": {"alice": "-1"}}, "purge.user_retention"),
    ({"retention": 30, "user_retention": {"../x": "1d"}}, "purge.user_retention"),
    ({"retention": 30, "group_retention": {"g": "1y"}}, "purge.group_retention"),
    ({"retention": 30, "user_retention": {"a": "1d"}, "user_retention_s": {"a": 5}}, "purge"),
])
def test_bad_retention_is_refused_at_its_field(params: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        JobInput.model_validate(purge(**params))
    assert describe_errors(info.value).startswith(where)


def test_interval_takes_a_unit_and_is_stored_in_seconds() -> None:
    body = purge(retention=1)
    body["schedule"] = {"interval": "6h"}
    assert JobInput.model_validate(body).event("n", "j", None).schedule == JobSchedule(
        interval_s=21600)
    for bad in ("6", "1s", "400d", "often"):
        body["schedule"] = {"interval": bad}
        with pytest.raises(ValidationError) as info:
            JobInput.model_validate(body)
        assert describe_errors(info.value).startswith("schedule.interval"), bad


def test_a_definition_read_back_in_days_gives_the_same_fact() -> None:
    original = JobInput.model_validate(purge(
        retention="400d", user_retention={"alice": "12h"}, group_retention={"g": 7}))
    event = original.event("n1", "j1", "admin")
    assert event.purge is not None
    view = JobView(job_id="j1", name=event.name, kind="purge",
                   schedule={"cron": "0 2 * * *", "interval_s": None}, paused=False,
                   params=event.purge.model_dump(mode="json"))
    body = definition_of(view)
    assert body["purge"] == {"retention": "400d", "user_retention": {"alice": "12h"},
                             "group_retention": {"g": "7d"}}
    again = JobInput.model_validate(body).event("n1", "j1", "admin")
    assert again.purge == event.purge and again.schedule == event.schedule


def test_schedules_read_in_the_same_unit() -> None:
    assert schedule_text({"cron": "0 2 * * *"}) == "cron 0 2 * * *"
    assert schedule_text(JobSchedule(interval_s=3600)) == "every 1h"
    assert schedule_text({"interval_s": 2 * 86400}) == "every 2d"
