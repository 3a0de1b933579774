"""Catalog + web against a real nats-server, as separate processes like in production."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest

from callrec import audio, bus
from callrec.config import NodeConfig
from callrec.store import open_store
from callrec.users import hash_password
from contracts import subjects
from contracts.v1.events import (
    EventBase,
    Participant,
    RecordingCompleted,
    RecordingMetadata,
    UserUpserted,
    parse_event,
)
from contracts.v1.rpc import Empty, NodeStatus, PeerLag, SyncStatus
from tests.support.natsfixture import NatsServer, free_port, start_nats

ROOT = Path(__file__).resolve().parents[2]
NODE = "itest"
ADMIN = ("admin", "admin-secret")
ALICE = ("alice", "alice-secret")
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


@dataclass
class Node:
    config: NodeConfig
    nats: NatsServer
    processes: dict[str, subprocess.Popen[bytes]]
    base_url: str
    audio_bytes: bytes
    logs: Path

    def start(self, service: str) -> None:
        env = dict(os.environ)
        env.update(self.config.to_env())
        env["PYTHONPATH"] = str(ROOT)
        log = (self.logs / f"{service}.log").open("ab")
        self.processes[service] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def stop(self, service: str) -> None:
        process = self.processes.pop(service)
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def client(self, auth: tuple[str, str] | None = ADMIN) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, auth=auth, timeout=20)

    def log_tail(self) -> str:
        parts = [
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in self.logs.glob("*.log")
        ]
        return "\n".join(parts)


def publish(config: NodeConfig, events: list[EventBase]) -> None:
    async def go() -> None:
        nc = await nats.connect(config.nats_url)
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js, config.node_id)
            for event in events:
                await bus.publish_event(js, event)
        finally:
            await nc.drain()

    asyncio.run(go())


def recording(
    rid: str, minutes: int, numbers: list[str], key: str, size: int, sha: str
) -> RecordingCompleted:
    started = T0 + timedelta(minutes=minutes)
    return RecordingCompleted(
        node_id=NODE,
        recording_id=rid,
        started_at=started,
        ended_at=started + timedelta(seconds=2),
        duration_ms=2000,
        object_key=key,
        size_bytes=size,
        sha256=sha,
        channels=[],
        metadata=RecordingMetadata(
            source="sip",
            session_key=rid,
            participants=[
                Participant(role="caller" if i == 0 else "callee", number=n, channel=i)
                for i, n in enumerate(numbers)
            ],
        ),
    )


def wait_for(predicate: object, timeout: float, what: str, node: Node) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last})\n{node.log_tail()}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("node")
    server = start_nats(tmp / "nats")
    config = NodeConfig(
        node_id=NODE,
        data_dir=tmp / "data",
        bind="127.0.0.1",
        http_port=free_port(),
        nats_port=server.port,
        sip_port=free_port(),
    )
    logs = tmp / "logs"
    logs.mkdir()

    # A real stereo Ogg/Opus object in the store.
    source = tmp / "call.ogg"
    left = audio.tone(440.0, 2.0, 16000)
    right = audio.tone(1000.0, 2.0, 16000)
    audio.encode_opus_stereo(left, right, 16000, source)
    store = open_store(config.data_dir)
    key = "2024/05/01/rec-one.ogg"
    sha = store.put_file(key, source)
    data = source.read_bytes()

    node = Node(config, server, {}, f"http://127.0.0.1:{config.http_port}", data, logs)
    publish(
        config,
        [
            UserUpserted(
                node_id=NODE, username=ADMIN[0], password_hash=hash_password(ADMIN[1]), admin=True
            ),
            UserUpserted(
                node_id=NODE,
                username=ALICE[0],
                password_hash=hash_password(ALICE[1]),
                extensions=["1001"],
            ),
            recording("rec-one", 0, ["1001", "5550100"], key, len(data), sha),
            recording("rec-two", 10, ["2002", "5550200"], key, len(data), sha),
            recording("rec-three", 20, ["3003"], "2024/05/01/missing.ogg", 10, "f" * 64),
        ],
    )
    try:
        node.start("catalog")
        node.start("web")
        with node.client() as client:
            wait_for(
                lambda: client.get("/healthz").status_code == 200, 30, "web healthy", node
            )
            wait_for(
                lambda: client.get("/api/recordings").json().get("total") == 3,
                15,
                "catalog caught up",
                node,
            )
        yield node
    finally:
        for service in list(node.processes):
            node.stop(service)
        server.stop()


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["recording_id"] for item in response.json()["items"]]


def test_requires_authentication(node: Node) -> None:
    with node.client(auth=None) as anon:
        response = anon.get("/api/recordings")
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Basic realm="callrec"')
        garbage = anon.get("/api/recordings", headers={"Authorization": "Basic %%%notbase64"})
        assert garbage.status_code == 401
    with node.client(auth=("admin", "wrong")) as wrong:
        assert wrong.get("/api/recordings").status_code == 401
    with node.client(auth=("nobody", "x")) as unknown:
        assert unknown.get("/api/recordings/rec-one").status_code == 401


def test_list_filter_and_paging(node: Node) -> None:
    with node.client() as client:
        everything = client.get("/api/recordings")
        assert everything.json()["total"] == 3
        assert _ids(everything) == ["rec-three", "rec-two", "rec-one"]
        assert _ids(client.get("/api/recordings", params={"number": "1001"})) == ["rec-one"]
        assert _ids(client.get("/api/recordings", params={"number": "555"})) == [
            "rec-two",
            "rec-one",
        ]
        page = client.get("/api/recordings", params={"limit": 1, "offset": 1})
        assert page.json()["total"] == 3
        assert _ids(page) == ["rec-two"]
        window = client.get(
            "/api/recordings",
            params={"from": "2024-05-01T09:05:00Z", "to": "2024-05-01T11:15:00+02:00"},
        )
        assert _ids(window) == ["rec-two"]


def test_visibility_for_non_admin(node: Node) -> None:
    with node.client(auth=ALICE) as alice:
        assert _ids(alice.get("/api/recordings")) == ["rec-one"]
        assert alice.get("/api/recordings/rec-one").status_code == 200
        assert alice.get("/api/recordings/rec-two").status_code == 404
        assert alice.get("/api/recordings/rec-two/audio").status_code == 404
        assert alice.get("/api/users").status_code == 403
        assert alice.post("/api/users", json={"username": "x"}).status_code == 403
        assert alice.get("/").status_code == 200


def test_metadata(node: Node) -> None:
    with node.client() as client:
        meta = client.get("/api/recordings/rec-one")
        assert meta.status_code == 200
        body = meta.json()
        assert body["recording_id"] == "rec-one"
        assert body["size_bytes"] == len(node.audio_bytes)
        assert [p["number"] for p in body["metadata"]["participants"]] == ["1001", "5550100"]
        assert client.get("/api/recordings/nope").status_code == 404


def test_audio_full_range_and_416(node: Node) -> None:
    size = len(node.audio_bytes)
    with node.client(auth=ALICE) as client:
        full = client.get("/api/recordings/rec-one/audio")
        assert full.status_code == 200
        assert full.headers["content-type"].startswith("audio/ogg")
        assert full.headers["accept-ranges"] == "bytes"
        assert full.headers["content-length"] == str(size)
        assert full.headers["etag"].strip('"')
        assert full.content == node.audio_bytes

        part = client.get("/api/recordings/rec-one/audio", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 0-99/{size}"
        assert part.content == node.audio_bytes[:100]

        tail = client.get("/api/recordings/rec-one/audio", headers={"Range": "bytes=-10"})
        assert tail.status_code == 206
        assert tail.content == node.audio_bytes[-10:]

        rest = client.get("/api/recordings/rec-one/audio", headers={"Range": "bytes=100-"})
        assert rest.status_code == 206
        assert rest.content == node.audio_bytes[100:]

        bad = client.get("/api/recordings/rec-one/audio", headers={"Range": f"bytes={size}-"})
        assert bad.status_code == 416
        assert bad.headers["content-range"] == f"bytes */{size}"

        multi = client.get("/api/recordings/rec-one/audio", headers={"Range": "bytes=0-1,5-6"})
        assert multi.status_code == 200
        assert multi.content == node.audio_bytes

        etag = full.headers["etag"]
        cached = client.get("/api/recordings/rec-one/audio", headers={"If-None-Match": etag})
        assert cached.status_code == 304

        download = client.get("/api/recordings/rec-one/audio", params={"download": "1"})
        disposition = download.headers["content-disposition"]
        assert disposition.startswith("attachment;") and ".ogg" in disposition
    with node.client() as admin:
        # Known to the catalog but its object is not on this node.
        assert admin.get("/api/recordings/rec-three/audio").status_code == 404


def test_wav(node: Node) -> None:
    with node.client(auth=ALICE) as client:
        response = client.get(
            "/api/recordings/rec-one/audio", params={"format": "wav", "download": "true"}
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("audio/wav")
        assert ".wav" in response.headers["content-disposition"]
        with wave.open(io.BytesIO(response.content)) as wav:
            assert wav.getnchannels() == 2
            assert wav.getsampwidth() == 2
            assert wav.getnframes() > 0
        [cache] = (node.config.data_dir / "cache" / "wav").glob("rec-one.*.wav")
        assert cache.stat().st_mode & 0o777 == 0o600
        assert cache.read_bytes() == response.content
        part = client.get(
            "/api/recordings/rec-one/audio",
            params={"format": "wav"},
            headers={"Range": "bytes=0-43"},
        )
        assert part.status_code == 206
        assert part.content == response.content[:44]
        assert part.content.startswith(b"RIFF")


def test_health_and_metrics(node: Node) -> None:
    with node.client(auth=None) as anon:
        health = anon.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        metrics = anon.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = metrics.text
        assert "callrec_catalog_recordings{" in text
        assert 'service="catalog"' in text and 'service="web"' in text
        assert "callrec_catalog_events_applied_total" in text
        headers = [line for line in text.splitlines() if line.startswith("# ")]
        assert len(headers) == len(set(headers))


def test_users_api(node: Node) -> None:
    with node.client() as admin:
        listed = admin.get("/api/users")
        assert listed.status_code == 200
        names = [u["username"] for u in listed.json()["items"]]
        assert names == ["admin", "alice"]
        assert all("password_hash" not in u for u in listed.json()["items"])

        created = admin.post(
            "/api/users",
            json={"username": "bob", "password": "bob-pw-123", "extensions": ["2002"],
                  "groups": ["sales", "sales"]},
        )
        assert created.status_code == 201, created.text
        assert created.json()["extensions"] == ["2002"]
        assert created.json()["groups"] == ["sales"]
        assert admin.post("/api/users", json={"username": "x", "groups": ["a/b"]}
                          ).status_code == 400
        assert "bob" in [u["username"] for u in admin.get("/api/users").json()["items"]]
        with node.client(auth=("bob", "bob-pw-123")) as bob:
            assert _ids(bob.get("/api/recordings")) == ["rec-two"]

        # No password given: the existing one is kept.
        updated = admin.post(
            "/api/users", json={"username": "bob", "extensions": ["2002"], "display_name": "Bob"}
        )
        assert updated.status_code == 200, updated.text
        with node.client(auth=("bob", "bob-pw-123")) as bob:
            assert bob.get("/api/recordings").status_code == 200

        conflict = admin.post("/api/users", json={"username": "carol", "extensions": ["1001"]})
        assert conflict.status_code == 409
        for bad in (
            {"username": "../etc"},
            {"username": ""},
            {"username": "x" * 65},
            {"username": "ok", "extensions": ["12a"]},
            {"username": "ok", "extensions": ["1" * 33]},
            {"username": "ok", "admin": "maybe"},
            {"password": "x"},
        ):
            response = admin.post("/api/users", json=bad)
            assert response.status_code == 400, (bad, response.text)
        not_json = admin.post(
            "/api/users", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert not_json.status_code == 400

        assert admin.delete("/api/users/bob").status_code == 204
        assert admin.delete("/api/users/bob").status_code == 404
        assert admin.delete("/api/users/admin").status_code == 409  # last admin
        with node.client(auth=("bob", "bob-pw-123")) as bob:
            assert bob.get("/api/recordings").status_code == 401


def test_hostile_input(node: Node) -> None:
    with node.client() as client:
        for params in (
            {"from": "yesterday"},
            {"to": "2024-13-45"},
            {"from": "x" * 500},
            {"limit": "100000"},
            {"limit": "0"},
            {"limit": "abc"},
            {"offset": "-1"},
            {"from": "2024-05-02T00:00:00Z", "to": "2024-05-01T00:00:00Z"},
        ):
            response = client.get("/api/recordings", params=params)
            assert 400 <= response.status_code < 500, (params, response.text)
        for path in (
            "/api/recordings/..%2F..%2Fetc%2Fpasswd",
            "/api/recordings/..%2F..%2Fetc%2Fpasswd/audio",
            "/api/recordings/%2e%2e/audio?format=wav",
            "/api/recordings/rec-one%00/audio",
            "/api/recordings/" + "a" * 300,
            "/api/recordings/rec-one/audio?format=flac",
            "/api/recordings/rec-one/audio?download=perhaps",
            "/api/users/..%2F",
        ):
            method = "DELETE" if path.startswith("/api/users") else "GET"
            response = client.request(method, path)
            assert 400 <= response.status_code < 500, (path, response.status_code)
        raw = client.get("/api/recordings/../../etc/passwd")
        assert 400 <= raw.status_code < 500
    with node.client(auth=None) as anon:
        huge = anon.get(
            "/api/recordings",
            headers={"Authorization": "Basic " + base64.b64encode(b"a" * 5000).decode()},
        )
        assert huge.status_code == 401


def last_event(config: NodeConfig, event_type: str) -> object:
    async def go() -> object:
        nc = await nats.connect(config.nats_url)
        try:
            msg = await nc.jetstream().get_last_msg(
                subjects.CLUSTER_STREAM, subjects.events_of_type(event_type)
            )
            return parse_event(msg.data or b"")
        finally:
            await nc.drain()

    return asyncio.run(go())


def test_delete_recording(node: Node) -> None:
    sha = "e" * 64
    publish(node.config, [recording("rec-del", 30, ["9009"], "2024/05/01/del.ogg", 10, sha)])
    with node.client() as admin, node.client(auth=ALICE) as alice:
        wait_for(lambda: admin.get("/api/recordings/rec-del").status_code == 200, 15,
                 "rec-del cataloged", node)
        assert alice.delete("/api/recordings/rec-del").status_code == 403
        with node.client(auth=None) as anon:
            assert anon.delete("/api/recordings/rec-del").status_code == 401
        assert admin.delete("/api/recordings/nope").status_code == 404
        assert 400 <= admin.delete("/api/recordings/..%2Fx").status_code < 500
        response = admin.delete("/api/recordings/rec-del")
        assert response.status_code == 202, response.text
        assert response.json()["applied_locally"] is True
        assert admin.get("/api/recordings/rec-del").status_code == 404
        assert admin.get("/api/recordings").json()["total"] == 3
        assert admin.delete("/api/recordings/rec-del").status_code == 404
    event = last_event(node.config, "recording.purged")
    assert getattr(event, "recording_id", None) == "rec-del"
    assert getattr(event, "object_key", None) == "2024/05/01/del.ogg"
    assert getattr(event, "requested_by", None) == "admin"
    assert getattr(event, "reason", None) == "deleted by admin"
    # Published again later (e.g. replayed by a peer), the completion stays purged.
    publish(node.config, [recording("rec-del", 30, ["9009"], "2024/05/01/del.ogg", 10, sha)])
    time.sleep(0.5)
    with node.client() as admin:
        assert admin.get("/api/recordings/rec-del").status_code == 404


class FakePeers:
    """Stands in for the sync service (status RPC and heartbeats) on the test's NATS.

    `beating` names the nodes whose heartbeats are sent; `serve_sync` off makes the
    status RPC go silent, as when the sync service is down.
    """

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.beating = {NODE: ("primary", 0), "peer": ("backup", 1)}
        self.serve_sync = True
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> FakePeers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)

    def status(self) -> SyncStatus:
        return SyncStatus(
            node_id=NODE,
            nodes=[
                NodeStatus(node_id="peer", configured_role="backup", priority=1, alive=True,
                           last_heartbeat_age_s=0.4, recordings=2),
                NodeStatus(node_id=NODE, configured_role="primary", priority=0, alive=True,
                           last_heartbeat_age_s=0.1, recordings=3),
            ],
            lag=[PeerLag(node_id="peer", events_lag=0, events_last_contact_s=0.2,
                         objects_pending=1)],
            recordings_held=3,
        )

    async def _run(self) -> None:
        nc = await nats.connect(self.config.nats_url)

        async def on_status(_: Empty) -> SyncStatus | None:
            if not self.serve_sync:
                await asyncio.sleep(5)  # silent: the caller times out
            return self.status()

        await bus.serve(nc, subjects.rpc(NODE, subjects.SYNC, subjects.SYNC_STATUS), Empty,
                        on_status)
        sequence = 0
        while not self.stopping.is_set():
            sequence += 1
            for node_id, (role, priority) in list(self.beating.items()):
                beat = {"node_id": node_id, "role": role, "priority": priority,
                        "sequence": sequence, "sent_at": time.time()}
                await nc.publish(subjects.heartbeat(node_id), json.dumps(beat).encode())
            await asyncio.sleep(0.5)
        with contextlib.suppress(Exception):  # the test's nats-server may be gone already
            await nc.close()


def test_cluster_status(node: Node) -> None:
    with FakePeers(node.config) as peers, node.client(auth=ADMIN) as client:
        with node.client(auth=None) as anon:
            assert anon.get("/api/cluster").status_code == 401
        with node.client(auth=ALICE) as plain:
            # A plain user sees the nodes and who holds the role, no internals.
            seen = plain.get("/api/cluster").json()
            assert seen["internals"] is False and "scheduler" not in seen
            assert all(set(n) <= {"node_id", "state", "current_role", "down"}
                       for n in seen["nodes"])
        # The scheduler is not running yet: the rest is still served.
        body = client.get("/api/cluster").json()
        assert body["node_id"] == NODE
        assert body["scheduler"] == "unavailable" and body["sync"] == "ok"
        assert body["holder"] is None
        assert [n["node_id"] for n in body["nodes"]] == [NODE, "peer"]

        node.start("scheduler")
        try:
            wait_for(lambda: client.get("/api/cluster").json()["holder"] == NODE, 20,
                     "scheduler elected the primary", node)
            body = client.get("/api/cluster").json()
            assert body["scheduler"] == "ok" and body["epoch"] >= 1
            me, peer = body["nodes"]
            assert me == {
                "node_id": NODE, "configured_role": "primary", "current_role": "active",
                "priority": 0, "alive": True, "last_heartbeat_age_s": 0.1, "recordings": 3,
                "lag": {"peer": {"events": 0, "events_last_contact_s": 0.2, "objects": 1}},
                "state": "up", "down": None,
            }
            assert peer["current_role"] == "standby" and peer["lag"] == {}
            taken = last_event(node.config, "role.changed")
            assert getattr(taken, "holder", None) == NODE
            assert getattr(taken, "node_id", None) == NODE
            first_epoch = body["epoch"]

            # This node's heartbeats stop: the backup takes the role, and this node
            # records that it lost it.
            del peers.beating[NODE]
            wait_for(lambda: client.get("/api/cluster").json()["holder"] == "peer", 20,
                     "backup took the role", node)
            lost = last_event(node.config, "role.changed")
            assert getattr(lost, "previous", None) == NODE
            assert getattr(lost, "holder", None) == "peer"
            assert getattr(lost, "epoch", 0) > first_epoch
            peers.beating[NODE] = ("primary", 0)
            wait_for(lambda: client.get("/api/cluster").json()["holder"] == NODE, 20,
                     "primary took the role back", node)

            peers.serve_sync = False
            body = client.get("/api/cluster").json()
            assert body["sync"] == "unavailable" and body["scheduler"] == "ok"
            assert body["nodes"] == [{
                "node_id": NODE, "configured_role": None, "current_role": "active",
                "priority": None, "alive": None, "last_heartbeat_age_s": None,
                "recordings": None, "lag": {}, "state": "unknown", "down": None,
            }]
            page = client.get("/cluster")
            assert page.status_code == 200 and "maintenance role" in page.text
            metrics = client.get("/metrics").text
            assert 'callrec_scheduler_maintenance_role{node="itest",service="scheduler"} 1' \
                in metrics
        finally:
            node.stop("scheduler")


def test_catalog_rebuilds_from_stream(node: Node) -> None:
    with node.client() as client:
        before = client.get("/api/recordings").json()
        node.stop("catalog")
        db_dir = node.config.data_dir / "catalog"
        for file in db_dir.glob("catalog.sqlite3*"):
            file.unlink()
        assert client.get("/healthz").status_code == 503
        node.start("catalog")
        wait_for(
            lambda: client.get("/api/recordings").json().get("total") == 3,
            20,
            "catalog rebuilt",
            node,
        )
        assert client.get("/api/recordings").json() == before
        assert (db_dir / "catalog.sqlite3").is_file()


def test_held_recording_cannot_be_deleted_until_released(node: Node) -> None:
    """Through the real web and catalog processes: hold, DELETE is 409 and the recording
    stays listed with its audio key; released, the same DELETE purges it."""
    publish(node.config, [recording("rec-held", 40, ["9010"], "2024/05/01/held.ogg", 10,
                                    "d" * 64)])
    with node.client() as admin:
        wait_for(lambda: admin.get("/api/recordings/rec-held").status_code == 200, 15,
                 "rec-held cataloged", node)
        response = admin.put("/api/recordings/rec-held/hold", json={"reason": "case 7"})
        assert response.status_code == 200, response.text
        # At once: the web waits for its own view of the hold before answering.
        response = admin.delete("/api/recordings/rec-held")
        assert response.status_code == 409, response.text
        assert "legal hold" in response.json()["detail"]
        shown = admin.get("/api/recordings/rec-held")
        assert shown.status_code == 200 and shown.json()["legal_hold"] is True
        assert admin.delete("/api/recordings/rec-held/hold").status_code == 200
        response = admin.delete("/api/recordings/rec-held")
        assert response.status_code == 202, response.text
        assert admin.get("/api/recordings/rec-held").status_code == 404
    event = last_event(node.config, "recording.purged")
    assert getattr(event, "recording_id", None) == "rec-held"


STRANGER = "127.0.0.2"


def _timed_login(node: Node, user: tuple[str, str]) -> float:
    with httpx.Client(base_url=node.base_url, auth=user, timeout=30,
                      transport=httpx.HTTPTransport(local_address="127.0.0.1")) as client:
        started = time.monotonic()
        response = client.get("/api/recordings", params={"limit": 1})
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return elapsed


def test_login_flood_from_a_stranger_does_not_slow_the_admin(node: Node) -> None:
    """A flood of bad Basic logins for `admin` from 127.0.0.2: the flooder gets 429 after a
    few guesses (no hash computed), while fresh (uncached) admin logins from 127.0.0.1
    take about as long as before the flood. No per-user lock-out: `admin` still works."""
    probes = [(f"probe{i}", f"probe-secret-{i}") for i in range(4)]
    with node.client() as admin:
        for name, password in probes:
            response = admin.post("/api/users", json={"username": name, "password": password,
                                                       "admin": True})
            assert response.status_code in (200, 201), response.text
    baseline = sorted(_timed_login(node, probe) for probe in probes[:2])[-1]

    stop = threading.Event()
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def flood() -> None:
        transport = httpx.HTTPTransport(local_address=STRANGER)
        with httpx.Client(base_url=node.base_url, transport=transport, timeout=30) as client:
            i = 0
            while not stop.is_set():
                i += 1
                code = client.get("/api/recordings",
                                  auth=("admin", f"guess-{i}")).status_code
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: statuses.get(429, 0) >= 20, 30, "the flooder throttled", node)
        during = [_timed_login(node, probe) for probe in probes[2:]]
        # The real admin's password still works during the flood: no lock-out by name.
        during.append(_timed_login(node, ADMIN))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    total = sum(statuses.values())
    print(f"baseline {baseline * 1000:.0f} ms, during flood "
          f"{[round(d * 1000) for d in during]} ms, flood answers {statuses}")
    assert statuses.get(401, 0) <= 12, statuses  # ~10 guesses, then only 429s
    assert statuses.get(429, 0) >= total - 12
    assert set(statuses) <= {401, 429}, statuses
    for elapsed in during:
        assert elapsed < 5 * baseline + 1.0, (baseline, during)
    with httpx.Client(base_url=node.base_url, timeout=10,
                      transport=httpx.HTTPTransport(local_address=STRANGER)) as client:
        refused = client.get("/api/recordings", auth=ADMIN)
        assert refused.status_code == 429  # even the right password: no guessing oracle
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    metrics_text = httpx.get(f"{node.base_url}/metrics", timeout=5).text
    assert "callrec_web_logins_throttled_total{" in metrics_text
    assert "callrec_web_logins_failed_total{" in metrics_text
    with node.client() as admin:
        for name, _ in probes:
            assert admin.delete(f"/api/users/{name}").status_code == 204
