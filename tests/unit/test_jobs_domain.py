"""Maintenance jobs, pure parts: retention, path templates, the job projection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.v1.events import (
    ExportParams,
    JobConfigured,
    JobRemoved,
    JobRunFailed,
    JobRunFinished,
    JobRunProgressed,
    JobRunRequested,
    JobRunStarted,
    JobSchedule,
    LegalHoldChanged,
    Participant,
    PurgeParams,
    RecordingCompleted,
    RecordingExported,
    RecordingMetadata,
    RecordingPurged,
    UserUpserted,
)
from services.scheduler.exportplan import (
    TemplateError,
    check_template,
    near_far,
    pending_exports,
    render_path,
    sanitize,
    sidecar_path,
)
from services.scheduler.jobs import JobBook, purged_event_id, requested_run_id
from services.scheduler.retention import (
    UserInfo,
    purge_candidates,
    recording_retention,
    user_retention,
)
from services.scheduler.schedules import next_fire

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DAY = 86400


def rec(rid: str, *numbers: str, minutes: int = 0, source: str = "cucm",
        roles: tuple[str, ...] = ("near", "far")) -> RecordingCompleted:
    started = T0 + timedelta(minutes=minutes)
    return RecordingCompleted(
        node_id="n1", recording_id=rid, started_at=started,
        ended_at=started + timedelta(seconds=30), duration_ms=30_400,
        object_key=f"2024/05/01/{rid}.ogg", size_bytes=1000, sha256="0" * 64, channels=[],
        metadata=RecordingMetadata(
            source=source, session_key=rid,  # type: ignore[arg-type]
            participants=[Participant(role=role, number=n)  # type: ignore[arg-type]
                          for role, n in zip(roles, numbers, strict=False)],
        ),
    )


USERS = {
    "alice": UserInfo(frozenset({"1001"}), frozenset({"sales"})),
    "bob": UserInfo(frozenset({"1002"}), frozenset({"support", "sales"})),
    "carol": UserInfo(frozenset({"1003"}), frozenset()),
}
PARAMS = PurgeParams(retention_s=30 * DAY, user_retention_s={"alice": 400 * DAY},
                     group_retention_s={"sales": 90 * DAY, "support": 10 * DAY})


def test_user_retention_most_specific_wins() -> None:
    assert user_retention(PARAMS, "alice", {"sales"}) == 400 * DAY  # user beats group
    assert user_retention(PARAMS, "bob", {"support", "sales"}) == 90 * DAY  # longest group
    assert user_retention(PARAMS, "carol", set()) == 30 * DAY  # global
    assert user_retention(PARAMS, "bob", {"support"}) == 10 * DAY  # shorter than global


def test_recording_of_several_users_keeps_longest() -> None:
    assert recording_retention(PARAMS, rec("r", "1002", "1003"), USERS) == 90 * DAY
    assert recording_retention(PARAMS, rec("r", "1001", "1002"), USERS) == 400 * DAY
    assert recording_retention(PARAMS, rec("r", "5555", "6666"), USERS) == 30 * DAY
    only_support = PurgeParams(retention_s=30 * DAY, group_retention_s={"support": DAY})
    users = {"bob": UserInfo(frozenset({"1002"}), frozenset({"support"}))}
    assert recording_retention(only_support, rec("r", "1002", "5555"), users) == DAY


def test_purge_candidates_respects_hold_and_age() -> None:
    params = PurgeParams(retention_s=60)
    old1, old2, held, new = rec("a"), rec("b", minutes=1), rec("c"), rec("d", minutes=10)
    now = T0 + timedelta(minutes=3)
    due = purge_candidates(params, [new, old2, held, old1], {"c"}, {}, now)
    assert [r.recording_id for r in due] == ["a", "b"]
    # Exactly at the end of retention (counted from the call's end) it goes.
    at_edge = old1.ended_at + timedelta(seconds=60)
    assert [r.recording_id for r in purge_candidates(params, [old1], set(), {}, at_edge)] == ["a"]
    before = at_edge - timedelta(microseconds=1)
    assert purge_candidates(params, [old1], set(), {}, before) == []


def test_sanitize() -> None:
    assert sanitize("+33 1/2:3") == "+33_1_2_3"
    assert sanitize("..") == "_."
    assert sanitize("") == "-"
    assert sanitize("sip:alice@example.com") == "sip_alice@example.com"


def test_near_far_by_source() -> None:
    assert near_far(rec("r", "1001", "2002").metadata) == ("1001", "2002")
    siprec = rec("r", "+331", "+332", source="siprec", roles=("callee", "caller")).metadata
    assert near_far(siprec) == ("+332", "+331")
    assert near_far(rec("r").metadata) == ("-", "-")


def test_render_default_template() -> None:
    recording = rec("abc", "1001", "20/02", minutes=5)
    template = ExportParams(target_dir="/x").path_template
    assert render_path(template, recording, "wav") == "2024/05/01/120500_1001_20_02_abc.wav"
    custom = "{node}/{date:%Y-%m}/{id}_{duration}s.{ext}"
    assert render_path(custom, recording, "mp3") == "n1/2024-05/abc_30s.mp3"


def test_render_cannot_escape_or_inject() -> None:
    recording = rec("abc", "../../etc", "x")
    assert render_path("../{near}/{id}.{ext}", recording, "opus") == "_/_._.._etc/abc.opus"
    assert render_path("/abs//{id}", recording, "opus") == "abs/abc"
    with pytest.raises(TemplateError):
        render_path("{id.__class__}", recording, "opus")
    with pytest.raises(TemplateError):
        render_path("{nope}", recording, "opus")
    with pytest.raises(TemplateError):
        render_path("{start:%Y}{id:>>>}", recording, "opus")
    assert check_template("{date:%Y}/{id}.{ext}", "wav") is None
    assert check_template("{0}", "wav") is not None


def test_sidecar_path() -> None:
    assert sidecar_path("a/b/c.wav", "wav") == "a/b/c.json"
    assert sidecar_path("a/b/c", "wav") == "a/b/c.json"


def test_pending_exports_skip_done_under_current_target() -> None:
    recs = [rec("b", minutes=2), rec("a", minutes=1), rec("c", minutes=3)]
    exported = {"a": "/mnt/x/a.wav", "c": "/mnt/old/c.wav"}
    todo = pending_exports(recs, exported, "/mnt/x/")
    assert [r.recording_id for r in todo] == ["b", "c"]  # moved target: c again


def test_next_fire_interval_anchored_and_cron() -> None:
    anchor = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    schedule = JobSchedule(interval_s=3600)
    now = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)
    assert next_fire(schedule, anchor, now) == datetime(2024, 5, 1, 15, 0, tzinfo=UTC)
    cron = next_fire(JobSchedule(cron="0 3 * * *"), anchor, now)
    assert cron is not None and cron > now and cron.astimezone().hour == 3
    assert next_fire(JobSchedule(), anchor, now) is None
    assert next_fire(JobSchedule(cron="not a cron"), anchor, now) is None


def job(job_id: str = "j1", kind: str = "purge", paused: bool = False) -> JobConfigured:
    return JobConfigured(
        node_id="n1", job_id=job_id, name=job_id, kind=kind,  # type: ignore[arg-type]
        schedule=JobSchedule(interval_s=60), paused=paused,
        purge=PurgeParams(retention_s=10) if kind == "purge" else None,
        export=ExportParams(target_dir="/mnt/x") if kind == "export" else None,
    )


def test_book_recordings_holds_users_and_purge_tombstone() -> None:
    book = JobBook()
    purge = RecordingPurged(event_id=purged_event_id("a"), node_id="n2", recording_id="a",
                            object_key="k", reason="r")
    assert book.apply(purge)
    assert not book.apply(purge)  # duplicate from another node
    book.apply(rec("a"))  # the completion arrives after its purge: stays purged
    book.apply(rec("b"))
    assert [r.recording_id for r in book.live_recordings()] == ["b"]
    book.apply(LegalHoldChanged(node_id="n1", recording_id="b", hold=True))
    assert book.held == {"b"}
    book.apply(LegalHoldChanged(node_id="n1", recording_id="b", hold=False))
    assert book.held == set()
    book.apply(UserUpserted(node_id="n1", username="u", extensions=["1"], groups=["g"]))
    assert book.users["u"] == UserInfo(frozenset({"1"}), frozenset({"g"}))


def test_book_requests_runs_and_resume() -> None:
    book = JobBook()
    request = JobRunRequested(node_id="n2", job_id="j1", dry_run=True)
    book.apply(request)
    assert book.pending_requests() == []  # job not known yet: it waits
    book.apply(job())
    run_id = requested_run_id(request.event_id)
    assert book.pending_requests() == [(run_id, request)]
    book.apply(JobRunStarted(node_id="n1", job_id="j1", run_id=run_id, dry_run=True))
    assert book.pending_requests() == []
    assert not book.needs_resume("j1")  # dry runs never need resuming
    book.apply(JobRunStarted(node_id="n1", job_id="j1", run_id="r2", role_epoch=3))
    book.apply(JobRunProgressed(node_id="n1", job_id="j1", run_id="r2", done=5, total=9))
    assert book.needs_resume("j1")
    view = book.job_view("j1", "n1", None)
    assert [(r.run_id, r.state, r.done, r.total) for r in view.last_runs] == [
        ("r2", "running", 5, 9), (run_id, "interrupted", 0, 0)]
    book.apply(JobRunFailed(node_id="n1", job_id="j1", run_id="r2", error="boom"))
    assert book.needs_resume("j1")  # a failed run is retried by a new holder
    book.apply(JobRunStarted(node_id="n2", job_id="j1", run_id="r3", trigger="resume"))
    book.apply(JobRunFinished(node_id="n2", job_id="j1", run_id="r3", processed=4))
    assert not book.needs_resume("j1")
    states = [r.state for r in book.job_view("j1", "n2", None).last_runs]
    assert states == ["finished", "failed", "interrupted"]


def test_book_end_before_start_and_exports() -> None:
    book = JobBook()
    book.apply(job("e", "export"))
    book.apply(JobRunFinished(node_id="n1", job_id="e", run_id="r", processed=2))
    book.apply(JobRunStarted(node_id="n1", job_id="e", run_id="r"))
    book.apply(RecordingExported(node_id="n1", job_id="e", run_id="r", recording_id="a",
                                 path="/mnt/x/a.wav", size_bytes=3))
    view = book.job_view("e", None, None)
    assert view.last_runs[0].state == "finished" and view.exported == 1
    book.apply(job("e", "export", paused=True))
    assert book.job_view("e", None, datetime.now(UTC)).next_run is None
    book.apply(JobRemoved(node_id="n1", job_id="e"))
    assert "e" not in book.jobs


def test_book_hold_wins_over_purge_in_any_order() -> None:
    when = datetime(2024, 5, 1, 13, 0, tzinfo=UTC)
    put = LegalHoldChanged(node_id="n1", recording_id="a", hold=True, occurred_at=when)
    forged = RecordingPurged(node_id="x", recording_id="a", object_key="k", reason="forged",
                             occurred_at=when + timedelta(minutes=1))
    for order in ([rec("a"), put, forged], [forged, rec("a"), put], [put, forged, rec("a")]):
        book = JobBook()
        for event in order:
            book.apply(event)
        assert book.held == {"a"} and book.purged == set()
        assert [r.recording_id for r in book.live_recordings()] == ["a"]
    # The same purge id issued twice with different times (two role holders) is kept as
    # two versions: no node's view depends on which one it saw first.
    book = JobBook()
    book.apply(rec("a"))
    book.apply(put)
    late = forged.model_copy(update={"occurred_at": when - timedelta(minutes=1)})
    assert book.apply(forged) and book.apply(late) and not book.apply(late)
    assert book.purged == set()
