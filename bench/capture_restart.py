"""Capture restart benchmark: audio lost per channel when capture is SIGKILLed mid-call,
and how long capture takes to come back.

Why: the promise is that a capture restart loses at most half a second per channel.
A real node, a CUCM call (440 Hz near, 1004 Hz far) of `--seconds`, capture SIGKILLed
`--kill-at` seconds in; the recording's tone is measured per channel (as the e2e test
does). Times from the node's own log: the kill to the supervisor seeing the exit,
to the new capture process up (`service_started`), and to its recordings back
(`recording_recovered`: sockets taken back from the keeper, or re-bound before it).
Run from the repository root (PYTHONPATH selects the code the node runs, so the same
script measures another checkout, e.g. the one before the socket keeper):

    PYTHONPATH=$PWD .venv/bin/python -m bench.capture_restart --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

RATE = 16000


def _events(log_text: str) -> list[dict[str, Any]]:
    events = []
    for line in log_text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def one_run(work: Path, index: int, seconds: float, kill_at: float,
            kills: int = 1) -> dict[str, float]:
    from callrec.audio import decode_file, dominant_frequency, sound_seconds
    from tests.support import sipp
    from tests.support.node import Node

    node = Node(work / f"node{index}").start()
    try:
        node.cli("users", "add", "alice", "--extension", "1001")
        time.sleep(0.5)
        call = sipp.start_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                    refci=str(83886200 + 10 * index), near_tone_hz=440,
                                    far_tone_hz=1004, seconds=seconds)
        time.sleep(kill_at)
        pid = node.service_pid("services.capture")
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        for _ in range(kills - 1):  # kill the new one as soon as it exists: back-off
            pid = _next_pid(node, pid)
            killed_at = time.time()  # times below: from the last kill
            os.kill(pid, signal.SIGKILL)
        result = call.wait()
        if not result.ok:
            raise RuntimeError(result.describe())
        recording = node.wait_recordings(1, timeout=60)[0]
        with node.client() as client:
            audio_bytes = client.get(f"/api/recordings/{recording['recording_id']}/audio").content
        log_text = node.log()
    finally:
        node.stop()
    path = work / f"rec{index}.opus"
    path.write_bytes(audio_bytes)
    audio, _ = decode_file(path, rate=RATE)
    lost = []
    for channel, hz in ((0, 440.0), (1, 1004.0)):
        if abs(dominant_frequency(audio[channel], RATE) - hz) >= 15:
            raise RuntimeError(f"channel {channel}: wrong tone")
        lost.append(seconds - sound_seconds(audio[channel], RATE))
    after = [e for e in _events(log_text) if _at(e) >= killed_at]
    exited = next(_at(e) for e in after if e.get("event") == "service_exited")
    started = next(_at(e) for e in after
                   if e.get("event") == "service_started" and e.get("service") == "capture")
    recovered = next(_at(e) for e in after if e.get("event") == "recording_recovered")
    return {"lost_near": lost[0], "lost_far": lost[1], "exit_seen": exited - killed_at,
            "process_up": started - killed_at, "streams_back": recovered - killed_at}


def _next_pid(node: Any, old: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            pid = int(node.service_pid("services.capture"))
        except LookupError:
            pid = old
        if pid != old:
            return pid
        time.sleep(0.005)
    raise TimeoutError("capture was not restarted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="tone per leg")
    parser.add_argument("--kill-at", type=float, default=3.0)
    parser.add_argument("--kills", type=int, default=1,
                        help="SIGKILL each new capture at once, this many times in all")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="capture-restart-") as tmp:
        for index in range(args.runs):
            row = one_run(Path(tmp), index, args.seconds, args.kill_at, args.kills)
            rows.append(row)
            print(" ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)
    print("median: " + " ".join(f"{k}={statistics.median(r[k] for r in rows):.2f}"
                                for k in rows[0]))
    print("max:    " + " ".join(f"{k}={max(r[k] for r in rows):.2f}" for k in rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
