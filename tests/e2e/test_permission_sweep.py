"""The permission sweep: every route of the web app's own route table, every method,
called as a plain user and as a supervisor of a real node with real recordings, with
its path parameters filled with what they may not see (another user's recording, a real
username, a real job, another user's token, a hidden note). Nothing of a recording they
may not see (its id, its parties' numbers and names, its notes, its audio) may come back,
nor a job's export target, and a route that names such a recording answers 403 or 404
only. The routes come from
`create_app()`'s table, not a list: a route added later without a guard fails here.

Users: alice (71001, group sales), carol (71003, sales), bob (71002, support), and
sup (71500, supervisor of support). Recordings (historical facts over real audio):
A (alice's), B (bob's), C (carol's). alice sees A, sup sees exactly B (their group).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from callrec.store import open_store
from callrec.users import UsersProjection
from contracts import subjects
from contracts.v1.events import RecordingCompleted, RecordingNoteAdded
from services.web.app import create_app
from tests.support import sipp
from tests.support.cluster import eventually
from tests.support.history import PastCall, add_past_calls
from tests.support.node import Node

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret",
             "sup": "sup-secret"}
CALLS = {  # key: (near = the user's extension, far number, far party's name)
    "A": ("71001", "89001", "Customer Aurelia"),
    "B": ("71002", "89002", "Customer Bartholomew"),
    "C": ("71003", "89003", "Customer Cornelius"),
}
SEES = {"alice": {"A"}, "sup": {"B"}}
PARAM = re.compile(r"\{([^}:]+)(?::[^}]+)?\}")


@dataclass
class World:
    node: Node
    ids: dict[str, str]  # call key -> recording id
    notes: dict[str, tuple[str, str]]  # call key -> (note id, note text)
    job_id: str
    admin_token_id: str
    job_target: str  # an export target: for admins only


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="callrec-sweep-") as tmp:
        node = Node(Path(tmp) / "node", extra_args=["--record-all"]).start()
        try:
            yield _populate(node, Path(tmp))
        finally:
            node.stop()


def _populate(node: Node, tmp: Path) -> World:
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="7100001", seconds=1.0)
    assert result.ok, result.describe()
    first = node.wait_recordings(1)[0]
    template = RecordingCompleted.model_validate(
        {k: v for k, v in first.items() if k != "legal_hold"})
    node.cli("users", "add", "alice", "--extension", "71001", "--group", "sales",
             "--password", PASSWORDS["alice"])
    node.cli("users", "add", "carol", "--extension", "71003", "--group", "sales",
             "--password", PASSWORDS["carol"])
    node.cli("users", "add", "bob", "--extension", "71002", "--group", "support",
             "--password", PASSWORDS["bob"])
    node.cli("users", "add", "sup", "--role", "supervisor", "--extension", "71500",
             "--supervise", "support", "--password", PASSWORDS["sup"])
    yesterday = datetime.now(UTC) - timedelta(days=1)
    calls = [PastCall(yesterday + timedelta(minutes=i), near, far, far_name=name)
             for i, (near, far, name) in enumerate(CALLS.values())]
    published = asyncio.run(add_past_calls(node, template, calls))
    ids = dict(zip(CALLS, (r.recording_id for r in published), strict=True))
    notes = {key: (f"note-{rid[:8]}", f"Secret remark about call {key} {rid[:6]}")
             for key, rid in ids.items()}
    asyncio.run(_add_notes(node, ids, notes))
    node.wait_recordings(1 + len(CALLS))
    with node.client() as admin:
        job = admin.post("/api/jobs", json={
            "name": "sweep export", "kind": "export", "schedule": {"cron": "0 3 * * *"},
            "export": {"target_dir": str(tmp / "export"), "format": "opus"}})
        assert job.status_code == 201, job.text
        token = admin.post("/api/account/tokens", json={"name": "admin's own"})
        assert token.status_code == 201, token.text
    return World(node, ids, notes, job.json()["job_id"], token.json()["token_id"],
                 str(tmp / "export"))


async def _add_notes(node: Node, ids: dict[str, str],
                     notes: dict[str, tuple[str, str]]) -> None:
    nc = await node.bus()
    try:
        js = nc.jetstream()
        for key, rid in ids.items():
            note_id, text = notes[key]
            event = RecordingNoteAdded(node_id=node.node_id, recording_id=rid,
                                       note_id=note_id, text=text, author="admin")
            await js.publish(subjects.event(node.node_id, event.type),
                             event.model_dump_json().encode(),
                             headers={"Nats-Msg-Id": event.event_id})
    finally:
        await nc.close()


class _Stub:
    node_id = "sweep"
    users = UsersProjection()
    held: frozenset[str] = frozenset()


def route_table() -> list[tuple[str, str]]:
    """(path template, method) for every route the app serves, from the app itself."""
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(_Stub(), open_store(Path(tmp)), Path(tmp))  # type: ignore[arg-type]
        return sorted((route.path, method) for route in app.routes
                      for method in getattr(route, "methods", ()) if method != "OPTIONS")


def fillings(path: str, world: World, hidden: str) -> list[str]:
    """The path with its parameters filled with what the caller may not see."""
    other_user = "bob" if hidden != "B" else "carol"

    def value(name: str) -> str:
        lowered = name.lower()
        if "user" in lowered:
            return other_user
        if "job" in lowered:
            return world.job_id
        if "token" in lowered:
            return world.admin_token_id
        if "note" in lowered:
            return world.notes[hidden][0]
        if lowered in ("file_path", "path"):
            return "app.js"
        return world.ids[hidden]  # a recording id, or anything else: the hidden call

    return [PARAM.sub(lambda m: value(m.group(1)), path)]


def leaks(text: str, world: World, hidden: set[str]) -> list[str]:
    """What of the hidden recordings appears in a response body."""
    found = []
    for key in hidden:
        _near, far, name = CALLS[key]
        for marker in (world.ids[key], far, name, world.notes[key][1], world.notes[key][0]):
            if marker in text:
                found.append(f"{key}:{marker}")
    return found


def _query(world: World, hidden: str) -> dict[str, str]:
    """Filters naming the hidden call, for routes that take them from the query."""
    near = CALLS[hidden][0]
    return {"number": near, "q": "Secret remark", "text": "Secret remark",
            "user": "bob" if hidden == "B" else "carol", "group": "support",
            "recording_id": world.ids[hidden], "id": world.ids[hidden], "limit": "1000"}


def _sweep(client: httpx.Client, world: World, who: str, methods: set[str]) -> list[str]:
    hidden = set(CALLS) - SEES[who]
    problems: list[str] = []
    tried = 0
    for template, method in route_table():
        if method not in methods:
            continue
        names_recording = bool(PARAM.search(template))
        for key in sorted(hidden):
            for path in fillings(template, world, key):
                variants: list[dict[str, str]] = [{}]
                if method == "GET":
                    variants.append(_query(world, key))
                for params in variants:
                    tried += 1
                    kwargs: dict[str, Any] = {"params": params}
                    if method in ("POST", "PUT", "PATCH", "DELETE"):
                        kwargs["json"] = {}
                    response = client.request(method, path, **kwargs)
                    label = f"{who} {method} {path} {params or ''} -> {response.status_code}"
                    if response.status_code >= 500:
                        problems.append(f"{label}: server error {response.text[:200]}")
                    found = leaks(response.text, world, hidden)
                    if world.job_target in response.text:
                        found.append(f"job target {world.job_target}")
                    if found:
                        problems.append(f"{label}: leaks {found}")
                    if response.headers.get("content-type", "").startswith("audio/"):
                        problems.append(f"{label}: audio")
                    uses_id = world.ids[key] in path
                    if names_recording and uses_id and response.status_code not in (403, 404):
                        problems.append(f"{label}: must be 403/404 for a hidden recording")
    assert tried >= len(route_table()), "every route was tried"
    return problems


@pytest.mark.parametrize("who", ["alice", "sup"])
def test_no_route_shows_a_recording_the_caller_may_not_see(world: World, who: str) -> None:
    with httpx.Client(base_url=world.node.base_url, auth=(who, PASSWORDS[who]),
                      timeout=15.0) as client:
        problems = _sweep(client, world, who, {"GET", "HEAD", "POST", "PUT", "PATCH",
                                               "DELETE"})
    assert not problems, "\n".join(problems)


def test_the_same_holds_with_a_browser_session(world: World) -> None:
    with httpx.Client(base_url=world.node.base_url, timeout=15.0) as client:
        login = client.post("/login", json={"username": "alice",
                                            "password": PASSWORDS["alice"]},
                            headers={"Origin": world.node.base_url})
        assert login.status_code == 200, login.text
        assert client.get("/api/account").json()["via"] == "session"
        problems = _sweep(client, world, "alice", {"GET", "HEAD"})
    assert not problems, "\n".join(problems)


def test_each_sees_exactly_their_own_or_their_groups(world: World) -> None:
    """The positive side, so the sweep's detectors are known to work: what a caller may
    see does come back, with the markers the sweep looks for."""
    for who, keys in (*SEES.items(), ("bob", {"B"}), ("carol", {"C"})):
        with httpx.Client(base_url=world.node.base_url, auth=(who, PASSWORDS[who]),
                          timeout=15.0) as client:
            expected = {world.ids[k] for k in keys}

            def listed(c: httpx.Client = client, want: set[str] = expected) -> bool:
                items = c.get("/api/recordings", params={"limit": 1000}).json()["items"]
                return {i["recording_id"] for i in items} == want

            eventually(listed, 10, f"{who} lists {keys}")
            for key in keys:
                one = client.get(f"/api/recordings/{world.ids[key]}")
                assert one.status_code == 200 and leaks(one.text, world, {key}), who
                audio = client.get(f"/api/recordings/{world.ids[key]}/audio")
                assert audio.status_code == 200 and audio.content[:4] == b"OggS"
    with world.node.client() as admin:
        items = admin.get("/api/recordings", params={"limit": 1000}).json()["items"]
        assert set(world.ids.values()) <= {i["recording_id"] for i in items}


def test_the_route_table_is_what_the_sweep_walks() -> None:
    """The sweep walks the app's own table: it holds the recording routes, the pages
    and the account routes (so an empty table cannot pass silently)."""
    table = route_table()
    paths = {path for path, _ in table}
    assert len(table) >= 25
    assert "/api/recordings/{recording_id:str}/audio" in paths
    assert "/api/recordings" in paths and "/" in paths and "/api/account/tokens" in paths
