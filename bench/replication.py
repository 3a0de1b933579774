"""Cross-node replication benchmark: lag from call end to playable on a peer, and how
fast a node that joins later catches up.

Why: the product promise is "every recording on every node within seconds"; the
figure to beat is Imagicle's documented "a few minutes". Two real nodes (separate
process groups and nats-servers on loopback) are linked as in production; calls are
made with SIPp on node a at a steady rate, and the lag per recording is read from
the facts themselves: node a's `recording.ended`-time (`ended_at` of
`recording.completed`) to node b's `recording.replicated` (object verified and
stored on b, so playable there). Catch-up: a third node started after N recordings
exist; the time until its catalog lists all N (events) and until it holds every
object. Run from the repository root:

    /tmp/venv/bin/python -m bench.replication --calls 200 --rate 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from bench.capture_load import wait_linked  # noqa: E402
from contracts import subjects  # noqa: E402
from contracts.v1.events import (  # noqa: E402
    RecordingCompleted,
    RecordingReplicated,
    parse_event,
)
from tests.support import sipp  # noqa: E402
from tests.support.node import Node  # noqa: E402


async def read_events(node: Node) -> list[object]:
    nc = await node.bus()
    try:
        js = nc.jetstream()
        info = await js.stream_info(subjects.CLUSTER_STREAM)
        total = info.state.messages
        sub = await js.subscribe(subjects.events_of_type("recording.>"),
                                 stream=subjects.CLUSTER_STREAM, ordered_consumer=True)
        events: list[object] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except Exception:
                break
            events.append(parse_event(msg.data))
            if msg.metadata.num_pending == 0:
                break
        del total
        return events
    finally:
        await nc.close()


async def add_history(node: Node, template: RecordingCompleted, count: int) -> None:
    """Many recordings at once: copies of a real object under new keys, one event each."""
    import shutil
    import uuid

    source = node.data_dir / "objects" / template.object_key
    nc = await node.bus()
    try:
        js = nc.jetstream()
        for index in range(count):
            recording_id = uuid.uuid4().hex
            key = f"recordings/history/{recording_id}.opus"
            target = node.data_dir / "objects" / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            event = template.model_copy(update={
                "event_id": uuid.uuid4().hex, "recording_id": recording_id, "object_key": key,
            })
            await js.publish(subjects.event(node.node_id, event.type),
                             event.model_dump_json().encode(),
                             headers={"Nats-Msg-Id": event.event_id})
            del index
    finally:
        await nc.close()


def count(node: Node) -> int:
    with node.client() as client:
        response = client.get("/api/recordings", params={"limit": 1})
        return int(response.json()["total"]) if response.status_code == 200 else -1


def wait_until(check: object, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="new calls per second")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each call")
    parser.add_argument("--history", type=int, default=10000,
                        help="extra recordings (copies of a real one, published as events) "
                             "that the late node must catch up on")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="callrec-bench-repl-"))
    a = Node.clustered(root / "a", "a", extra_args=["--record-all", "--max-channels", "1000"])
    b = Node.clustered(root / "b", "b", role="backup", priority=1,
                       extra_args=["--record-all", "--max-channels", "1000"])
    c: Node | None = None
    try:
        a.start()
        b.peers = [a.cluster_address]
        b.join_file = a.invite(root / "b.join.json")
        b.start()
        wait_linked(a, b, 30)
        started = time.monotonic()
        result = sipp.run_bulk_cucm_calls("127.0.0.1", a.sip_port, args.calls, rate=args.rate,
                                          seconds=args.seconds)
        if not result.ok:
            raise SystemExit(f"SIPp failed: {result.describe()}")
        wait_until(lambda: count(b) >= args.calls, 120)
        events = asyncio.run(read_events(b))
        wall = time.monotonic() - started
        completed = {e.recording_id: e for e in events
                     if isinstance(e, RecordingCompleted) and e.node_id == "a"}
        replicated = {e.recording_id: e for e in events
                      if isinstance(e, RecordingReplicated) and e.node_id == "b"}
        deadline = time.monotonic() + 60
        while len(replicated) < len(completed) and time.monotonic() < deadline:
            time.sleep(0.5)
            events = asyncio.run(read_events(b))
            replicated = {e.recording_id: e for e in events
                          if isinstance(e, RecordingReplicated) and e.node_id == "b"}
        lags = [(_ts(replicated[r].occurred_at) - _ts(completed[r].ended_at))
                for r in completed if r in replicated]
        finalize = [(_ts(completed[r].occurred_at) - _ts(completed[r].ended_at))
                    for r in completed]
        print(f"calls recorded on a: {len(completed)} ({args.rate:g}/s, {args.seconds:g} s each,"
              f" {wall:.1f} s wall); replicated to b: {len(lags)}")
        print("  seconds from call end         p50      p99      max")
        print(f"  completed on a (finalize)  {percentile(finalize, 0.5):7.3f}  "
              f"{percentile(finalize, 0.99):7.3f}  {max(finalize):7.3f}")
        print(f"  playable on b              {percentile(lags, 0.5):7.3f}  "
              f"{percentile(lags, 0.99):7.3f}  {max(lags):7.3f}")
        transfer = [(_ts(replicated[r].occurred_at) - _ts(completed[r].occurred_at))
                    for r in completed if r in replicated]
        print(f"  completed on a -> on b     {percentile(transfer, 0.5):7.3f}  "
              f"{percentile(transfer, 0.99):7.3f}  {max(transfer):7.3f}")

        template = next(iter(completed.values()))
        made = time.monotonic()
        asyncio.run(add_history(a, template, args.history))
        print(f"history: {args.history} more recordings added on a in "
              f"{time.monotonic() - made:.1f} s")
        wait_until(lambda: count(b) >= args.calls + args.history, 300)
        total = args.calls + args.history
        c = Node.clustered(root / "c", "c", peers=[a.cluster_address], role="backup",
                           priority=2, join_file=a.invite(root / "c.join.json"))
        c_started = time.monotonic()
        c.start()
        boot = time.monotonic() - c_started
        listed = wait_until(lambda: count(c) >= total, 300) + boot
        objects = root / "c" / "objects" / "recordings"
        held = wait_until(lambda: sum(1 for _ in objects.rglob("*.opus")) >= total,
                          600) + listed
        print(f"new node c: started in {boot:.1f} s; all {total} recordings listed after "
              f"{listed:.1f} s, all objects held after {held:.1f} s (from start)")
    finally:
        for node in (c, b, a):
            if node is not None:
                node.stop()


def _ts(value: datetime) -> float:
    return value.timestamp()


if __name__ == "__main__":
    main()
