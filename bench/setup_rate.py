"""Call set-up rate: INVITE->200 latency at N new recorded calls/s while finalizing.

Why: a PBX that sends a burst of new calls (shift start, a campaign) must get its
200 OKs in tens of milliseconds, or it retransmits and gives up on recording, even
while the recordings of the calls that just ended are being finalized on the same
cores. Issue 11's target: 200 new calls/s, p99 INVITE->200 under 50 ms.

One real node (allow-listed PBX 127.0.0.1, `--sip-rate` set for the burst). Real SIPp
makes CUCM built-in-bridge calls: two forked INVITE legs per call (near-end and far-end,
two SIPp processes at the same rate, tied by the same x-refci = prefix + call number),
30 s each, no RTP from SIPp. INVITE->200 is SIPp's response time per leg
(`-trace_rtt`, measured from the call's start, i.e. the INVITE). In this order:

1. **baseline**: a low rate (default 20 calls/s) on an idle node.
2. **media load**: `--media-calls` CUCM calls (no RTP from SIPp) whose ports, read from
   the 200 OKs, get RTP from bench/loadgen.py's paced tone sender for `--media-seconds`.
3. **burst**: the target rate starts as the media calls hang up, so their finalize
   runs during it. The CPU-s of capture's encoder workers during the burst says how
   much finalize work overlapped.

    python -m bench.setup_rate                       # 200 calls/s x 8 s, ~1.5 min
    python -m bench.setup_rate --rate 100 --seconds 5
    python -m bench.setup_rate --smoke               # a few calls/s, ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import loadgen  # noqa: E402
from tests.support import sipp  # noqa: E402
from tests.support.node import Node  # noqa: E402

CALL_SECONDS = 30.0
BULK_SCENARIO = sipp.SIPP_DIR / "cucm_bulk.xml"
# The bulk scenario plays tone.pcmu after the ACK; the set-up bench sends no RTP from SIPp.
_RTP_EXEC = re.compile(r"\s*<!--[^>]*tone\.pcmu[^>]*-->\s*<nop>.*?</nop>", re.S)
RTP_PORTS = loadgen.BENCH_RTP_PORTS  # capture binds one even port a leg: 4,450 legs here
_REFUSED_LEG = """
  <nop next="done"/>

  <label id="refused"/>
  <send>
    <![CDATA[

      ACK sip:[recorder]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      [last_From:]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 101 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <label id="done"/>

  <ResponseTimeRepartition"""
_REFUSAL_EDITS = (
    ('<recv response="183" optional="true"/>',
     '<recv response="183" optional="true"/>\n  <recv response="503" optional="true" '
     'next="refused"/>'),
    ("\n  <ResponseTimeRepartition", _REFUSED_LEG),
)


T0 = time.monotonic()


def progress(what: str) -> None:
    """Where the run is, on stderr (the table goes to stdout)."""
    print(f"# {time.monotonic() - T0:6.1f} s  {what}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- figures


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Phase:
    """One SIPp load: both legs of `attempted` calls at `rate` calls/s."""

    label: str
    rate: float
    seconds: float
    attempted: int = 0  # legs SIPp created
    answered: int = 0  # legs that got their 200
    shed: int = 0  # legs the node answered 503 for waiting over --sip-shed-after
    over_capacity: int = 0  # legs answered 503 because the live encoding was behind
    after_allocate: int = 0  # legs answered only after an allocate (port reserve empty)
    peak_lag_s: float = 0.0  # highest callrec_capture_live_lag_seconds seen (0.5 s apart)
    latencies_ms: list[float] = field(default_factory=list)  # INVITE->200 per leg
    capture_cpu: float = 0.0  # CPU-s of capture's own process during the phase
    workers_cpu: float = 0.0  # CPU-s of capture's encoder workers during the phase
    signaling_cpu: float = 0.0

    @property
    def failed(self) -> int:
        return self.attempted - self.answered

    def q(self, quantile: float) -> float:
        return percentile(self.latencies_ms, quantile)


@dataclass
class SetupRateResult:
    baseline: Phase
    burst: Phase
    media_calls: int
    media_seconds: float
    media_packets_sent: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def p99_ratio(self) -> float:
        base = self.baseline.q(0.99)
        return self.burst.q(0.99) / base if base > 0 else math.nan

    def table(self) -> str:
        head = ("| phase | calls/s | legs attempted / answered / failed (shed, over "
                "capacity) | INVITE->200 ms p50 / p95 / p99 / max | capture cpu-s | "
                "encoder workers cpu-s | signaling cpu-s | peak live lag s | "
                "legs answered after an allocate (port reserve empty) |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        rows = [head]
        for phase in (self.baseline, self.burst):
            rows.append(
                f"| {phase.label} | {phase.rate:g} | {phase.attempted} / {phase.answered} / "
                f"{phase.failed} ({phase.shed}, {phase.over_capacity}) | "
                f"{phase.q(0.5):.1f} / {phase.q(0.95):.1f} / "
                f"{phase.q(0.99):.1f} / {max(phase.latencies_ms, default=math.nan):.1f} | "
                f"{phase.capture_cpu:.2f} | {phase.workers_cpu:.2f} | "
                f"{phase.signaling_cpu:.2f} | {phase.peak_lag_s:.1f} | "
                f"{phase.after_allocate} |")
        return "\n".join(rows)

    def markdown_row(self) -> str:
        """One row for bench/capacity.py's table: burst figures and the ratio."""
        b = self.burst
        return (f"| setup {b.rate:g} calls/s | p50 {b.q(0.5):.1f} / p99 {b.q(0.99):.1f} ms "
                f"(x{self.p99_ratio:.1f} of {self.baseline.rate:g}/s) | {b.failed} of "
                f"{b.attempted} legs failed ({b.shed} shed, {b.over_capacity} over capacity: "
                f"503) | finalize overlap {b.workers_cpu:.1f} cpu-s, peak live lag "
                f"{b.peak_lag_s:.1f} s |")


# --------------------------------------------------------------------------- SIPp


def scenario_without_rtp(workdir: Path) -> Path:
    """cucm_bulk.xml without its rtp_stream (the burst's calls bring no media), and
    taking a 503 as CUCM does: ACKed in the INVITE's transaction, the leg ended (CUCM
    would try the next recorder), not an unexpected message SIPp answers with a CANCEL."""
    text, count = _RTP_EXEC.subn("", BULK_SCENARIO.read_text())
    if count != 1:
        raise RuntimeError(f"{BULK_SCENARIO.name}: rtp_stream block not found")
    for old, new in _REFUSAL_EDITS:
        if old not in text:
            raise RuntimeError(f"{BULK_SCENARIO.name}: {old.strip()!r} not found")
        text = text.replace(old, new, 1)
    path = workdir / "cucm_setup.xml"
    path.write_text(text)
    return path


class Legs:
    """Two SIPp processes (near-end and far-end legs) of the same calls."""

    def __init__(self, scenario: Path, node: Node, calls: int, rate: float,
                 seconds: float, refci: str, *, trace_messages: bool = False,
                 transport: sipp.Transport = "u1") -> None:
        self.calls, self.rate = calls, rate
        self.runs = []
        for side in ("nearend", "farend"):
            extra = ["-r", f"{rate:g}", "-l", str(calls + 10), "-trace_rtt", "-rtt_freq", "1",
                     "-trace_stat", "-fd", "1"]
            run = sipp.SippRun(
                scenario, ("127.0.0.1", node.sip_port),
                keys={"recorder": "9999", "side": side, "near": "1001", "far": "2002",
                      "refci": refci, "farrefci": "0"},
                duration_ms=int(seconds * 1000), calls=calls, transport=transport,
                timeout_s=calls / rate + seconds + 60, extra_args=extra)
            if not trace_messages:  # keep SIPp light at high rates: rtt and stat files only
                index = run.args.index("-trace_msg")
                del run.args[index:index + 3]  # -trace_msg -message_file <path>
            self.runs.append(run)

    def start(self) -> None:
        for run in self.runs:
            run.start()

    def rtt_ms(self) -> list[float]:
        """INVITE->200 of every leg answered so far."""
        values = []
        for run in self.runs:
            for path in run.workdir.glob("*_rtt.csv"):
                with path.open() as handle:
                    for row in csv.reader(handle, delimiter=";"):
                        with contextlib.suppress(ValueError, IndexError):
                            values.append(float(row[1]))
        return values

    def created(self) -> int:
        """Legs SIPp created (its last statistics dump, once a second)."""
        return self._statistic("TotalCallCreated")

    def ended(self) -> int:
        """Legs SIPp has finished, either way (a refused leg ends at once)."""
        return self._statistic("SuccessfulCall(C)") + self._statistic("FailedCall(C)")

    def _statistic(self, name: str) -> int:
        total = 0
        for run in self.runs:
            for path in run.workdir.glob("*.csv"):
                if path.name.endswith("_rtt.csv"):
                    continue
                rows = list(csv.reader(path.open(), delimiter=";"))
                if len(rows) >= 2 and name in rows[0]:
                    column = rows[0].index(name)
                    total += max(int(r[column]) for r in rows[1:] if len(r) > column)
        return total

    async def wait_answered(self, grace: float) -> None:
        """Until every leg is answered or has ended (refused), or `grace` s after the
        last was due."""
        deadline = time.monotonic() + self.calls / self.rate + grace
        while time.monotonic() < deadline:
            if len(self.rtt_ms()) >= 2 * self.calls or self.ended() >= 2 * self.calls:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.2)  # one more statistics dump

    def close(self) -> None:
        for run in self.runs:
            run.close()


def answer_ports(legs: Legs) -> list[int]:
    """RTP ports of the 200 OKs' SDP, from the message logs."""
    ports = []
    for run in legs.runs:
        for entry in run.entries():
            if (entry.direction == "received" and entry.status_code == 200
                    and entry.method == "INVITE" and entry.sdp):
                ports.append(entry.sdp[0].port)
    return ports


# --------------------------------------------------------------------------- run


def cpu_sample(capture_pid: int, signaling_pid: int) -> tuple[float, float, float]:
    """(capture itself, its descendants: the encoder workers, signaling) CPU-s."""
    tree = loadgen.descendants(capture_pid)
    own = next((s.cpu for s in tree if s.pid == capture_pid), math.nan)
    workers = sum(s.cpu + s.child_cpu for s in tree if s.pid != capture_pid)
    return own, workers, loadgen.proc_cpu(signaling_pid)


SHED_METRIC = "callrec_signaling_invites_shed"
AFTER_ALLOCATE_METRIC = "callrec_signaling_legs_answered_after_allocate"
OVER_CAPACITY_METRIC = "callrec_signaling_calls_over_capacity"
LAG_METRIC = "callrec_capture_live_lag_seconds"


async def measure(legs: Legs, phase: Phase, node: Node, pids: tuple[int, int],
                  grace: float) -> None:
    before = cpu_sample(*pids)
    shed_before = await asyncio.to_thread(node.metric, SHED_METRIC)
    over_before = await asyncio.to_thread(node.metric, OVER_CAPACITY_METRIC)
    allocated_before = await asyncio.to_thread(node.metric, AFTER_ALLOCATE_METRIC)
    lag = loadgen.GaugePeak(node, LAG_METRIC)
    lag.start()
    legs.start()
    try:
        await legs.wait_answered(grace)
    finally:
        phase.peak_lag_s = await lag.stop()
    after = cpu_sample(*pids)
    phase.shed = round(await asyncio.to_thread(node.metric, SHED_METRIC) - shed_before)
    phase.over_capacity = round(
        await asyncio.to_thread(node.metric, OVER_CAPACITY_METRIC) - over_before)
    phase.after_allocate = round(
        await asyncio.to_thread(node.metric, AFTER_ALLOCATE_METRIC) - allocated_before)
    phase.capture_cpu, phase.workers_cpu, phase.signaling_cpu = (
        a - b for a, b in zip(after, before, strict=True))
    phase.latencies_ms = legs.rtt_ms()
    phase.answered = len(phase.latencies_ms)
    phase.attempted = max(legs.created(), phase.answered)


async def run(rate: float = 200.0, seconds: float = 8.0, *, baseline_rate: float = 20.0,
              baseline_seconds: float = 5.0, media_calls: int = 150,
              media_seconds: float = 20.0, shed_after: float | None = None,
              keep: bool = False, transport: sipp.Transport = "u1") -> SetupRateResult:
    """Start a node, measure the baseline, the media load, then the burst."""
    root = Path(tempfile.mkdtemp(prefix="callrec-bench-setup-"))
    burst_legs = 2 * round(rate * seconds)
    shedding = [] if shed_after is None else ["--sip-shed-after", f"{shed_after:g}"]
    node = sip_bench_node(root, rate, "--media-timeout", "0", *shedding)
    scenario = scenario_without_rtp(root)
    even_ports = (RTP_PORTS[1] - RTP_PORTS[0]) // 2 + 1
    result = SetupRateResult(Phase("baseline", baseline_rate, baseline_seconds),
                             Phase("burst, finalizing", rate, seconds), media_calls,
                             media_seconds)
    if transport == "t1":
        result.notes.append("the baseline's and the burst's legs over TCP (a connection per "
                            "SIPp process, near and far)")
    if burst_legs > even_ports:
        result.notes.append(
            f"the burst's {burst_legs} legs are more than the {even_ports} even RTP ports of "
            f"{RTP_PORTS[0]}-{RTP_PORTS[1]} (one a leg): capture answers the rest 503, no port")
    all_legs: list[Legs] = []
    try:
        progress("starting the node")
        await asyncio.to_thread(node.start, 90.0)
        assert node.process is not None
        pgrp = node.process.pid
        pids = (loadgen.find_service(pgrp, "capture"), loadgen.find_service(pgrp, "signaling"))

        progress(f"baseline: {baseline_rate:g} calls/s x {baseline_seconds:g} s")
        legs = Legs(scenario, node, round(baseline_rate * baseline_seconds), baseline_rate,
                    CALL_SECONDS, "7", transport=transport)
        all_legs.append(legs)
        await measure(legs, result.baseline, node, pids, grace=5.0)

        media_rate = 50.0
        progress(f"media load: {media_calls} calls with RTP for {media_seconds:g} s")
        media = Legs(scenario, node, media_calls, media_rate, media_seconds, "8",
                     trace_messages=True)
        all_legs.append(media)
        hangup = time.monotonic() + media_seconds
        media.start()
        await media.wait_answered(grace=5.0)
        ports = answer_ports(media)
        if len(ports) < 2 * media_calls:
            result.notes.append(f"media load: {len(ports)} of {2 * media_calls} legs answered")
        send_seconds = max(1.0, hangup - time.monotonic() - 0.5)
        sent = await loadgen.send_load(ports, send_seconds, {})
        result.media_packets_sent = sent.sent
        await asyncio.sleep(max(0.0, hangup - time.monotonic()))

        progress(f"burst: {rate:g} calls/s x {seconds:g} s ({burst_legs} legs)")
        legs = Legs(scenario, node, round(rate * seconds), rate, CALL_SECONDS, "9",
                    transport=transport)
        all_legs.append(legs)
        await measure(legs, result.burst, node, pids, grace=10.0)
        return result
    finally:
        for legs in all_legs:
            legs.close()
        await dispose(node, root, keep)


def sip_bench_node(root: Path, rate: float, *extra: str) -> Node:
    """A node SIPp drives from 127.0.0.1 at `rate` calls/s: it records every call, and no
    licence, rate or pending-media limit stands in the way."""
    return Node(root / "node", rtp_ports=RTP_PORTS, extra_args=[
        "--record-all", "--max-channels", "20000", "--sip-allow", "127.0.0.1/32",
        "--sip-rate", f"{max(1000.0, 8 * rate):g}", "--sip-pending-media", "40000", *extra])


async def dispose(node: Node, root: Path, keep: bool) -> None:
    """Kill the node; keep its directory (saying where) or remove it."""
    await asyncio.to_thread(node.kill)
    if keep:
        print(f"# kept {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="new calls/s of the burst")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the burst")
    parser.add_argument("--baseline-rate", type=float, default=20.0)
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--media-calls", type=int, default=150,
                        help="calls with RTP whose finalize overlaps the burst")
    parser.add_argument("--media-seconds", type=float, default=20.0)
    parser.add_argument("--shed-after", type=float, default=None,
                        help="the node's --sip-shed-after (default: the node's; 0: never)")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp",
                        help="SIP transport of the baseline's and the burst's legs (each "
                             "SIPp process, near and far, one TCP connection)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few calls/s for a few seconds (what the test runs)")
    parser.add_argument("--keep", action="store_true", help="keep the node's directory")
    args = parser.parse_args()
    if args.smoke:
        args.rate, args.seconds, args.baseline_rate, args.baseline_seconds = 5.0, 2.0, 2.0, 2.0
        args.media_calls, args.media_seconds = 3, 4.0
    result = asyncio.run(run(args.rate, args.seconds, baseline_rate=args.baseline_rate,
                             baseline_seconds=args.baseline_seconds,
                             media_calls=args.media_calls, media_seconds=args.media_seconds,
                             shed_after=args.shed_after, keep=args.keep,
                             transport="t1" if args.transport == "tcp" else "u1"))
    print(result.table())
    print()
    print(f"p99 burst / baseline: {result.p99_ratio:.2f}; media load {result.media_calls} "
          f"calls x {result.media_seconds:g} s ({result.media_packets_sent} packets), "
          f"hung up as the burst started; capture's encoder workers used "
          f"{result.burst.workers_cpu:.2f} cpu-s during the burst (finalize overlap); "
          f"{os.cpu_count()} cores")
    for note in result.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
