"""A/B of capture's main-process CPU: a base revision against the working tree, interleaved.

Why: capture's receive cost moves by tens of percent between runs on a shared machine,
so a change is judged by the ratio to its base measured in the same run, alternating
base and change (A B A B ...), never by absolute figures across runs.

Each round starts one node per tree (`bench.capture_load.running_node`, signaling
paused, finalize warmed up) and reads the `services.capture` process's utime+stime:
idle (no call) for `--seconds`, then per call level while the paced sender plays
(`bench.loadgen.send_load`). Run from the repository root:

    PYTHONPATH=$PWD .venv/bin/python -m bench.rx_ab --base main --calls 50,100 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


async def probe(seconds: float, levels: list[int]) -> dict[str, float]:
    """In the child, with the tree under test first on sys.path: idle CPU per minute,
    then CPU-s per call-minute per level."""
    from bench.capture_load import running_node
    from bench.loadgen import proc_cpu, send_load

    out: dict[str, float] = {}
    async with running_node(max(levels), False) as (_node, driver, pid):
        await asyncio.sleep(3.0)  # the warm-up's finalize settles
        cpu, start = proc_cpu(pid), time.monotonic()
        await asyncio.sleep(seconds)
        out["idle"] = (proc_cpu(pid) - cpu) / ((time.monotonic() - start) / 60)
        for calls in levels:
            ids, ports = await driver.allocate(calls, f"ab{calls}-{os.getpid()}")
            await asyncio.sleep(1.0)
            sent = await send_load(ports, seconds, {"cpu": lambda: proc_cpu(pid)})
            if sent.rate_pct < 99.0:
                print(f"# sender fell behind at {calls} calls", file=sys.stderr)
            out[str(calls)] = sent.extra["cpu"] / (calls * sent.elapsed / 60)
            await asyncio.sleep(0.6)
            await driver.finalize(ids, timeout=120)
    return out


def run_tree(tree: Path, seconds: float, levels: list[int]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_probe", str(tree), str(seconds),
         ",".join(map(str, levels))],
        cwd=tree, env=env, capture_output=True, text=True, timeout=600, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, float] = json.loads(line[7:])
            return result
    raise RuntimeError(f"probe of {tree} failed: {done.stderr[-2000:]}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_probe":
        tree, seconds, levels = Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
        sys.path.insert(0, str(tree))
        result = asyncio.run(probe(seconds, [int(c) for c in levels.split(",")]))
        print("RESULT " + json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="main", help="git revision measured as A")
    parser.add_argument("--calls", default="50,100", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=12.0, help="per level (and idle)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    levels = [int(c) for c in args.calls.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="callrec-ab-") as tmp:
        base = Path(tmp)
        archive = subprocess.run(["git", "archive", args.base], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        runs: dict[str, list[dict[str, float]]] = {"base": [], "tree": []}
        order = [("base", base), ("tree", REPO)]
        for round_ in range(args.rounds):
            # A B, then B A: neither always runs first (a warmer disk cache, a
            # neighbour's benchmark starting).
            for name, tree in order if round_ % 2 == 0 else order[::-1]:
                runs[name].append(run_tree(tree, args.seconds, levels))
                print(f"# round {round_ + 1} {name}: {runs[name][-1]}", file=sys.stderr)
    print_table(runs, args.base, levels)


def print_table(runs: dict[str, list[dict[str, Any]]], base: str, levels: list[int]) -> None:
    print(f"capture main process, base = {base}, working tree = change; "
          f"{len(runs['base'])} interleaved rounds, medians")
    print(f"{'what':>24} {'base':>8} {'change':>8} {'ratio':>6}")
    keys = [("idle", "idle CPU-s per minute")] + [
        (str(c), f"{c} calls CPU-s/call-min") for c in levels]
    for key, label in keys:
        a = statistics.median(r[key] for r in runs["base"])
        b = statistics.median(r[key] for r in runs["tree"])
        print(f"{label:>24} {a:>8.4f} {b:>8.4f} {b / a if a else float('nan'):>6.2f}")


if __name__ == "__main__":
    main()
