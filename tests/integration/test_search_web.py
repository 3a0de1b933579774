"""The recordings list API's filters on real processes: catalog + web over a real
nats-server, with a number plan, users in groups, notes and tags as facts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from callrec import bus
from callrec.config import NodeConfig
from callrec.users import hash_password
from contracts import subjects
from contracts.v1.events import (
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    RecordingNoteAdded,
    RecordingTagChanged,
    UserUpserted,
)
from contracts.v1.rpc import Annotations, GetRequest
from tests.support.natsfixture import NatsServer, free_port, start_nats

ROOT = Path(__file__).resolve().parents[2]
NODE = "search"
ADMIN = ("admin", "admin-secret")
ALICE = ("alice", "alice-secret")  # extension 2001, group sales
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
PLAN = ("+4930123452XXX/4",)


@dataclass
class Node:
    config: NodeConfig
    nats: NatsServer
    processes: dict[str, subprocess.Popen[bytes]]
    base_url: str
    logs: Path

    def start(self, service: str) -> None:
        env = dict(os.environ)
        env.update(self.config.to_env())
        env["PYTHONPATH"] = str(ROOT)
        with (self.logs / f"{service}.log").open("ab") as log:
            self.processes[service] = subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def client(self, auth: tuple[str, str] | None = ADMIN) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, auth=auth, timeout=20)

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in self.logs.glob("*.log"))


def rec(rid: str, minutes: int, parties: list[tuple[str, str | None]], *, seconds: int = 30,
        direction: str = "inbound", node: str = NODE, interrupted: bool = False
        ) -> RecordingCompleted:
    started = T0 + timedelta(minutes=minutes)
    return RecordingCompleted(
        node_id=node, recording_id=rid, started_at=started,
        ended_at=started + timedelta(seconds=seconds), duration_ms=seconds * 1000,
        object_key=f"x/{rid}.opus", size_bytes=1, sha256="0" * 64, channels=[],
        interrupted=interrupted,
        metadata=RecordingMetadata(
            source="siprec", session_key=rid, direction=direction,  # type: ignore[arg-type]
            participants=[Participant(role="near" if i == 0 else "far", number=n, name=name)
                          for i, (n, name) in enumerate(parties)]),
    )


def user(name: str, password: str | None = None, *, admin: bool = False,
         extensions: list[str] | None = None, groups: list[str] | None = None) -> UserUpserted:
    return UserUpserted(node_id=NODE, username=name, admin=admin,
                        password_hash=hash_password(password) if password else None,
                        extensions=extensions or [], groups=groups or [])


Fact = RecordingCompleted | RecordingNoteAdded | RecordingTagChanged | UserUpserted
EVENTS: list[Fact] = [
    user(ADMIN[0], ADMIN[1], admin=True),
    user(ALICE[0], ALICE[1], extensions=["2001"], groups=["sales"]),
    user("bob", extensions=["2002"], groups=["sales"]),
    user("carol", extensions=["3003"], groups=["support"]),
    # alice's calls come in as her DID: the number plan makes them extension 2001.
    rec("r-alice-in", 0, [("+4930123452001", "Alice"), ("+4989111222", "Müller GmbH")]),
    rec("r-alice-out", 60, [("2001", "Alice"), ("+4917155555", "Dora Kunde")], seconds=400,
        direction="outbound"),
    rec("r-bob", 120, [("+4930123452002", "Bob"), ("+4989111222", "Müller GmbH")],
        seconds=90),
    rec("r-carol", 180, [("3003", "Carol"), ("2001", "Alice")], direction="internal",
        node="peer", interrupted=True, seconds=5),
    RecordingTagChanged(node_id=NODE, recording_id="r-bob", tag="Complaint", added=True,
                        changed_by="admin", occurred_at=T0 + timedelta(hours=5)),
    RecordingTagChanged(node_id=NODE, recording_id="r-alice-in", tag="complaint", added=True,
                        changed_by="admin", occurred_at=T0 + timedelta(hours=5)),
    RecordingTagChanged(node_id=NODE, recording_id="r-alice-in", tag="complaint", added=False,
                        changed_by="admin", occurred_at=T0 + timedelta(hours=6)),
    RecordingNoteAdded(node_id=NODE, recording_id="r-bob", text="Kunde will kündigen",
                       author="admin", occurred_at=T0 + timedelta(hours=5)),
]


def publish(config: NodeConfig, events: list[Fact]) -> None:
    async def go() -> None:
        nc = await nats.connect(config.nats_url)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js, config.node_id)
            for event in events:
                # A peer's completion (node "peer") stated through this node's stream,
                # as the cluster stream would bring it.
                await js.publish(subjects.event(config.node_id, event.type),
                                 event.model_dump_json().encode(),
                                 headers={"Nats-Msg-Id": event.event_id})
        finally:
            await nc.drain()

    asyncio.run(go())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("search")
    server = start_nats(tmp / "nats")
    config = NodeConfig(node_id=NODE, data_dir=tmp / "data", bind="127.0.0.1",
                        http_port=free_port(), nats_port=server.port, sip_port=free_port(),
                        number_plan=PLAN)
    logs = tmp / "logs"
    logs.mkdir()
    node = Node(config, server, {}, f"http://127.0.0.1:{config.http_port}", logs)
    publish(config, EVENTS)
    try:
        node.start("catalog")
        node.start("web")
        deadline = time.monotonic() + 40
        with node.client() as client:
            while True:
                try:
                    body = client.get("/api/recordings", params={"tag": "complaint"}).json()
                    if body.get("total") == 1:
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"catalog never caught up\n{node.log_tail()}")
                time.sleep(0.2)
        yield node
    finally:
        node.stop_all()
        server.stop()


def ids(client: httpx.Client, **params: Any) -> list[str]:
    response = client.get("/api/recordings", params=params)
    assert response.status_code == 200, response.text
    return [item["recording_id"] for item in response.json()["items"]]


def test_every_filter_of_the_list_api(node: Node) -> None:
    with node.client() as admin:
        assert ids(admin) == ["r-carol", "r-bob", "r-alice-out", "r-alice-in"]
        assert ids(admin, number_or_name="müller") == ["r-bob", "r-alice-in"]
        assert ids(admin, number_or_name="+49891") == ["r-bob", "r-alice-in"]
        assert ids(admin, number="2001") == ["r-carol", "r-alice-out", "r-alice-in"]
        assert ids(admin, user="alice") == ["r-carol", "r-alice-out", "r-alice-in"]
        assert ids(admin, group="sales") == ids(admin)[:4]
        assert ids(admin, group="support") == ["r-carol"]
        assert ids(admin, user="nobody") == [] and ids(admin, group="none") == []
        assert ids(admin, direction="outbound") == ["r-alice-out"]
        assert ids(admin, min_duration_s=60) == ["r-bob", "r-alice-out"]
        assert ids(admin, tag="COMPLAINT") == ["r-bob"]
        assert ids(admin, note_text="kundigen") == ["r-bob"]
        assert ids(admin, node="peer") == ["r-carol"]
        assert ids(admin, interrupted="true") == ["r-carol"]
        assert ids(admin, interrupted="false") == ["r-bob", "r-alice-out", "r-alice-in"]
        assert ids(admin, sort="duration") == ["r-alice-out", "r-bob", "r-alice-in", "r-carol"]
        assert ids(admin, sort="started", order="asc")[0] == "r-alice-in"
        # The old parameters keep working, with the new ones.
        window = {"from": "2024-05-01T10:00:00Z", "to": "2024-05-01T13:30:00+02:00"}
        assert ids(admin, **window) == ["r-bob", "r-alice-out"]
        assert ids(admin, **window, number_or_name="kunde") == ["r-alice-out"]
        page = admin.get("/api/recordings", params={"limit": 2, "offset": 1}).json()
        assert page["total"] == 4 and [i["recording_id"] for i in page["items"]] == [
            "r-bob", "r-alice-out"]
        assert page["items"][0]["tags"] == ["complaint"]
        for bad in ({"direction": "sideways"}, {"sort": "size"}, {"order": "up"},
                    {"min_duration_s": "-1"}, {"interrupted": "maybe"},
                    {"from": "yesterday"}, {"limit": "0"}):
            response = admin.get("/api/recordings", params=bad)
            assert response.status_code == 400, (bad, response.text)


def test_a_filter_never_widens_what_a_user_sees(node: Node) -> None:
    with node.client(auth=ALICE) as alice:
        mine = ["r-carol", "r-alice-out", "r-alice-in"]
        assert ids(alice) == mine  # her DID is her extension by the number plan
        assert ids(alice, user="bob") == []
        assert ids(alice, group="sales") == mine
        assert ids(alice, number_or_name="müller") == ["r-alice-in"]
        assert ids(alice, tag="complaint") == []
        # The single-recording check applies the same plan.
        assert alice.get("/api/recordings/r-alice-in").status_code == 200
        assert alice.get("/api/recordings/r-bob").status_code == 404
        page = alice.get("/", params={"user": "bob"})
        assert page.status_code == 200 and "bob" not in page.text  # no user list for her


def test_annotations_rpc(node: Node) -> None:
    async def ask(recording_id: str) -> Annotations | None:
        nc = await nats.connect(node.config.nats_url)
        try:
            return await bus.call(
                nc, subjects.rpc(NODE, subjects.CATALOG, subjects.CATALOG_ANNOTATIONS),
                GetRequest(recording_id=recording_id), Annotations, timeout=5)
        finally:
            await nc.close()

    bob = asyncio.run(ask("r-bob"))
    assert bob is not None and bob.tags == ["complaint"]
    assert [n.text for n in bob.notes] == ["Kunde will kündigen"]
    alice = asyncio.run(ask("r-alice-in"))
    assert alice is not None and alice.tags == [] and alice.notes == []
