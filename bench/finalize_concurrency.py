"""How long capture takes to finalize a burst of ended calls, by finalize concurrency.

Why (issue 11): at 400 calls ending together BYE->playable p99 was 8 s on an idle
machine, because capture finalized one recording at a time and each one mostly waits
(fsyncs, its encoder worker, the bus acks). This drives capture's own finalize loop
(services.capture.service.Capture, its real encoder worker processes and FileStore) on
fabricated ended calls (tests.support.callgen), with JetStream replaced by a stub that
acknowledges after ``--ack-ms`` (no NATS server: the bus is not what is measured).

Each round finalizes a fresh copy of the same calls once per setting, the settings
interleaved, and prints the wall time from the burst to the last completion (and the
p50/p99 of each recording's completion) as a ratio to ``serial`` (one at a time, the
old loop) measured in the same round.

    PYTHONPATH=$PWD .venv/bin/python -m bench.finalize_concurrency
    PYTHONPATH=$PWD .venv/bin/python -m bench.finalize_concurrency --calls 400 --per-worker 1,2,4,8
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class StubJetStream:
    """Acknowledges a publish after a fixed delay (what a local JetStream costs)."""

    def __init__(self, ack_s: float) -> None:
        self.ack_s = ack_s
        self.seq = 0

    async def publish(self, subject: str, payload: bytes, **_: Any) -> Any:
        await asyncio.sleep(self.ack_s)
        self.seq += 1
        return SimpleNamespace(seq=self.seq)


class StubNats:
    async def publish(self, subject: str, payload: bytes) -> None:
        return None


async def finalize_burst(root: Path, template: Path, concurrency: int, ack_s: float,
                         workers: list[Executor]) -> list[float]:
    """Seconds from the burst to each recording's completion."""
    from callrec.config import NodeConfig
    from callrec.metrics import Registry
    from callrec.service import ServiceContext
    from callrec.store import FileStore
    from services.capture import service

    data_dir = root / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    active = data_dir / "capture" / "active"
    shutil.copytree(template, active)
    config = NodeConfig(node_id="n1", data_dir=data_dir, rtp_port_min=18000,
                        rtp_port_max=18999)
    ctx = ServiceContext("capture", config, cast(Any, StubNats()),
                         cast(Any, StubJetStream(ack_s)), Registry("capture", "n1"),
                         asyncio.Event())
    capture = service.Capture(ctx, FileStore(data_dir / "objects"), workers,
                              cast(Any, lambda: None))
    capture._recover({})  # queues every ended recording, as a restart does
    total = len(capture.live)
    done: list[float] = []
    original = service.finalize_concurrency
    service.finalize_concurrency = lambda _workers: concurrency  # type: ignore[assignment]
    started = time.monotonic()
    loop_task = asyncio.create_task(capture._finalize_loop())
    try:
        while len(done) < total:
            await asyncio.sleep(0.002)
            finished = total - len(capture.live) - len(done)
            done.extend([time.monotonic() - started] * finished)
            if time.monotonic() - started > 300:
                raise RuntimeError("finalize did not finish in 300 s")
    finally:
        loop_task.cancel()
        with_suppress = asyncio.gather(loop_task, return_exceptions=True)
        await with_suppress
        service.finalize_concurrency = original
        capture.journal.close()
        capture.files.close()
    return done


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="length of each call (finalize encodes all of it: keep it "
                             "about a live step's tail)")
    parser.add_argument("--per-worker", default="1,2,4,8",
                        help="finalize tasks per encoder worker to compare with serial")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ack-ms", type=float, default=2.0)
    args = parser.parse_args()

    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from services.capture.service import lower_worker_priority
    from tests.support.callgen import make_recording

    context = multiprocessing.get_context("forkserver")
    worker_count = max(1, os.cpu_count() or 1)
    root = Path(tempfile.mkdtemp(prefix="callrec-fin-bench-"))
    settings = [("serial", 1)] + [(f"{k}/worker", k * worker_count)
                                  for k in (int(p) for p in args.per_worker.split(","))]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in settings}
    try:
        template = root / "template"
        template.mkdir()
        for i in range(args.calls):
            make_recording(template / f"call-{i:05d}", args.seconds,
                           recording_id=f"call-{i:05d}")
        workers: list[Executor] = [
            ProcessPoolExecutor(max_workers=1, mp_context=context,
                                initializer=lower_worker_priority)
            for _ in range(worker_count)]
        try:
            asyncio.run(finalize_burst(root, template, 1, args.ack_ms / 1000, workers))  # warm
            for round_no in range(args.rounds):
                order = settings if round_no % 2 == 0 else list(reversed(settings))
                for name, concurrency in order:
                    times = asyncio.run(finalize_burst(root, template, concurrency,
                                                       args.ack_ms / 1000, workers))
                    results[name].append((max(times), _percentile(times, 0.5),
                                          _percentile(times, 0.99)))
                    print(f"# round {round_no + 1} {name}: last {max(times):.2f} s",
                          flush=True)
        finally:
            for worker in workers:
                worker.shutdown(wait=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.calls} ended {args.seconds:g} s calls finalized in a burst, "
          f"{worker_count} encoder workers, stub JetStream ack {args.ack_ms:g} ms, "
          f"{args.rounds} interleaved rounds (medians); ratios to serial of the same run\n")
    print("| setting | tasks | burst done s | p50 s | p99 s | x serial (burst) |")
    print("|---|---:|---:|---:|---:|---:|")
    base = statistics.median(r[0] for r in results["serial"])
    for name, concurrency in settings:
        rows = results[name]
        last = statistics.median(r[0] for r in rows)
        p50 = statistics.median(r[1] for r in rows)
        p99 = statistics.median(r[2] for r in rows)
        print(f"| {name} | {concurrency} | {last:.2f} | {p50:.2f} | {p99:.2f} | "
              f"{last / base:.2f} |")


if __name__ == "__main__":
    main()
