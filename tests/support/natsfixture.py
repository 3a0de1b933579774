"""A throwaway nats-server with JetStream for integration tests.

Uses the pinned binary next to the interpreter, a free loopback port and a temp
store directory, so tests never touch a developer's running node.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.js import JetStreamContext

from callrec import bus

from .ports import free_port


@dataclass
class NatsServer:
    port: int
    process: subprocess.Popen[bytes]
    store_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_nats(tmp_path: Path, port: int | None = None, timeout: float = 10.0) -> NatsServer:
    binary = Path(sys.executable).parent / "nats-server"
    port = port or free_port()
    store_dir = tmp_path / "nats-store"
    store_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp_path / "nats-server.log"
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log_file.close()
    server = NatsServer(port, process, store_dir, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited: {log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
                if conn.recv(4).startswith(b"INFO"):
                    return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("nats-server did not become ready")


@contextlib.asynccontextmanager
async def node_streams(server: NatsServer, node_id: str) -> AsyncIterator[JetStreamContext]:
    """A client of `server` with `node_id`'s streams made (its own and the CLUSTER
    aggregate), closed after."""
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, node_id)
        yield js
    finally:
        await nc.close()
