"""Memory per active call, in process: capture's main process and its encoder worker.

```sh
PYTHONPATH=$PWD .venv/bin/python -m bench.capture_memory --calls 100 --seconds 3
PYTHONPATH=$PWD .venv/bin/python -m bench.capture_memory --trace   # top allocation sites
```

Why in process: the node-wide figure (bench/capacity.py, Pss of every process) says how
much a call costs, not where. Each part runs in a fresh process and is measured after a
warm-up call (imports, caches, first-use allocations), so the delta is what N more calls
hold while they are live:

* ``capture``: a Capture (no NATS) allocates N calls of two streams with the peer's SDP
  known, a local sender plays 20 ms PCMU packets to every port and the flush loop runs
  as in service; the delta is read while all N calls are live.
* ``held``: the same without the peer's SDP (bench/capture_load allocates so): the
  packets are held until it comes or PENDING_TIMEOUT passes; keep ``--seconds`` below it.
* ``encoder``: N LiveEncoders, stepped every 0.25 s over segment files the way the
  encoder worker steps them (``worker_steps``); the delta is read after the last step.
  ``--step-ms 2000`` steps as a worker that fell behind does: seconds of every stream
  decoded in one step (capture's steps catch up 2 s at a time).

Deltas: tracemalloc's traced bytes (Python objects and buffers; with ``--trace``, the
top sites) and Pss/Rss from /proc/self/smaps_rollup (everything, libopus included).
The baseline is the same process before the N calls: figures are KB per call of a delta.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def smaps_kb() -> dict[str, int]:
    """Rss and Pss (kB) of this process from /proc/self/smaps_rollup."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key] = int(rest.split()[0])
    return out


class Probe:
    """Before/after readings of one process."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.before: tuple[dict[str, int], int, Any] = ({}, 0, None)

    def start(self) -> None:
        gc.collect()
        snap = tracemalloc.take_snapshot() if self.trace else None
        self.before = (smaps_kb(), tracemalloc.get_traced_memory()[0], snap)

    def stop(self, count: int) -> dict[str, Any]:
        gc.collect()
        after, traced = smaps_kb(), tracemalloc.get_traced_memory()[0]
        base, base_traced, snap = self.before
        result: dict[str, Any] = {
            "rss_kb": (after["Rss"] - base["Rss"]) / count,
            "pss_kb": (after["Pss"] - base["Pss"]) / count,
            "traced_kb": (traced - base_traced) / 1024 / count if self.trace else None,
        }
        if snap is not None:
            stats = tracemalloc.take_snapshot().compare_to(snap, "lineno")
            result["top"] = [f"{s.size_diff / 1024 / count:7.2f} KB/call {s.traceback}"
                             for s in stats[:15]]
        return result


# ---- capture's main process

async def capture_part(calls: int, seconds: float, trace: bool, port_min: int,
                       held: bool) -> dict[str, Any]:
    from callrec.config import NodeConfig
    from callrec.metrics import Registry
    from callrec.service import ServiceContext
    from contracts.v1.events import RecordingMetadata
    from contracts.v1.rpc import AllocateRequest, RtpSource, StreamSpec, UpdateRequest
    from services.capture.service import Capture
    from tests.support.callgen import NEAR_HZ, packets

    data = Path(tempfile.mkdtemp(prefix="capmem-"))
    config = NodeConfig(node_id="n1", data_dir=data, rtp_port_min=port_min,
                        rtp_port_max=port_min + 999)  # even ports, some taken
    ctx = ServiceContext("capture", config, cast(Any, None), cast(Any, None),
                         Registry("capture", "n1"), asyncio.Event())
    capture = Capture(ctx, cast(Any, None), [], cast(Any, lambda: None))
    flusher = asyncio.create_task(capture._flush_loop())
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    src_port = sender.getsockname()[1]
    meta = RecordingMetadata(source="cucm", session_key="k")
    datagrams = [d for _, d in packets(NEAR_HZ, max(seconds, 1.0), ssrc=1, jitter_ms=0,
                                       seed=1)]
    probe = Probe(trace)

    async def open_calls(prefix: str, count: int) -> list[int]:
        ports: list[int] = []
        for i in range(count):
            # held: no SDP yet (as bench/capture_load allocates), packets wait for it.
            source = None if held else RtpSource(address="127.0.0.1", port=src_port)
            reply = await capture.allocate(AllocateRequest(
                recording_id=f"{prefix}{i}", started_at=datetime.now(UTC), metadata=meta,
                streams=[StreamSpec(stream_id="near", channel=0, source=source),
                         StreamSpec(stream_id="far", channel=1, source=source)]))
            await capture.update(UpdateRequest(recording_id=f"{prefix}{i}",
                                               payload_codecs={0: "PCMU"}))
            ports += reply.ports.values()
        return ports

    async def play(ports: list[int], duration: float) -> None:
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < duration:
            datagram = datagrams[i % len(datagrams)]
            for port in ports:
                sender.sendto(datagram, ("127.0.0.1", port))
            i += 1
            await asyncio.sleep(max(0.0, started + i * 0.02 - time.monotonic()))

    warm = await open_calls("warm", 1)
    await play(warm, 1.0)
    probe.start()
    ports = await open_calls("call", calls)
    await play(ports + warm, seconds)
    await asyncio.sleep(0.3)  # one more flush
    result = probe.stop(calls)
    result["packets"] = sum(s.receiver.packets for r in capture.live.values()
                            for s in r.streams.values())
    flusher.cancel()
    for recording in capture.live.values():
        for stream in recording.streams.values():
            stream.receiver.close()
            stream.writer.close(sync=False)
    capture.reader.close()
    sender.close()
    return result


# ---- the encoder worker

def encoder_part(calls: int, seconds: float, trace: bool, step_ms: int) -> dict[str, Any]:
    from services.capture.live import StreamSpec, worker_drop, worker_steps
    from services.capture.segments import segment_path
    from tests.support.callgen import FAR_HZ, NEAR_HZ, make_recording, packets, write_segment

    root = Path(tempfile.mkdtemp(prefix="encmem-"))
    specs = [StreamSpec("near", 0, {0: "PCMU"}), StreamSpec("far", 1, {0: "PCMU"})]
    total = seconds + 1.0
    media = {"near": packets(NEAR_HZ, total, ssrc=1, jitter_ms=8, seed=1),
             "far": packets(FAR_HZ, total, ssrc=2, jitter_ms=8, seed=2)}

    def directory(name: str) -> Path:
        path = root / name
        path.mkdir()
        make_recording(path, 0.02, recording_id=name, ended=False)
        for seg in path.glob("*.seg"):
            seg.unlink()
        return path

    def run(names: list[str], dirs: list[Path], until_ms: int, start_ms: int = 0) -> None:
        now = start_ms
        while now < until_ms:
            now += step_ms
            for d in dirs:
                for stream_id, records in media.items():
                    new = [r for r in records if now - step_ms < r[0] <= now]
                    write_segment(segment_path(d, stream_id, 0), new)
            results = worker_steps([(d, n, specs, float(now), 16000, "celt")
                                    for d, n in zip(dirs, names, strict=True)])
            errors = [r.error for r in results if r.error]
            if errors:
                raise RuntimeError(errors[0])

    warm_dir = directory("warm")
    run(["warm"], [warm_dir], 1000)
    probe = Probe(trace)
    probe.start()
    names = [f"rec{i}" for i in range(calls)]
    dirs = [directory(n) for n in names]
    run(names, dirs, int(seconds * 1000))
    result = probe.stop(calls)
    result["bytes"] = sum((d / "live.opus").stat().st_size for d in dirs)
    for name in [*names, "warm"]:
        worker_drop(name)
    return result


def child(part: str, calls: int, seconds: float, trace: bool, port_min: int,
          step_ms: int) -> None:
    if trace:
        tracemalloc.start(1)
    if part in ("capture", "held"):
        result = asyncio.run(capture_part(calls, seconds, trace, port_min, part == "held"))
    else:
        result = encoder_part(calls, seconds, trace, step_ms)
    print(json.dumps(result))


def measure(tree: Path, part: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.capture_memory", "--child", part,
               "--calls", str(args.calls), "--seconds", str(args.seconds),
               "--port-min", str(args.port_min), "--step-ms", str(args.step_ms)] + (
                   ["--trace"] if args.trace else [])
    out = subprocess.run(command, cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin"},
                         check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trace", action="store_true", help="tracemalloc and top sites")
    parser.add_argument("--base", type=Path, help="another checkout, measured alongside")
    parser.add_argument("--parts", default="capture,held,encoder",
                        help="capture: the SDP known at allocate; held: not yet (the "
                        "packets wait for it, up to PENDING_TIMEOUT); encoder")
    parser.add_argument("--port-min", type=int, default=16000)
    parser.add_argument("--step-ms", type=int, default=250,
                        help="encoder: call time a step takes in (250: capture's flush; "
                        "2000: a worker catching up)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.calls, args.seconds, args.trace, args.port_min, args.step_ms)
        return
    trees = [("this tree", REPO)] + ([("base", args.base)] if args.base else [])
    print(f"{args.calls} calls (2 streams each), {args.seconds} s of 20 ms PCMU "
          f"(encoder steps of {args.step_ms} ms); KB per call "
          f"of the delta over the same process before the calls; median of {args.runs} "
          "fresh processes, trees interleaved; ratio of Rss against the base")
    for part in args.parts.split(","):
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
        for _ in range(args.runs):
            for name, tree in trees:
                runs[name].append(measure(tree, part, args))
        rows = {name: {key: statistics.median(r[key] for r in values)
                       for key in ("rss_kb", "pss_kb")} | {"last": values[-1]}
                for name, values in runs.items()}
        base = rows.get("base")
        for name, row in rows.items():
            ratio = f"  x base {row['rss_kb'] / base['rss_kb']:.2f}" if base else ""
            last = row["last"]
            traced = "" if last["traced_kb"] is None else f" traced {last['traced_kb']:7.1f}"
            print(f"{part:<8} {name:<10} Rss {row['rss_kb']:7.1f} Pss {row['pss_kb']:7.1f}"
                  f"{traced}{ratio}   Rss runs: "
                  + " ".join(f"{r['rss_kb']:.1f}" for r in runs[name]))
            for line in last.get("top", []):
                print("    " + line)

if __name__ == "__main__":
    main()
