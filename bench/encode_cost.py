"""The cost and size of a recorded call-minute: capture's own live encoder, measured.

```sh
PYTHONPATH=$PWD .venv/bin/python -m bench.encode_cost                 # one 60 s call, 3 runs
PYTHONPATH=$PWD .venv/bin/python -m bench.encode_cost --seconds 20 --runs 1   # smoke
PYTHONPATH=$PWD .venv/bin/python -m bench.encode_cost --step-ms 1000   # what a step costs
PYTHONPATH=$PWD .venv/bin/python -m bench.encode_cost --together 20    # 20 calls on one worker
PYTHONPATH=$PWD .venv/bin/python -m bench.encode_cost --split          # libopus and the rest
```

A two-leg G.711 call (440 Hz near, 1004 Hz far, 20 ms packets with jitter) is
fabricated into a capture data directory (tests/support/callgen.py), then capture's
``LiveEncoder`` steps through it every 0.5 s of call time as the capture worker does
and finalizes it. The baseline, measured in the same process and run, is the machine's
floor for this audio: libopus itself at complexity 0, 60 ms frames, 8 kHz mono per
channel, called frame by frame through ctypes (bench/floor.py), on the same G.711 PCM. The
figures are CPU seconds (``time.process_time``) per call-minute, their ratio to the
baseline, and stored MB per call-hour. Each mode runs ``--runs`` times; the median
is printed. Pass ``--profile`` to print a cProfile of one live run, ``--split`` to
divide the live path's CPU between libopus (its encode calls timed one by one) and
the rest, against the floor encoded back to back (libopus with its code and tables
hot in the caches, the cheapest of 5), in extra rounds after the table.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.floor import libopus_floor  # noqa: E402
from callrec import opus  # noqa: E402
from callrec.audio import PCMU_DECODE_TABLE  # noqa: E402
from callrec.opus import OpusMode  # noqa: E402
from services.capture.finalize import duration_of, stream_specs  # noqa: E402
from services.capture.live import (  # noqa: E402
    LIVE_FILE,
    NARROWBAND_MODE,
    OPUS_BITRATE,
    LiveEncoder,
    encoding_rate,
    worker_finish,
    worker_steps,
)
from services.capture.manifest import RecordingManifest  # noqa: E402
from services.capture.segments import read_stream  # noqa: E402
from services.capture.timeline import parse_record  # noqa: E402
from tests.support.callgen import make_recording  # noqa: E402
from tests.support.speech import espeak  # noqa: E402

SPEECH = ("Thank you for calling. Your account number is four five seven two. Please hold "
          "while I transfer you to the billing department. Hello, I would like to change the "
          "delivery address for my order from last Tuesday, and cancel the second item.")


def speech(seconds: float, offset: int) -> np.ndarray:
    """espeak-ng's voice at 8 kHz, repeated to ``seconds``, -6 dBFS peak (int16)."""
    return np.roll(np.resize(espeak(SPEECH), int(seconds * 8000)), offset)

STEP_MS = 500.0


Variant = tuple[int, int, int, int]
"""(encoder input rate, bitrate of both channels, complexity, frame ms) of one live run."""


class _TimedLibopus:
    """callrec.opus's library with opus_multistream_encode timed (thread CPU)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.seconds = 0.0
        encode = lib.opus_multistream_encode

        def timed(*args: Any) -> Any:
            started = time.thread_time_ns()
            try:
                return encode(*args)
            finally:
                self.seconds += (time.thread_time_ns() - started) / 1e9

        self.opus_multistream_encode = timed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


@contextlib.contextmanager
def libopus_timed() -> Iterator[_TimedLibopus]:
    """While inside, every libopus encode call is timed (about 0.3 us each)."""
    original = opus._lib
    timed = _TimedLibopus(original())
    opus._lib = lambda: timed  # type: ignore[assignment]
    try:
        yield timed
    finally:
        opus._lib = original


def live_run(directory: Path, variant: Variant | None = None,
             step_ms: float = STEP_MS) -> tuple[float, int, int]:
    """(CPU s, bytes, duration ms) of capture's live encoder plus finalize on one call;
    ``variant`` overrides capture's defaults (None: as capture runs it), ``step_ms``
    the call time between steps (capture's LIVE_STEP_INTERVAL)."""
    for stale in (LIVE_FILE, "final.json"):
        (directory / stale).unlink(missing_ok=True)
    manifest = RecordingManifest.load(directory)
    duration = duration_of(manifest)
    specs = stream_specs(manifest)
    started = time.process_time()
    if variant is None:
        encoder = LiveEncoder(directory, manifest.recording_id,
                              rate=encoding_rate(specs))
    else:
        rate, bitrate, complexity, frame_ms = variant
        encoder = LiveEncoder(directory, manifest.recording_id, rate=rate, bitrate=bitrate,
                              complexity=complexity, frame_ms=frame_ms)
    now = 0.0
    while now < duration:
        now += step_ms
        encoder.step(specs, min(now, float(duration)))
    encoder.finish(specs, duration)
    cpu = time.process_time() - started
    return cpu, (directory / LIVE_FILE).stat().st_size, duration


def live_run_together(directories: list[Path], step_ms: float = STEP_MS,
                      ) -> tuple[float, int, int]:
    """(CPU s, bytes of one call, duration ms) of ``len(directories)`` copies of a call
    stepped together as one capture worker steps its recordings (one ``worker_steps``
    per step for all of them), then finished."""
    for directory in directories:
        for stale in (LIVE_FILE, "final.json"):
            (directory / stale).unlink(missing_ok=True)
    manifests = [RecordingManifest.load(directory) for directory in directories]
    duration = duration_of(manifests[0])
    specs = [stream_specs(manifest) for manifest in manifests]
    started = time.process_time()
    now = 0.0
    while now < duration:
        now += step_ms
        at = min(now, float(duration))
        results = worker_steps([(d, m.recording_id, s, at, OPUS_BITRATE, NARROWBAND_MODE)
                                for d, m, s in zip(directories, manifests, specs, strict=True)])
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise RuntimeError(errors[0])
    for directory, manifest, spec in zip(directories, manifests, specs, strict=True):
        worker_finish(directory, manifest.recording_id, spec, duration, OPUS_BITRATE)
    cpu = time.process_time() - started
    return cpu, (directories[0] / LIVE_FILE).stat().st_size, duration


def copy_call(directory: Path, to: Path) -> Path:
    """A copy of a fabricated call under its own recording id: a worker keeps one live
    encoder per id, so copies sharing the id would share one encoder (one copy
    stepped, the others encoded wholly at their finish)."""
    shutil.copytree(directory, to)
    manifest = RecordingManifest.load(to)
    manifest.model_copy(update={"recording_id": f"{manifest.recording_id}-{to.name}"}).save(to)
    return to


def g711_pcm(directory: Path) -> list[np.ndarray]:
    """Each stream's PCM at 8 kHz, decoded by table in arrival order (baseline input)."""
    manifest = RecordingManifest.load(directory)
    out: list[np.ndarray] = []
    for stream in sorted(manifest.streams.values(), key=lambda s: s.channel):
        payloads = []
        for arrival, data in read_stream(directory, stream.stream_id):
            rec = parse_record(arrival, data)
            if rec is not None:
                payloads.append((rec.seq, rec.payload))
        payloads.sort()
        out.append(PCMU_DECODE_TABLE[np.frombuffer(b"".join(p for _, p in payloads),
                                                   dtype=np.uint8)])
    return out


def baseline_run(pcm: list[np.ndarray], bitrate: int,
                 mode: OpusMode = "auto") -> tuple[float, int]:
    """(CPU s, bytes of Opus packets) of libopus at its cheapest on the same PCM."""
    return libopus_floor(pcm, bitrate, mode)


def split(directory: Path, pcm: list[np.ndarray], runs: int, bitrate: int,
          minutes: float) -> None:
    """The live path's CPU divided into libopus and the rest, medians of `runs`, each
    beside the floor encoded back to back (hot caches: the cheapest of 5) in the mode
    the live path encodes in, so the two libopus figures are the same work."""
    totals: list[float] = []
    inside: list[float] = []
    hot: list[float] = []
    for _ in range(runs):
        with libopus_timed() as timed:
            cpu, _, _ = live_run(directory)
        totals.append(cpu / minutes)
        inside.append(timed.seconds / minutes)
        hot.append(min(baseline_run(pcm, bitrate, NARROWBAND_MODE)[0]
                       for _ in range(5)) / minutes)
    total, libopus, floor = (statistics.median(v) for v in (totals, inside, hot))
    print(f"split of the live path (cpu-s/call-min, medians of {runs}): all {total:.4f}"
          f" = libopus {libopus:.4f} + the rest {total - libopus:.4f};"
          f" the floor back to back {floor:.4f}: libopus in the live path"
          f" {libopus / floor:.2f} x, all {total / floor:.2f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--baseline-bitrate", type=int, default=8000,
                        help="bit/s per channel of the baseline (default 8000)")
    parser.add_argument("--baseline-mode", choices=("auto", "celt"), default="auto",
                        help="auto (SILK): issue 11's floor; celt: the cheaper one capture"
                             " now encodes narrowband calls with")
    parser.add_argument("--speech", action="store_true",
                        help="espeak-ng speech on both legs instead of the 440/1004 Hz tones")
    parser.add_argument("--variant", action="append", default=[],
                        help="RATE:BITRATE:COMPLEXITY:FRAME_MS of another live run, e.g."
                             " 16000:16000:5:20 (the encoding before issue 11); repeatable")
    parser.add_argument("--step-ms", type=float, action="append", default=[],
                        help="also run capture's encoder stepping this often (ms of call),"
                             " e.g. 1000: what the per-step cost is; repeatable")
    parser.add_argument("--together", type=int, action="append", default=[], metavar="N",
                        help="also run N copies of the call stepped together, as one capture"
                             " worker steps its recordings; CPU per call-minute of one copy;"
                             " repeatable")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--split", action="store_true",
                        help="also divide the live path's CPU: libopus and the rest")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="encode-cost-"))
    try:
        signals = ({"near": speech(args.seconds, 0), "far": speech(args.seconds, 8000 * 7)}
                   if args.speech else None)
        directory = make_recording(root / "rec", args.seconds, signals=signals)
        pcm = g711_pcm(directory)
        live_run(directory)  # warm-up: imports, tables, filter caches
        variants: list[Variant | float | int | None] = [None] + [
            (int(a), int(b), int(c), int(d)) for a, b, c, d in (v.split(":") for v in args.variant)
        ] + [float(ms) for ms in args.step_ms] + list(args.together)
        copies = [directory] + [copy_call(directory, root / f"copy{i}")
                                for i in range(1, max(args.together, default=1))]
        base_cpu: list[float] = []
        live_cpu: list[list[float]] = [[] for _ in variants]
        sizes = [0] * len(variants)
        duration = base_size = 0
        for _ in range(args.runs):  # interleaved, so drift hits all alike
            cpu, base_size = baseline_run(pcm, args.baseline_bitrate, args.baseline_mode)
            base_cpu.append(cpu)
            for index, variant in enumerate(variants):
                if isinstance(variant, float):
                    cpu, sizes[index], duration = live_run(directory, step_ms=variant)
                elif isinstance(variant, int):
                    cpu, sizes[index], duration = live_run_together(copies[:variant])
                    cpu /= variant
                else:
                    cpu, sizes[index], duration = live_run(directory, variant)
                live_cpu[index].append(cpu)
        minutes = duration / 60_000
        hours = duration / 3_600_000
        base = statistics.median(base_cpu) / minutes
        print(f"call: {duration / 1000:.1f} s, 2 PCMU streams of "
              f"{'speech' if args.speech else 'tones'}; {args.runs} runs, medians")
        print(f"{'mode':<58} {'cpu-s/call-min':>14} {'ratio':>6} {'MB/call-h':>10}")
        label = (f"baseline: libopus {args.baseline_mode} c0, 60 ms, 8 kHz mono x2, "
                 f"{args.baseline_bitrate} b/s each")
        print(f"{label:<58} {base:14.4f} {1.0:6.2f} "
              f"{base_size / hours / 1e6:10.2f}  (packets only, no Ogg)")
        for index, variant in enumerate(variants):
            live = statistics.median(live_cpu[index]) / minutes
            if variant is None:
                label = "capture LiveEncoder as configured (0.5 s steps + finish)"
            elif isinstance(variant, float):
                label = f"capture LiveEncoder, a step every {variant:g} ms of call"
            elif isinstance(variant, int):
                label = f"{variant} calls stepped together on one worker, per call"
            else:
                label = "capture LiveEncoder at {}:{}:{}:{}".format(*variant)
            print(f"{label:<58} {live:14.4f} {live / base:6.2f} "
                  f"{sizes[index] / hours / 1e6:10.2f}")
        if args.split:
            split(directory, pcm, args.runs, args.baseline_bitrate, minutes)
        if args.profile:
            profiler = cProfile.Profile(time.process_time)  # CPU, not wall time
            profiler.enable()
            live_run(directory)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
