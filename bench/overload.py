"""Overload: more calls with RTP than the node's cores encode, offered over SIP.

Why: past its capacity a node must not fall ever further behind (the live copy at the
peer, so what a lost host costs, lags by as much): over `--max-live-lag` it turns new
calls away with 503, so the PBX records them on the backup, and the calls in progress
go on. This bench offers a ramp of real CUCM calls (SIPp, both legs, `--rate` calls/s
up to `--calls`, each `--seconds` long) whose answered ports get paced G.711 tones from
bench/loadgen.py's sender, on the same cores, and prints how many calls the node took,
how many it turned away and when, and how far behind its encoding got.

    python -m bench.overload                          # 900 calls, 20/s, 60 s each, ~2.5 min
    python -m bench.overload --max-live-lag 0        # the same without the gate
    python -m bench.overload --smoke                  # a few calls, a gate that trips at once
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import loadgen, setup_rate  # noqa: E402
from tests.support import sipp  # noqa: E402
from tests.support.node import Node  # noqa: E402

LAG = "callrec_capture_live_lag_seconds"
BEHIND = "callrec_capture_over_capacity"
ACTIVE = "callrec_capture_active_recordings"
BACKLOG = "callrec_capture_finalize_backlog"
TURNED_AWAY = "callrec_signaling_calls_over_capacity"
SAMPLE_S = 0.5
# Tones stop this long before SIPp's BYE, so no packet reaches a port already released.
TONE_MARGIN_S = 1.5


@dataclass
class Sample:
    at: float  # seconds since the first INVITE
    lag: float
    behind: bool
    active: int


@dataclass
class OverloadResult:
    calls: int
    rate: float
    seconds: float
    max_live_lag: float | None  # the node's --max-live-lag (None: its default)
    legs_answered: int = 0
    legs_turned_away: int = 0  # 503 over capacity
    legs_failed_otherwise: int = 0
    packets_sent: int = 0
    drained_after_s: float = math.nan  # from the last BYE until nothing is left to finalize
    samples: list[Sample] = field(default_factory=list)
    missed_samples: int = 0  # scrapes without capture's gauges (or failed)

    @property
    def peak_lag(self) -> float:
        return max((s.lag for s in self.samples), default=0.0)

    @property
    def peak_active(self) -> int:
        return max((s.active for s in self.samples), default=0)

    @property
    def first_behind(self) -> Sample | None:
        return next((s for s in self.samples if s.behind), None)

    @property
    def share_behind(self) -> float:
        return (sum(s.behind for s in self.samples) / len(self.samples)
                if self.samples else 0.0)

    def table(self) -> str:
        first = self.first_behind
        tripped = (f"{first.at:.0f} s, {first.active} calls in progress" if first is not None
                   else "never")
        gate = "node default" if self.max_live_lag is None else f"{self.max_live_lag:g} s"
        return "\n".join([
            "| offered | --max-live-lag | legs answered / turned away (over capacity) / "
            "failed otherwise | first turned away at | peak calls in progress | peak live "
            "lag s | time over capacity | drained after last BYE |",
            "|---|---|---:|---|---:|---:|---:|---:|",
            f"| {self.calls} calls at {self.rate:g}/s, {self.seconds:g} s each | {gate} | "
            f"{self.legs_answered} / {self.legs_turned_away} / {self.legs_failed_otherwise} | "
            f"{tripped} | {self.peak_active} | {self.peak_lag:.1f} | "
            f"{100 * self.share_behind:.0f} % | {self.drained_after_s:.1f} s |",
        ])

    def timeline(self, every_s: float = 5.0) -> str:
        """One line per `every_s`: calls in progress, live lag, refusing or not."""
        lines, next_at = [], 0.0
        for s in self.samples:
            if s.at >= next_at:
                lines.append(f"  {s.at:5.0f} s  {s.active:5d} calls  lag {s.lag:5.1f} s"
                             f"{'  turning new calls away' if s.behind else ''}")
                next_at = s.at + every_s
        return "\n".join(lines)


def _metrics(node: Node, names: tuple[str, ...]) -> dict[str, float]:
    """Those of several gauges one scrape has (the first series of each): a service too
    busy to answer the web's collection in time is missing from it."""
    import httpx

    values: dict[str, float] = {}
    text = httpx.get(f"{node.base_url}/metrics", timeout=5.0).text
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in names and name not in values:
            with contextlib.suppress(ValueError):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values


async def _sample(node: Node, t0: float, result: OverloadResult) -> None:
    names = (LAG, BEHIND, ACTIVE)
    while True:
        m: dict[str, float] = {}
        with contextlib.suppress(Exception):
            m = await asyncio.to_thread(_metrics, node, names)
        if all(name in m for name in names):
            result.samples.append(Sample(time.monotonic() - t0, m[LAG], m[BEHIND] == 1.0,
                                         round(m[ACTIVE])))
        else:
            result.missed_samples += 1  # never read as zeros
        await asyncio.sleep(SAMPLE_S)


async def _feed_answered(legs: setup_rate.Legs, seconds: float, started_at: float,
                         more: asyncio.Queue[tuple[list[int], int, int] | None]) -> None:
    """Give the sender each leg's port as its 200 OK shows up in SIPp's log, with tone
    until shortly before that leg's BYE."""
    tails = [sipp.MessageLogTail(run.messages_path) for run in legs.runs]
    tone_ticks = max(1, round((seconds - TONE_MARGIN_S) / loadgen.PTIME))
    while True:
        now_tick = max(0, round((time.monotonic() - started_at) / loadgen.PTIME))
        for tail in tails:
            for entry in tail.new_entries():
                if (entry.direction == "received" and entry.status_code == 200
                        and entry.method == "INVITE" and entry.sdp):
                    await more.put(([entry.sdp[0].port], now_tick, now_tick + tone_ticks))
        await asyncio.sleep(0.5)


async def run(calls: int = 900, rate: float = 20.0, seconds: float = 60.0, *,
              max_live_lag: float | None = None, keep: bool = False) -> OverloadResult:
    root = Path(tempfile.mkdtemp(prefix="callrec-bench-overload-"))
    gate = [] if max_live_lag is None else ["--max-live-lag", f"{max_live_lag:g}"]
    node = setup_rate.sip_bench_node(root, rate, *gate)
    result = OverloadResult(calls, rate, seconds, max_live_lag)
    legs = None
    tasks: list[asyncio.Task[None]] = []
    try:
        setup_rate.progress("starting the node")
        await asyncio.to_thread(node.start, 90.0)
        turned_before = await asyncio.to_thread(node.metric, TURNED_AWAY)
        scenario = setup_rate.scenario_without_rtp(root)
        legs = setup_rate.Legs(scenario, node, calls, rate, seconds, "5", trace_messages=True)
        more: asyncio.Queue[tuple[list[int], int, int] | None] = asyncio.Queue()
        started = asyncio.Event()
        offered_s = calls / rate
        sender = asyncio.create_task(loadgen.send_load(
            [], offered_s + seconds + 10, {}, started=started, more=more))
        await started.wait()
        t0 = time.monotonic()
        setup_rate.progress(f"offering {calls} calls at {rate:g}/s, {seconds:g} s each")
        legs.start()
        tasks = [asyncio.create_task(_sample(node, t0, result)),
                 asyncio.create_task(_feed_answered(legs, seconds, t0, more))]
        deadline = t0 + offered_s + seconds + 30
        while time.monotonic() < deadline and legs.ended() < 2 * calls:
            await asyncio.sleep(1.0)
        last_bye = time.monotonic()
        await more.put(None)
        setup_rate.progress("every leg ended; waiting for finalize to drain")
        drain_deadline = last_bye + 300
        while time.monotonic() < drain_deadline:
            m = await asyncio.to_thread(_metrics, node, (ACTIVE, BACKLOG))
            if m.get(ACTIVE) == 0 and m.get(BACKLOG) == 0:
                result.drained_after_s = time.monotonic() - last_bye
                break
            await asyncio.sleep(0.5)
        result.packets_sent = (await sender).sent
        await asyncio.sleep(1.2)  # SIPp's last statistics dump
        result.legs_answered = len(legs.rtt_ms())
        result.legs_turned_away = round(
            await asyncio.to_thread(node.metric, TURNED_AWAY) - turned_before)
        result.legs_failed_otherwise = max(
            0, 2 * calls - result.legs_answered - result.legs_turned_away)
        return result
    finally:
        for task in tasks:
            task.cancel()
        if legs is not None:
            legs.close()
        await setup_rate.dispose(node, root, keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=900, help="calls offered")
    parser.add_argument("--rate", type=float, default=20.0, help="new calls/s")
    parser.add_argument("--seconds", type=float, default=60.0, help="each call's length")
    parser.add_argument("--max-live-lag", type=float, default=None,
                        help="the node's --max-live-lag (default: the node's; 0: never)")
    parser.add_argument("--smoke", action="store_true",
                        help="6 calls, and a limit every call in progress is over at once")
    parser.add_argument("--keep", action="store_true", help="keep the node's directory")
    args = parser.parse_args()
    if args.smoke:
        args.calls, args.rate, args.seconds, args.max_live_lag = 6, 2.0, 4.0, 1e-3
    result = asyncio.run(run(args.calls, args.rate, args.seconds,
                             max_live_lag=args.max_live_lag, keep=args.keep))
    print(result.table())
    print()
    print(result.timeline())
    print(f"\nRTP packets sent: {result.packets_sent}; samples {len(result.samples)}, "
          f"scrapes without capture's gauges {result.missed_samples}")


if __name__ == "__main__":
    main()
