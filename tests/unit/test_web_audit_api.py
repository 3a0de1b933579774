"""The audit over HTTP with a fake backend: routes record what they declare, the list,
CSV and verification are admin-only, CSV cells cannot become formulas, and a read
whose entry cannot be stored is not served."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from callrec.store import open_store
from services.web.app import create_app
from services.web.audit import csv_cell
from services.web.audit_http import APP_STATE_KEY, AuditService, audit_path
from tests.unit.test_web_jobs_api import ADMIN, ALICE, FakeBackend


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(backend: FakeBackend, tmp_path: Path) -> Iterator[TestClient[Any]]:
    app = create_app(backend, open_store(tmp_path), tmp_path)
    with TestClient(app=app) as test_client:
        yield test_client


def service(client: TestClient[Any]) -> AuditService:
    found: AuditService = client.app.state[APP_STATE_KEY]
    return found


def entries(client: TestClient[Any], **params: str) -> list[dict[str, Any]]:
    response = client.get("/api/audit", params={"limit": "500", **params}, auth=ADMIN)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def test_routes_record_what_they_declare(client: TestClient[Any]) -> None:
    client.get("/api/recordings", params={"number": "1001", "from": "2024-05-01T00:00:00Z"},
               auth=ALICE)
    client.get("/api/recordings/rec1", auth=ALICE)
    client.get("/api/recordings/rec2", auth=ALICE)  # not hers: 404, recorded as failed
    client.put("/api/recordings/rec1/hold", auth=ALICE)  # not an admin: denied
    client.get("/api/recordings", auth=("alice", "wrong"))
    found = entries(client)
    by_action = {(e["action"], e["target"], e["outcome"]) for e in found}
    assert ("search", None, "ok") in by_action
    assert ("view", "rec1", "ok") in by_action
    assert ("view", "rec2", "failed") in by_action
    assert ("hold", "rec1", "denied") in by_action
    assert ("login_failed", None, "failed") in by_action
    search = next(e for e in found if e["action"] == "search" and e["outcome"] == "ok")
    assert search["actor"] == "alice" and search["node"] == "n1"
    assert search["detail"] == {"number": "1001", "from": "2024-05-01T00:00:00Z"}
    assert search["source_address"] == "testclient"
    failed = next(e for e in found if e["action"] == "login_failed")
    assert failed["actor"] == "alice"  # who they tried to be
    # Filters.
    assert {e["action"] for e in entries(client, action="view")} == {"view"}
    assert entries(client, actor="nobody") == []
    assert len(entries(client, target="rec1")) == 2


def test_repeated_plays_are_one_entry(client: TestClient[Any], backend: FakeBackend) -> None:
    for _ in range(5):
        client.get("/api/recordings/rec1", auth=ALICE)
    assert len(entries(client, action="view")) == 1


def test_only_admins_see_the_audit(client: TestClient[Any]) -> None:
    for path in ("/audit", "/api/audit", "/api/audit.csv", "/api/audit/verify"):
        assert client.get(path, auth=ALICE).status_code == 403, path
        assert client.get(path).status_code == 401, path
        assert client.get(path, auth=ADMIN).status_code == 200, path
    page = client.get("/audit", auth=ADMIN).text
    assert 'data-testid="audit-table"' in page and "<script>" not in page


def test_csv_has_the_rows_and_no_formulas(client: TestClient[Any]) -> None:
    client.get("/api/recordings", params={"number": "=HYPERLINK(\"x\")"}, auth=ALICE)
    client.get("/api/recordings", auth=("+cmd|' /C calc'!A0", "x"))
    response = client.get("/api/audit.csv", auth=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {r["action"] for r in rows} >= {"search", "login_failed"}
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@")), value
    assert any(r["actor"] == "'+cmd|' /C calc'!A0" for r in rows)
    filtered = client.get("/api/audit.csv", params={"action": "search"}, auth=ADMIN)
    assert {r["action"] for r in csv.DictReader(io.StringIO(filtered.text))} == {"search"}
    assert csv_cell("-1") == "'-1" and csv_cell("a=b") == "a=b" and csv_cell(None) == ""


def test_verify_shows_an_edited_row(client: TestClient[Any], tmp_path: Path) -> None:
    for rid in ("rec1", "rec2", "nope"):
        client.get(f"/api/recordings/{rid}", auth=ADMIN)
    verdict = client.get("/api/audit/verify", auth=ADMIN).json()
    [chain] = verdict["chains"]
    assert chain["status"] == "unconfirmed" and chain["entries"] == 4  # login + 3; no heartbeat
    with sqlite3.connect(audit_path(tmp_path)) as db:
        db.execute("UPDATE audit SET source_address = '10.6.6.6' WHERE seq = 2")
    [chain] = client.get("/api/audit/verify", auth=ADMIN).json()["chains"]
    assert chain["status"] == "broken" and chain["broken_seq"] == 2


def test_unstorable_read_is_not_served(client: TestClient[Any]) -> None:
    async def down(*_: Any) -> tuple[Any, int]:
        raise TimeoutError("bus down")

    appender = service(client).auditor.appender
    appender.head = None
    appender.store.last = down  # type: ignore[method-assign]
    response = client.get("/api/recordings/rec1", auth=ALICE)
    assert response.status_code == 503
    assert b"audit" in response.content
    # A failed login is still answered (a refusal), the entry dropped and counted.
    assert client.get("/api/jobs", auth=("alice", "wrong")).status_code == 401
    assert service(client).auditor.m_failed.get(action="login_failed") == 1


def test_notes_and_tags_are_audited(client: TestClient[Any], backend: FakeBackend) -> None:
    async def annotate(event: Any) -> bool:
        return True

    backend.annotate = annotate  # type: ignore[method-assign]
    assert client.post("/api/recordings/rec1/notes", json={"text": "called back"},
                       auth=ADMIN).status_code == 201
    assert client.put("/api/recordings/rec1/tags/urgent", auth=ADMIN).status_code == 200
    assert client.delete("/api/recordings/rec1/tags/urgent", auth=ADMIN).status_code == 200
    assert client.post("/api/recordings/rec1/notes", json={"text": "x"},
                       auth=ALICE).status_code == 403  # a plain user does not annotate
    found = {(e["action"], e["actor"], e["outcome"], e["detail"].get("tag"))
             for e in entries(client, target="rec1")}
    assert {("note", "admin", "ok", None), ("tag", "admin", "ok", "urgent"),
            ("note", "alice", "denied", None)} <= found
    assert len([e for e in entries(client, action="tag")]) == 2
