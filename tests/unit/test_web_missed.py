"""The missed-calls API and page over a fake backend: admins only, filters, paging,
hostile query values a 400, stored texts never markup."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from callrec.store import open_store
from contracts.v1.missed import MissedCall
from services.web.app import create_app
from services.web.missed import MissedPage, MissedQuery, matches
from tests.unit.test_web_jobs_api import ADMIN, ALICE
from tests.unit.test_web_jobs_api import FakeBackend as JobsBackend

T0 = datetime(2026, 12, 1, 14, 2, tzinfo=UTC)


def miss(i: int, **kw: Any) -> MissedCall:
    values: dict[str, Any] = {
        "node_id": "n1", "at": T0 + timedelta(minutes=i), "source": "127.0.0.1",
        "status": 404, "reason": "unknown_user", "detail": f"no recording user for 29{i:02}",
        "from_number": "1001", "to_number": f"29{i:02}", "numbers": [f"29{i:02}"],
    }
    values.update(kw)
    return MissedCall(**values)


class FakeBackend(JobsBackend):
    """The jobs fake plus a missed-calls store read as the NATS reader does: newest
    first, filtered, paged by sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[MissedCall] = []

    async def missed_calls(self, query: MissedQuery) -> MissedPage:
        page = MissedPage()
        top = len(self.stored) if query.before is None else min(len(self.stored),
                                                                query.before - 1)
        for seq in range(top, 0, -1):
            page.scanned += 1
            record = self.stored[seq - 1]
            if matches(record, query):
                page.items.append((seq, record))
                if len(page.items) == query.limit:
                    page.next_before = seq if seq > 1 else None
                    break
        return page


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(backend: FakeBackend, tmp_path: Path) -> Iterator[TestClient[Any]]:
    with TestClient(app=create_app(backend, open_store(tmp_path), tmp_path)) as test_client:
        yield test_client


def test_only_admins_see_missed_calls(client: TestClient[Any]) -> None:
    for path in ("/api/missed", "/missed"):
        assert client.get(path).status_code == 401
        assert client.get(path, auth=ALICE).status_code == 403
        assert client.get(path, auth=ADMIN).status_code == 200


def test_filters_and_paging(client: TestClient[Any], backend: FakeBackend) -> None:
    backend.stored = [miss(i) for i in range(10)]
    backend.stored.append(miss(10, source="127.0.0.3", status=403, reason="not_allowed",
                               detail=None, count=950, aggregated=True,
                               until=T0 + timedelta(minutes=11)))
    body = client.get("/api/missed", auth=ADMIN).json()
    assert [item["seq"] for item in body["items"]] == list(range(11, 0, -1))
    first = body["items"][0]
    assert first["count"] == 950 and first["aggregated"] and first["source"] == "127.0.0.3"
    assert body["items"][1]["description"] == "404 unknown user: no recording user for 2909"
    assert client.get("/api/missed?reason=not_allowed", auth=ADMIN).json()["items"][0][
        "seq"] == 11
    assert [i["seq"] for i in client.get("/api/missed?number=2903",
                                         auth=ADMIN).json()["items"]] == [4]
    assert len(client.get("/api/missed?status=403", auth=ADMIN).json()["items"]) == 1
    assert len(client.get("/api/missed?source=127.0.0.3", auth=ADMIN).json()["items"]) == 1
    since = (T0 + timedelta(minutes=8)).isoformat().replace("+", "%2B")
    assert [i["seq"] for i in client.get(f"/api/missed?since={since}",
                                         auth=ADMIN).json()["items"]] == [11, 10, 9]
    page1 = client.get("/api/missed?limit=4", auth=ADMIN).json()
    assert [i["seq"] for i in page1["items"]] == [11, 10, 9, 8]
    page2 = client.get(f"/api/missed?limit=4&before={page1['next_before']}",
                       auth=ADMIN).json()
    assert [i["seq"] for i in page2["items"]] == [7, 6, 5, 4]


@pytest.mark.parametrize("query", [
    "reason=nope", "status=99", "status=abc", "limit=0", "limit=201", "before=-1",
    "since=yesterday", "since=" + "9" * 100, "status=4040",
])
def test_bad_query_values_are_a_400(client: TestClient[Any], query: str) -> None:
    response = client.get(f"/api/missed?{query}", auth=ADMIN)
    assert response.status_code == 400, response.text


def test_the_page_is_a_template_with_its_own_script_and_no_inline_code(
        client: TestClient[Any], backend: FakeBackend) -> None:
    backend.stored = [miss(0, from_name="<script>alert(1)</script>")]
    response = client.get("/missed", auth=ADMIN)
    html = response.text
    assert '<script src="/static/missed.js" defer></script>' in html
    assert '<link rel="stylesheet" href="/static/missed.css">' in html
    assert "<script>" not in html and "<style" not in html
    assert 'data-testid="missed-table"' in html and 'aria-current="page"' in html
    assert "unknown user" in html  # the reason choices, in words
    # Stored texts reach the page only through the API as JSON (rendered by textContent).
    api = client.get("/api/missed", auth=ADMIN).json()
    assert api["items"][0]["from_name"] == "<script>alert(1)</script>"
    assert client.get("/static/missed.js").status_code == 200
    assert "innerHTML" not in client.get("/static/missed.js").text


def test_a_backend_without_missed_calls_is_a_503(tmp_path: Path) -> None:
    with TestClient(app=create_app(JobsBackend(), open_store(tmp_path), tmp_path)) as client:
        assert client.get("/api/missed", auth=ADMIN).status_code == 503
