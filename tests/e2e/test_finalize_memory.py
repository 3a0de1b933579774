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


def test_live_recording_grows_during_a_real_call(tmp_path: Path) -> None:
    """A real node and call: capture publishes LiveProgress as live.opus grows (sync's
    identity may follow it), the recording is playable mid-call from its prefix, and
    the last progress is the stored recording."""
    import asyncio
    import time

    from contracts import subjects
    from contracts.v1.rpc import LiveProgress, LiveProgressBatch
    from tests.support import sipp
    from tests.support.node import Node

    node = Node(tmp_path / "node").start()
    progress: list[LiveProgress] = []
    mid_call: list[bytes] = []

    async def follow() -> None:
        nc = await node.bus("sync")

        async def on_progress(msg: object) -> None:
            batch = LiveProgressBatch.model_validate_json(msg.data)  # type: ignore[attr-defined]
            progress.extend(batch.updates)

        await nc.subscribe(subjects.all_live_batches(), cb=on_progress)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(p.final for p in progress):
            await asyncio.sleep(0.1)
            if not mid_call and progress and progress[-1].duration_ms >= 2_000:
                live = next((node.data_dir / "capture" / "active").glob("*/live.opus"))
                mid_call.append(live.read_bytes()[: progress[-1].bytes])
        await nc.close()

    try:
        node.cli("users", "add", "alice", "--extension", "1001")
        time.sleep(0.5)
        call = sipp.start_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                    refci="16777299", near_tone_hz=NEAR_HZ,
                                    far_tone_hz=FAR_HZ, seconds=5.0)
        asyncio.run(follow())
        assert call.wait().ok
        recording = node.wait_recordings(1)[0]
    finally:
        node.stop()
    assert progress and progress[-1].final
    assert progress[-1].bytes == recording["size_bytes"]
    assert progress[-1].recording_id == recording["recording_id"]
    growing = [p.bytes for p in progress if not p.final]
    assert len(growing) >= 5 and growing == sorted(growing)  # about one every 0.5 s
    assert mid_call, "no progress past 2 s during the call"
    prefix = tmp_path / "prefix.opus"
    prefix.write_bytes(mid_call[0])
    audio, _ = decode_file(prefix, rate=RATE)
    assert audio.shape[1] / RATE >= 1.9
    assert abs(dominant_frequency(audio[0], RATE) - NEAR_HZ) < 15
    assert abs(dominant_frequency(audio[1], RATE) - FAR_HZ) < 15
