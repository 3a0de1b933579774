"""What the per-step fdatasync of live.opus cost: capture's live step with and without it.

```sh
PYTHONPATH=$PWD .venv/bin/python -m bench.live_fsync_ab                    # 8 calls x 30 s
PYTHONPATH=$PWD .venv/bin/python -m bench.live_fsync_ab --calls 4 --seconds 10   # smoke
```

A two-leg G.711 call (tests/support/callgen.py) is copied ``--calls`` times for each
side; side A is capture's ``LiveEncoder`` as it was (an ``os.fdatasync`` after each
append), side B as it is now (no sync). Both step every 0.5 s of call time, interleaved
call by call (the order flipping each step) so that noise and the other processes on
the machine hit both alike; finalize is not counted. The baseline, measured in the same
run, is the machine's floor for this audio (libopus at complexity 0 on the same PCM,
bench/floor.py). Printed: CPU seconds (``time.process_time``: user + system time of
this process; the journal thread's share of a sync is not in it) and wall seconds per
call-minute, each as a ratio to the floor, and B / A. Data lives under ``--dir`` (a real
disk: a sync on tmpfs costs nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.encode_cost import g711_pcm  # noqa: E402
from bench.floor import libopus_floor  # noqa: E402
from services.capture.finalize import duration_of, stream_specs  # noqa: E402
from services.capture.live import LIVE_FILE, LiveEncoder, encoding_rate  # noqa: E402
from services.capture.manifest import RecordingManifest  # noqa: E402
from tests.support.callgen import make_recording  # noqa: E402

STEP_MS = 500.0


class SyncingEncoder(LiveEncoder):
    """The live encoder as it was before: every append made durable at once."""

    def _write(self, pages: bytes) -> None:
        before = self.bytes
        super()._write(pages)
        if self.bytes != before and self._fd >= 0:
            os.fdatasync(self._fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="live-fsync-ab-", dir=args.dir))
    try:
        source = make_recording(root / "rec", args.seconds)
        pcm = g711_pcm(source)
        manifest = RecordingManifest.load(source)
        duration = duration_of(manifest)
        specs = stream_specs(manifest)
        rate = encoding_rate(specs)
        sides: list[list[LiveEncoder]] = [[], []]
        for side, kind in enumerate((SyncingEncoder, LiveEncoder)):
            for index in range(args.calls):
                directory = Path(shutil.copytree(source, root / f"{side}-{index}"))
                (directory / LIVE_FILE).unlink(missing_ok=True)
                sides[side].append(kind(directory, manifest.recording_id, rate=rate))
        cpu = [0.0, 0.0]
        wall = [0.0, 0.0]
        now, flip = 0.0, 0
        while now < duration:
            now += STEP_MS
            at = min(now, float(duration))
            for index in range(args.calls):
                for side in ((0, 1) if flip else (1, 0)):
                    c, w = time.process_time(), time.perf_counter()
                    sides[side][index].step(specs, at)
                    cpu[side] += time.process_time() - c
                    wall[side] += time.perf_counter() - w
                flip ^= 1
        for encoders in sides:
            for encoder in encoders:
                encoder.close()
        floors = [libopus_floor(pcm)[0] for _ in range(3)]
        minutes = duration / 60_000 * args.calls
        floor = statistics.median(floors) * args.calls / minutes
        print(f"{args.calls} calls x {duration / 1000:.0f} s, live steps every {STEP_MS:.0f} ms"
              f" of call time, under {args.dir}")
        print(f"{'side':<44} {'cpu-s/call-min':>14} {'x floor':>8} {'wall-s/call-min':>15}"
              f" {'x floor':>8}")
        print(f"{'floor: libopus complexity 0 (baseline)':<44} {floor:>14.4f} {1.0:>8.2f}")
        for side, name in enumerate(("A: step + fdatasync per append (before)",
                                     "B: step, no sync (now)")):
            c, w = cpu[side] / minutes, wall[side] / minutes
            print(f"{name:<44} {c:>14.4f} {c / floor:>8.2f} {w:>15.4f} {w / floor:>8.2f}")
        print(f"B / A: cpu {cpu[1] / cpu[0]:.3f}, wall {wall[1] / wall[0]:.3f}; "
              f"A - B per call-minute = {(cpu[0] - cpu[1]) / minutes / floor:.3f}x floor (cpu),"
              f" {(wall[0] - wall[1]) / minutes / floor:.3f}x floor (wall)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
