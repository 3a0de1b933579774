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

After the levels, the same command measures storage and quality through capture's
encoder (bench/quality.py: tones, speech STOI, a conversation; at the node's default
bitrate and 12 kbit/s), BYE->playable with calls in progress ending one by one
(bench/churn.py, `--churn`), and the call set-up rate over SIP while finalizing
(bench/setup_rate.py, `--setup-rate`), and prints their tables under the first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import loadgen, quality, rtpengine, scratchfs, setup_rate  # noqa: E402
from bench.capture_load import (  # noqa: E402
    FLUSH_WAIT_S,
    CaptureDriver,
    catalog_items,
    running_node,
)
from bench.floor import libopus_floor  # noqa: E402
from callrec import filesystem  # noqa: E402
from callrec.config import NodeConfig  # noqa: E402
from callrec.opus import OpusMode  # noqa: E402

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
    sent_pct: float = 100.0  # packets sent / scheduled
    late_s: float = 0.0  # how much later than scheduled the sender finished
    wrong: int = 0  # recordings missing, failed, of the wrong duration or without a tone
    idle_mb: float = float("nan")  # Pss of the system's processes before the level
    peak_mb: float = float("nan")  # ... at the peak of the load
    playable_p50: float = float("nan")  # BYE -> listed and complete file, recording node
    playable_p99: float = float("nan")
    peer_p50: float = float("nan")  # BYE -> listed and complete file, on the peer
    peer_p99: float = float("nan")

    @property
    def all_cm(self) -> float:
        return self.rx_cm + self.live_cm + self.fin_cm

    @property
    def kb_per_call(self) -> float:
        """Memory an active call adds: (peak - idle) / calls."""
        return (self.peak_mb - self.idle_mb) * 1000 / self.calls if self.calls else float("nan")

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


MAX_LOSS_PCT = 0.1
MAX_LATE_S = 0.5  # a sender that finishes later than this fell behind (it never skips)


def level_problems(line: Line, seconds: float) -> list[str]:
    """Why a level is not clean (empty: clean). The breaking point is the last clean
    level: loss above 0.1 %, a wrong recording, or a sender that could not keep pace."""
    problems = []
    if not line.loss_pct <= MAX_LOSS_PCT:  # NaN (nothing sent) is not clean either
        problems.append(f"loss {fmt(line.loss_pct)} % > {MAX_LOSS_PCT} %")
    if line.wrong:
        problems.append(f"{line.wrong} wrong recordings")
    if line.sent_pct < 99.9 or line.late_s > max(MAX_LATE_S, 0.02 * seconds):
        problems.append(f"sender fell behind ({line.sent_pct:.2f} % sent, finished "
                        f"{line.late_s:.2f} s late)")
    return problems


def next_level(done: list[int], planned: list[int], max_calls: int, step: float = 1.5,
               ) -> int | None:
    """The planned levels first, then x`step` (rounded to 10 calls) up to `max_calls`;
    None when there is nothing above."""
    remaining = [c for c in planned if c not in done]
    if remaining:
        return remaining[0]
    if not done or done[-1] >= max_calls:
        return None
    return min(max_calls, max(done[-1] + 10, round(done[-1] * step / 10) * 10))


def memory_slopes(lines: list[Line]) -> str:
    """KB per call from the node's peak between consecutive callrec levels: what one more
    active call costs, free of what earlier levels left behind (which inflates `idle`)."""
    rows = [ln for ln in lines if ln.system == "callrec" and ln.peak_mb == ln.peak_mb]
    parts = [f"{a.calls}->{b.calls} calls "
             f"{(b.peak_mb - a.peak_mb) * 1000 / (b.calls - a.calls):.0f}"
             for a, b in itertools.pairwise(rows) if b.calls != a.calls]
    return ", ".join(parts)


def mem_note(sample: dict[str, tuple[int, int]]) -> str:
    """`capture 61.2, encoder worker (2) 170.4, ...` in MB, largest first."""
    parts = sorted(sample.items(), key=lambda kv: -kv[1][0])
    return ", ".join(f"{label}{f' ({n})' if n > 1 else ''} {kb / 1000:.1f}"
                     for label, (kb, n) in parts)


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
           "| all-in cpu/cm | calls/core | x floor | MB/call-h | BYE->done p50 s "
           "| BYE->done p99 s | BYE->playable p50 s | BYE->playable p99 s "
           "| on peer p50 s | on peer p99 s "
           "| idle MB | peak MB | KB/call | correct |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
           "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for ln in lines:
        out.append(f"| {ln.calls} | {ln.system} | {fmt(ln.pps, 0)} | {fmt(ln.loss_pct)} "
                   f"| {fmt(ln.rx_cm, 4)} | {fmt(ln.live_cm, 4)} | {fmt(ln.fin_cm, 4)} "
                   f"| {fmt(ln.all_cm, 4)} "
                   f"| {fmt(ln.calls_per_core, 0)} | {fmt(ln.floor_ratio, 2)} "
                   f"| {fmt(ln.mb_call_h, 2)} | {fmt(ln.p50_s)} | {fmt(ln.p99_s)} "
                   f"| {fmt(ln.playable_p50)} | {fmt(ln.playable_p99)} "
                   f"| {fmt(ln.peer_p50)} | {fmt(ln.peer_p99)} "
                   f"| {fmt(ln.idle_mb, 1)} | {fmt(ln.peak_mb, 1)} | {fmt(ln.kb_per_call, 0)} "
                   f"| {ln.correct} |")
    out.append("")
    out.extend(f"- {n}" for n in notes)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the floor's encoder


FLOOR_REPEATS = 5
"""The floor is the cheapest of this many encodings: one encoding of 20 s of audio is
about 50 ms of CPU, and a single one, taken while the CPU's caches and clock were cold,
once came out half again as dear as the next level's (its x floor flattered callrec)."""


def opus_floor(seconds: float, mode: OpusMode = "auto") -> tuple[float, float]:
    """CPU-s per call-minute and MB per call-hour of libopus at its cheapest
    (bench/floor.py) on two 8 kHz mono channels of the sender's tones after G.711:
    ``auto`` (SILK) is issue 11's floor, ``celt`` the cheaper one capture now encodes with."""
    from callrec.audio import pcmu_decode, pcmu_encode, tone

    channels = [pcmu_decode(pcmu_encode(tone(hz, seconds, RATE))) for hz in loadgen.TONES_HZ]
    runs = [libopus_floor(channels, OPUS_BITRATE, mode) for _ in range(FLOOR_REPEATS)]
    cpu = min(cpu for cpu, _ in runs)
    size = runs[0][1]
    return cpu / (seconds / 60.0), size / 1e6 / (seconds / 3600.0)


# --------------------------------------------------------------------------- rtpengine


async def run_rtpengine(ng: rtpengine.NgClient, daemon: rtpengine.Daemon, calls: int,
                        seconds: float) -> Line:
    """N recorded calls through rtpengine: its CPU while media flows, loss from its pcaps."""
    tag = uuid.uuid4().hex[:6]
    call_ids = [f"bench-{calls}-{tag}-{i}" for i in range(calls)]
    assert daemon.process is not None
    pid = daemon.process.pid
    idle = loadgen.total_kb(loadgen.pid_memory(pid))
    ports: list[int] = []
    for call_id in call_ids:
        # The parties' own SDP ports are never sent to (blackhole), so one pair serves all.
        near, far = await asyncio.to_thread(rtpengine.open_recorded_call, ng, call_id, 4000)
        ports.extend([near, far])
    sampler = loadgen.PeakSampler(lambda: loadgen.pid_memory(pid))
    sampler.start()
    try:
        sent = await loadgen.send_load(ports, seconds, {"cpu": lambda: loadgen.proc_cpu(pid)})
    finally:
        peak = loadgen.total_kb(await sampler.stop())
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
                correct=f"{packets} pkts in pcap", sender=pace(sent),
                sent_pct=sent.rate_pct, late_s=max(0.0, sent.elapsed - seconds),
                idle_mb=idle / 1000, peak_mb=peak / 1000)


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


def spread(ids: list[str], count: int) -> list[str]:
    """`count` ids evenly spread over the list (sorted, so over the order of allocation):
    the first and last calls of a level are checked, not only the newest ones."""
    ordered = sorted(ids)
    if count <= 0 or not ordered:
        return []
    if count >= len(ordered):
        return ordered
    if count == 1:
        return [ordered[-1]]
    return [ordered[round(i * (len(ordered) - 1) / (count - 1))] for i in range(count)]


def playable_now(items: list[dict[str, Any]], pending: set[str], store_root: Path) -> list[str]:
    """The ids of `pending` that a catalog listing holds and whose whole file (all of
    `size_bytes`) is in the node's object store: playable there."""
    found = []
    for item in items:
        rid = item.get("recording_id")
        if rid not in pending:
            continue
        try:
            size = (store_root / str(item["object_key"])).stat().st_size
        except (OSError, KeyError):
            continue
        if size == int(item["size_bytes"]):
            found.append(str(rid))
    return found


def logged_times(log_text: str, event: str, ids: set[str]) -> dict[str, float]:
    """Wall-clock time of the first `event` line for each of `ids` in a node's JSON log."""
    found: dict[str, float] = {}
    needle = f'"{event}"'
    for line in log_text.splitlines():
        if needle not in line or "{" not in line:
            continue
        try:
            record = json.loads(line[line.index("{"):])
            rid = record.get("recording_id")
            if record.get("event") != event or rid not in ids or rid in found:
                continue
            found[rid] = datetime.fromisoformat(record["timestamp"]).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
    return found


def playable_from_log(log_text: str, ids: set[str], copied: bool) -> dict[str, float]:
    """When each of `ids` became playable on a node, by the node's own log: its catalog
    applied the completion (`recording_cataloged`) and, on a node that copies it from
    another (`copied`), its sync stored the object (`object_replicated`); the recording
    node stores the object before it publishes the completion. Unlike the listing
    polls, no poll interval is in these times."""
    cataloged = logged_times(log_text, "recording_cataloged", ids)
    if not copied:
        return cataloged
    stored = logged_times(log_text, "object_replicated", ids)
    return {rid: max(at, stored[rid]) for rid, at in cataloged.items() if rid in stored}


def confirmed_by_poll(logged: dict[str, float], polled: dict[str, float]) -> dict[str, float]:
    """The logged times of the recordings that a listing poll also found playable: a
    recording counts once a client could list it with its whole file, at the time the
    node's log says it became so."""
    return {rid: at for rid, at in logged.items() if rid in polled}


def playable_by_logs(nodes: list[Any], ids: list[str], polled: list[dict[str, float]],
                     driver: CaptureDriver) -> tuple[list[list[float]], list[float]]:
    """BYE->playable of `ids` on each of `nodes` (the first records them, the others
    copy them) by the node's log, for the recordings its listing poll (`polled`, in
    the same order) also found playable; and how far each poll trailed the log, in s
    (up to a poll interval and a listing; below zero the log would be late)."""
    times: list[list[float]] = []
    poll_after_log: list[float] = []
    for index, (node, seen) in enumerate(zip(nodes, polled, strict=True)):
        logged = confirmed_by_poll(playable_from_log(node.log(), set(ids), copied=index > 0),
                                   seen)
        times.append([logged[r] - driver.requested_wall[r] for r in ids
                      if r in logged and r in driver.requested_wall])
        poll_after_log += [seen[r] - driver.requested_at[r]
                           - (logged[r] - driver.requested_wall[r])
                           for r in logged
                           if r in driver.requested_at and r in driver.requested_wall]
    return times, poll_after_log


PLAYABLE_POLL_S = 1.0
"""How often this bench lists each node to confirm its recordings playable. Its
BYE->playable columns come from the nodes' logs (exact); a poll every 0.25 s (until
2026-12-05) cost the burst's saturated cores about 0.2 s of its p99 (listing 400
recordings on two nodes 8 times a second), work no deployment does."""


async def watch_playable(node: Any, ids: list[str], timeout: float,
                         interval: float = 0.25,
                         params: dict[str, str] | None = None,
                         narrow: Callable[[set[str]], dict[str, str]] | None = None,
                         ) -> dict[str, float]:
    """Poll one node's catalog (newest first: this level's recordings are the newest;
    `params` narrow the listing further, and `narrow(pending)` at each poll) and its
    store until each of `ids` is playable there; rid -> monotonic time seen.

    Resolution: the poll interval plus one listing (a few tens of ms)."""
    import httpx

    from tests.support.node import ADMIN_PASSWORD

    pending, seen = set(ids), {}
    store_root = Path(node.data_dir) / "objects"
    deadline = time.monotonic() + timeout
    page = min(1000, len(ids))
    async with httpx.AsyncClient(base_url=node.base_url, auth=("admin", ADMIN_PASSWORD),
                                 timeout=10.0) as client:
        while pending and time.monotonic() < deadline:
            items: list[dict[str, Any]] = []
            for offset in range(0, len(ids), page):
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get("/api/recordings", params={
                        **(params or {}), **(narrow(pending) if narrow else {}),
                        "limit": page, "offset": offset})
                    if response.status_code == 200:
                        items.extend(response.json()["items"])
            now = time.monotonic()
            for rid in playable_now(items, pending, store_root):
                seen[rid] = now
                pending.discard(rid)
            if pending:
                await asyncio.sleep(interval)
    return seen


async def run_callrec(node: Any, driver: CaptureDriver, capture_pid: int, calls: int,
                      seconds: float, samples: int, workdir: Path,
                      peer: Any = None, byes_together: bool = False
                      ) -> tuple[Line, list[str]]:
    """N calls through capture: all CPU of capture and its workers, loss, correctness,
    the node's memory idle and at the peak of the load, BYE->playable here and on the
    peer. Returns the row and notes (memory per process)."""
    assert node.process is not None
    pgrp = node.process.pid  # the node runs in its own session: its pid is the group
    idle = await asyncio.to_thread(loadgen.group_memory, pgrp)
    tag = f"{calls}-{uuid.uuid4().hex[:6]}"
    allocated_at = time.monotonic()
    ids, ports = await driver.allocate(calls, tag)
    sampler = loadgen.PeakSampler(lambda: loadgen.group_memory(pgrp))
    peer_sampler = (loadgen.PeakSampler(lambda: loadgen.group_memory(peer.process.pid), 2.0)
                    if peer is not None else None)
    lag = loadgen.GaugePeak(node, setup_rate.LAG_METRIC)
    sampler.start()
    lag.start()
    if peer_sampler:
        peer_sampler.start()
    groups = [pgrp] + ([peer.process.pid] if peer is not None else [])
    try:
        sent = await loadgen.send_load(ports, seconds,
                                       {"rx": lambda: loadgen.proc_cpu(capture_pid),
                                        "tree": lambda: loadgen.tree_cpu(capture_pid),
                                        "sync": lambda: loadgen.group_cpu(
                                            groups, ("-m services.sync",)),
                                        "bus": lambda: loadgen.group_cpu(
                                            groups, ("nats-server",))})
    finally:
        peak = await sampler.stop()
        peak_lag = await lag.stop()
        peer_peak = await peer_sampler.stop() if peer_sampler else {}
    before = loadgen.tree_cpu(capture_pid)  # so the flush wait below is counted in fin
    before_main = loadgen.proc_cpu(capture_pid)
    await asyncio.sleep(FLUSH_WAIT_S)
    fin_timeout = 120 + calls * seconds / 10
    watches = [asyncio.create_task(watch_playable(n, ids, fin_timeout + 60, PLAYABLE_POLL_S,
                                                  narrow=driver.from_first_pending))
               for n in ([node, peer] if peer is not None else [node])]
    with contextlib.suppress(TimeoutError):
        await driver.finalize(ids, timeout=fin_timeout, together=byes_together)
    fin_cpu = loadgen.tree_cpu(capture_pid) - before
    fin_main = loadgen.proc_cpu(capture_pid) - before_main
    playable = [await w for w in watches]
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
        # A recording spans allocation to its finalize request (the requests go one
        # after another, so the last is later than the first), so it is longer than
        # the load.
        ended_s = driver.requested_at.get(item["recording_id"], time.monotonic()) - allocated_at
        if len(channels) == 2 and seconds - 0.1 <= duration <= ended_s + 0.5:
            durations_ok += 1
    why: list[str] = []
    tones_ok, checked = await check_tones(node, spread([i["recording_id"] for i in items],
                                                       samples), seconds, workdir, why)
    latencies = [driver.done_at[r] - driver.requested_at[r] for r in ids
                 if r in driver.done_at and r in driver.requested_at]

    def bye_to(seen: dict[str, float]) -> list[float]:
        return [seen[r] - driver.requested_at[r] for r in ids
                if r in seen and r in driver.requested_at]

    polled_here = bye_to(playable[0])
    polled_there = bye_to(playable[1]) if peer is not None else []

    logged, poll_after_log = playable_by_logs(
        [node, peer] if peer is not None else [node], ids, playable, driver)
    here, there = logged[0], logged[1] if peer is not None else []
    # Per call-minute of load, the denominator of every row (the recordings are longer:
    # they start at allocation, before the sender; the note gives the ratio).
    line = Line(system="callrec", calls=calls, pps=sent.sent / sent.elapsed,
                loss_pct=100.0 * (1 - stored / sent.sent) if sent.sent else float("nan"),
                rx_cm=per_call_minute(sent.extra["rx"], calls, sent.elapsed),
                live_cm=per_call_minute(sent.extra["tree"] - sent.extra["rx"], calls,
                                        sent.elapsed),
                fin_cm=per_call_minute(fin_cpu, calls, sent.elapsed),
                recorded_ratio=recorded_s / (calls * sent.elapsed),
                mb_call_h=size / 1e6 / (recorded_s / 3600) if recorded_s else float("nan"),
                p50_s=percentile(latencies, 50), p99_s=percentile(latencies, 99),
                playable_p50=percentile(here, 50) if len(here) == calls else float("nan"),
                playable_p99=percentile(here, 99) if len(here) == calls else float("nan"),
                peer_p50=percentile(there, 50) if len(there) == calls else float("nan"),
                peer_p99=percentile(there, 99) if len(there) == calls else float("nan"),
                sender=pace(sent), sent_pct=sent.rate_pct,
                late_s=max(0.0, sent.elapsed - seconds),
                wrong=(calls - durations_ok) + (checked - tones_ok),
                idle_mb=loadgen.total_kb(idle) / 1000, peak_mb=loadgen.total_kb(peak) / 1000,
                correct=(f"{durations_ok}/{calls} duration+2ch, {tones_ok}/{checked} tones, "
                         f"{len(failed)} not completed"))
    asked = [driver.requested_at[r] for r in ids if r in driver.requested_at]
    how = "all sent at once" if byes_together else "one after another"
    notes = [f"{calls} calls: the finalize requests ({how}, each stamping its call's end) "
             f"took {max(asked) - min(asked) if asked else 0.0:.2f} s",
             f"{calls} calls: fin = capture {per_call_minute(fin_main, calls, sent.elapsed):.4f}"
             f" + its encoder workers "
             f"{per_call_minute(fin_cpu - fin_main, calls, sent.elapsed):.4f} CPU-s per "
             f"call-minute ({1000 * fin_main / calls:.1f} + "
             f"{1000 * (fin_cpu - fin_main) / calls:.1f} ms a recording)"]
    notes.append(f"{calls} calls: live lag during the load: peak {peak_lag:.1f} s, at its "
                 f"end {lag.last:.1f} s, {lag.samples} samples, {lag.missed} scrapes without "
                 f"it (over --max-live-lag, "
                 f"{NodeConfig.model_fields['max_live_lag_s'].default:g} s by default, a node "
                 "answers new calls 503; this bench allocates through capture, past that gate)")
    notes += [f"{calls} calls: callrec node Pss in MB, idle: {mem_note(idle)}; at the load's "
             f"peak ({sampler.samples} samples): {mem_note(peak)}"]
    # Not in all-in (capture's): what the cluster pays besides, mostly the live copy of
    # every call to the peer (issue 11 measured a third of a core at 400 calls).
    sync_cm = per_call_minute(sent.extra["sync"], calls, sent.elapsed)
    bus_cm = per_call_minute(sent.extra["bus"], calls, sent.elapsed)
    where = "the two nodes (the live copy to the peer, and the bus)" if peer else "the node"
    notes.append(f"{calls} calls: during the load, sync {sync_cm:.4f} + NATS servers "
                 f"{bus_cm:.4f} = {sync_cm + bus_cm:.4f} CPU-s per call-minute on {where}; "
                 "not in all-in, which is capture's")
    polled = (f"{calls} calls: BYE->playable as the listing polls (every "
              f"{PLAYABLE_POLL_S:g} s) saw it: p50 / p99 {percentile(polled_here, 50):.3f} / "
              f"{percentile(polled_here, 99):.3f} s on the recording node "
              f"({len(polled_here)}/{calls})")
    if peer is not None:
        polled += (f", {percentile(polled_there, 50):.3f} / "
                   f"{percentile(polled_there, 99):.3f} s on the peer "
                   f"({len(polled_there)}/{calls})")
    if poll_after_log:
        polled += (f"; each poll saw a recording {min(poll_after_log):.3f} to "
                   f"{max(poll_after_log):.3f} s after its log said it was playable")
    notes.append(polled)
    if peer is not None:
        notes.append(f"{calls} calls: peer node b's Pss at the load's peak: "
                     f"{loadgen.total_kb(peer_peak) / 1000:.1f} MB; playable on b: "
                     f"{len(there)}/{calls}")
    if why:
        notes.append(f"{calls} calls: wrong tones: {'; '.join(why)}")
    if len(here) < calls:
        notes.append(f"{calls} calls: only {len(here)}/{calls} playable on the recording "
                     "node before the timeout (percentiles n/a)")
    return line, notes


async def check_tones(node: Any, ids: list[str], seconds: float,
                      workdir: Path, why: list[str] | None = None,
                      expected: dict[str, float] | None = None) -> tuple[int, int]:
    """Download a sample of recordings: does each channel carry its own tone for the
    whole load, `seconds` or the recording's own `expected` seconds (within one 20 ms
    frame per second of slack)? What was wrong with a recording that fails goes to
    `why`."""
    import httpx

    from callrec.audio import decode_file, dominant_frequency, sound_seconds
    from tests.support.node import ADMIN_PASSWORD

    good = 0
    async with httpx.AsyncClient(base_url=node.base_url, auth=("admin", ADMIN_PASSWORD),
                                 timeout=30.0) as client:
        for rid in ids:
            response = await client.get(f"/api/recordings/{rid}/audio")
            if response.status_code != 200:
                if why is not None:
                    why.append(f"{rid}: audio HTTP {response.status_code}")
                continue
            path = workdir / f"{rid}.opus"
            path.write_bytes(response.content)
            audio, _ = await asyncio.to_thread(decode_file, path, RATE)
            if len(audio) != 2:
                if why is not None:
                    why.append(f"{rid}: {len(audio)} channels")
                continue
            found = [dominant_frequency(audio[ch], RATE) for ch in range(2)]
            heard = [sound_seconds(audio[ch], RATE) for ch in range(2)]
            tones = all(abs(f - hz) < TONE_TOLERANCE_HZ
                        for f, hz in zip(found, loadgen.TONES_HZ, strict=True))
            length = (expected or {}).get(rid, seconds)
            sound = all(h >= length * 0.98 - 0.04 for h in heard)
            good += tones and sound
            if not (tones and sound) and why is not None:
                why.append(f"{rid}: {found[0]:.0f}/{found[1]:.0f} Hz, sound "
                           f"{heard[0]:.2f}/{heard[1]:.2f} s of {length:g}")
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
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} at start, "
            f"temp files on {temp_file_system()}")


def temp_file_system() -> str:
    """What the run's temp files are on: on ext4 without a journal each file created
    after many deletions costs far more (bench/README.md, "The disk's history")."""
    where = Path(tempfile.gettempdir())
    mount = filesystem.mount_of_path(where)
    if mount is None:
        return "an unknown file system"
    if mount.fs_type != "ext4":
        return f"{mount.fs_type} ({mount.mount_point})"
    kind = {True: "ext4 without a journal", False: "ext4 with a journal",
            None: "ext4 (journal unknown)"}[filesystem.mount_without_journal(mount)]
    loop = {True: ", a loop device in direct I/O", False: ", a buffered loop device",
            None: ""}[scratchfs.loop_direct_io(mount.device)]
    return f"{kind} ({mount.mount_point}{loop})"


def commit() -> str:
    result = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "?"


async def run(levels: list[int], seconds: float, samples: int, with_rtpengine: bool,
              keep: bool, max_calls: int = 0, with_peer: bool = False,
              byes_together: bool = False) -> str:
    """Every level, every system; then upward (x1.5) to `max_calls` while callrec stays
    clean; returns the rendered table."""
    max_calls = max(max_calls, *levels)
    climb = f", then x1.5 up to {max_calls} until it breaks" if max_calls > max(levels) else ""
    header = (f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, "
              f"{', '.join(map(str, levels))} calls{climb} x {seconds:g} s"
              f"{', with a peer node' if with_peer else ''}\n\nMachine: {machine()}.")
    notes: list[str] = []
    done: list[int] = []
    clean: list[int] = []
    broke = ""
    floor_seconds = max(10.0, seconds)
    lines: list[Line] = []
    with contextlib.ExitStack() as stack:
        rtpe_ctx = (stack.enter_context(rtpengine_running(max_calls))
                    if with_rtpengine else "not asked for (--no-rtpengine)")
        if isinstance(rtpe_ctx, str):
            notes.append(f"rtpengine skipped: {rtpe_ctx}")
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="capacity-")))
        while (calls := next_level(done, levels, max_calls)) is not None:
            done.append(calls)
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
            # Measured at each level, so it sees the machine as callrec's run does.
            opus_cm, opus_mb = await asyncio.to_thread(opus_floor, floor_seconds)
            rx_name = 'rtpengine' if rtpe else 'drain'
            floor = Line(system=f"floor ({rx_name} rx + opus c0)",
                         calls=calls, rx_cm=rx_floor.rx_cm, live_cm=opus_cm,
                         mb_call_h=opus_mb, floor_ratio=1.0)
            level.append(floor)
            celt_cm, celt_mb = await asyncio.to_thread(opus_floor, floor_seconds, "celt")
            celt_floor = Line(system=f"CELT floor ({rx_name} rx + opus CELT c0)",
                              calls=calls, rx_cm=rx_floor.rx_cm, live_cm=celt_cm,
                              mb_call_h=celt_mb)
            celt_floor.floor_ratio = ratio(celt_floor.all_cm, floor.all_cm)
            level.append(celt_floor)
            # A fresh node (and peer) a level: its idle memory is a node's that has
            # recorded nothing but its warm-up, so KB/call is what the level's calls add.
            progress(f"{calls} calls: starting the node")
            peers: list[Any] | None = [] if with_peer else None
            async with running_node(calls, keep, peers) as (node, driver, capture_pid):
                peer = peers[0] if peers else None
                progress(f"{calls} calls: node up{' with its peer' if peer else ''}, "
                         "finalize warmed up")
                callrec, mem_notes = await run_callrec(node, driver, capture_pid, calls,
                                                       seconds, samples, workdir, peer,
                                                       byes_together)
            notes.extend(mem_notes)
            callrec.floor_ratio = ratio(callrec.all_cm, floor.all_cm)
            level.append(callrec)
            notes.append(f"{calls} calls: callrec all-in / the CELT floor's = "
                         f"{fmt(ratio(callrec.all_cm, celt_floor.all_cm), 2)}")
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
            problems = level_problems(callrec, seconds)
            if problems:
                broke = f"{calls} calls: {'; '.join(problems)}"
                break
            clean.append(calls)
    slopes = memory_slopes(lines)
    if slopes:
        notes.append(f"callrec KB per call from the peaks of consecutive levels: {slopes}")
    notes.append(f"breaking point: {clean[-1] if clean else 'none'} calls, the last clean "
                 f"level ({'broke at ' + broke if broke else f'none broke up to {done[-1]}'}); "
                 f"clean = loss <= {MAX_LOSS_PCT} %, every recording right, sender on "
                 "schedule")
    notes += [
        "cpu/cm = CPU-s (utime+stime from /proc) per call-minute of load (calls x minutes "
        "the sender played), the same denominator in every row. rx = the receiving "
        "process while media arrives (callrec: services.capture alone); live enc = "
        "capture's descendants (its encoding worker) while media arrives (the floor: "
        "libopus); fin = capture and its descendants from the finalize requests to the "
        "last `recording.completed`. all-in = rx + live enc + fin; calls/core = 60 / all-in.",
        "floor = rtpengine's rx (or the drain's when rtpengine is skipped) + libopus at "
        f"complexity 0, 60 ms frames, {OPUS_BITRATE // 1000} kbit/s per channel on two 8 kHz "
        "mono channels of the same audio (the floor's live enc column: the cheapest of "
        f"{FLOOR_REPEATS} encodings at each level of this run, libopus through ctypes, "
        "bench/floor.py). x floor = all-in / floor's all-in. The CELT floor: the same with "
        "CELT forced (what capture encodes narrowband calls with since 2026-12-02, about "
        "half SILK's CPU); x floor is still against issue 11's floor, a note per level "
        "gives callrec against the CELT floor.",
        "callrec through capture's NATS RPCs (no SIP). BYE->done = finalize request to its "
        "`recording.completed` event, with every call of the level ending at once (the "
        "backlog is part of it). loss = 1 - stored (or pcap'd, or counted) / sent.",
        "MB/call-h: callrec's stored Ogg/Opus, rtpengine's raw pcap, the floor's Opus packets.",
        "BYE->playable: finalize request until the recording is listed by the catalog with "
        "its whole file (size_bytes) in that node's store; on peer: the same on node b "
        "(linked as in production, on the same cores). Since 2026-12-05 read from the "
        "nodes' logs (the catalog applied the completion; on the peer also its sync "
        "stored the object), each recording counted once a listing poll (every "
        f"{PLAYABLE_POLL_S:g} s) also found it playable; before, the polls' own times, "
        "every 0.25 s, each listing the recordings started from the first still pending "
        "on (since 0ce1087; before, all of the level's).",
        "Memory: Pss (/proc/PID/smaps_rollup; it divides shared pages among the processes "
        "that map them, so it sums over the forkserver's encoder workers without counting "
        "their copy-on-write pages twice, which VmRSS would) of every process of the node "
        "(rtpengine: its daemon), idle before the level and the largest total sampled every "
        "1 s during the load; KB/call = (peak - idle) / calls. Each level runs on a fresh node "
        "(and peer), up and warmed with one finalize: idle is before its first call.",
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
  recorded call-minute stored as Opus. From 2026-12-02 a `CELT floor` row too: the same
  with CELT forced, which costs about half (capture encodes narrowband calls so since);
  `x floor` stays against the first, as issue 11 defined it.
- `callrec`: one real node driven through capture's NATS RPCs (allocate, update,
  finalize; no SIP: the finalize request stands in for the BYE); receive, live encoding
  and finalize, every recording checked.

Columns: `pps` packets/s sent; `loss %`; CPU-s per call-minute of load: `rx cpu/cm` of
the receiving process while media arrives, `live enc cpu/cm` of encoding while media
arrives (callrec's encoding worker; the floor's libopus), `fin cpu/cm` after hang-up
(finalize) and `all-in cpu/cm` their sum;
`calls/core` = 60 / all-in; `x floor` = all-in / the floor's; `MB/call-h` stored per
call-hour; `BYE->done` finalize request to `recording.completed` (p50, p99);
`BYE->playable` finalize request until the recording node's catalog lists the recording
and its whole file (`size_bytes`) is in that node's store, `on peer` the same on a second
node linked as in production (`--peer`; by the nodes' logs, each recording confirmed by a
listing poll; until 2026-12-05 the polls' times, every 0.25 s); `idle MB` / `peak MB`: the
Pss of every process of the node (rtpengine: its daemon) before the level and the largest
total sampled every second during the load, `KB/call` = (peak - idle) / calls (Pss, not
VmRSS: the encoder workers share the forkserver's copy-on-write pages, which a sum of
VmRSS counts once per process; each level starts a fresh node, so idle is a node that
has recorded nothing but its warm-up, and a note gives the slope of the peak between
levels); `correct`:
recordings of the right duration with both channels, and sampled ones whose channels
carry their tones (440 / 1004 Hz). The full mode climbs past its levels by x1.5 up to
`--max-calls` until a level is not clean (loss > 0.1 %, a wrong recording, a sender
behind schedule) and notes the last clean one as the breaking point. Absolute figures
move between machines: compare ratios within one run.
"""


def append_results(table: str, path: Path = RESULTS) -> None:
    if not path.exists():
        path.write_text(RESULTS_HEADER)
    with path.open("a") as f:  # a blank line before each run's heading
        f.write("\n" + table.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="50,100,200,400", help="comma-separated call counts")
    parser.add_argument("--max-calls", type=int, default=1500,
                        help="after --calls, go up x1.5 while clean, up to this many calls "
                             "(<= the largest of --calls: no climbing)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=None,
                        help="run a second node and measure BYE->playable on it "
                             "(default: on, off with --smoke: it adds a node's start)")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per level")
    parser.add_argument("--byes-together", action="store_true",
                        help="send a level's finalize requests all at once, not one after "
                             "another (each waiting for capture's answer to the one before)")
    parser.add_argument("--samples", type=int, default=5,
                        help="recordings per level downloaded to check both tones")
    parser.add_argument("--no-rtpengine", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="3 calls for 2 s: proves the bench runs (figures are noise)")
    parser.add_argument("--append-results", action="store_true",
                        help=f"append the table to {RESULTS.relative_to(REPO)}")
    parser.add_argument("--keep", action="store_true", help="keep the node's data dir")
    parser.add_argument("--setup-rate", type=float, default=200.0,
                        help="then new SIP calls/s for bench.setup_rate (0: skip; "
                             "skipped with --smoke, which tests/e2e/test_bench_setup_rate.py runs)")
    parser.add_argument("--quality-seconds", type=float, default=30.0,
                        help="length of bench.quality's calls (0: skip)")
    parser.add_argument("--churn", type=int, default=250,
                        help="then bench.churn: BYE->playable with this many calls in "
                             "progress, ending one by one (0: skip; skipped with --smoke, "
                             "which tests/e2e/test_bench_capacity.py runs on its own)")
    parser.add_argument("--churn-seconds", type=float, default=60.0,
                        help="length of bench.churn's calls")
    args = parser.parse_args(argv)
    levels = [3] if args.smoke else [int(c) for c in args.calls.split(",") if c.strip()]
    seconds = 2.0 if args.smoke else args.seconds
    max_calls = 0 if args.smoke else args.max_calls
    if not levels or min(levels) < 1 or max([*levels, max_calls]) > 1500:
        parser.error("--calls and --max-calls must be 1..1500")  # RTP port ranges below 32768
    if not 1 <= seconds <= 600:
        parser.error("--seconds must be within 1..600")
    with_peer = (not args.smoke) if args.peer is None else args.peer
    table = asyncio.run(run(levels, seconds, 1 if args.smoke else args.samples,
                            not args.no_rtpengine, args.keep, max_calls, with_peer,
                            args.byes_together))
    if args.quality_seconds > 0:
        progress("storage and quality (bench.quality)")
        default = NodeConfig.model_fields["opus_bitrate"].default
        table += ("\n\nStorage and quality through capture's encoder (bench.quality, "
                  f"{3.0 if args.smoke else args.quality_seconds:g} s calls):\n\n")
        table += quality.measure([default] if args.smoke else [default, 12000],
                                 3.0 if args.smoke else args.quality_seconds,
                                 speech=not args.smoke)
    if args.churn > 0 and not args.smoke:
        from bench import churn  # (it builds on this module's helpers)

        progress(f"churn (bench.churn at {args.churn} calls of {args.churn_seconds:g} s)")
        churned = asyncio.run(churn.run(args.churn, args.churn_seconds, args.samples,
                                        args.keep, True))
        table += ("\n\nBYE->playable with calls in progress (bench.churn: calls end one by "
                  "one, each replaced by a new call set up then, with a peer node):\n\n")
        table += (churned.table() + "\n\n- playable by each node's log, confirmed by a "
                  f"listing poll; the polls (every {PLAYABLE_POLL_S:g} s) saw it: "
                  f"{churned.polled}")
    if args.setup_rate > 0 and not args.smoke:
        progress(f"set-up rate (bench.setup_rate at {args.setup_rate:g} calls/s)")
        setup = asyncio.run(setup_rate.run(args.setup_rate))
        table += ("\n\nCall set-up over SIP while finalizing (bench.setup_rate: SIPp CUCM "
                  "two-leg calls of 30 s from an allow-listed address):\n\n")
        table += setup.table() + "\n\n" + "\n".join(
            f"- {note}" for note in [
                f"p99 burst / baseline: {setup.p99_ratio:.2f}; media load {setup.media_calls}"
                f" calls x {setup.media_seconds:g} s hung up as the burst started; capture's"
                f" encoder workers used {setup.burst.workers_cpu:.2f} cpu-s during the burst",
                *setup.notes])
    print(table)
    if args.append_results:
        append_results(table)
    return table


if __name__ == "__main__":
    main()

