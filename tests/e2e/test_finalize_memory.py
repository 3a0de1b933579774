"""Finalize memory does not grow with the call's length.

A 20 s and a 120 s two-stream call are fabricated straight into capture data
directories (what the receive path writes: a manifest and segments), then each is
finalized in its own process, as capture would after a crash (no live encoding had
run: the worst case, the whole call encoded from the segments). The child reports
its peak RSS (VmHWM). Before the streaming finalize, the peak grew with the
call (117 MB for 30 s, 337 MB for 7 minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from callrec.audio import decode_file, dominant_frequency, sound_seconds
from tests.support.callgen import FAR_HZ, NEAR_HZ, make_recording

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RATE = 16000

CHILD = """
import json, sys, time
from pathlib import Path
from services.capture.finalize import finalize_recording
started = time.process_time()
result = finalize_recording(Path(sys.argv[1]), Path(sys.argv[2]), 16000)
# VmHWM, not getrusage: after fork+exec ru_maxrss still counts the forked parent.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status")
           if line.startswith("VmHWM:"))
print(json.dumps({"peak_kb": hwm,
                  "cpu_s": time.process_time() - started,
                  "duration_ms": result.duration_ms,
                  "received": [c.packets_received for c in result.channels]}))
"""


def _finalize_in_child(directory: Path, output: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(directory), str(output)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def test_finalize_peak_rss_is_the_same_for_20_s_and_120_s(tmp_path: Path) -> None:
    figures = {}
    for seconds in (20, 120):
        directory = make_recording(tmp_path / f"rec{seconds}", float(seconds),
                                   recording_id=f"rec{seconds}")
        output = tmp_path / f"rec{seconds}.opus"
        figures[seconds] = _finalize_in_child(directory, output)
        # As correct as a whole-call build: both tones, all of them, the call's length.
        audio, _ = decode_file(output, rate=RATE)
        assert abs(audio.shape[1] / RATE - seconds) <= 0.1
        for channel, hz in ((0, NEAR_HZ), (1, FAR_HZ)):
            assert abs(dominant_frequency(audio[channel], RATE) - hz) < 5
            assert sound_seconds(audio[channel], RATE) >= seconds - 0.1
        assert figures[seconds]["received"] == [seconds * 50, seconds * 50]
    short, long = figures[20]["peak_kb"], figures[120]["peak_kb"]
    print(f"finalize peak RSS: 20 s call {short / 1024:.1f} MB, 120 s call {long / 1024:.1f} MB "
          f"({(long - short) / short:+.1%}); CPU {figures[20]['cpu_s']:.2f} s, "
          f"{figures[120]['cpu_s']:.2f} s")
    assert abs(long - short) / short < 0.10, figures
