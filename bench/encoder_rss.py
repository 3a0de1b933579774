"""Resident memory of capture's live Opus encoder, per encoder (one per active call).

```sh
PYTHONPATH=$PWD .venv/bin/python bench/encoder_rss.py                    # this tree
PYTHONPATH=$PWD .venv/bin/python bench/encoder_rss.py --base /tmp/base   # A/B, interleaved
```

Each measurement is a fresh process: it makes one encoder first (libraries loaded,
caches warm), reads VmRSS, creates ``--count`` OpusPageEncoders at capture's settings
(8 kHz, 16 kbit/s both channels, complexity 0, 60 ms frames), encodes 1.2 s of two
tones into each and takes their pages, and reads VmRSS again: the delta per encoder.
The baseline, in the same process, is libopus alone: ``opus_multistream_encoder_get_size``
for the same two mono streams. ``--base`` measures another checkout (a ``git archive``
of the base branch) in alternation with this one, so drift hits both alike.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def vm_rss_kb() -> int:
    """This process' resident set (kB) from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def libopus_state_kb(lib_path: str) -> float:
    """What libopus itself allocates for two uncoupled mono streams (its own answer)."""
    lib = ctypes.CDLL(lib_path)
    lib.opus_multistream_encoder_get_size.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.opus_multistream_encoder_get_size.restype = ctypes.c_int32
    return float(lib.opus_multistream_encoder_get_size(2, 0)) / 1024


def child(count: int) -> None:
    """Measure the OpusPageEncoder importable from sys.path; print JSON."""
    from callrec.audio import OpusPageEncoder, tone

    rate = 8000
    left, right = tone(440, 1.2, rate), tone(1004, 1.2, rate)
    warm = OpusPageEncoder(rate, bitrate=16000, complexity=0, frame_ms=60)
    warm.encode(left, right)
    warm.pages()
    gc.collect()
    before = vm_rss_kb()
    encoders = []
    size = 0
    for _ in range(count):
        encoder = OpusPageEncoder(rate, bitrate=16000, complexity=0, frame_ms=60)
        encoder.encode(left, right)
        size += len(encoder.pages())
        encoders.append(encoder)
    gc.collect()
    after = vm_rss_kb()
    print(json.dumps({"kb_per_encoder": (after - before) / count, "bytes": size}))


def measure(tree: Path, count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, __file__, "--child", str(count)], env=env,
                         check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--base", type=Path, help="another checkout to measure alongside")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    sys.path.insert(0, str(REPO))
    from callrec.opus import library_path

    floor = libopus_state_kb(library_path())
    trees = [("this tree", REPO)] + ([("base", args.base)] if args.base else [])
    figures: dict[str, list[float]] = {name: [] for name, _ in trees}
    for _ in range(args.runs):
        for name, tree in trees:
            figures[name].append(measure(tree, args.count)["kb_per_encoder"])
    print(f"{args.count} encoders a process, {args.runs} processes each, medians")
    print(f"{'encoder':<40} {'KB RSS each':>12} {'ratio':>6}")
    print(f"{'baseline: libopus state (2 mono streams)':<40} {floor:12.1f} {1.0:6.2f}")
    for name, values in figures.items():
        kb = statistics.median(values)
        label = f"OpusPageEncoder, {name}"
        print(f"{label:<40} {kb:12.1f} {kb / floor:6.2f}   runs: "
              + " ".join(f"{v:.1f}" for v in values))


if __name__ == "__main__":
    main()
