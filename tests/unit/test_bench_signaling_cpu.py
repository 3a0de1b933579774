"""bench/signaling_cpu.py runs end to end: legs answered, a CPU figure per round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_in_process_bench_answers_every_leg_with_calls_up() -> None:
    # A subprocess: the bench points its stderr at /dev/null, as production logs go.
    out = subprocess.run(
        [sys.executable, "-m", "bench.signaling_cpu", "--json", "--legs", "20",
         "--rounds", "2", "--live", "10"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True, capture_output=True, text=True, timeout=120)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(figures) == 2 and all(f > 0 for f in figures)
