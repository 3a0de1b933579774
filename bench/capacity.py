"""Capacity side by side: rtpengine, a bare drain and callrec on the same load, one table.

Why: how many calls a node records per core decides what a customer buys, and
absolute CPU figures move between machines; so every system is measured in the same
run, under the same paced sender (bench/loadgen.py: two PCMU 20 ms streams per call,
440 Hz on channel 0, 1004 Hz on channel 1), and callrec is stated as a ratio to the
machine's floor: receiving as rtpengine does it plus libopus at its cheapest on the
same audio.

callrec is driven through capture's NATS RPCs (allocate/update/finalize, as
capture_load.py does), not over SIP: the figures are the capture path and finalize.

    python -m bench.capacity                          # 50,100,200,400 calls, 20 s each
    python -m bench.capacity --calls 100,400 --append-results
    python -m bench.capacity --smoke                  # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import loadgen, rtpengine  # noqa: E402
from bench.capture_load import CaptureDriver, catalog_items, running_node  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
RATE = 8000
TONE_TOLERANCE_HZ = 15.0
OPUS_BITRATE = 8000  # per channel, narrowband: the cheapest Opus that is still speech


T0 = time.monotonic()


def progress(what: str) -> None:
    """Where the run is, on stderr (the table goes to stdout)."""
    print(f"# {time.monotonic() - T0:6.1f} s  {what}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- figures


@dataclass
class Line:
    """One row of the table: one system at one call count."""

    system: str
    calls: int
    pps: float = float("nan")
    loss_pct: float = float("nan")
    rx_cm: float = float("nan")  # CPU-s per call-minute of the receiving process
    live_cm: float = 0.0  # CPU-s per call-minute of encoding while media arrives
    fin_cm: float = 0.0  # CPU-s per call-minute after the call (finalize)
    mb_call_h: float = float("nan")
    p50_s: float = float("nan")
    p99_s: float = float("nan")
    correct: str = ""
    floor_ratio: float = float("nan")
    recorded_ratio: float = float("nan")  # recorded duration / duration of the load
    sender: str = ""  # did the sender keep pace: "% of schedule sent / worst lag"

    @property
    def all_cm(self) -> float:
        return self.rx_cm + self.live_cm + self.fin_cm

    @property
    def calls_per_core(self) -> float:
        """A core gives 60 CPU-s per minute; each concurrent call costs all_cm of it."""
        return 60.0 / self.all_cm if self.all_cm > 0 else float("nan")


def per_call_minute(cpu_s: float, calls: int, seconds: float) -> float:
    return cpu_s / (calls * seconds / 60.0) if calls and seconds else float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def pace(sent: loadgen.SendResult) -> str:
    """Below 100 % (or a lag) the level is not valid: the sender, not the receiver, fell
    behind."""
    return f"{sent.rate_pct:.2f} % / {sent.max_lag_ms:.0f} ms"


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero (a short smoke level can be below /proc's 10 ms tick)."""
    return a / b if b > 0 else float("nan")


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def render_table(lines: list[Line], header: str, notes: list[str]) -> str:
    """The markdown table printed and appended to RESULTS.md."""
    out = [header, "",
           "| calls | system | pps | loss % | rx cpu/cm | live enc cpu/cm | fin cpu/cm "
           "| all-in cpu/cm | calls/core | x floor | MB/call-h | BYE->done p50 s | p99 s "
           "| correct |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for ln in lines:
        out.append(f"| {ln.calls} | {ln.system} | {fmt(ln.pps, 0)} | {fmt(ln.loss_pct)} "
                   f"| {fmt(ln.rx_cm, 4)} | {fmt(ln.live_cm, 4)} | {fmt(ln.fin_cm, 4)} "
                   f"| {fmt(ln.all_cm, 4)} "
                   f"| {fmt(ln.calls_per_core, 0)} | {fmt(ln.floor_ratio, 2)} "
                   f"| {fmt(ln.mb_call_h, 2)} | {fmt(ln.p50_s)} | {fmt(ln.p99_s)} "
                   f"| {ln.correct} |")
    out.append("")
    out.extend(f"- {n}" for n in notes)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the floor's encoder


def opus_floor(seconds: float) -> tuple[float, float]:
    """CPU-s per call-minute and MB per call-hour of libopus at its cheapest
    (complexity 0, 60 ms frames, 8 kbit/s) on two 8 kHz mono channels of the
    sender's tones after G.711, one AudioFrame per second handed to FFmpeg."""
    import av
    import numpy as np

    from callrec.audio import pcmu_decode, pcmu_encode, tone

    channels = [pcmu_decode(pcmu_encode(tone(hz, seconds, RATE))) for hz in loadgen.TONES_HZ]
    start = time.process_time()
    size = 0
    for samples in channels:
        ctx: Any = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = RATE
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = OPUS_BITRATE
        ctx.options = {"compression_level": "0", "frame_duration": "60"}
        for i in range(0, len(samples), RATE):
            chunk = np.ascontiguousarray(samples[i : i + RATE]).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = i
            size += sum(p.size for p in ctx.encode(frame))
        size += sum(p.size for p in ctx.encode(None))
    cpu = time.process_time() - start
    return cpu / (seconds / 60.0), size / 1e6 / (seconds / 3600.0)


# --------------------------------------------------------------------------- rtpengine


async def run_rtpengine(ng: rtpengine.NgClient, daemon: rtpengine.Daemon, calls: int,
                        seconds: float) -> Line:
    """N recorded calls through rtpengine: its CPU while media flows, loss from its pcaps."""
    tag = uuid.uuid4().hex[:6]
    call_ids = [f"bench-{calls}-{tag}-{i}" for i in range(calls)]
    ports: list[int] = []
    for call_id in call_ids:
        # The parties' own SDP ports are never sent to (blackhole), so one pair serves all.
        near, far = await asyncio.to_thread(rtpengine.open_recorded_call, ng, call_id, 4000)
        ports.extend([near, far])
    assert daemon.process is not None
    pid = daemon.process.pid
    sent = await loadgen.send_load(ports, seconds, {"cpu": lambda: loadgen.proc_cpu(pid)})
    await asyncio.sleep(0.3)
    for call_id in call_ids:
        await asyncio.to_thread(ng.request, {"command": "delete", "call-id": call_id,
                                             "from-tag": "a"})
    await asyncio.sleep(0.5)  # pcap files are flushed and closed on delete
    packets = size = 0
    for path in daemon.recording_dir.rglob(f"bench-{calls}-{tag}-*.pcap"):
        packets += rtpengine.pcap_packets(path)
        size += path.stat().st_size
    return Line(system="rtpengine (pcap)", calls=calls, pps=sent.sent / sent.elapsed,
                loss_pct=100.0 * (1 - packets / sent.sent) if sent.sent else float("nan"),
                rx_cm=per_call_minute(sent.extra["cpu"], calls, sent.elapsed),
                mb_call_h=size / 1e6 / (calls * sent.elapsed / 3600),
                correct=f"{packets} pkts in pcap", sender=pace(sent))


@contextlib.contextmanager
def rtpengine_running(calls: int) -> Iterator[tuple[rtpengine.NgClient, rtpengine.Daemon] | str]:
    """(ng client, daemon), or why rtpengine cannot run here."""
    reason = rtpengine.ensure_installed()
    if reason:
        yield reason
        return
    # RTP and RTCP on each side: 4 ports a call, below the node's range (from 20000)
    # and the ephemeral ports.
    port_min = 7000
    daemon = rtpengine.Daemon(port_min=port_min, port_max=port_min + 4 * calls + 200)
    try:
        ng = daemon.start()
    except rtpengine.NgError as exc:
        daemon.stop()
        daemon.cleanup()
        yield f"rtpengine did not start: {exc}"
        return
    try:
        yield ng, daemon
    finally:
        ng.close()
        daemon.stop()
        daemon.cleanup()


# --------------------------------------------------------------------------- callrec


async def run_callrec(node: Any, driver: CaptureDriver, capture_pid: int, calls: int,
                      seconds: float, samples: int, workdir: Path) -> Line:
    """N calls through capture: all CPU of capture and its workers, loss, correctness."""
    tag = f"{calls}-{uuid.uuid4().hex[:6]}"
    allocated_at = time.monotonic()
    ids, ports = await driver.allocate(calls, tag)
    sent = await loadgen.send_load(ports, seconds,
                                   {"rx": lambda: loadgen.proc_cpu(capture_pid),
                                    "tree": lambda: loadgen.tree_cpu(capture_pid)})
    before = loadgen.tree_cpu(capture_pid)  # so the flush wait below is counted in fin
    await asyncio.sleep(0.6)  # one flush interval: the last packets reach the segments
    open_s = time.monotonic() - allocated_at  # allocation to the finalize requests
    with contextlib.suppress(TimeoutError):
        await driver.finalize(ids, timeout=120 + calls * seconds / 10)
    fin_cpu = loadgen.tree_cpu(capture_pid) - before
    failed = {rid for rid in ids if driver.done.get(rid) != "completed"}
    items = await catalog_items(node, set(ids) - failed, 60)
    stored = size = 0
    recorded_s = 0.0
    durations_ok = 0
    for item in items:
        size += int(item["size_bytes"])
        duration = int(item["duration_ms"]) / 1000
        recorded_s += duration
        channels = item["channels"]
        stored += sum(int(c["packets_received"]) for c in channels)
        # A recording spans allocation to finalize, so it is longer than the load.
        if len(channels) == 2 and seconds - 0.1 <= duration <= open_s + 0.5:
            durations_ok += 1
    tones_ok, checked = await check_tones(node, [i["recording_id"] for i in items][:samples],
                                          seconds, workdir)
    latencies = [driver.done_at[r] - driver.requested_at[r] for r in ids
                 if r in driver.done_at and r in driver.requested_at]
    # Per call-minute of load, the denominator of every row (the recordings are longer:
    # they start at allocation, before the sender; the note gives the ratio).
    return Line(system="callrec", calls=calls, pps=sent.sent / sent.elapsed,
                loss_pct=100.0 * (1 - stored / sent.sent) if sent.sent else float("nan"),
                rx_cm=per_call_minute(sent.extra["rx"], calls, sent.elapsed),
                live_cm=per_call_minute(sent.extra["tree"] - sent.extra["rx"], calls,
                                        sent.elapsed),
                fin_cm=per_call_minute(fin_cpu, calls, sent.elapsed),
                recorded_ratio=recorded_s / (calls * sent.elapsed),
                mb_call_h=size / 1e6 / (recorded_s / 3600) if recorded_s else float("nan"),
                p50_s=percentile(latencies, 50), p99_s=percentile(latencies, 99),
                sender=pace(sent),
                correct=(f"{durations_ok}/{calls} duration+2ch, {tones_ok}/{checked} tones, "
                         f"{len(failed)} not completed"))


async def check_tones(node: Any, ids: list[str], seconds: float,
                      workdir: Path) -> tuple[int, int]:
    """Download a sample of recordings: does each channel carry its own tone for the
    whole load (within one 20 ms frame per second of slack)?"""
    import httpx

    from callrec.audio import decode_file, dominant_frequency, sound_seconds
    from tests.support.node import ADMIN_PASSWORD

    good = 0
    async with httpx.AsyncClient(base_url=node.base_url, auth=("admin", ADMIN_PASSWORD),
                                 timeout=30.0) as client:
        for rid in ids:
            response = await client.get(f"/api/recordings/{rid}/audio")
            if response.status_code != 200:
                continue
            path = workdir / f"{rid}.opus"
            path.write_bytes(response.content)
            audio, _ = await asyncio.to_thread(decode_file, path, RATE)
            if len(audio) != 2:
                continue
            tones = all(abs(dominant_frequency(audio[ch], RATE) - hz) < TONE_TOLERANCE_HZ
                        for ch, hz in enumerate(loadgen.TONES_HZ))
            sound = all(sound_seconds(audio[ch], RATE) >= seconds * 0.98 - 0.04
                        for ch in range(2))
            good += tones and sound
    return good, len(ids)


# --------------------------------------------------------------------------- the run


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} cores ({model}), kernel {platform.release()}, "
            f"Python {platform.python_version()}, load average "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at start")


def commit() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "?"


async def run(levels: list[int], seconds: float, samples: int, with_rtpengine: bool,
              keep: bool) -> str:
    """Every level, every system; returns the rendered table."""
    header = (f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, "
              f"{', '.join(map(str, levels))} calls x {seconds:g} s\n\nMachine: {machine()}.")
    notes: list[str] = []
    progress("encoding the floor's Opus")
    opus_cm, opus_mb = await asyncio.to_thread(opus_floor, max(10.0, seconds))
    lines: list[Line] = []
    with contextlib.ExitStack() as stack:
        rtpe_ctx = (stack.enter_context(rtpengine_running(max(levels)))
                    if with_rtpengine else "not asked for (--no-rtpengine)")
        if isinstance(rtpe_ctx, str):
            notes.append(f"rtpengine skipped: {rtpe_ctx}")
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="capacity-")))
        progress("starting the node")
        async with running_node(max(levels), keep) as (node, driver, capture_pid):
            progress("node up, finalize warmed up")
            for calls in levels:
                progress(f"{calls} calls")
                level: list[Line] = []
                rtpe = None
                if not isinstance(rtpe_ctx, str):
                    rtpe = await run_rtpengine(*rtpe_ctx, calls, seconds)
                    progress(f"{calls} calls: rtpengine done")
                    level.append(rtpe)
                base, received = await loadgen.baseline(calls, seconds)
                drain = Line(system="bare drain (asyncio)", calls=calls,
                             pps=base.sent / base.elapsed,
                             loss_pct=100.0 * (1 - received / base.sent),
                             rx_cm=per_call_minute(base.extra["cpu"], calls, base.elapsed),
                             correct=f"{received} pkts counted", sender=pace(base))
                level.append(drain)
                progress(f"{calls} calls: bare drain done")
                rx_floor = rtpe if rtpe is not None else drain
                floor = Line(system=f"floor ({'rtpengine' if rtpe else 'drain'} rx + opus c0)",
                             calls=calls, rx_cm=rx_floor.rx_cm, live_cm=opus_cm,
                             mb_call_h=opus_mb, floor_ratio=1.0)
                level.append(floor)
                callrec = await run_callrec(node, driver, capture_pid, calls, seconds,
                                            samples, workdir)
                callrec.floor_ratio = ratio(callrec.all_cm, floor.all_cm)
                level.append(callrec)
                progress(f"{calls} calls: callrec done")
                notes.append(f"{calls} calls: callrec's recordings last "
                             f"{callrec.recorded_ratio:.2f}x the load (allocation comes "
                             "before the sender starts)")
                if rtpe is not None:
                    rtpe.floor_ratio = ratio(rtpe.all_cm, floor.all_cm)
                    notes.append(f"{calls} calls: callrec rx / rtpengine rx = "
                                 f"{fmt(ratio(callrec.rx_cm, rtpe.rx_cm), 2)}")
                drain.floor_ratio = ratio(drain.all_cm, floor.all_cm)
                notes.append(f"{calls} calls: sender sent % of schedule / worst lag: " + ", ".join(
                    f"{ln.system} {ln.sender}" for ln in level if ln.sender))
                lines.extend(level)
    notes += [
        "cpu/cm = CPU-s (utime+stime from /proc) per call-minute of load (calls x minutes "
        "the sender played), the same denominator in every row. rx = the receiving "
        "process while media arrives (callrec: services.capture alone); live enc = "
        "capture's descendants (its encoding worker) while media arrives (the floor: "
        "libopus); fin = capture and its descendants from the finalize requests to the "
        "last `recording.completed`. all-in = rx + live enc + fin; calls/core = 60 / all-in.",
        "floor = rtpengine's rx (or the drain's when rtpengine is skipped) + libopus at "
        f"complexity 0, 60 ms frames, {OPUS_BITRATE // 1000} kbit/s per channel on two 8 kHz "
        f"mono channels of the same audio ({opus_cm:.4f} CPU-s per call-minute, measured in "
        "this run with PyAV). x floor = all-in / floor's all-in.",
        "callrec through capture's NATS RPCs (no SIP). BYE->done = finalize request to its "
        "`recording.completed` event, with every call of the level ending at once (the "
        "backlog is part of it). loss = 1 - stored (or pcap'd, or counted) / sent.",
        "MB/call-h: callrec's stored Ogg/Opus, rtpengine's raw pcap, the floor's Opus packets.",
        "Sender, receivers and node share the machine's cores; compare ratios within one run.",
    ]
    return render_table(lines, header, notes)


RESULTS_HEADER = """# Capacity results (`python -m bench.capacity`)

Each run appends its table. One row per system and call count, all measured in the
same run under the same paced G.711 load (two 20 ms streams per call):

- `rtpengine (pcap)`: Debian's rtpengine-daemon, userspace, recording raw RTP to pcap,
  forwarding nothing (`media echo: blackhole`), driven over its ng protocol.
- `bare drain (asyncio)`: a Python receiver that only counts packets.
- `floor`: rtpengine's receive cost + libopus at its cheapest (complexity 0, 60 ms
  frames, two 8 kHz mono channels) on the same audio: the machine's floor for a
  recorded call-minute stored as Opus.
- `callrec`: one real node driven through capture's NATS RPCs (allocate, update,
  finalize; no SIP: the finalize request stands in for the BYE); receive, live encoding
  and finalize, every recording checked.

Columns: `pps` packets/s sent; `loss %`; CPU-s per call-minute of load: `rx cpu/cm` of
the receiving process while media arrives, `live enc cpu/cm` of encoding while media
arrives (callrec's encoding worker; the floor's libopus), `fin cpu/cm` after hang-up
(finalize) and `all-in cpu/cm` their sum;
`calls/core` = 60 / all-in; `x floor` = all-in / the floor's; `MB/call-h` stored per
call-hour; `BYE->done` finalize request to `recording.completed` (p50, p99); `correct`:
recordings of the right duration with both channels, and sampled ones whose channels
carry their tones (440 / 1004 Hz). Absolute figures move between machines: compare
ratios within one run.
"""


def append_results(table: str, path: Path = RESULTS) -> None:
    if not path.exists():
        path.write_text(RESULTS_HEADER)
    with path.open("a") as f:
        f.write("\n" + table)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="50,100,200,400", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per level")
    parser.add_argument("--samples", type=int, default=5,
                        help="recordings per level downloaded to check both tones")
    parser.add_argument("--no-rtpengine", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="3 calls for 2 s: proves the bench runs (figures are noise)")
    parser.add_argument("--append-results", action="store_true",
                        help=f"append the table to {RESULTS.relative_to(REPO)}")
    parser.add_argument("--keep", action="store_true", help="keep the node's data dir")
    args = parser.parse_args(argv)
    levels = [3] if args.smoke else [int(c) for c in args.calls.split(",") if c.strip()]
    seconds = 2.0 if args.smoke else args.seconds
    if not levels or min(levels) < 1 or max(levels) > 1500:
        parser.error("--calls must be 1..1500")  # the RTP port ranges below 20000 and 32768
    if not 1 <= seconds <= 600:
        parser.error("--seconds must be within 1..600")
    table = asyncio.run(run(levels, seconds, 1 if args.smoke else args.samples,
                            not args.no_rtpengine, args.keep))
    print(table)
    if args.append_results:
        append_results(table)
    return table


if __name__ == "__main__":
    main()

