"""The data disk fills up during three calls: nothing recorded is lost.

The node's data dir (recordings, JetStream's store, the catalog) is a 200 MiB tmpfs
the test mounts; 4 s into three 15 s CUCM calls a filler file takes every byte left.
While full the node answers OPTIONS and INVITE 503 (the PBX fails over) and the
calls in progress go on; when the filler is deleted the three recordings are
finalized by themselves (finalize retried, JetStream recovered without a person)
with all their audio up to the moment the disk filled, and a new call is recorded
and listed. One variant puts the node's own log on the full disk too.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from callrec.audio import decode_file, dominant_frequency, sound_seconds
from tests.support import sipp
from tests.support.node import REPO, Node

pytestmark = pytest.mark.e2e

RATE = 16000
DISK_MIB = 200
RESERVE = "40M"
CALL_S = 15.0
FILL_AFTER_S = 4.0
# (near, far) tones of the three calls, and of the one after space returns.
TONES = ((440.0, 1004.0), (523.0, 1250.0), (659.0, 1500.0))
AFTER_TONES = (587.0, 1100.0)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a 200 MiB tmpfs as the node's data dir")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m,mode=0700", "tmpfs",
         str(mount_point)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(path: Path) -> int:
    """Write a filler file until the file system is full; returns its size."""
    size = 0
    block = b"\0" * (1 << 20)
    with path.open("wb", buffering=0) as handle:
        for chunk in (block, b"\0" * 4096, b"\0"):
            while True:
                try:
                    size += handle.write(chunk) or 0
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return size


def _eventually(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s")


@pytest.mark.parametrize("log_on_full_disk", [True, False], ids=["log-on-disk", "log-elsewhere"])
def test_disk_full_during_three_calls_loses_nothing(
    small_disk: Path, tmp_path: Path, log_on_full_disk: bool
) -> None:
    data_dir = small_disk / "data"
    data_dir.mkdir()
    if not log_on_full_disk:
        (data_dir / "node.log").symlink_to(tmp_path / "node.log")
    node = Node(data_dir, extra_args=["--disk-reserve", RESERVE]).start()
    server = ("127.0.0.1", node.sip_port)
    filler = small_disk / "filler"
    bloat: subprocess.Popen[bytes] | None = None
    try:
        node.cli("users", "add", "alice", "--extension", "1001")
        time.sleep(0.5)
        supervisor_pid = node.process.pid if node.process else 0
        calls = [
            sipp.start_cucm_call("127.0.0.1", node.sip_port, near="1001", far=f"200{i}",
                                 refci=str(83887000 + 10 * i), near_tone_hz=near,
                                 far_tone_hz=far, seconds=CALL_S)
            for i, (near, far) in enumerate(TONES)
        ]
        time.sleep(FILL_AFTER_S)
        filled_at = time.time()
        filler_bytes = _fill(filler)

        # Full: new work is refused (503, the PBX fails over); calls go on.
        to_503 = _eventually(lambda: sipp.options(server, expect=503, timeout_s=5), 15,
                             "OPTIONS 503 on a full disk")
        code, _ = sipp.invite_response_code(server, "1001", "2999", refci="83887100",
                                            farrefci="83887101", timeout_s=10)
        assert code == 503, code  # answered although the log may be on the full disk
        # A fact written now meets the full disk inside JetStream's file store (a
        # user with as many extensions and groups as the rules allow, each as long as
        # allowed: an event of about 8 KB, larger than a tmpfs page), which then stops
        # that stream until nats-server restarts: the node must see it and restart it
        # by itself once space returns. (With more extensions than allowed the command
        # was refused before writing anything, and the test then relied on some other
        # write meeting the full disk.)
        bloat = subprocess.Popen(
            [sys.executable, "-m", "callrec", "users", "--data-dir", str(data_dir), "add",
             "bob", *(arg for n in range(100) for arg in ("--extension", f"{n:032d}")),
             *(arg for n in range(50) for arg in ("--group", f"group {n:02d} " + "x" * 55))],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "bloat.log").open("wb"), cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        results = [call.wait(timeout=CALL_S + 30) for call in calls]
        assert all(result.ok for result in results), [r.describe() for r in results]
        calls_ended_at = time.time()
        time.sleep(3.0)  # finalize meets the full disk at least once
        assert sipp.options(server, expect=503, timeout_s=5)
        retries = node.metric("callrec_capture_finalize_retries_total")

        # Space returns: everything finishes by itself.
        filler.unlink()
        freed_at = time.time()
        node.wait_recordings(3, timeout=120)
        listed_after_s = time.time() - freed_at
        back_to_200 = _eventually(lambda: sipp.options(server, expect=200, timeout_s=5), 60,
                                  "OPTIONS 200 once space returned")
        after = sipp.start_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2100",
                                     refci="83887200", near_tone_hz=AFTER_TONES[0],
                                     far_tone_hz=AFTER_TONES[1], seconds=4.0)
        assert after.wait(timeout=40).ok
        everything = node.wait_recordings(4, timeout=60)
        bloat.wait(timeout=60)
        refused = (tmp_path / "bloat.log").read_text(errors="replace")
        assert "at most" not in refused and "must be" not in refused, refused  # it wrote
        assert node.process is not None and node.process.pid == supervisor_pid
        assert node.process.poll() is None  # no restart of the node by anyone
        audio = {r["recording_id"]: _audio(node, r, tmp_path) for r in everything}
        log = node.log()
        nats_log = (data_dir / "run" / "nats-server.log").read_text(errors="replace")
    finally:
        filler.unlink(missing_ok=True)
        if bloat is not None and bloat.poll() is None:
            bloat.kill()
        node.stop()

    assert len({r["recording_id"] for r in everything}) == 4  # no duplicates
    restarts = log.count('"jetstream_restart"')
    assert retries > 0  # finalize did fail on the full disk, and was retried
    assert restarts >= 1, nats_log[-3000:]  # the broken store was restarted, unasked
    print(f"\ndisk full ({'log on it' if log_on_full_disk else 'log elsewhere'}): "
          f"filler {filler_bytes // (1 << 20)} MiB; OPTIONS 503 after {to_503:.1f} s; "
          f"{retries:g} finalize retries; 3 listed {listed_after_s:.1f} s after space "
          f"returned; OPTIONS 200 after {back_to_200:.1f} s more; "
          f"jetstream restarts: {restarts}")
    by_tone = {round(dominant_frequency(a[0], RATE)): (r, a)
               for r, a in ((r, audio[r["recording_id"]]) for r in everything)}
    for near, far in (*TONES, AFTER_TONES):
        match = [key for key in by_tone if abs(key - near) < 15]
        assert len(match) == 1, (near, sorted(by_tone))
        recording, samples = by_tone[match[0]]
        assert abs(dominant_frequency(samples[1], RATE) - far) < 15
        started = datetime.fromisoformat(recording["started_at"]).timestamp()
        kept = [sound_seconds(samples[ch], RATE) for ch in (0, 1)]
        if (near, far) == AFTER_TONES:
            assert all(abs(k - 4.0) <= 0.3 for k in kept), kept
            continue
        before_fill = filled_at - started
        print(f"  call {near:g}/{far:g} Hz: {before_fill:.2f} s before the disk filled, "
              f"kept {kept[0]:.2f} / {kept[1]:.2f} s of {CALL_S:g} s "
              f"(ended {calls_ended_at - started:.1f} s after start)")
        # All audio up to the moment the disk filled (a half-second flush in flight
        # plus start-up margin), at most the whole call.
        assert all(before_fill - 1.0 <= k <= CALL_S + 0.2 for k in kept), (kept, before_fill)
        assert recording["duration_ms"] >= (before_fill - 1.0) * 1000


def _audio(node: Node, recording: dict[str, Any], tmp_path: Path) -> Any:
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording['recording_id']}/audio")
    assert response.status_code == 200
    path = tmp_path / f"{recording['recording_id']}.opus"
    path.write_bytes(response.content)
    samples, _ = decode_file(path, rate=RATE)
    assert samples.shape[0] == 2
    return samples
