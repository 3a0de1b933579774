"""Capture hot-path load benchmark: N concurrent G.711 calls against a real node.

Why: capture is the part of callrec whose cost grows with concurrent calls, and
absolute CPU figures move between machines, so every figure is compared with a
bare asyncio UDP receiver measured in the same run on the same ports count.

Calls are opened straight through capture's NATS RPCs (no SIP), the RTP load comes
from a separate paced sender process, and CPU is read from /proc (utime+stime).
Run from the repository root:

    /tmp/venv/bin/python -m bench.capture_load --calls 50,100,200 --seconds 20

The sender, the bare drain and the /proc readings live in bench/loadgen.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/capture_load.py` works too
    sys.path.insert(0, str(REPO))

from bench.loadgen import (  # noqa: E402  (after the sys.path line)
    BENCH_RTP_PORTS,
    HOST,
    SUBSLOTS,
    SendResult,
    baseline,
    cmdline,
    descendants,
    find_service,
    proc_cpu,
    send_load,
    subslots_option,
    tree_cpu,
)
from contracts.v1.rpc import MAX_RESERVE  # noqa: E402


@dataclass
class Row:
    calls: int
    sender: SendResult
    base: SendResult
    base_received: int
    stored: int = 0
    seq_gaps: int = 0
    recv_cpu: float = 0.0
    finalize_cpu: float = 0.0
    finalize_wall: float = 0.0
    recorded_s: float = 0.0
    size_bytes: int = 0
    failed: int = 0
    missing: int = 0

    def per_call_min(self, cpu: float, elapsed: float) -> float:
        return cpu / (self.calls * elapsed / 60.0)


class CaptureDriver:
    """Talks to one node's capture service over NATS, standing in for signaling."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.open_ids: set[str] = set()
        self.done: dict[str, str] = {}  # recording id -> "completed" | "failed"
        self.requested_at: dict[str, float] = {}  # monotonic time of the finalize request
        self.requested_wall: dict[str, float] = {}  # ... and its wall-clock time (logs)
        self.started_at: dict[str, datetime] = {}  # the start each allocate stated
        self.done_at: dict[str, float] = {}  # monotonic time its completed/failed event arrived
        self.done_event = asyncio.Event()
        self.waiting: set[str] = set()
        self.nc: Any = None

    async def connect(self) -> None:

        from callrec import bus
        from contracts import subjects
        from contracts.v1.rpc import ActiveRecordings, Empty

        self.nc = await self.node.bus()
        node_id = self.node.node_id

        # Signaling is paused (SIGSTOP): we answer capture's reconcile query instead,
        # or capture would end our SIP-less recordings as orphans after 5 s.
        async def active(_: Empty) -> ActiveRecordings:
            return ActiveRecordings(recording_ids=sorted(self.open_ids))

        await bus.serve(self.nc, subjects.rpc(node_id, subjects.SIGNALING,
                                              subjects.SIGNALING_ACTIVE), Empty, active)

        async def on_event(msg: Any) -> None:
            data = json.loads(msg.data)
            rid = data.get("recording_id", "")
            self.done[rid] = data.get("type", "").rsplit(".", 1)[-1]
            self.done_at.setdefault(rid, time.monotonic())
            if self.waiting and self.waiting <= self.done.keys():
                self.done_event.set()

        for kind in ("recording.completed", "recording.failed"):
            await self.nc.subscribe(subjects.event(node_id, kind), cb=on_event)

    async def allocate(self, calls: int, tag: str) -> tuple[list[str], list[int]]:
        from callrec import bus
        from contracts import subjects
        from contracts.v1.events import RecordingMetadata
        from contracts.v1.rpc import (
            AllocateReply,
            AllocateRequest,
            RtpSource,
            StreamSpec,
            UpdateRequest,
        )

        node_id = self.node.node_id
        ids, ports = [], []
        for i in range(calls):
            rid = f"bench-{tag}-{i:05d}"
            self.started_at[rid] = datetime.now(UTC)
            request = AllocateRequest(
                recording_id=rid,
                started_at=self.started_at[rid],
                # The peer's address, as a SIPREC INVITE's SDP or a CUCM ACK's answer
                # gives it before the media: the first packet from it latches its port.
                # (Without it, capture holds each stream's packets for up to 4 s waiting
                # for an SDP that a real call would have sent.)
                streams=[StreamSpec(stream_id="near", channel=0, label="near",
                                    source=RtpSource(address=HOST)),
                         StreamSpec(stream_id="far", channel=1, label="far",
                                    source=RtpSource(address=HOST))],
                metadata=RecordingMetadata(source="sip", session_key=rid,
                                           sip_call_ids=[f"{rid}@bench"]),
            )
            reply = await bus.call(self.nc, subjects.rpc(node_id, subjects.CAPTURE,
                                                         subjects.CAPTURE_ALLOCATE),
                                   request, AllocateReply, timeout=10.0)
            assert reply is not None
            self.open_ids.add(rid)
            await bus.call(self.nc, subjects.rpc(node_id, subjects.CAPTURE,
                                                 subjects.CAPTURE_UPDATE),
                           UpdateRequest(recording_id=rid, payload_codecs={0: "PCMU"}),
                           None, timeout=10.0)
            ids.append(rid)
            ports.extend([reply.ports["near"], reply.ports["far"]])
        return ids, ports

    def from_first_pending(self, pending: set[str]) -> dict[str, str]:
        """A listing's `from` that leaves out what started before the first of `pending`
        (the finalizes go in allocation order, so that is mostly what was seen): a
        poll of the burst lists what may be new, not all the level's recordings. (Every
        recording of the level, 8 times a second across two nodes, was itself a load
        the burst waited on: bench/README.md, "The observer's own load".)"""
        first = min((self.started_at[rid] for rid in pending), default=None)
        if first is None:
            return {}
        return {"from": (first - timedelta(milliseconds=1)).isoformat()}

    async def request_finalize(self, rid: str) -> None:
        """One finalize request (a BYE), ending the recording now."""
        from callrec import bus
        from contracts import subjects
        from contracts.v1.rpc import FinalizeRequest

        subject = subjects.rpc(self.node.node_id, subjects.CAPTURE, subjects.CAPTURE_FINALIZE)
        self.requested_at[rid] = time.monotonic()
        self.requested_wall[rid] = time.time()
        await bus.call(self.nc, subject,
                       FinalizeRequest(recording_id=rid, ended_at=datetime.now(UTC)),
                       None, timeout=10.0)
        self.open_ids.discard(rid)

    async def wait_done(self, ids: list[str], timeout: float) -> None:
        """Until every one of `ids` has its completed/failed event (TimeoutError)."""
        self.waiting = set(ids)
        self.done_event.clear()
        if not self.waiting <= self.done.keys():
            await asyncio.wait_for(self.done_event.wait(), timeout)

    async def finalize(self, ids: list[str], timeout: float, together: bool = False) -> float:
        """Ask for every finalize; return when every completed/failed event is seen.

        One after another by default (each waits for capture's answer to the one
        before, so a busy node spreads them out); `together`: all sent at once, as a
        signaling service relays the BYEs of calls that all hang up in the same
        moment."""
        start = time.monotonic()
        if together:
            await asyncio.gather(*(self.request_finalize(rid) for rid in ids))
        else:
            for rid in ids:
                await self.request_finalize(rid)
        await self.wait_done(ids, timeout)
        return time.monotonic() - start

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


async def catalog_items(node: Any, ids: set[str], timeout: float) -> list[dict[str, Any]]:
    """The catalog's view of our recordings, once it has all of them (or timeout)."""
    import httpx

    from tests.support.node import ADMIN_PASSWORD

    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(base_url=node.base_url, auth=("admin", ADMIN_PASSWORD),
                                 timeout=10.0) as client:
        while time.monotonic() < deadline:
            offset = 0
            while True:
                response = await client.get("/api/recordings",
                                            params={"limit": 1000, "offset": offset})
                response.raise_for_status()
                items = response.json()["items"]
                found.update({i["recording_id"]: i for i in items if i["recording_id"] in ids})
                if len(items) < 1000:
                    break
                offset += 1000
            if len(found) >= len(ids):
                break
            await asyncio.sleep(0.5)
    return list(found.values())


async def run_level(node: Any, driver: CaptureDriver, capture_pid: int, calls: int,
                    seconds: float) -> Row:
    base, base_received = await baseline(calls, seconds)
    tag = f"{calls}-{uuid.uuid4().hex[:6]}"
    ids, ports = await driver.allocate(calls, tag)
    sender = await send_load(ports, seconds, {"cpu": lambda: proc_cpu(capture_pid)})
    await asyncio.sleep(FLUSH_WAIT_S)
    before = tree_cpu(capture_pid)
    row = Row(calls=calls, sender=sender, base=base, base_received=base_received,
              recv_cpu=sender.extra["cpu"])
    try:
        row.finalize_wall = await driver.finalize(ids, timeout=120 + calls * seconds / 10)
    except TimeoutError:
        row.finalize_wall = float("nan")
    row.finalize_cpu = tree_cpu(capture_pid) - before
    row.failed = sum(1 for rid in ids if driver.done.get(rid) == "failed")
    items = await catalog_items(node, set(ids) - {r for r in ids
                                                 if driver.done.get(r) == "failed"}, 60)
    row.missing = calls - len(items) - row.failed
    for item in items:
        row.size_bytes += int(item["size_bytes"])
        row.recorded_s += int(item["duration_ms"]) / 1000
        for channel in item["channels"]:
            row.stored += int(channel["packets_received"])
            row.seq_gaps += int(channel["packets_lost"])
    return row


def print_table(rows: list[Row], seconds: float) -> None:
    head = (f"{'calls':>5} {'pps':>6} {'sender%':>7} {'lag ms':>6} {'base loss%':>10} "
            f"{'loss%':>6} {'gaps':>5} {'base cpu/cm':>11} {'rx cpu/cm':>9} {'ratio':>6} "
            f"{'fin cpu/cm':>10} {'fin wall s':>10} {'MB/call-h':>9} {'fail':>4}")
    print(head)
    print("-" * len(head))
    for r in rows:
        s, b = r.sender, r.base
        base_cm = r.per_call_min(b.extra["cpu"], b.elapsed)
        rx_cm = r.per_call_min(r.recv_cpu, s.elapsed)
        base_loss = 100.0 * (1 - r.base_received / b.sent) if b.sent else float("nan")
        loss = 100.0 * (1 - r.stored / s.sent) if s.sent else float("nan")
        call_min = r.recorded_s / 60 or float("nan")
        fin_cm = r.finalize_cpu / call_min
        mb_h = r.size_bytes / 1e6 / (r.recorded_s / 3600) if r.recorded_s else float("nan")
        print(f"{r.calls:>5} {s.sent / s.elapsed:>6.0f} {s.rate_pct:>7.2f} "
              f"{s.max_lag_ms:>6.1f} {base_loss:>10.3f} {loss:>6.3f} {r.seq_gaps:>5} "
              f"{base_cm:>11.4f} {rx_cm:>9.4f} {rx_cm / base_cm if base_cm else 0:>6.2f} "
              f"{fin_cm:>10.4f} {r.finalize_wall:>10.1f} {mb_h:>9.2f} "
              f"{r.failed + r.missing:>4}")
    print()
    print(f"{seconds:g} s per level; cpu/cm = CPU-s per call-minute (utime+stime, /proc); "
          "ratio = capture rx / bare asyncio baseline;\nfin = capture + its finalize worker "
          "after the finalize requests, per recorded call-minute; "
          "MB/call-h from size_bytes.")
    for r in rows:
        call_min = r.recorded_s / 60
        if r.finalize_wall == r.finalize_wall and r.finalize_wall > 0:
            print(f"  {r.calls} calls: {call_min:.1f} call-min finalized in "
                  f"{r.finalize_wall:.1f} s = {call_min / r.finalize_wall * 60:.0f} "
                  "call-min per minute of wall time (sustainable concurrent calls, 1 worker)")


FLUSH_WAIT_S = 0.6
"""After a call's last packet, before its BYE: past one segment flush interval, so the
last packets reach the segments (every bench that ends calls waits this long)."""

WARM_UP_CALLS = 8
"""Calls running_node records (and finalizes) before a level, to warm the workers up."""


def node_rtp_width(max_calls: int) -> int:
    """How many RTP port numbers the bench node gets for `max_calls` calls.

    Capture binds even ports only, 2 streams a call, and a freed port cools down
    first; signaling holds a reserve of up to MAX_RESERVE of them from its start (at
    most a quarter of the free ones), which this bench's allocates cannot draw on."""
    return max(400, 4 * max_calls + 400) + 2 * MAX_RESERVE


@contextlib.asynccontextmanager
async def running_node(max_calls: int, keep: bool, peers: list[Any] | None = None,
                       ) -> AsyncIterator[tuple[Any, CaptureDriver, int]]:
    """One real node sized for `max_calls`, signaling paused, finalize warmed up.

    Yields (node, driver, capture pid); shared with bench/capacity.py. With `peers` (an
    empty list to fill), a second node `b` joins it as a backup, as in production, and
    is appended to the list once it sees `a` (replication is then measurable)."""
    from tests.support.node import Node

    width = node_rtp_width(max_calls)
    low, top = BENCH_RTP_PORTS
    slack = top + 1 - low - (width + 100)  # the node's range and its peer's 100
    if slack < 0:
        raise SystemExit("too many calls for the benchmarks' RTP port band")
    # Where in the band depends on the process, so two benches at once rarely overlap.
    base_port = low + (os.getpid() * 1000) % (slack + 1) // 2 * 2
    data_dir = Path(tempfile.mkdtemp(prefix="callrec-bench-"))
    extra = ["--max-channels", "10000", "--record-all"]
    node = (Node.clustered(data_dir / "a", "a", extra_args=extra,
                           rtp_ports=(base_port, base_port + width - 1))
            if peers is not None else
            Node(data_dir / "node", extra_args=extra, rtp_ports=(base_port, base_port + width - 1)))
    peer: Any = None
    signaling_pid = 0
    driver = CaptureDriver(node)
    try:
        await asyncio.to_thread(node.start, 60.0)
        if peers is not None:
            # b records nothing here; its RTP range only has to stay clear of a's.
            peer = Node.clustered(data_dir / "b", "b", peers=[node.cluster_address],
                                  role="backup", priority=1, extra_args=["--record-all"],
                                  join_file=node.invite(data_dir / "b.join.json"),
                                  rtp_ports=(base_port + width, base_port + width + 99))
            await asyncio.to_thread(peer.start, 60.0)
            await asyncio.to_thread(wait_linked, node, peer, 30.0)
            peers.append(peer)
        assert node.process is not None
        pgrp = node.process.pid
        capture_pid = find_service(pgrp, "capture")
        signaling_pid = find_service(pgrp, "signaling")
        os.kill(signaling_pid, signal.SIGSTOP)
        await driver.connect()
        # Warm-up: the first live encoding step and the first finalize start the
        # forkserver and its workers (numpy, PyAV imports), a one-off cost in CPU and
        # memory that is not per call-minute nor per call. Capture spreads recordings
        # over its workers by a hash of their id: 8 calls reach every worker of a
        # machine with a few cores (2 workers: all 8 on one with odds of 1 in 128).
        warm, warm_ports = await driver.allocate(WARM_UP_CALLS, "warmup")
        await send_load(warm_ports, 1.5, {})
        await asyncio.sleep(1.0)
        await driver.finalize(warm, timeout=60)
        tree = [f"{s.pid}:{cmdline(s.pid)[:50].strip()}" for s in descendants(capture_pid)]
        print(f"# capture process tree measured: {tree}", file=sys.stderr)
        yield node, driver, capture_pid
    finally:
        await driver.close()
        if signaling_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(signaling_pid, signal.SIGCONT)
        if peer is not None:
            await asyncio.to_thread(peer.stop)
        await asyncio.to_thread(node.stop)
        if keep:
            print(f"data kept in {data_dir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)


def wait_linked(a: Any, b: Any, timeout: float) -> None:
    """Until each node lists the other as alive in /api/cluster (heartbeats flow both
    ways, so b replicates what a records)."""
    import httpx

    def sees(node: Any, other: str) -> bool:
        try:
            with node.client() as client:
                body = client.get("/api/cluster").json()
            return any(n["node_id"] == other and n["alive"] for n in body.get("nodes", []))
        except (httpx.HTTPError, ValueError, KeyError):
            return False

    deadline = time.monotonic() + timeout
    while not (sees(a, b.node_id) and sees(b, a.node_id)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nodes {a.node_id} and {b.node_id} did not link in {timeout} s")
        time.sleep(0.3)


async def orchestrate(levels: list[int], seconds: float, keep: bool) -> None:
    async with running_node(max(levels), keep) as (node, driver, capture_pid):
        rows = []
        for calls in levels:
            print(f"# level {calls} calls ...", file=sys.stderr, flush=True)
            rows.append(await run_level(node, driver, capture_pid, calls, seconds))
        print_table(rows, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run"])
    parser.add_argument("--calls", default="50,100,200", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration per level")
    parser.add_argument("--subslots", type=int, default=SUBSLOTS,
                        help="spread each 20 ms tick over this many send bursts (1 = all at once)")
    parser.add_argument("--keep", action="store_true", help="keep the node's data dir")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be within 1..600")
    if not 1 <= args.subslots <= 20:
        parser.error("--subslots must be within 1..20")
    subslots_option[0] = args.subslots
    levels = [int(c) for c in args.calls.split(",") if c.strip()]
    if not levels or min(levels) < 1 or max(levels) > 3000:
        parser.error("--calls must be 1..3000")
    asyncio.run(orchestrate(levels, args.seconds, args.keep))


if __name__ == "__main__":
    main()
