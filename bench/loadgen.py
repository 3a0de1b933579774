"""Shared pieces of the RTP load benchmarks: /proc CPU, the paced sender, the bare drain.

Why one module: capture_load.py and capacity.py must play exactly the same load and
read CPU the same way, or their figures would not compare.

The sender is told its ports as `[channel 0, channel 1]` pairs per call and plays a
PCMU tone per channel (440 Hz on channel 0, 1004 Hz on channel 1), so a recording
can be checked for both channels by `callrec.audio.dominant_frequency`.

Internal sub-commands (run as `python -m bench.loadgen _send|_baseline`) are the
helper processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HOST = "127.0.0.1"
PTIME = 0.020
SUBSLOTS = 10  # streams are spread over 2 ms sub-slots, like unrelated real calls
subslots_option = [SUBSLOTS]
RECV_BUFFER = 1 << 20  # same SO_RCVBUF as capture, so losses compare
CLK_TCK = os.sysconf("SC_CLK_TCK")
RTP_HEADER = struct.Struct("!BBHII")
BENCH_RTP_PORTS = (1100, 9999)
"""Where benchmarks' nodes bind RTP: below the test suite's bands (tests/support/ports.py,
10000-32700), so a benchmark run beside the suite does not take the ports its tests draw."""
TONES_HZ = (440.0, 1004.0)  # channel 0 (near), channel 1 (far)


# --------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    pgrp: int
    cpu: float  # utime + stime, seconds
    child_cpu: float  # cutime + cstime (reaped children only), seconds


def read_stat(pid: int) -> ProcStat | None:
    """One process's /proc/<pid>/stat; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = text.rsplit(")", 1)[1].split()  # comm may contain spaces and ')'
    return ProcStat(
        pid=pid,
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        cpu=(int(rest[11]) + int(rest[12])) / CLK_TCK,
        child_cpu=(int(rest[13]) + int(rest[14])) / CLK_TCK,
    )


def all_stats() -> list[ProcStat]:
    stats = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                stats.append(stat)
    return stats


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(root: int) -> list[ProcStat]:
    """`root` and its live descendants (the finalize worker is a grandchild, via the
    forkserver); found through ppid links since they share the node's process group."""
    stats = all_stats()
    by_pid = {s.pid: s for s in stats}
    children: dict[int, list[int]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in by_pid:
            found.append(by_pid[pid])
            todo.extend(children.get(pid, []))
    return found


def tree_cpu(root: int) -> float:
    """CPU of `root` and its live descendants, plus what reaped ones left in cutime."""
    return sum(s.cpu + s.child_cpu for s in descendants(root))


def group_cpu(pgrps: list[int], needles: tuple[str, ...]) -> float:
    """CPU of the live processes of the process groups `pgrps` whose command line
    holds one of `needles` (e.g. every node's sync service and NATS servers)."""
    return sum(s.cpu for s in all_stats()
               if s.pgrp in pgrps and any(n in cmdline(s.pid) for n in needles))


def proc_cpu(pid: int) -> float:
    stat = read_stat(pid)
    return stat.cpu if stat else float("nan")


def find_service(pgrp: int, service: str) -> int:
    for stat in all_stats():
        if stat.pgrp == pgrp and f"-m services.{service}" in cmdline(stat.pid):
            return stat.pid
    raise RuntimeError(f"services.{service} not found in process group {pgrp}")


# --------------------------------------------------------------------------- memory
#
# Pss (proportional set size, /proc/PID/smaps_rollup), not VmRSS, is what the node's
# figures add up: capture's encoder workers are forked from a forkserver and share its
# copy-on-write pages (the interpreter, numpy, PyAV's libraries) and every Python
# process maps the same shared libraries. VmRSS counts such a page once per process
# that maps it, so a sum of VmRSS counts the libraries many times; Pss divides each
# page among its sharers, so the Pss of all processes sums to the memory they really
# hold. VmRSS is still read (the per-process figure `ps` and `top` show) and used
# only when smaps_rollup cannot be read (kernel < 4.14, or no permission).


@dataclass(frozen=True)
class Memory:
    """One process's memory, in kB."""

    rss_kb: int
    pss_kb: int | None  # None: smaps_rollup unreadable

    @property
    def kb(self) -> int:
        """The figure that sums across processes (Pss; VmRSS when Pss is missing)."""
        return self.pss_kb if self.pss_kb is not None else self.rss_kb


def _kb_field(text: str, name: str) -> int | None:
    """`name:   1234 kB` from a /proc status-like text; None when absent."""
    for line in text.splitlines():
        if line.startswith(name + ":"):
            value = line.split(":", 1)[1].split()
            if len(value) == 2 and value[1] == "kB" and value[0].isdigit():
                return int(value[0])
            raise ValueError(f"unexpected {name} line: {line!r}")
    return None


def parse_vmrss(status: str) -> int | None:
    """VmRSS of a /proc/PID/status text, kB (None for a kernel thread or a zombie)."""
    return _kb_field(status, "VmRSS")


def parse_pss(smaps_rollup: str) -> int | None:
    """Pss of a /proc/PID/smaps_rollup text, kB."""
    return _kb_field(smaps_rollup, "Pss")


def read_memory(pid: int) -> Memory | None:
    """One process's memory now; None when it is gone (or has no memory: a zombie)."""
    try:
        rss = parse_vmrss(Path(f"/proc/{pid}/status").read_text())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if rss is None:
        return None
    pss: int | None
    try:
        pss = parse_pss(Path(f"/proc/{pid}/smaps_rollup").read_text())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pss = None
    return Memory(rss_kb=rss, pss_kb=pss)


def process_label(command: str, parent_command: str) -> str:
    """What a node's process is, from its command line (and its parent's, for the
    encoder workers, which the forkserver forks with its own command line)."""
    if "-m services." in command:
        return command.split("-m services.", 1)[1].split()[0]
    if "nats-server" in command:
        return "nats-server"
    if "multiprocessing.forkserver" in command:
        return ("encoder worker" if "multiprocessing.forkserver" in parent_command
                else "forkserver")
    if "-m callrec" in command:
        return "supervisor"
    if "from multiprocessing." in command:  # e.g. the resource tracker
        return command.split("from multiprocessing.", 1)[1].split()[0].replace("_", " ")
    first = command.split(" ", 1)[0]
    return Path(first).name or "?"


def group_memory(pgrp: int) -> dict[str, tuple[int, int]]:
    """Memory of every process in a process group (a node started with its own session),
    summed by label: label -> (kB, processes)."""
    stats = [s for s in all_stats() if s.pgrp == pgrp]
    commands = {s.pid: cmdline(s.pid) for s in stats}
    out: dict[str, tuple[int, int]] = {}
    for s in stats:
        memory = read_memory(s.pid)
        if memory is None:
            continue
        parent = commands.get(s.ppid) or cmdline(s.ppid)
        label = process_label(commands[s.pid], parent)
        kb, count = out.get(label, (0, 0))
        out[label] = (kb + memory.kb, count + 1)
    return out


def total_kb(sample: dict[str, tuple[int, int]]) -> int:
    return sum(kb for kb, _ in sample.values())


class PeakSampler:
    """Samples a process group (or one pid) every `interval` s in a background task and
    keeps the sample with the largest total: the node's memory at the peak of a load."""

    def __init__(self, read: Any, interval: float = 1.0) -> None:
        self.read = read  # () -> {label: (kB, processes)}
        self.interval = interval
        self.peak: dict[str, tuple[int, int]] = {}
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def take(self) -> None:
        sample = self.read()
        self.samples += 1
        if total_kb(sample) > total_kb(self.peak):
            self.peak = sample

    async def _loop(self) -> None:
        while True:
            await asyncio.to_thread(self.take)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> dict[str, tuple[int, int]]:
        """Stop, take one last sample (the end of the load is often the peak), return
        the peak."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.take)
        return self.peak


class GaugePeak:
    """The highest value a node's gauge (e.g. callrec_capture_live_lag_seconds) reaches
    while started, sampled every `interval` s in a background task, and its last value.
    A scrape that fails or lacks the gauge (its service too busy to answer the web's
    collection in time) is a missed sample, counted, never a 0."""

    def __init__(self, node: Any, name: str, interval: float = 0.5) -> None:
        self.node, self.name, self.interval = node, name, interval
        self.peak = 0.0
        self.last = float("nan")
        self.samples = self.missed = 0
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            value = None
            with contextlib.suppress(Exception):
                value = await asyncio.to_thread(self.node.metric_if_present, self.name)
            if value is None:
                self.missed += 1
            else:
                self.samples += 1
                self.last = value
                self.peak = max(self.peak, value)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.peak


def pid_memory(pid: int) -> dict[str, tuple[int, int]]:
    """One process as a group sample (rtpengine is a single process with threads)."""
    memory = read_memory(pid)
    return {"process": (memory.kb, 1)} if memory else {}


# --------------------------------------------------------------------------- sender


def run_sender(ports: list[int], seconds: float, subslots: int,
               windows: list[tuple[int, int]] | None = None,
               more: Iterator[tuple[list[int], int, int]] | None = None) -> None:
    """Paced PCMU sender: prints `start`, sends, prints a JSON summary.

    `ports` are `[channel 0, channel 1]` pairs per call: even indexes get 440 Hz,
    odd ones 1004 Hz. `windows` (one per port, in 20 ms ticks: first tick, tick after
    the last) starts and ends calls at different times (bench/churn.py); without it
    every port is sent to for `seconds`. `more`, if given, yields calls added while
    sending (a pair of ports and their window), until it is exhausted.

    Packets are pre-built per stream; each tick only patches seq/timestamp and the
    payload slice in place, so the sender stays far cheaper than the receiver."""
    from tests.support.rtp import SAMPLES_PER_PACKET, pcmu_tone

    # One second of each tone (a whole number of periods of both), cut into packets.
    chunks = []
    for hz in TONES_HZ:
        tone = pcmu_tone(hz, 1.0)
        chunks.append([tone[i : i + SAMPLES_PER_PACKET]
                       for i in range(0, len(tone), SAMPLES_PER_PACKET)])
    socks = []
    for _ in range(min(8, max(1, len(ports)))):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.bind((HOST, 0))
        socks.append(sock)
    ticks = round(seconds / PTIME)
    if windows is None:
        windows = [(0, ticks)] * len(ports)
    if len(windows) != len(ports):
        raise SystemExit("one window per port")
    ticks = max([ticks, *(end for _, end in windows)])
    groups: list[list[tuple[socket.socket, tuple[str, int], bytearray, int, int, int,
                            int, int]]] = [[] for _ in range(subslots)]
    scheduled = 0

    def add(i: int, port: int, first: int, end: int) -> None:
        nonlocal scheduled
        end = min(end, ticks)
        scheduled += max(0, end - first)
        # seq0 + tick and ts0 + tick * 160 start each call at its own first tick
        ssrc = 0x10000 + i
        seq0, ts0 = (i * 7919 - first) & 0xFFFF, (i * 104729 - first * SAMPLES_PER_PACKET)
        packet = bytearray(12 + SAMPLES_PER_PACKET)
        RTP_HEADER.pack_into(packet, 0, 0x80, 0x80, (seq0 + first) & 0xFFFF,
                             (ts0 + first * SAMPLES_PER_PACKET) & 0xFFFFFFFF, ssrc)
        groups[i % subslots].append((socks[i % len(socks)], (HOST, port), packet, seq0,
                                     ts0 & 0xFFFFFFFF, i, first, end))

    for i, (port, (first, end)) in enumerate(zip(ports, windows, strict=True)):
        add(i, port, first, end)
    added: list[tuple[list[int], int, int]] = []
    lock = threading.Lock()
    if more is not None:
        def take(source: Iterator[tuple[list[int], int, int]]) -> None:
            for item in source:
                with lock:
                    added.append(item)

        threading.Thread(target=take, args=(more,), daemon=True).start()
    count = len(ports)
    sent = errors = late = 0
    max_lag = 0.0
    print("start", flush=True)
    t0 = time.monotonic() + 0.05
    for tick in range(ticks):
        if added:
            with lock:
                taken, added[:] = added[:], []
            for pair, first, end in taken:
                for port in pair:
                    add(count, port, max(first, tick), end)
                    count += 1
        chunk_index = tick % len(chunks[0])
        for sub, group in enumerate(groups):
            target = t0 + tick * PTIME + sub * (PTIME / subslots)
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif -delay > PTIME:
                late += 1
                max_lag = max(max_lag, -delay)
            for sock, addr, packet, seq0, ts0, i, first, end in group:
                if not first <= tick < end:
                    continue
                if tick == first + 1:
                    packet[1] = 0x00  # marker only on the first packet
                struct.pack_into("!HI", packet, 2, (seq0 + tick) & 0xFFFF,
                                 (ts0 + tick * SAMPLES_PER_PACKET) & 0xFFFFFFFF)
                packet[12:] = chunks[i % 2][chunk_index]
                try:
                    sock.sendto(packet, addr)
                    sent += 1
                except OSError:
                    errors += 1
    elapsed = time.monotonic() - t0
    print(json.dumps({"sent": sent, "errors": errors, "elapsed": elapsed,
                      "target": scheduled,
                      "late_subslots": late,
                      "max_lag_ms": round(max_lag * 1000, 1)}), flush=True)


# --------------------------------------------------------------------------- baseline


class Counter(asyncio.DatagramProtocol):
    """The cheapest useful asyncio receiver: count, nothing else."""

    packets = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.max_size = 2048  # type: ignore[attr-defined]  # see notes/performance.md

    def datagram_received(self, data: bytes, addr: Any) -> None:
        Counter.packets += 1


async def run_baseline(streams: int, max_seconds: float) -> None:
    """Bind `streams` ports, print them, count until a line arrives on stdin."""
    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(streams):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((HOST, 0))
        sock.setblocking(False)
        await loop.create_datagram_endpoint(Counter, sock=sock)
        ports.append(sock.getsockname()[1])
    print(json.dumps(ports), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), max_seconds)
    print(json.dumps({"packets": Counter.packets}), flush=True)


# --------------------------------------------------------------------------- orchestration


@dataclass
class SendResult:
    sent: int
    errors: int
    elapsed: float
    target: int
    late_subslots: int
    max_lag_ms: float
    cpu_before: float = 0.0
    cpu_after: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate_pct(self) -> float:
        return 100.0 * self.sent / self.target if self.target else 0.0


async def send_load(ports: list[int], seconds: float, measure: dict[str, Any],
                    windows: list[tuple[int, int]] | None = None,
                    started: asyncio.Event | None = None,
                    more: asyncio.Queue[tuple[list[int], int, int] | None] | None = None,
                    ) -> SendResult:
    """Run the sender process; sample `measure` callables at its start and end.
    `windows`: see run_sender; `started` is set when the first tick is 50 ms away;
    `more` feeds calls added while sending (None ends it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", "_send", "--seconds", str(seconds),
        "--subslots", str(subslots_option[0]),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(ports).encode() + b"\n")
    proc.stdin.write(json.dumps(windows).encode() + b"\n")
    await proc.stdin.drain()
    feeding = None
    if more is None:
        proc.stdin.close()
    else:
        async def feed(stdin: asyncio.StreamWriter, queue: asyncio.Queue[Any]) -> None:
            while (item := await queue.get()) is not None:
                stdin.write(json.dumps(item).encode() + b"\n")
                await stdin.drain()
            stdin.close()

        feeding = asyncio.create_task(feed(proc.stdin, more))
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"start":
            raise RuntimeError(f"sender failed to start: {line!r}")
        before = {name: fn() for name, fn in measure.items()}
        if started is not None:
            started.set()
        line = await asyncio.wait_for(proc.stdout.readline(), seconds + 60)
        after = {name: fn() for name, fn in measure.items()}
        await asyncio.wait_for(proc.wait(), 10)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    finally:
        if feeding is not None:
            feeding.cancel()
    result = SendResult(**json.loads(line))
    result.extra = {name: after[name] - before[name] for name in measure}
    return result


async def baseline(calls: int, seconds: float) -> tuple[SendResult, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", "_baseline", "--streams",
        str(2 * calls), "--seconds", str(seconds + 120),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ports = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        pid = proc.pid
        result = await send_load(ports, seconds, {"cpu": lambda: proc_cpu(pid)})
        await asyncio.sleep(0.3)  # let the last datagrams be read
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        received = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))["packets"]
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return result, int(received)


def main() -> None:
    parser = argparse.ArgumentParser(description="helper processes of the load benchmarks")
    parser.add_argument("mode", choices=["_send", "_baseline"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=0)
    parser.add_argument("--subslots", type=int, default=SUBSLOTS)
    args = parser.parse_args()
    if args.mode == "_send":
        ports = json.loads(sys.stdin.readline())
        windows = json.loads(sys.stdin.readline() or "null")
        more = ((list(pair), int(first), int(end))
                for pair, first, end in (json.loads(line) for line in sys.stdin))
        run_sender(ports, args.seconds, args.subslots,
                   None if windows is None else [(int(a), int(b)) for a, b in windows], more)
    else:
        asyncio.run(run_baseline(args.streams, args.seconds))


if __name__ == "__main__":
    main()
