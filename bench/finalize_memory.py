"""Finalize memory and encoding CPU against the call's length.

Why: the finalize worker used to hold the whole call (117 MB peak for 30 s, 337 MB
for 7 minutes, about 2 GB for an hour); capture now encodes the call while it is
recorded and finalize only encodes the rest. Calls are fabricated straight into
capture data directories (two G.711 streams, 440 Hz near and 1004 Hz far, 20 ms
packets with jitter: what the receive path writes), so no real time is needed.
Each figure is measured in its own process (peak RSS = VmHWM):

* ``streaming``: finalize of a call whose live encoder never ran (a crash before
  the first step: the worst case, the whole call encoded from the segments).
* ``live``: the live encoder stepping every 0.5 s of call time as capture does,
  then finalize (the tail); CPU per call-minute and bytes per call-hour of the
  resulting live.opus (what crosses the link to peers).
* ``whole``: the old finalize, in the same run as the baseline: each stream built
  in one piece (build_channel), mixed, encoded in one go (encode_opus_stereo).

Run from the repository root:

    .venv/bin/python -m bench.finalize_memory              # 1 and 10 minutes
    .venv/bin/python -m bench.finalize_memory --minutes 1,10,60
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _hwm_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def child(mode: str, directory: Path) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    import numpy as np

    from callrec.audio import encode_opus_stereo
    from services.capture.finalize import duration_of, finalize_recording, stream_specs
    from services.capture.live import LIVE_FILE, LiveEncoder
    from services.capture.manifest import RecordingManifest
    from services.capture.segments import read_stream
    from services.capture.timeline import build_channel

    manifest = RecordingManifest.load(directory)
    duration = duration_of(manifest)
    started = time.process_time()
    if mode == "streaming":
        finalize_recording(directory, None, 16000)
        finalize_cpu = time.process_time() - started
    elif mode == "live":
        encoder = LiveEncoder(directory, manifest.recording_id)
        specs = stream_specs(manifest)
        now = 0.0
        while now < duration:
            now += 500.0
            encoder.step(specs, min(now, float(duration)))
        tail_started = time.process_time()
        finalize_recording(directory, None, 16000, encoder)
        finalize_cpu = time.process_time() - tail_started
    else:
        samples = duration * 16
        mix = [np.zeros(samples, dtype=np.int32), np.zeros(samples, dtype=np.int32)]
        for stream in manifest.streams.values():
            built = build_channel(read_stream(directory, stream.stream_id),
                                  stream.payload_codecs, duration)
            mix[0 if stream.channel <= 0 else 1][: built.samples.size] += built.samples
        left, right = (np.clip(m, -32768, 32767).astype(np.int16) for m in mix)
        encode_opus_stereo(left, right, 16000, directory / "whole.opus", bitrate=16000)
        finalize_cpu = time.process_time() - started
    cpu = time.process_time() - started
    output = directory / (LIVE_FILE if mode != "whole" else "whole.opus")
    return {"peak_kb": _hwm_kb(), "cpu_s": cpu, "finalize_cpu_s": finalize_cpu,
            "bytes": output.stat().st_size, "duration_ms": duration}


def _run_child(mode: str, directory: Path) -> dict[str, float]:
    for stale in ("live.opus", "final.json", "whole.opus"):
        (directory / stale).unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench.finalize_memory", "--child", mode, str(directory)],
        cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default="1,10", help="call lengths, comma separated")
    parser.add_argument("--whole-up-to", type=float, default=10.0,
                        help="measure the old whole-call finalize up to this many minutes")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return

    from tests.support.callgen import make_recording

    minutes = [float(m) for m in args.minutes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="callrec-finalize-bench-"))
    results: dict[float, dict[str, dict[str, float]]] = {}
    try:
        for length in minutes:
            directory = make_recording(root / f"call{length:g}", length * 60,
                                       recording_id=f"call{length:g}".replace(".", "_"))
            modes = ["streaming", "live"] + (["whole"] if length <= args.whole_up_to else [])
            results[length] = {mode: _run_child(mode, directory) for mode in modes}
            row = results[length]
            print(f"{length:g} min call: " + "; ".join(
                f"{mode} peak {r['peak_kb'] / 1024:.1f} MB, CPU {r['cpu_s']:.2f} s"
                for mode, r in row.items()), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print("call      finalize peak RSS (MB)         CPU per call-minute (s)        "
          "live.opus")
    print("minutes   streaming  live-tail  whole   live   whole  ratio  tail-only  "
          "MB/call-hour")
    for length, row in results.items():
        live, streaming = row["live"], row["streaming"]
        whole = row.get("whole")
        per_min = live["cpu_s"] / length
        whole_per_min = whole["cpu_s"] / length if whole else float("nan")
        mb_hour = live["bytes"] / (live["duration_ms"] / 1000) * 3600 / 1e6
        print(f"{length:<9g} {streaming['peak_kb'] / 1024:9.1f}  {live['peak_kb'] / 1024:9.1f}"
              f"  {whole['peak_kb'] / 1024 if whole else float('nan'):5.1f}"
              f"  {per_min:5.2f}  {whole_per_min:6.2f}  {per_min / whole_per_min:5.2f}"
              f"  {live['finalize_cpu_s']:9.3f}  {mb_hour:12.2f}")
    if len(results) >= 2:
        lengths = sorted(results)
        first, last = results[lengths[0]], results[lengths[-1]]
        for mode in ("streaming", "live"):
            ratio = last[mode]["peak_kb"] / first[mode]["peak_kb"]
            print(f"peak RSS {lengths[-1]:g} min / {lengths[0]:g} min ({mode}): {ratio:.3f}")
        if "whole" in last and "whole" in first:
            ratio = last["whole"]["peak_kb"] / first["whole"]["peak_kb"]
            print(f"peak RSS {lengths[-1]:g} min / {lengths[0]:g} min (old whole-call): "
                  f"{ratio:.3f}")


if __name__ == "__main__":
    main()
