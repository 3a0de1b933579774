"""The cluster and jobs views of the web: a dead node said plainly, the role holder's
export target check reported after a save, field-level errors, the form's preview, and
what a plain user may not see (targets, parameters, errors, cluster internals)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from callrec.store import open_store
from contracts.v1.events import EventBase, JobConfigured, JobTargetChecked
from contracts.v1.rpc import (
    NodeStatus,
    PeerLag,
    RolesStatus,
    SyncStatus,
    TargetCheckView,
)
from services.web.app import create_app
from services.web.cluster import cluster_view, dead_node_view, public_cluster
from tests.unit.test_web_jobs_api import ADMIN, ALICE, EXPORT, FakeBackend

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def sync_with_dead_b() -> SyncStatus:
    return SyncStatus(node_id="a", recordings_held=12, lag=[PeerLag(node_id="b", events_lag=3)],
                      nodes=[
                          NodeStatus(node_id="a", configured_role="primary", priority=0,
                                     alive=True, last_heartbeat_age_s=0.4, recordings=12),
                          NodeStatus(node_id="b", configured_role="backup", priority=1,
                                     alive=False, last_heartbeat_age_s=90.0, recordings=11),
                      ])


ROLES_AFTER_B = RolesStatus(node_id="a", holder="a", previous="b", epoch=4,
                            since=NOW - timedelta(seconds=85))


def test_a_dead_node_is_down_since_its_last_heartbeat_with_what_it_held() -> None:
    view = cluster_view("a", sync_with_dead_b(), ROLES_AFTER_B, {"nats": "ok"}, now=NOW)
    nodes = {node["node_id"]: node for node in view["nodes"]}
    assert nodes["a"]["state"] == "up" and nodes["a"]["down"] is None
    b = nodes["b"]
    assert b["state"] == "down" and view["down"] == ["b"]
    assert b["down"]["since"] == (NOW - timedelta(seconds=90)).isoformat()
    assert b["down"]["recordings"] == 11
    assert b["down"]["held_maintenance_role"] and b["down"]["role_moved_to"] == "a"
    assert view["unavailable"] == []


def test_a_dead_node_that_never_held_the_role_says_so() -> None:
    roles = RolesStatus(node_id="a", holder="a", previous=None, epoch=1)
    b = dead_node_view(sync_with_dead_b().nodes[1], roles, NOW)
    assert b is not None and not b["held_maintenance_role"] and b["role_moved_to"] is None
    assert dead_node_view(sync_with_dead_b().nodes[0], roles, NOW) is None


def test_silent_services_are_named() -> None:
    view = cluster_view("a", None, None, {"nats": "ok", "catalog": "unavailable: timeout"},
                        now=NOW)
    assert view["unavailable"] == ["catalog", "scheduler", "sync"]
    assert [n["node_id"] for n in view["nodes"]] == ["a"] and view["nodes"][0]["state"] \
        == "unknown"


def test_plain_users_get_no_internals() -> None:
    view = public_cluster(cluster_view("a", sync_with_dead_b(), ROLES_AFTER_B, None, now=NOW))
    text = repr(view)
    for secret in ("priority", "lag", "recordings", "epoch", "configured_role",
                   "held_maintenance_role", "heartbeat"):
        assert secret not in text, secret
    assert view["down"] == ["b"] and view["holder"] == "a"
    assert {n["node_id"]: n["state"] for n in view["nodes"]} == {"a": "up", "b": "down"}


class ClusterBackend(FakeBackend):
    """The fake scheduler of test_web_jobs_api plus a holder that checks export targets
    (`existing`: the folders it has), and a dead peer."""

    def __init__(self) -> None:
        super().__init__()
        self.existing: set[str] = set()
        self.answers = True
        self.holder: str | None = "n1"

    def apply(self, event: EventBase) -> None:
        super().apply(event)
        if isinstance(event, JobConfigured) and event.export is not None and self.answers:
            ok = event.export.target_dir in self.existing
            check = JobTargetChecked(node_id="n2", job_id=event.job_id,
                                     config_event_id=event.event_id,
                                     target_dir=event.export.target_dir, ok=ok,
                                     detail="exists" if ok else "does not exist")
            self.jobs[event.job_id] = self.jobs[event.job_id].model_copy(update={
                "target_check": TargetCheckView(
                    ok=check.ok, detail=check.detail, node_id=check.node_id,
                    checked_at=check.occurred_at, target_dir=check.target_dir,
                    config_event_id=check.config_event_id, current=True)})

    async def jobs_status(self) -> Any:
        status = await super().jobs_status()
        return status.model_copy(update={"holder": self.holder}) if status else None

    async def sync_status(self) -> SyncStatus | None:
        return sync_with_dead_b()

    async def roles_status(self) -> RolesStatus | None:
        return ROLES_AFTER_B


@pytest.fixture
def backend() -> ClusterBackend:
    return ClusterBackend()


@pytest.fixture
def client(backend: ClusterBackend, tmp_path: Path) -> Iterator[TestClient[Any]]:
    app = create_app(backend, open_store(tmp_path), tmp_path)
    app.state["web"].job_apply_wait_s = 0.2
    app.state["web"].target_check_wait_s = 0.3
    with TestClient(app=app) as test_client:
        yield test_client


def test_saving_an_export_job_reports_the_holders_check(
    client: TestClient[Any], backend: ClusterBackend
) -> None:
    response = client.post("/api/jobs", json=EXPORT, auth=ADMIN)
    assert response.status_code == 201, response.text
    check = response.json()["target_check"]
    assert check["state"] == "failed" and check["node_id"] == "n2"
    assert check["detail"] == "does not exist"
    backend.existing.add("/mnt/archive")
    job_id = response.json()["job_id"]
    again = client.put(f"/api/jobs/{job_id}", json=EXPORT, auth=ADMIN).json()["target_check"]
    assert again["state"] == "ok" and again["node_id"] == "n2"
    listed = client.get("/api/jobs", auth=ADMIN).json()["jobs"][0]
    assert listed["target_check"]["ok"] is True
    assert listed["definition"]["export"]["target_dir"] == "/mnt/archive"


def test_no_answer_or_no_holder_is_pending_in_bounded_time(
    client: TestClient[Any], backend: ClusterBackend
) -> None:
    backend.answers = False
    check = client.post("/api/jobs", json=EXPORT, auth=ADMIN).json()["target_check"]
    assert check["state"] == "pending" and "n1" in check["detail"]
    backend.holder = None
    check = client.post("/api/jobs", json={**EXPORT, "name": "b"},
                        auth=ADMIN).json()["target_check"]
    assert check["state"] == "pending" and "no node holds" in check["detail"]
    purge = {"name": "p", "kind": "purge", "schedule": {"interval": "1d"},
             "purge": {"retention": "30"}}
    assert client.post("/api/jobs", json=purge, auth=ADMIN).json()["target_check"] == {
        "state": "none"}


def test_errors_come_back_by_field(client: TestClient[Any]) -> None:
    body = {"name": "p", "kind": "purge", "schedule": {"cron": "99 * * * *"},
            "purge": {"retention": "soon", "user_retention": {"alice": "0"}}}
    response = client.post("/api/jobs", json=body, auth=ADMIN)
    assert response.status_code == 400
    fields = response.json()["extra"]["fields"]
    assert set(fields) == {"schedule.cron", "purge.retention", "purge.user_retention"}
    assert "alice" in fields["purge.user_retention"]


def test_preview_explains_a_schedule_and_a_template(client: TestClient[Any]) -> None:
    response = client.post("/api/jobs/preview", json={
        "schedule": {"interval": "6h"}, "path_template": "{near}/{id}.{ext}", "format": "wav"},
        auth=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["example_path"] == "1001/0123456789abcdef0123456789abcdef.wav"
    first, second = (datetime.fromisoformat(t) for t in body["next_runs"][:2])
    assert second - first == timedelta(hours=6) and body["errors"] == {}
    bad = client.post("/api/jobs/preview", json={
        "schedule": {"cron": "x"}, "path_template": "../{id}"}, auth=ADMIN).json()
    assert set(bad["errors"]) == {"schedule.cron", "export.path_template"}
    assert client.post("/api/jobs/preview", json={}, auth=ALICE).status_code == 403


def test_plain_users_see_no_targets_parameters_errors_or_nodes(
    client: TestClient[Any], backend: ClusterBackend
) -> None:
    client.post("/api/jobs", json=EXPORT, auth=ADMIN)
    client.post("/api/jobs", json={"name": "p", "kind": "purge", "schedule": {"interval": "1d"},
                                   "purge": {"retention": 30}}, auth=ADMIN)
    for job_id in list(backend.jobs):
        client.post(f"/api/jobs/{job_id}/run", json={"dry_run": True}, auth=ADMIN)
    for job in backend.jobs.values():
        job.last_runs[0].error = "export target /mnt/archive is full"
        job.last_runs[0].would_purge = ["rec1"]
    seen = client.get("/api/jobs", auth=ALICE)
    assert seen.status_code == 200
    text = seen.text
    for secret in ("/mnt/archive", "rec1", "target_dir", "retention", '"n2"'):
        assert secret not in text, secret
    body = seen.json()
    assert {job["name"] for job in body["jobs"]} == {"nightly", "p"}
    assert body["holder"] is None and all(job["runs_on"] is None for job in body["jobs"])
    assert all(run["node_id"] == "" for job in body["jobs"] for run in job["last_runs"])
    admin_text = client.get("/api/jobs", auth=ADMIN).text
    assert "/mnt/archive" in admin_text and "rec1" in admin_text

    cluster = client.get("/api/cluster", auth=ALICE).json()
    assert cluster["internals"] is False and "lag" not in repr(cluster)
    page = client.get("/cluster", auth=ALICE).text
    assert 'data-testid="down-badge"' in page and "Replication lag" not in page
    assert "11 recordings" not in page


def test_the_cluster_page_shows_a_dead_node_plainly(client: TestClient[Any]) -> None:
    response = client.get("/cluster", auth=ADMIN)
    assert response.status_code == 200
    page = response.text
    assert '<script src="/static/cluster.js"' in page and "<script>" not in page
    assert "<style" not in page and " style=" not in page
    assert 'data-node-id="b" data-state="down"' in page
    assert 'data-testid="down-badge">DOWN</span>' in page
    assert "it held 11 recordings" in page and "it held the maintenance role, now on a" in page
    assert client.get("/static/cluster.js").status_code == 200
    assert client.get("/static/cluster.css").status_code == 200
    api = client.get("/api/cluster", auth=ADMIN).json()
    assert api["down"] == ["b"] and api["internals"] is True


def test_the_jobs_page_has_a_form_per_kind_for_admins_only(client: TestClient[Any]) -> None:
    page = client.get("/jobs", auth=ADMIN).text
    for marker in ('data-testid="f-retention"', 'data-testid="f-target"',
                   'data-testid="f-template"', 'data-testid="f-example"',
                   'data-testid="f-next-runs"', 'data-testid="f-target-check"',
                   'data-error-for="purge.retention"', 'data-error-for="export.target_dir"'):
        assert marker in page, marker
    assert 'data-testid="job-form"' not in client.get("/jobs", auth=ALICE).text
