"""Capture's receiving CPU against rtpengine's, alternated: each pair's ratio and the median.

Why: issue 11 asks for capture's receive path at or below rtpengine's on the same
traffic in the same run, at 100 and at 400 calls. `bench.capacity` measures one pair a
level, and rtpengine's own figure moves by about 15 % from run to run on this kind of
machine: as much as the distance to the target (bench/README.md, "Capture's receive
cost against rtpengine's"). Here each level is measured `--rounds` times, rtpengine
and callrec alternating which goes first, and the table gives every pair and the
median of the ratios.

Both sides are measured as in `bench.capacity`: rtpengine's daemon (userspace,
pcap recording) and a fresh callrec node's `services.capture` process alone, CPU
(utime+stime) per call-minute while the paced sender plays the level's calls.

    python -m bench.scratchfs -- python -m bench.rx_rounds --calls 100,400 --rounds 5
    python -m bench.rx_rounds --smoke        # seconds: proves it runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import loadgen  # noqa: E402
from bench.capacity import (  # noqa: E402
    commit,
    fmt,
    machine,
    per_call_minute,
    rtpengine_running,
    run_rtpengine,
)
from bench.capture_load import FLUSH_WAIT_S, running_node  # noqa: E402


@dataclass
class Pair:
    calls: int
    round: int
    first: str
    rtpengine: float  # CPU-s per call-minute
    callrec: float

    @property
    def ratio(self) -> float:
        return self.callrec / self.rtpengine if self.rtpengine > 0 else float("nan")


async def callrec_rx(calls: int, seconds: float) -> float:
    """A fresh node's capture process, CPU-s per call-minute while `calls` calls play."""
    async with running_node(calls, False) as (_node, driver, capture_pid):
        ids, ports = await driver.allocate(calls, f"rx{calls}-{uuid.uuid4().hex[:6]}")
        await asyncio.sleep(1.0)
        sent = await loadgen.send_load(ports, seconds,
                                       {"rx": lambda: loadgen.proc_cpu(capture_pid)})
        await asyncio.sleep(FLUSH_WAIT_S)
        with contextlib.suppress(TimeoutError):
            await driver.finalize(ids, timeout=120 + calls * seconds / 10)
    if sent.rate_pct < 99.0:
        print(f"# callrec: the sender fell behind at {calls} calls", file=sys.stderr)
    return per_call_minute(sent.extra["rx"], calls, sent.elapsed)


async def run(levels: list[int], rounds: int, seconds: float) -> tuple[list[Pair], str]:
    """Every pair, or none and why rtpengine cannot run here."""
    pairs: list[Pair] = []
    with rtpengine_running(max(levels)) as rtpe:
        if isinstance(rtpe, str):
            return [], rtpe
        for round_ in range(rounds):
            for calls in levels:
                # rtpengine first in even rounds, callrec first in odd ones: neither
                # always meets the warmer cache or a neighbour's burst.
                order = ("rtpengine", "callrec") if round_ % 2 == 0 else ("callrec",
                                                                          "rtpengine")
                figures: dict[str, float] = {}
                for system in order:
                    if system == "rtpengine":
                        figures[system] = (await run_rtpengine(*rtpe, calls, seconds)).rx_cm
                    else:
                        figures[system] = await callrec_rx(calls, seconds)
                pair = Pair(calls, round_ + 1, order[0], figures["rtpengine"],
                            figures["callrec"])
                pairs.append(pair)
                print(f"# round {pair.round}, {calls} calls: rtpengine {pair.rtpengine:.4f}, "
                      f"callrec {pair.callrec:.4f}, ratio {pair.ratio:.2f}", file=sys.stderr)
    return pairs, ""


def render(pairs: list[Pair], levels: list[int], seconds: float, skipped: str) -> str:
    head = (f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, capture rx "
            f"against rtpengine rx, alternated, {seconds:g} s a measurement\n\n"
            f"Machine: {machine()}.\n\n")
    if skipped:
        return head + f"rtpengine skipped: {skipped}\n"
    rows = ["| calls | round | first | rtpengine rx cpu/cm | callrec rx cpu/cm | ratio |",
            "|---:|---:|---|---:|---:|---:|"]
    rows += [f"| {p.calls} | {p.round} | {p.first} | {p.rtpengine:.4f} | {p.callrec:.4f} "
             f"| {fmt(p.ratio, 2)} |" for p in pairs]
    notes = []
    for calls in levels:
        ratios = [p.ratio for p in pairs if p.calls == calls]
        notes.append(f"- {calls} calls: callrec rx / rtpengine rx median "
                     f"{fmt(statistics.median(ratios), 2)} over {len(ratios)} pairs "
                     f"(min {fmt(min(ratios), 2)}, max {fmt(max(ratios), 2)}; "
                     f"{sum(r <= 1.0 for r in ratios)} of {len(ratios)} at or below 1.00)")
    notes.append("- rx = CPU-s (utime+stime from /proc) per call-minute while the paced "
                 "sender plays: rtpengine's daemon (userspace, pcap recording), callrec's "
                 "services.capture process alone (a fresh node each time), as in "
                 "bench.capacity.")
    return head + "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="100,400", help="comma-separated call counts")
    parser.add_argument("--rounds", type=int, default=5, help="pairs per level")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per measurement")
    parser.add_argument("--smoke", action="store_true",
                        help="3 calls for 2 s, one round: proves the bench runs")
    parser.add_argument("--append-results", action="store_true",
                        help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)
    levels = [3] if args.smoke else [int(c) for c in args.calls.split(",") if c.strip()]
    rounds, seconds = (1, 2.0) if args.smoke else (args.rounds, args.seconds)
    if not levels or not all(1 <= calls <= 1000 for calls in levels) or rounds < 1:
        parser.error("--calls must be 1..1000 each, --rounds at least 1")
    pairs, skipped = asyncio.run(run(levels, rounds, seconds))
    text = render(pairs, levels, seconds, skipped)
    print(text)
    if args.append_results and not args.smoke:
        with (REPO / "bench" / "RESULTS.md").open("a") as results:
            results.write("\n" + text)
    return text


if __name__ == "__main__":
    main()
