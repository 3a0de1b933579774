"""Attacks on the bus and the cluster link, each tried against real nodes.

The stranger here is anyone who can reach the node's ports: a local process on the
client and leaf ports, a host on the network on the cluster port (a stock
nats-server configured as a route or a leaf, or a plain client).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from callrec import bus, natsserver, pki
from callrec.users import hash_password
from contracts import subjects
from contracts.v1.events import RecordingPurged, UserUpserted
from contracts.v1.rpc import GetRequest, SearchRequest
from tests.support.cluster import eventually, record_call, recordings, start_pair
from tests.support.node import ADMIN_PASSWORD, Node
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

FORGED_HASH = hash_password("mallory")


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node, Any]]:
    """A pair linked through a proxy that keeps every byte of the cluster link."""
    tmp = tmp_path_factory.mktemp("bus-security")
    a, b, proxy = start_pair(tmp, proxy_to_a=True)
    try:
        yield a, b, proxy
    finally:
        b.stop()
        a.stop()
        if proxy is not None:
            proxy.close()


@pytest.fixture(scope="module")
def recorded(linked: tuple[Node, Node, Any]) -> str:
    a, b, _ = linked
    recording_id = record_call(a, "7100001")
    eventually(lambda: recording_id in recordings(b), 30, "the recording on b")
    return recording_id


class Rogue:
    """A stock nats-server that a stranger runs, with one config block of theirs."""

    def __init__(self, tmp: Path, block: str) -> None:
        self.port = free_port()
        conf = tmp / f"rogue-{self.port}.conf"
        conf.write_text(f'server_name: "rogue{self.port}"\nlisten: 127.0.0.1:{self.port}\n'
                        + block)
        self.log = tmp / f"rogue-{self.port}.log"
        self.process = subprocess.Popen(
            [natsserver.find_binary(), "-c", str(conf)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        natsserver.wait_ready(self.port, self.process)  # type: ignore[arg-type]

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _refusals_logged(node: Node, since: int, server: str = "nats-core") -> str:
    """What the node's own server logged about strangers after byte `since`."""
    text = (node.data_dir / "run" / f"{server}.log").read_text(errors="replace")[since:]
    lines = [line for line in text.splitlines()
             if any(word in line.lower() for word in ("tls", "authorization", "auth"))]
    print("\n".join(lines[:5]))
    return "\n".join(lines)


def _log_size(node: Node, server: str = "nats-core") -> int:
    return len((node.data_dir / "run" / f"{server}.log").read_text(errors="replace"))


async def _nothing_reachable_through(rogue: Rogue, node: Node, recording_id: str) -> None:
    """Through the rogue server: no catalog, no object read, no heartbeats, and a
    forged admin does not come into being on the node."""
    nc = await nats.connect(f"nats://127.0.0.1:{rogue.port}")
    try:
        seen: list[str] = []

        async def spy(msg: Any) -> None:
            seen.append(msg.subject)

        await nc.subscribe(">", cb=spy)
        with pytest.raises(bus.RpcError):
            await bus.call(nc, subjects.rpc(node.node_id, subjects.CATALOG,
                                            subjects.CATALOG_SEARCH),
                           SearchRequest(), None, timeout=2)
        with pytest.raises(bus.RpcError):
            await bus.call(nc, subjects.rpc(node.node_id, subjects.CATALOG,
                                            subjects.CATALOG_GET),
                           GetRequest(recording_id=recording_id), None, timeout=2)
        for read in (subjects.SYNC_READ, subjects.SYNC_READ_LIVE):
            with pytest.raises(Exception):  # noqa: B017 - no responder or a timeout
                await nc.request(subjects.rpc(node.node_id, subjects.SYNC, read),
                                 b"{}", timeout=2)
        forged = UserUpserted(node_id=node.node_id, username="mallory", admin=True,
                              password_hash=FORGED_HASH)
        await nc.publish(subjects.event(node.node_id, "user.upserted"),
                         forged.model_dump_json().encode())
        await nc.flush()
        await asyncio.sleep(3)  # heartbeats flow every second on a real member
        ours = {subjects.rpc(node.node_id, subjects.CATALOG, subjects.CATALOG_SEARCH),
                subjects.rpc(node.node_id, subjects.CATALOG, subjects.CATALOG_GET),
                subjects.rpc(node.node_id, subjects.SYNC, subjects.SYNC_READ),
                subjects.rpc(node.node_id, subjects.SYNC, subjects.SYNC_READ_LIVE),
                subjects.event(node.node_id, "user.upserted")}
        assert not [s for s in seen if s.startswith("callrec.") and s not in ours], seen[:5]
    finally:
        await nc.close()
    with node.client() as client:
        assert "mallory" not in {u["username"] for u in client.get("/api/users").json()["items"]}


def _rogue_is_refused(node: Node, recorded: str, tmp_path: Path, block: str) -> None:
    """A stranger's nats-server with `block` reaches nothing, and the node logs why."""
    since = _log_size(node)
    rogue = Rogue(tmp_path, block)
    try:
        asyncio.run(_nothing_reachable_through(rogue, node, recorded))
    finally:
        rogue.close()
    assert _refusals_logged(node, since)


def test_stock_route_without_credentials_is_refused(
    linked: tuple[Node, Node, Any], recorded: str, tmp_path: Path
) -> None:
    a, _, _ = linked
    _rogue_is_refused(a, recorded, tmp_path,
                      "cluster {\n  name: callrec\n  listen: 127.0.0.1:-1\n"
                      f'  routes: ["nats-route://127.0.0.1:{a.cluster_port}"]\n}}\n')


def test_route_with_stolen_password_but_foreign_certificate_is_refused(
    linked: tuple[Node, Node, Any], recorded: str, tmp_path: Path
) -> None:
    """Mutual TLS is what admits a peer: the route password alone is not enough."""
    a, _, _ = linked
    route_password = (a.data_dir / "secrets" / "cluster" / "route").read_text().strip()
    ca_cert, ca_key = pki.new_ca("mallory")
    cert, key = pki.link_certificate(ca_cert, ca_key, "mallory", ["127.0.0.1"])
    for name, data in (("ca.pem", ca_cert), ("cert.pem", cert), ("key.pem", key)):
        (tmp_path / name).write_bytes(data)
    _rogue_is_refused(a, recorded, tmp_path, (
        "cluster {\n  name: callrec\n  listen: 127.0.0.1:-1\n"
        f'  routes: ["nats-route://route:{route_password}@127.0.0.1:{a.cluster_port}"]\n'
        f'  tls {{ cert_file: "{tmp_path / "cert.pem"}", key_file: "{tmp_path / "key.pem"}",'
        f' ca_file: "{tmp_path / "ca.pem"}", verify: true, timeout: 3 }}\n}}\n'))


def test_stock_leaf_without_credentials_is_refused(
    linked: tuple[Node, Node, Any], recorded: str, tmp_path: Path
) -> None:
    """The loopback leaf port between a node's two servers admits only its own."""
    a, _, _ = linked
    _rogue_is_refused(a, recorded, tmp_path,
                      "leafnodes {\n"
                      f'  remotes: [{{ url: "nats-leaf://127.0.0.1:{a.leaf_port}" }}]\n}}\n')


@pytest.mark.parametrize("port_name", ["nats_port", "cluster_port", "leaf_port"])
def test_client_without_credentials_is_refused(
    linked: tuple[Node, Node, Any], port_name: str
) -> None:
    a, _, _ = linked
    port = getattr(a, port_name)

    async def attempt() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=3,
                                allow_reconnect=False, max_reconnect_attempts=0)
        await nc.close()

    with pytest.raises(Exception) as refused:
        asyncio.run(attempt())
    print(f"{port_name}: {type(refused.value).__name__}: {refused.value}")


def test_link_carries_no_plaintext(linked: tuple[Node, Node, Any], recorded: str) -> None:
    _, b, proxy = linked
    assert proxy is not None and proxy.connections >= 1
    assert recorded in recordings(b)  # the facts did cross this link
    carried = bytes(proxy.seen)
    assert len(carried) > 10_000
    for marker in (b"callrec", b"recording.", recorded.encode(), b"$JS.", b"password"):
        assert marker not in carried, marker


def test_service_identity_cannot_publish_what_it_does_not_own(
    linked: tuple[Node, Node, Any], recorded: str
) -> None:
    a, b, _ = linked

    async def attempts() -> list[str]:
        refused: list[str] = []

        async def on_error(exc: Exception) -> None:
            refused.append(str(exc))

        import nats as nats_client

        nc = await nats_client.connect(
            f"nats://127.0.0.1:{a.nats_port}", user="capture",
            password=a.bus_password("capture"), inbox_prefix="_INBOX_capture",
            error_cb=on_error, allow_reconnect=False)
        try:
            js = nc.jetstream()
            forged = UserUpserted(node_id=a.node_id, username="mallory", admin=True,
                                  password_hash=FORGED_HASH)
            with pytest.raises(Exception):  # noqa: B017 - no ack: the server dropped it
                await js.publish(subjects.event(a.node_id, "user.upserted"),
                                 forged.model_dump_json().encode(), timeout=2)
            purge = RecordingPurged(node_id=a.node_id, recording_id=recorded,
                                    object_key="x", reason="forged")
            with pytest.raises(Exception):  # noqa: B017
                await js.publish(subjects.event(a.node_id, "recording.purged"),
                                 purge.model_dump_json().encode(), timeout=2)
            # Nor may it speak for another node's recordings in progress, nor in the
            # one-recording form capture no longer sends.
            await nc.publish(subjects.live_batch(b.node_id), b"{}")
            await nc.publish(subjects.live(a.node_id, "forged"), b"{}")
            # Nor may it read another identity's replies or serve object reads.
            await nc.subscribe("_INBOX_web.>")
            await nc.subscribe(subjects.rpc(a.node_id, subjects.SYNC, subjects.SYNC_READ))
            await nc.subscribe(subjects.rpc(a.node_id, subjects.SYNC,
                                            subjects.SYNC_READ_LIVE))
            await nc.flush()
            await asyncio.sleep(1)
            # What it owns still works.
            # (capture states completed recordings; a JetStream ack proves it)
        finally:
            await nc.close()
        return refused

    refused = asyncio.run(attempts())
    text = " ".join(refused).lower()
    assert "permissions violation" in text
    assert "user.upserted" in text and "recording.purged" in text
    assert "_inbox_web" in text and "rpc.sync.read" in text and "rpc.sync.read_live" in text
    assert f"callrec.v1.{b.node_id}.progress" in text
    assert f"callrec.v1.{a.node_id}.live.forged" in text
    with a.client() as client:
        assert "mallory" not in {u["username"] for u in client.get("/api/users").json()["items"]}
    assert recorded in recordings(a)


def test_web_identity_may_state_what_it_owns(linked: tuple[Node, Node, Any]) -> None:
    """The permissions are not a blanket refusal: an owned fact is stored."""
    a, _, _ = linked

    async def publish() -> int:
        nc = await a.bus("web")
        try:
            event = UserUpserted(node_id=a.node_id, username="carol", extensions=["1777"])
            return await bus.publish_event(nc.jetstream(), event)
        finally:
            await nc.close()

    assert asyncio.run(publish()) > 0
    with a.client() as client:
        eventually(lambda: "carol" in {u["username"]
                                       for u in client.get("/api/users").json()["items"]},
                   10, "carol listed")


def _group_pids(node: Node) -> list[int]:
    assert node.process is not None
    group = os.getpgid(node.process.pid)
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == group:
                    pids.append(int(entry.name))
    return pids


def test_no_secret_in_any_child_environment_or_command_line(
    linked: tuple[Node, Node, Any]
) -> None:
    a, _, _ = linked
    assert a.process is not None
    secrets_found = [ADMIN_PASSWORD]
    for path in (a.data_dir / "secrets").rglob("*"):
        if path.is_file() and path.suffix not in (".pem", ".key"):
            secrets_found.append(path.read_text().strip())
    children = [pid for pid in _group_pids(a) if pid != a.process.pid]
    assert len(children) >= 8  # six services and two nats-servers
    for pid in children:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            blob = Path(f"/proc/{pid}/environ").read_bytes() + Path(
                f"/proc/{pid}/cmdline").read_bytes()
            for secret in secrets_found:
                assert secret.encode() not in blob, (pid, blob.split(b"\0")[:3])


def test_data_dir_is_private(linked: tuple[Node, Node, Any], recorded: str) -> None:
    a, _, _ = linked
    checked = 0
    for node in linked[:2]:
        assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
        for path in node.data_dir.rglob("*"):
            if path.name == "node.log" and path.parent == node.data_dir:
                continue  # the test harness's own capture of the node's output
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
            checked += 1
    assert checked > 50
    assert any((a.data_dir / "objects").rglob("*.ogg")) or any(
        (a.data_dir / "objects").rglob("*"))


def test_joining_node_adopts_the_cluster_admin(tmp_path: Path) -> None:
    """b starts with its own admin password in the environment: it must neither
    create a second admin nor change a's; a's password works on both nodes."""
    a = Node.clustered(tmp_path / "a", "a").start()
    b = Node.clustered(tmp_path / "b", "b", peers=[a.cluster_address], role="backup",
                       priority=1, admin_password="b-would-like-this",
                       join_file=a.invite(tmp_path / "join.json"))
    try:
        b.start()

        def works(node: Node, password: str) -> bool:
            response = httpx.get(f"{node.base_url}/api/users", auth=("admin", password))
            return response.status_code == 200

        eventually(lambda: works(b, ADMIN_PASSWORD), 30, "a's admin password works on b")
        assert works(a, ADMIN_PASSWORD)
        assert not works(a, "b-would-like-this") and not works(b, "b-would-like-this")
        assert "waiting_for_cluster_users" in b.log() or "cluster_users_adopted" in b.log()
        # Only the founder ever stated an admin.
        admins = [line for line in a.cli("users", "list").splitlines() if '"admin": true' in line]
        assert len(admins) == 1
        b.stop()
        b.start()
        assert works(b, ADMIN_PASSWORD) and works(a, ADMIN_PASSWORD)
    finally:
        b.stop()
        a.stop()


def test_admin_password_changed_through_the_api_survives_restart(tmp_path: Path) -> None:
    node = Node(tmp_path / "n").start()
    try:
        with node.client() as client:
            response = client.post("/api/users", json={
                "username": "admin", "password": "changed-by-the-admin", "admin": True})
            assert response.status_code in (200, 201), response.text
        eventually(lambda: httpx.get(f"{node.base_url}/api/users",
                                     auth=("admin", "changed-by-the-admin")).status_code == 200,
                   10, "new password in force")
        node.stop()
        node.start()  # CALLREC_ADMIN_PASSWORD is still set to the old one
        time.sleep(1)
        assert httpx.get(f"{node.base_url}/api/users",
                         auth=("admin", "changed-by-the-admin")).status_code == 200
        assert httpx.get(f"{node.base_url}/api/users",
                         auth=("admin", ADMIN_PASSWORD)).status_code == 401
    finally:
        node.stop()


def test_peer_without_join_file_refuses_to_start(tmp_path: Path) -> None:
    a = Node.clustered(tmp_path / "a", "a")
    b = Node.clustered(tmp_path / "b", "b", peers=["127.0.0.1:1"], role="backup")
    with pytest.raises(RuntimeError, match="exited"):
        b.start(timeout=20)
    assert "--join" in b.log()
    del a
