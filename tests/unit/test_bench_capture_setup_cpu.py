"""bench/capture_setup_cpu.py drives the real allocate/update handlers end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_tiny_run_prints_its_per_leg_figures() -> None:
    # A subprocess: the bench redirects stderr and sets up production logging.
    out = subprocess.run(
        [sys.executable, "-m", "bench.capture_setup_cpu", "--legs", "20", "--rounds", "2",
         "--first-flush"],
        cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=True, capture_output=True, text=True, timeout=120)
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("CPU per leg (µs), 2 rounds of 20 legs:")
    figures = [float(f) for f in line.split(":")[1].split(";")[0].split(",")]
    assert len(figures) == 2 and all(f > 0 for f in figures)
