"""Instructions, not seconds: capture's live encoding against the floor, under callgrind.

On a shared machine the CPU time of the same work varies by a third from one run to
the next (libopus' floor on 20 s of tones: 0.051 to 0.086 CPU-s, twelve runs in a
row on an idle 2-core machine, 2026-12-01), which hides a change of a few percent.
``valgrind --tool=callgrind`` counts the instructions a process runs: the same count
for the same work whatever else the machine does. Here three processes run under it
(in parallel, which does not change their counts):

- ``setup``: fabricate ``--calls`` two-leg PCMU calls (440 / 1004 Hz tones for
  ``--seconds``, after ``--lead`` seconds with no packets: the time from a call's set-up
  to its first packet, or a hold), warm up (imports, tables) and stop;
- ``live``: the same, then step every call together as one capture encoder worker does
  (``worker_steps`` every 0.5 s of call) and finish each (``worker_finish``), as
  ``bench/encode_cost.py --together`` does;
- ``floor``: the same, then libopus at its cheapest on each call's sound
  (``bench/floor.py``: no silence, no Python beyond a call a frame).

live - setup and floor - setup are the work's instructions; their ratio is printed,
with each library's share. Debian's ``valgrind`` must be installed (the bench says so
if it is not). About 1.5 min for 10 calls of 20 s.

    PYTHONPATH=$PWD .venv/bin/python -m bench.encode_instructions
    PYTHONPATH=$PWD .venv/bin/python -m bench.encode_instructions --calls 10 --lead 0
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.encode_cost import live_run_together  # noqa: E402
from bench.floor import libopus_floor  # noqa: E402
from callrec.audio import pcmu_decode, pcmu_encode, tone  # noqa: E402
from tests.support.callgen import FAR_HZ, NEAR_HZ, make_recording  # noqa: E402

MODES = ("setup", "live", "floor")


def workload(mode: str, calls: int, seconds: float, lead: float) -> None:
    """What one measured process does (see the module's docstring)."""
    root = Path(tempfile.mkdtemp(prefix="encode-instructions-"))
    try:
        directories = [make_recording(root / f"call{i}", seconds, recording_id=f"rec-{i}",
                                      lead_s=lead)  # a worker keeps one encoder per id
                       for i in range(calls + 1)]
        live_run_together(directories[:1])  # warm-up, in every mode alike
        sound = [pcmu_decode(pcmu_encode(tone(hz, seconds, 8000))) for hz in (NEAR_HZ, FAR_HZ)]
        libopus_floor([pcm[:8000] for pcm in sound])
        if mode == "live":
            live_run_together(directories[1:])
        elif mode == "floor":
            for _ in range(calls):
                libopus_floor(sound)
    finally:
        shutil.rmtree(root)


_LINE = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+.*\[(.*)\]\s*$")


def by_library(annotated: str) -> collections.Counter[str]:
    """Instructions per shared object from ``callgrind_annotate --threshold=100``."""
    out: collections.Counter[str] = collections.Counter()
    for line in annotated.splitlines():
        match = _LINE.match(line)
        if match:
            name = re.sub(r"-[0-9a-f]{8}(?=\.so)|\.cpython-[^.]*", "",
                          match.group(2).rsplit("/", 1)[-1])
            out[name] += int(match.group(1).replace(",", ""))
    return out


def measure(mode: str, args: argparse.Namespace, out_dir: Path) -> collections.Counter[str]:
    profile = out_dir / f"callgrind.{mode}"
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}",
         sys.executable, "-m", "bench.encode_instructions", "--run", mode,
         "--calls", str(args.calls), "--seconds", str(args.seconds), "--lead", str(args.lead)],
        check=True, cwd=REPO, capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    annotated = subprocess.run(["callgrind_annotate", "--threshold=100", str(profile)],
                               check=True, capture_output=True, text=True).stdout
    return by_library(annotated)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0, help="sound per call")
    parser.add_argument("--lead", type=float, default=2.0,
                        help="seconds without packets before the sound (bench.capacity's "
                             "recordings last about 1.1x their load: set-up comes first)")
    parser.add_argument("--run", choices=MODES, help=argparse.SUPPRESS)  # inside valgrind
    args = parser.parse_args(argv)
    if args.run:
        workload(args.run, args.calls, args.seconds, args.lead)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="encode-instructions-") as out, \
            ThreadPoolExecutor(len(MODES)) as pool:
        counts = dict(zip(MODES, pool.map(lambda m: measure(m, args, Path(out)), MODES),
                          strict=True))
    work = {mode: counts[mode] - counts["setup"] for mode in ("live", "floor")}
    total = {mode: sum(work[mode].values()) for mode in work}
    print(f"{args.calls} calls x {args.seconds:g} s of tones after {args.lead:g} s without "
          f"packets; instructions of the work (setup's subtracted)")
    print(f"{'':<34}{'floor':>12}{'live':>12}")
    libraries = sorted(set(work["live"]) | set(work["floor"]), key=lambda k: -work["live"][k])
    for library in libraries[:8]:
        print(f"{library:<34}{work['floor'][library] / 1e6:>11.1f}M"
              f"{work['live'][library] / 1e6:>11.1f}M")
    print(f"{'total':<34}{total['floor'] / 1e6:>11.1f}M{total['live'] / 1e6:>11.1f}M")
    print(f"live / floor: {total['live'] / total['floor']:.3f}")


if __name__ == "__main__":
    main()
