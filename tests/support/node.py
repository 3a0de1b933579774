"""A real callrec node for end-to-end tests: `callrec up` as its own process group.

Each node gets free loopback ports and its own data dir, so several can run side by
side; `kill()` SIGKILLs the whole group (supervisor, services, nats-server).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .ports import free_port, rtp_range

ADMIN_PASSWORD = "e2e-admin-secret"
REPO = Path(__file__).resolve().parents[2]


def free_sip_port() -> int:
    """A port free for both UDP and TCP."""
    return free_port()


@dataclass
class Node:
    data_dir: Path
    node_id: str = "n1"
    extra_args: list[str] = field(default_factory=list)
    sip_port: int = field(default_factory=free_sip_port)
    http_port: int = field(default_factory=free_port)
    nats_port: int = field(default_factory=free_port)
    leaf_port: int = field(default_factory=free_port)
    rtp_ports: tuple[int, int] = field(default_factory=rtp_range)
    cluster_port: int | None = None
    peers: list[str] = field(default_factory=list)
    role: str = "primary"
    priority: int = 0
    role_timeout: float = 3.0
    join_file: Path | None = None
    admin_password: str | None = ADMIN_PASSWORD
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def clustered(cls, data_dir: Path, node_id: str, **kw: Any) -> Node:
        """A node that listens for peers on its own cluster port (peers added by caller)."""
        return cls(data_dir, node_id=node_id, cluster_port=free_port(), **kw)

    @property
    def cluster_address(self) -> str:
        assert self.cluster_port is not None
        return f"127.0.0.1:{self.cluster_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60.0) -> Node:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "node.log").open("ab")
        env = {**os.environ, "PYTHONPATH": str(REPO), "CALLREC_LOG_LEVEL": "info"}
        if self.admin_password is not None:
            env["CALLREC_ADMIN_PASSWORD"] = self.admin_password
        self.process = subprocess.Popen(
            [sys.executable, "-m", "callrec", "up",
             "--node-id", self.node_id,
             "--data-dir", str(self.data_dir),
             "--sip-port", str(self.sip_port),
             "--http-port", str(self.http_port),
             "--nats-port", str(self.nats_port),
             "--rtp-ports", f"{self.rtp_ports[0]}-{self.rtp_ports[1]}",
             "--nats-leaf-port", str(self.leaf_port),
             "--role", self.role, "--priority", str(self.priority),
             "--role-timeout", str(self.role_timeout),
             *self._cluster_args(),
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=REPO, start_new_session=True,
        )
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.kill()  # never leave a half-started node running for the rest of the suite
            raise
        return self

    def _cluster_args(self) -> list[str]:
        if self.cluster_port is None:
            return []
        args = ["--cluster-port", str(self.cluster_port)]
        if self.join_file is not None:
            args += ["--join", str(self.join_file)]
        for peer in self.peers:
            args += ["--peer", peer]
        return args

    def invite(self, path: Path) -> Path:
        """The join file another node needs to join this node's cluster."""
        self.cli("cluster", "invite", "--out", str(path))
        return path

    def bus_password(self, identity: str = "node") -> str:
        return (self.data_dir / "secrets" / "bus" / identity).read_text().strip()

    async def bus(self, identity: str = "node") -> Any:
        """A NATS client logged in to this node's bus as one of its identities."""
        import nats

        return await nats.connect(
            f"nats://127.0.0.1:{self.nats_port}", user=identity,
            password=self.bus_password(identity), inbox_prefix=f"_INBOX_{identity}",
            connect_timeout=2, max_reconnect_attempts=3, allow_reconnect=False)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}: {self.log()}")
            try:
                response = httpx.get(f"{self.base_url}/healthz", timeout=1.0)
                last = response.text
                if response.status_code == 200 and self.can_record():
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.3)
        raise TimeoutError(f"node not healthy in {timeout}s: {last}\n{self.log()[-4000:]}")

    def metric(self, name: str) -> float:
        """A metric's value from /metrics (the first series of that name; 0 if absent)."""
        value = self.metric_if_present(name)
        return 0.0 if value is None else value

    def metric_if_present(self, name: str) -> float | None:
        """The same, None when the scrape lacks it (its service did not answer in time)."""
        text = httpx.get(f"{self.base_url}/metrics", timeout=5.0).text
        for line in text.splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def service_pid(self, module: str) -> int:
        """Pid of one of this node's service processes (e.g. "services.capture")."""
        assert self.process is not None
        group = os.getpgid(self.process.pid)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                if module.encode() in cmdline and os.getpgid(int(entry.name)) == group:
                    return int(entry.name)
            except (OSError, ProcessLookupError):
                continue
        raise LookupError(f"{module} not running")

    def can_record(self) -> bool:
        try:
            text = httpx.get(f"{self.base_url}/metrics", timeout=5.0).text
        except httpx.HTTPError:
            return False
        return any(line.startswith("callrec_signaling_can_record{") and line.endswith(" 1")
                   for line in text.splitlines())

    def client(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, auth=(username, password), timeout=10.0)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "callrec", *args[:1], "--data-dir", str(self.data_dir),
             *args[1:]],
            capture_output=True, text=True, cwd=REPO, timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if result.returncode != 0:
            raise RuntimeError(f"callrec {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def wait_recordings(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        items: list[dict[str, Any]] = []
        with self.client() as client:
            while time.monotonic() < deadline:
                response = client.get("/api/recordings", params={"limit": 1000})
                if response.status_code == 200:
                    items = response.json()["items"]
                    if len(items) >= count:
                        return items
                time.sleep(0.3)
        raise TimeoutError(f"expected {count} recordings, have {len(items)}\n"
                           f"{self.log()[-6000:]}")

    def log(self) -> str:
        path = self.data_dir / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
