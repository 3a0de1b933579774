"""The jobs and legal-hold API over a fake backend whose "scheduler" applies facts at
once (or not at all, or is silent): who may do what, what gets published, what a
following GET shows, and that hostile input is a 4xx, never a 500."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from callrec.store import open_store
from callrec.users import UsersProjection, hash_password
from contracts.v1.events import (
    EventBase,
    JobConfigured,
    JobRemoved,
    JobRunRequested,
    LegalHoldChanged,
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    RecordingNoteAdded,
    RecordingPurged,
    RecordingTagChanged,
    UserRemoved,
    UserUpserted,
    new_id,
)
from contracts.v1.rpc import (
    Annotations,
    JobRunView,
    JobsStatus,
    JobView,
    RolesStatus,
    SearchRequest,
    SearchResult,
    SyncStatus,
    Waveform,
)
from services.web.app import BackendUnavailable, create_app

ADMIN = ("admin", "admin-pw")
ALICE = ("alice", "alice-pw")
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
USER_EVENTS = [
    UserUpserted(node_id="n1", username="admin", password_hash=hash_password(ADMIN[1]),
                 admin=True),
    UserUpserted(node_id="n1", username="alice", password_hash=hash_password(ALICE[1]),
                 extensions=["1001"]),
]


class FakeBackend:
    """Backend port with an in-memory scheduler fed by the published facts."""

    def __init__(self) -> None:
        self.node_id = "n1"
        self.held: set[str] = set()
        self.users = UsersProjection()
        for seq, event in enumerate(USER_EVENTS, 1):
            self.users.apply(event, seq)
        self.jobs: dict[str, JobView] = {}
        self.published: list[EventBase] = []
        self.scheduler_up = True
        self.scheduler_applies = True
        self.store_up = True
        self.recordings = {"rec1": recording("rec1", "1001"), "rec2": recording("rec2", "3003")}

    async def jobs_status(self) -> JobsStatus | None:
        if not self.scheduler_up:
            return None
        return JobsStatus(node_id="n1", holder="n1", jobs=list(self.jobs.values()))

    async def publish_event(self, event: EventBase) -> None:
        if not self.store_up:
            raise BackendUnavailable("jetstream down")
        self.published.append(event)
        if self.scheduler_applies:
            self.apply(event)

    def apply(self, event: EventBase) -> None:
        if isinstance(event, JobConfigured):
            old = self.jobs.get(event.job_id)
            params = event.purge if event.purge is not None else event.export
            assert params is not None
            self.jobs[event.job_id] = JobView(
                job_id=event.job_id, name=event.name, kind=event.kind,
                schedule=event.schedule.model_dump(), paused=event.paused,
                params=params.model_dump(), runs_on="n1",
                next_run=None if event.paused else T0 + timedelta(hours=1),
                last_runs=old.last_runs if old else [],
            )
        elif isinstance(event, JobRemoved):
            self.jobs.pop(event.job_id, None)
        elif isinstance(event, JobRunRequested):
            job = self.jobs[event.job_id]
            run = JobRunView(run_id=new_id(), job_id=job.job_id, node_id="n1", started_at=T0,
                             trigger="manual", dry_run=event.dry_run, state="finished",
                             processed=2, bytes=1234)
            self.jobs[job.job_id] = job.model_copy(update={"last_runs": [run, *job.last_runs]})

    async def search(
        self, request: SearchRequest, visible_numbers: list[str] | None
    ) -> SearchResult:
        return SearchResult(total=0, items=[])

    async def get(self, recording_id: str) -> RecordingCompleted | None:
        return self.recordings.get(recording_id)

    async def publish_user_event(self, event: UserUpserted | UserRemoved) -> None:
        raise AssertionError("not used")

    async def purge_recording(self, event: RecordingPurged) -> bool:
        raise AssertionError("not used")

    async def sync_status(self) -> SyncStatus | None:
        return None

    async def roles_status(self) -> RolesStatus | None:
        return RolesStatus(node_id="n1", holder="n1", epoch=1)

    async def waveform(self, recording_id: str) -> Waveform | None:
        return None

    async def annotations(self, recording_id: str) -> Annotations:
        return Annotations(recording_id=recording_id)

    async def annotate(self, event: RecordingNoteAdded | RecordingTagChanged) -> bool:
        raise AssertionError("not used")

    async def metrics_texts(self) -> list[str]:
        return []

    async def health(self) -> dict[str, str]:
        return {"nats": "ok"}


def recording(rid: str, number: str) -> RecordingCompleted:
    return RecordingCompleted(
        node_id="n1", recording_id=rid, started_at=T0, ended_at=T0 + timedelta(seconds=2),
        duration_ms=2000, object_key=f"{rid}.opus", size_bytes=10, sha256="0" * 64,
        channels=[], metadata=RecordingMetadata(
            source="cucm", session_key=rid, participants=[Participant(role="near", number=number)]),
    )


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(backend: FakeBackend, tmp_path: Path) -> Iterator[TestClient[Any]]:
    app = create_app(backend, open_store(tmp_path), tmp_path)
    app.state["web"].job_apply_wait_s = 0.2
    app.state["web"].target_check_wait_s = 0.2
    with TestClient(app=app) as test_client:
        yield test_client


EXPORT = {
    "name": "nightly",
    "kind": "export",
    "schedule": {"cron": "0 2 * * *"},
    "export": {"target_dir": "/mnt/archive", "format": "wav"},
}


def create(client: TestClient[Any], body: dict[str, Any] | None = None) -> str:
    response = client.post("/api/jobs", json=body or EXPORT, auth=ADMIN)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def jobs(client: TestClient[Any]) -> dict[str, dict[str, Any]]:
    response = client.get("/api/jobs", auth=ADMIN)
    assert response.status_code == 200, response.text
    return {job["job_id"]: job for job in response.json()["jobs"]}


def test_create_publishes_the_definition_and_a_get_shows_it(
    client: TestClient[Any], backend: FakeBackend
) -> None:
    job_id = create(client)
    assert re.fullmatch(r"[0-9a-f]{32}", job_id)
    [event] = backend.published
    assert isinstance(event, JobConfigured)
    assert (event.job_id, event.name, event.kind, event.changed_by) == (
        job_id, "nightly", "export", "admin")
    assert event.export is not None and event.export.format == "wav"
    job = jobs(client)[job_id]
    assert job["schedule"]["cron"] == "0 2 * * *" and job["runs_on"] == "n1"
    assert job["next_run"] is not None and job["paused"] is False


def test_anyone_signed_in_may_look_only_admins_may_change(
    client: TestClient[Any], backend: FakeBackend
) -> None:
    job_id = create(client)
    assert client.get("/api/jobs").status_code == 401
    assert client.get("/api/jobs", auth=("admin", "wrong")).status_code == 401
    assert client.get("/api/jobs", auth=ALICE).status_code == 200
    for method, path in [("POST", "/api/jobs"), ("PUT", f"/api/jobs/{job_id}"),
                         ("POST", f"/api/jobs/{job_id}/run"),
                         ("POST", f"/api/jobs/{job_id}/pause"),
                         ("POST", f"/api/jobs/{job_id}/resume"),
                         ("DELETE", f"/api/jobs/{job_id}"),
                         ("PUT", "/api/recordings/rec1/hold"),
                         ("DELETE", "/api/recordings/rec1/hold")]:
        assert client.request(method, path, json=EXPORT).status_code == 401, (method, path)
        assert client.request(method, path, json=EXPORT, auth=ALICE).status_code == 403, (
            method, path)
    assert len(backend.published) == 1


def test_silent_scheduler_is_a_clear_503(client: TestClient[Any], backend: FakeBackend) -> None:
    job_id = create(client)
    backend.scheduler_up = False
    response = client.get("/api/jobs", auth=ADMIN)
    assert response.status_code == 503
    assert "scheduler" in response.json()["detail"]
    assert client.post(f"/api/jobs/{job_id}/run", auth=ADMIN).status_code == 503
    assert client.delete(f"/api/jobs/{job_id}", auth=ADMIN).status_code == 503
    # A new definition needs no current state: it is stored, and applied when it is back.
    assert client.post("/api/jobs", json={**EXPORT, "name": "other"},
                       auth=ADMIN).status_code == 201


def test_unstorable_change_is_a_503(client: TestClient[Any], backend: FakeBackend) -> None:
    backend.store_up = False
    assert client.post("/api/jobs", json=EXPORT, auth=ADMIN).status_code == 503


def test_change_not_yet_applied_still_answers_in_bounded_time(
    client: TestClient[Any], backend: FakeBackend
) -> None:
    backend.scheduler_applies = False
    response = client.post("/api/jobs", json=EXPORT, auth=ADMIN)
    assert response.status_code == 201 and response.json()["applied"] is False


def test_edit_replaces_the_definition_and_keeps_the_id(
    client: TestClient[Any], backend: FakeBackend
) -> None:
    job_id = create(client)
    body = {"name": "hourly purge", "kind": "purge", "schedule": {"interval_s": 3600},
            "purge": {"retention_days": 7}}
    response = client.put(f"/api/jobs/{job_id}", json=body, auth=ADMIN)
    assert response.status_code == 200, response.text
    job = jobs(client)[job_id]
    assert (job["name"], job["kind"], job["schedule"]["interval_s"]) == (
        "hourly purge", "purge", 3600)
    assert job["params"]["retention_s"] == 7 * 86400
    assert client.put(f"/api/jobs/{new_id()}", json=body, auth=ADMIN).status_code == 404


def test_names_stay_unique(client: TestClient[Any]) -> None:
    first = create(client)
    second = create(client, {**EXPORT, "name": "other"})
    assert client.post("/api/jobs", json=EXPORT, auth=ADMIN).status_code == 409
    assert client.put(f"/api/jobs/{second}", json=EXPORT, auth=ADMIN).status_code == 409
    assert client.put(f"/api/jobs/{first}", json=EXPORT, auth=ADMIN).status_code == 200


def test_pause_and_resume_keep_the_rest(client: TestClient[Any], backend: FakeBackend) -> None:
    job_id = create(client)
    response = client.post(f"/api/jobs/{job_id}/pause", auth=ADMIN)
    assert response.status_code == 200 and response.json()["paused"] is True
    paused = backend.published[-1]
    assert isinstance(paused, JobConfigured) and paused.paused
    first = backend.published[0]
    assert isinstance(first, JobConfigured)
    assert (paused.export, paused.schedule, paused.name) == (
        first.export, first.schedule, first.name)
    assert jobs(client)[job_id]["paused"] is True
    # Pausing a paused job changes nothing (and stores nothing).
    assert client.post(f"/api/jobs/{job_id}/pause", auth=ADMIN).status_code == 200
    assert len(backend.published) == 2
    assert client.post(f"/api/jobs/{job_id}/resume", auth=ADMIN).status_code == 200
    assert jobs(client)[job_id]["paused"] is False


def test_run_now_is_requested_and_the_new_run_reported(
    client: TestClient[Any], backend: FakeBackend
) -> None:
    job_id = create(client)
    response = client.post(f"/api/jobs/{job_id}/run", json={"dry_run": True}, auth=ADMIN)
    assert response.status_code == 202, response.text
    event = backend.published[-1]
    assert isinstance(event, JobRunRequested)
    assert (event.job_id, event.dry_run, event.requested_by) == (job_id, True, "admin")
    [run] = jobs(client)[job_id]["last_runs"]
    assert response.json()["run_id"] == run["run_id"]
    # No body at all is a plain run.
    assert client.post(f"/api/jobs/{job_id}/run", auth=ADMIN).status_code == 202
    last = backend.published[-1]
    assert isinstance(last, JobRunRequested) and not last.dry_run


def test_delete_removes_the_job(client: TestClient[Any], backend: FakeBackend) -> None:
    job_id = create(client)
    response = client.delete(f"/api/jobs/{job_id}", auth=ADMIN)
    assert response.status_code == 200 and response.json()["applied"] is True
    assert isinstance(backend.published[-1], JobRemoved)
    assert job_id not in jobs(client)
    assert client.delete(f"/api/jobs/{job_id}", auth=ADMIN).status_code == 404


def test_bad_definition_is_a_400_naming_the_problem(client: TestClient[Any]) -> None:
    response = client.post("/api/jobs", json={**EXPORT, "schedule": {"cron": "61 * * * *"}},
                           auth=ADMIN)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("schedule.cron: invalid cron expression")
    response = client.post("/api/jobs", json={**EXPORT, "export": {
        "target_dir": "/x", "path_template": "{secret}/{id}"}}, auth=ADMIN)
    assert response.status_code == 400 and "unknown field {secret}" in response.json()["detail"]


HOSTILE_BODIES: list[Any] = [
    b"", b"not json", b"[]", b"null", b"123", b'"x"', b"{", b'{"name": {}}',
    b"\xff\xfe", b'{"name": "x", "kind": "export"}',
    b'{"name": "x", "kind": "export", "schedule": {"cron": 5}, "export": {"target_dir": "/x"}}',
    b'{"name": "x", "kind": "export", "schedule": {"interval_s": 1e400},'
    b' "export": {"target_dir": "/x"}}',
    b'{"name": "x", "kind": "purge", "schedule": {"interval_s": 60},'
    b' "purge": {"retention_days": NaN}}',
    b'{"name": "x", "kind": "purge", "schedule": {"interval_s": 60},'
    b' "purge": {"retention_days": 1e308}}',
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
]


@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_hostile_bodies_are_4xx(client: TestClient[Any], body: bytes) -> None:
    job_id = create(client, {**EXPORT, "name": f"j{new_id()}"})
    headers = {"Content-Type": "application/json"}
    for method, path in [("POST", "/api/jobs"), ("PUT", f"/api/jobs/{job_id}"),
                         ("POST", f"/api/jobs/{job_id}/run"),
                         ("PUT", "/api/recordings/rec1/hold")]:
        if not body and path.endswith(("/run", "/hold")):
            continue  # an empty body is fine there
        response = client.request(method, path, content=body, headers=headers, auth=ADMIN)
        assert 400 <= response.status_code < 500, (method, path, response.text)


def test_huge_body_is_refused(client: TestClient[Any]) -> None:
    body = {**EXPORT, "name": "x" * 100_000}
    assert client.post("/api/jobs", json=body, auth=ADMIN).status_code == 413


@pytest.mark.parametrize("job_id", ["bad!id", "x" * 200, "-x", "..", "a%00b"])
def test_hostile_job_ids_are_4xx(client: TestClient[Any], job_id: str) -> None:
    for method, suffix in [("PUT", ""), ("DELETE", ""), ("POST", "/run"), ("POST", "/pause"),
                           ("POST", "/resume")]:
        response = client.request(method, f"/api/jobs/{job_id}{suffix}", json=EXPORT,
                                  auth=ADMIN)
        assert 400 <= response.status_code < 500, (method, job_id, response.text)


def test_legal_hold_is_published_for_a_known_recording(
    client: TestClient[Any], backend: FakeBackend
) -> None:
    response = client.put("/api/recordings/rec1/hold", json={"reason": "case 42"}, auth=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["legal_hold"] is True
    event = backend.published[-1]
    assert isinstance(event, LegalHoldChanged)
    assert (event.recording_id, event.hold, event.reason, event.requested_by) == (
        "rec1", True, "case 42", "admin")
    response = client.delete("/api/recordings/rec1/hold", auth=ADMIN)
    assert response.status_code == 200 and response.json()["legal_hold"] is False
    released = backend.published[-1]
    assert isinstance(released, LegalHoldChanged) and not released.hold
    assert client.put("/api/recordings/nope/hold", auth=ADMIN).status_code == 404
    assert client.put("/api/recordings/a..b/hold", auth=ADMIN).status_code == 400
    assert client.put("/api/recordings/rec1/hold", json={"reason": "x" * 600},
                      auth=ADMIN).status_code == 400


def test_jobs_page_is_self_contained_with_no_inline_script(
    client: TestClient[Any],
) -> None:
    assert client.get("/jobs").status_code == 401
    response = client.get("/jobs", auth=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page = response.text
    assert '<script src="/static/jobs.js"' in page and "<script>" not in page
    assert "<style" not in page and " style=" not in page and " on" + "click=" not in page
    for marker in ('id="jobs-body"', 'id="runs-body"', 'data-testid="new-job"',
                   'data-admin="true"'):
        assert marker in page
    assert "http://" not in page and "https://" not in page  # nothing external
    script = client.get("/static/jobs.js")  # public: no secret in it
    assert script.status_code == 200, script.text
    assert "javascript" in script.headers["content-type"]
    assert "/api/jobs" in script.text and 'dataset.admin === "true"' in script.text
    assert "http://" not in script.text and "https://" not in script.text
    assert client.get("/static/jobs.css").status_code == 200
    alice = client.get("/jobs", auth=ALICE).text
    assert 'data-admin="false"' in alice
    assert 'data-testid="new-job" type="button" hidden' in alice


def test_overview_pages_link_the_jobs_page(client: TestClient[Any]) -> None:
    for path in ("/", "/cluster"):
        response = client.get(path, auth=ADMIN)
        assert response.status_code == 200 and 'href="/jobs"' in response.text, path
