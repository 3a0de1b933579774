"""The job rules the CLI and the web share (`callrec.jobcommands`): a command and the
scheduler's view in, the fact to publish out, or a refusal saying which kind."""

from __future__ import annotations

import json
from typing import Any

import pytest

from callrec import jobcommands
from callrec.jobcommands import JobRuleError
from contracts.v1.events import JobConfigured, JobRemoved, JobRunRequested
from contracts.v1.rpc import JobsStatus, JobView


def view(job_id: str, name: str, paused: bool = False) -> JobView:
    return JobView(job_id=job_id, name=name, kind="purge",
                   schedule={"cron": "0 2 * * *", "interval_s": None}, paused=paused,
                   params={"retention_s": 86400, "user_retention_s": {},
                           "group_retention_s": {}})


STATUS = JobsStatus(node_id="n1", holder="n1",
                    jobs=[view("j1", "nightly"), view("j2", "weekly", paused=True)])


def body(name: str = "new") -> bytes:
    return json.dumps({"name": name, "kind": "purge", "schedule": {"interval": "1d"},
                       "purge": {"retention": "30d"}}).encode()


def kind_of(call: Any) -> str:
    with pytest.raises(JobRuleError) as info:
        call()
    return info.value.kind


def test_jobs_are_found_by_id_then_by_name() -> None:
    assert jobcommands.find(STATUS, "j1").name == "nightly"
    assert jobcommands.find(STATUS, "weekly").job_id == "j2"
    assert kind_of(lambda: jobcommands.find(STATUS, "monthly")) == "not_found"
    twins = JobsStatus(node_id="n1", holder=None, jobs=[view("a", "x"), view("b", "x")])
    assert kind_of(lambda: jobcommands.find(twins, "x")) == "conflict"


def test_create_gets_a_new_id_and_edit_keeps_it() -> None:
    created = jobcommands.configure(STATUS, jobcommands.parse_definition(body()), "n1", "admin")
    assert isinstance(created, JobConfigured) and created.job_id not in ("j1", "j2")
    assert created.purge is not None and created.purge.retention_s == 30 * 86400
    edited = jobcommands.configure(STATUS, jobcommands.parse_definition(body("nightly")),
                                   "n1", "admin", ref="nightly")
    assert edited.job_id == "j1" and edited.changed_by == "admin"


def test_names_stay_unique_on_create_and_on_edit() -> None:
    assert kind_of(lambda: jobcommands.configure(
        STATUS, jobcommands.parse_definition(body("weekly")), "n1", None)) == "conflict"
    assert kind_of(lambda: jobcommands.configure(
        STATUS, jobcommands.parse_definition(body("weekly")), "n1", None, ref="j1")) \
        == "conflict"
    assert kind_of(lambda: jobcommands.configure(
        STATUS, jobcommands.parse_definition(body()), "n1", None, ref="nope")) == "not_found"


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"name": "x"}', b"x" * 70000,
                                 body().replace(b"30d", b"30y")])
def test_bad_definitions_are_invalid(raw: bytes) -> None:
    assert kind_of(lambda: jobcommands.parse_definition(raw)) == "invalid"


def test_pause_resume_run_and_remove() -> None:
    paused = jobcommands.set_paused(STATUS, "nightly", True, "n1", "cli:me")
    assert paused is not None and paused.paused and paused.job_id == "j1"
    assert paused.purge is not None and paused.purge.retention_s == 86400
    assert jobcommands.set_paused(STATUS, "j2", True, "n1", None) is None  # already
    run = jobcommands.request_run(STATUS, "weekly", True, "n1", "admin")
    assert isinstance(run, JobRunRequested) and run.job_id == "j2" and run.dry_run
    removed = jobcommands.remove(STATUS, "j1", "n1")
    assert isinstance(removed, JobRemoved) and removed.job_id == "j1"


def test_an_unreadable_definition_is_not_guessed() -> None:
    broken = JobsStatus(node_id="n1", holder=None, jobs=[JobView(
        job_id="j9", name="odd", kind="purge", schedule={"cron": "0 2 * * *"}, paused=False,
        params={})])
    assert kind_of(lambda: jobcommands.set_paused(broken, "j9", True, "n1", None)) \
        == "unreadable"


def test_ids_in_urls_are_plain_tokens() -> None:
    assert jobcommands.check_job_id("j1") == "j1"
    assert kind_of(lambda: jobcommands.check_job_id("../x")) == "invalid"
