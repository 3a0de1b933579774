"""Capture's CPU per CUCM leg at set-up, in process (no NATS, no node).

Why: at 400 legs/s (200 recorded calls/s) capture answers an allocate per INVITE and
an update per ACK on the same two cores as signaling and finalize. This drives the
real `Capture.allocate` / `Capture.update` handlers as signaling calls them for the
CUCM legs (one stream per leg, "near" and "far" of one recording; the update with
the ACK's SDP source and payload map) and counts process CPU per leg. The RPC's own
JSON (bus.serve) is parsed here as it is there. Logging as in production, to /dev/null.
The end of each round (streams closed, directories removed) is not timed. The flush
that follows set-up is: it writes each recording's manifest.json once (in a running
node, as many of capture's busy samples during a 150 calls/s burst as the RPCs).

Two figures per leg: the process's CPU (all threads) and the event loop thread's
alone (`time.thread_time`): a tree that hands file work to another thread moves CPU
off the loop, where INVITEs queue, without necessarily saving any. The round waits
for that thread's work inside the timed stretch, so the process figure includes it.

    python -m bench.capture_setup_cpu                      # this tree, ~10 s
    python -m bench.capture_setup_cpu --baseline-tree DIR  # A/B, interleaved, ratio
    python -m bench.capture_setup_cpu --first-flush ...    # + each stream's first write
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
RTP_PACKET = bytes([0x80, 0]) + bytes(10) + bytes([0xFF]) * 160  # one 20 ms PCMU packet


def run_rounds(legs_per_round: int, rounds: int,
               first_flush: bool = False) -> tuple[list[float], list[float]]:
    """(process, loop thread) CPU-µs per leg of each round (allocate + update of every leg; with
    `first_flush` also each stream's first packet written out, as the flush loop does,
    which is where a segment file may be created)."""
    from callrec import logs
    from callrec.config import NodeConfig
    from callrec.metrics import Registry
    from callrec.service import ServiceContext
    from contracts.v1.events import RecordingMetadata
    from contracts.v1.rpc import AllocateRequest, UpdateRequest
    from services.capture.service import Capture

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    logs.setup_logging("capture", "bench", "info")
    data_dir = Path(tempfile.mkdtemp(prefix="capture-setup-"))
    config = NodeConfig(node_id="n1", data_dir=data_dir, rtp_port_min=40000,
                        rtp_port_max=59999)
    ctx = ServiceContext("capture", config, cast(Any, None), cast(Any, None),
                         Registry("capture", "n1"), asyncio.Event())

    def allocate_json(call: int, side: str) -> bytes:
        metadata = RecordingMetadata(source="cucm", session_key=f"cucm:7{call}",
                                     refci=f"7{call}", cluster_id="StandAloneCluster",
                                     sip_call_ids=[f"{call}-nearend@127.0.0.1"],
                                     user_agent="Cisco-CUCM14.0")
        return AllocateRequest(
            recording_id=f"rec-{call:08d}", started_at=datetime.now(UTC), metadata=metadata,
            streams=[{"stream_id": side, "channel": 0 if side == "near" else 1,  # type: ignore[list-item]
                      "label": side}]).model_dump_json().encode()

    def update_json(call: int, side: str) -> bytes:
        return UpdateRequest(recording_id=f"rec-{call:08d}", stream_id=side,
                             payload_codecs={0: "PCMU", 101: "telephone-event"},
                             source={"address": "127.0.0.1", "port": 30000 + call % 20000},  # type: ignore[arg-type]
                             ).model_dump_json().encode()

    async def main() -> tuple[list[float], list[float]]:
        capture = Capture(ctx, cast(Any, None), [], cast(Any, lambda: None))
        files = getattr(capture, "files", None)  # the file thread, in trees that have it
        results: list[float] = []
        loop_results: list[float] = []
        call = 0
        for _ in range(rounds + 1):  # the first round warms up
            legs = []
            for _ in range(legs_per_round // 2):
                call += 1
                legs += [(call, "near"), (call, "far")]
            allocs = [allocate_json(c, s) for c, s in legs]
            updates = [update_json(c, s) for c, s in legs]
            start, loop_start = time.process_time(), time.thread_time()
            for data in allocs:  # as bus.serve: the request parsed, the reply dumped
                reply = await capture.allocate(AllocateRequest.model_validate_json(data))
                reply.model_dump_json()
            for data in updates:
                (await capture.update(UpdateRequest.model_validate_json(data))).model_dump_json()
            if files is not None:  # its files exist (the process CPU counts them)
                await files.barrier()
            for recording in capture.live.values():  # the next flush: manifest.json once
                if recording.manifest_dirty:
                    recording.manifest_dirty = not capture._save_manifest(recording)
            if first_flush:
                for recording in capture.live.values():
                    for stream in recording.streams.values():
                        stream.writer.append(20, RTP_PACKET)
                        stream.writer.flush()
            results.append((time.process_time() - start) / len(legs) * 1e6)
            loop_results.append((time.thread_time() - loop_start) / len(legs) * 1e6)
            for recording in list(capture.live.values()):  # untimed: end of the round
                for stream in recording.streams.values():
                    stream.receiver.close()
                    stream.writer.close(sync=False)
                    capture.pool.give_back(stream.manifest.port)
                shutil.rmtree(recording.directory, ignore_errors=True)
            capture.live.clear()
            capture.journal.clear()
        capture.reader.close()
        capture.journal.close()
        if files is not None:
            files.close()
        return results[1:], loop_results[1:]

    try:
        return asyncio.run(main())
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--legs", type=int, default=400, help="legs per round (a second's worth)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline-tree", type=Path,
                        help="another checkout: interleaved runs of both, ratio printed")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved runs per tree")
    parser.add_argument("--first-flush", action="store_true",
                        help="also time each stream's first packet written to disk")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_tree is None:
        figures, loop_figures = run_rounds(args.legs, args.rounds, args.first_flush)
        if args.json:
            print(json.dumps([figures, loop_figures]), file=sys.__stdout__)
            return
        print("loop thread CPU per leg (µs): "
              + ", ".join(f"{f:.0f}" for f in loop_figures)
              + f"; median {statistics.median(loop_figures):.0f}")
        print(f"CPU per leg (µs), {args.rounds} rounds of {args.legs} legs: "
              + ", ".join(f"{f:.0f}" for f in figures)
              + f"; median {statistics.median(figures):.0f}")
        return
    runs = _interleaved(args)
    for which, name in ((0, "process CPU (all threads)"), (1, "event loop thread CPU")):
        print(f"\n{name}:")
        _report(args, [(b[which], t[which]) for b, t in runs])


Figures = list[list[float]]


def _interleaved(args: argparse.Namespace) -> list[tuple[Figures, Figures]]:
    """(baseline, this) runs, alternating: each run's [process, loop thread] figures."""
    runs = []
    for _ in range(args.pairs):
        pair = []
        for tree in (args.baseline_tree, REPO):
            out = subprocess.run(
                [sys.executable, str(REPO / "bench" / "capture_setup_cpu.py"), "--json",
                 "--legs", str(args.legs), "--rounds", str(args.rounds)]
                + (["--first-flush"] if args.first_flush else []),
                cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                check=True, capture_output=True, text=True)
            pair.append(json.loads(out.stdout.strip().splitlines()[-1]))
        runs.append((pair[0], pair[1]))
    return runs


def _report(args: argparse.Namespace, runs: list[tuple[list[float], list[float]]]) -> None:
    there = [f for b, _ in runs for f in b]
    here = [f for _, t in runs for f in t]
    # Adjacent runs see about the same background load.
    pair_ratios = [statistics.median(t) / statistics.median(b) for b, t in runs]
    print(f"| tree | CPU µs per leg, median of {len(here)} rounds | min | max |")
    print("|---|---:|---:|---:|")
    for name, figures in (("baseline", there), ("this", here)):
        print(f"| {name} | {statistics.median(figures):.0f} | {min(figures):.0f} | "
              f"{max(figures):.0f} |")
    print(f"\nthis / baseline: {statistics.median(here) / statistics.median(there):.2f} "
          f"(medians), {min(here) / min(there):.2f} (minima); per interleaved pair: "
          + ", ".join(f"{r:.2f}" for r in pair_ratios)
          + f" (median {statistics.median(pair_ratios):.2f}); {args.rounds} x {args.legs} "
          "legs per run")


if __name__ == "__main__":
    main()
