"""Helpers for tests on clusters of real nodes: start a linked pair, make a call,
ask each node what it lists, plays and sees of the cluster."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import sipp
from .node import Node
from .tcpproxy import TcpProxy

T = TypeVar("T")
ROLE_TIMEOUT = 3.0


def eventually(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: {last!r}")


def recordings(node: Node) -> dict[str, dict[str, Any]]:
    with node.client() as client:
        response = client.get("/api/recordings", params={"limit": 1000})
        response.raise_for_status()
        return {item["recording_id"]: item for item in response.json()["items"]}


def audio_sha(node: Node, recording_id: str) -> str | None:
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording_id}/audio")
    return hashlib.sha256(response.content).hexdigest() if response.status_code == 200 else None


def cluster(node: Node) -> dict[str, Any]:
    with node.client() as client:
        response = client.get("/api/cluster")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def holder(node: Node) -> str | None:
    return cluster(node).get("holder")


def record_call(node: Node, refci: str, near: str = "1001") -> str:
    """One CUCM call on `node`; returns its recording id."""
    before = set(recordings(node))
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near=near, far="2002", refci=refci,
                                seconds=1.5)
    assert result.ok, result.describe()
    new = eventually(lambda: set(recordings(node)) - before, 20, f"recording on {node.node_id}")
    assert len(new) == 1
    return new.pop()


def playable_everywhere(nodes: list[Node], recording_id: str, sha: str, timeout: float) -> None:
    for other in nodes:
        eventually(lambda other=other: audio_sha(other, recording_id) == sha, timeout,  # type: ignore[misc]
                   f"{recording_id} playable on {other.node_id}")


def start_pair(tmp: Path, proxy_to_a: bool = False) -> tuple[Node, Node, TcpProxy | None]:
    a = Node.clustered(tmp / "a", "a", role_timeout=ROLE_TIMEOUT,
                       extra_args=["--record-all"]).start()
    proxy = TcpProxy(a.cluster_port) if proxy_to_a else None  # type: ignore[arg-type]
    peer = proxy.address if proxy else a.cluster_address
    b = Node.clustered(tmp / "b", "b", peers=[peer], role="backup", priority=1,
                       role_timeout=ROLE_TIMEOUT, extra_args=["--record-all"],
                       join_file=a.invite(tmp / "b.join.json")).start()
    return a, b, proxy


