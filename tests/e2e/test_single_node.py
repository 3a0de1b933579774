"""One real node (`callrec up`: nats-server + six services) driven by real SIPp.

Every recording is downloaded through the HTTP API, decoded, and checked by
content: two channels, the right length, and on each channel the tone that was
sent on that leg, found again by frequency.
"""

from __future__ import annotations

import io
import os
import signal
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callrec.audio import decode_file, dominant_frequency, sound_seconds
from tests.support import sipp
from tests.support.node import Node

pytestmark = pytest.mark.e2e

RATE = 16000
NEAR_HZ, FAR_HZ = 440.0, 1004.0
ACTIVE = "callrec_signaling_active_recordings"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("node"), extra_args=["--max-channels", "1"]).start()
    n.cli("users", "add", "alice", "--extension", "1001", "--password", "alice-pw")
    n.cli("users", "add", "bob", "--extension", "1003", "--no-record")
    n.cli("users", "add", "carol", "--extension", "2001")
    time.sleep(0.5)  # let signaling's projection apply the user events
    yield n
    n.stop()


def fetch_audio(node: Node, recording: dict[str, Any], tmp_path: Path) -> tuple[np.ndarray, int]:
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording['recording_id']}/audio")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("audio/ogg")
    path = tmp_path / f"{recording['recording_id']}.opus"
    path.write_bytes(response.content)
    import hashlib

    assert hashlib.sha256(response.content).hexdigest() == recording["sha256"]
    return decode_file(path, rate=RATE)


def check_stereo_recording(
    audio: np.ndarray, recording: dict[str, Any], left_hz: float, right_hz: float,
    tone_s: float,
) -> None:
    assert audio.shape[0] == 2
    decoded_s = audio.shape[1] / RATE
    assert abs(decoded_s - recording["duration_ms"] / 1000) <= 0.1, (decoded_s, recording)
    for index, expected in ((0, left_hz), (1, right_hz)):
        channel = audio[index]
        assert abs(dominant_frequency(channel, RATE) - expected) < 15, (index, expected)
        # The whole tone is there (no lost audio), and nothing else is loud. Opus rings
        # 20-40 ms past each edge of a tone (measured at 12 and 16 kbit/s alike), and a
        # call with a hold has four edges.
        kept = sound_seconds(channel, RATE)
        assert -0.1 <= round(kept - tone_s, 3) <= 0.2, (index, kept)


def newest(node: Node, count: int) -> dict[str, Any]:
    return node.wait_recordings(count)[0]


def test_options_answered_200_when_able_to_record(node: Node) -> None:
    assert sipp.options(("127.0.0.1", node.sip_port), expect=200)
    assert sipp.options(("127.0.0.1", node.sip_port), expect=200, transport="t1")


def test_cucm_bib_call_recorded_in_stereo(node: Node, tmp_path: Path) -> None:
    before = len(node.wait_recordings(0))
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="5550100",
                                refci="25165957", near_tone_hz=NEAR_HZ, far_tone_hz=FAR_HZ,
                                seconds=3.0)
    assert result.ok, result.describe()
    recording = newest(node, before + 1)
    meta = recording["metadata"]
    assert meta["source"] == "cucm" and meta["refci"] == "25165957"
    numbers = {p["role"]: p["number"] for p in meta["participants"]}
    assert numbers == {"near": "1001", "far": "5550100"}
    assert meta["recorded_user"] == "alice"
    assert 3.0 <= recording["duration_ms"] / 1000 <= 4.5
    for channel in recording["channels"]:
        assert channel["packets_received"] == 150, channel
        assert channel["packets_lost"] == 0
        assert channel["codecs"] == ["PCMU"]
    audio, _ = fetch_audio(node, recording, tmp_path)
    check_stereo_recording(audio, recording, NEAR_HZ, FAR_HZ, tone_s=3.0)


def test_cucm_call_over_tcp_with_hold_and_resume(node: Node, tmp_path: Path) -> None:
    before = len(node.wait_recordings(0))
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="33554433", near_tone_hz=600.0, far_tone_hz=1400.0,
                                seconds=3.0, transport="t1", reinvite=True)
    assert result.ok, result.describe()
    recording = newest(node, before + 1)
    assert recording["metadata"]["refci"] == "33554433"
    audio, _ = fetch_audio(node, recording, tmp_path)
    # Tone, about a second of hold (silence), tone again: all kept, in place.
    check_stereo_recording(audio, recording, 600.0, 1400.0, tone_s=3.0)
    assert recording["duration_ms"] >= 4000


def test_a_tcp_invite_that_waited_through_a_stalled_signaling_gets_503(node: Node) -> None:
    """Signaling stopped for 2.5 s while a PBX's INVITE sits in its TCP connection: when
    it runs again, the INVITE's wait (the kernel's stamp, over the 1 s --sip-shed-after)
    gets 503 + Retry-After, so the PBX records the call on its backup; then calls over
    TCP are answered again. Read by the loop's own transport, its wait was unknown and
    the INVITE was answered 200, 2.5 s late."""
    server = ("127.0.0.1", node.sip_port)
    shed_before = node.metric("callrec_signaling_invites_shed")
    pid = node.service_pid("services.signaling")
    run = sipp.invite_expect_run(server, "1001", refci="50331649", transport="t1")
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            run.start()
            time.sleep(2.5)  # connected (the kernel accepts), its INVITE waiting
        finally:
            os.kill(pid, signal.SIGCONT)
        run.wait()
        result = run.result()
    finally:
        run.close()
    assert result.final_response_code("INVITE") == 503, result.describe()
    assert "overloaded, try the backup" in result.messages
    assert node.metric("callrec_signaling_invites_shed") == shed_before + 1
    assert sipp.options(server, expect=200, transport="t1")


def test_siprec_call_maps_caller_on_label_2_to_left(node: Node, tmp_path: Path) -> None:
    before = len(node.wait_recordings(0))
    result = sipp.run_siprec_call(("127.0.0.1", node.sip_port), caller="2001", callee="2002",
                                  caller_hz=NEAR_HZ, callee_hz=FAR_HZ, seconds=3.0)
    assert result.ok, result.describe()
    assert len(result.answer) == 2
    assert all(m.direction == "recvonly" for m in result.answer)
    recording = newest(node, before + 1)
    meta = recording["metadata"]
    assert meta["source"] == "siprec"
    roles = {p["role"]: (p["number"], p["channel"]) for p in meta["participants"]}
    assert roles == {"caller": ("2001", 0), "callee": ("2002", 1)}
    audio, _ = fetch_audio(node, recording, tmp_path)
    # The caller sends label 2 (our second m-line) and must be on the left.
    check_stereo_recording(audio, recording, NEAR_HZ, FAR_HZ, tone_s=3.0)


def test_wav_download_and_range_requests(node: Node) -> None:
    recording = node.wait_recordings(1)[0]
    url = f"/api/recordings/{recording['recording_id']}/audio"
    with node.client() as client:
        part = client.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and len(part.content) == 100
        assert part.headers["content-range"] == f"bytes 100-199/{recording['size_bytes']}"
        wav = client.get(url, params={"format": "wav"})
    assert wav.status_code == 200
    with wave.open(io.BytesIO(wav.content)) as reader:
        assert reader.getnchannels() == 2 and reader.getsampwidth() == 2
        seconds = reader.getnframes() / reader.getframerate()
    assert abs(seconds - recording["duration_ms"] / 1000) <= 0.1


def test_unknown_user_404_and_not_enabled_403(node: Node) -> None:
    server = ("127.0.0.1", node.sip_port)
    code, result = sipp.invite_response_code(server, near_number="7777")
    assert code == 404, result.describe()
    code, result = sipp.invite_response_code(server, near_number="1003")
    assert code == 403, result.describe()


def test_licence_exhausted_486_without_failover(node: Node) -> None:
    server = ("127.0.0.1", node.sip_port)
    call = sipp.start_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="50331649", seconds=4.0)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not node.metric(ACTIVE):
            time.sleep(0.1)
        assert node.metric(ACTIVE) == 1
        code, result = sipp.invite_response_code(server, near_number="1001",
                                                 refci="50331650", farrefci="50331651")
        assert code == 486, result.describe()
    finally:
        outcome = call.wait()
    assert outcome.ok, outcome.describe()


def test_every_service_runs_the_collector_policy_and_reports_it(node: Node) -> None:
    """callrec.gcpolicy in each service process: its figures in /metrics, by service."""
    import httpx

    text = httpx.get(f"{node.base_url}/metrics", timeout=5.0).text
    services = {"signaling", "capture", "catalog", "sync", "scheduler", "web"}
    reporting = {line.split('service="', 1)[1].split('"', 1)[0]
                 for line in text.splitlines()
                 if line.startswith("callrec_gc_pause_longest_seconds{")}
    assert reporting == services, text[:2000]


def test_invite_answer_times_are_a_histogram_in_metrics(node: Node) -> None:
    """signaling_invite_answer_seconds counts the INVITEs the earlier tests sent."""
    import httpx

    name = "callrec_signaling_invite_answer_seconds"
    lines = httpx.get(f"{node.base_url}/metrics", timeout=5.0).text.splitlines()
    assert f"# TYPE {name} histogram" in lines
    count = next(float(line.rsplit(" ", 1)[1]) for line in lines
                 if line.startswith(f"{name}_count{{"))
    infinite = next(float(line.rsplit(" ", 1)[1]) for line in lines
                    if line.startswith(f"{name}_bucket{{") and 'le="+Inf"' in line)
    assert count >= 2 and infinite == count


def _encoder_workers(node: Node) -> list[int]:
    """Capture's encoder worker processes (and their forkserver) in the node's group."""
    assert node.process is not None
    group = os.getpgid(node.process.pid)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if os.getpgid(int(entry.name)) == group and b"multiprocessing.forkserver" in cmdline:
                found.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return found


def test_encoders_falling_behind_show_as_lag_and_turn_new_calls_away(
        node: Node, tmp_path: Path) -> None:
    """capture_live_lag_seconds: what a lost host would cost each call in progress.
    About a second while the encoder workers keep pace; stopped, it grows by as much.
    Past --max-live-lag (5 s by default) new calls get 503, so the PBX records them
    on the backup, while the call in progress goes on; once the workers go on and
    catch up, new calls are recorded again."""
    lag = "callrec_capture_live_lag_seconds"
    admits = "callrec_signaling_admits_new_calls"
    server = ("127.0.0.1", node.sip_port)
    before = len(node.wait_recordings(0))
    call = sipp.start_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="83886081", seconds=20.0)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not node.metric(ACTIVE):
            time.sleep(0.1)
        time.sleep(2.0)
        keeping_pace = node.metric(lag)
        assert 0.3 <= keeping_pace < 3.0
        assert node.metric(admits) == 1.0
        workers = _encoder_workers(node)
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(4.0)
        stalled = node.metric(lag)
        assert stalled >= 4.0, (keeping_pace, stalled)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and node.metric(admits):
            time.sleep(0.2)
        assert node.metric("callrec_capture_over_capacity") == 1.0
        assert node.metric(admits) == 0.0
        code, result = sipp.invite_response_code(server, near_number="1001",
                                                 refci="83886091")
        assert code == 503, result.describe()
        assert "behind in encoding" in result.messages  # the 503's Warning says why
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not node.metric(admits):
        time.sleep(0.2)
    assert node.metric(admits) == 1.0
    assert node.metric(lag) < 2.6
    outcome = call.wait()
    assert outcome.ok, outcome.describe()
    after = sipp.start_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                 refci="83886101", seconds=1.0)
    outcome = after.wait()
    assert outcome.ok, outcome.describe()
    # What was recorded: the call in progress through the stall, whole (both tones, all
    # 20 s of them), and the call after it; the refused one not at all.
    recordings = {r["metadata"]["refci"]: r for r in node.wait_recordings(before + 2)[:2]}
    assert set(recordings) == {"83886081", "83886101"}, list(recordings)
    for refci, tone_s in (("83886081", 20.0), ("83886101", 1.0)):
        audio, _ = fetch_audio(node, recordings[refci], tmp_path)
        check_stereo_recording(audio, recordings[refci], 440.0, 1004.0, tone_s=tone_s)


def test_capture_hung_gives_503_then_recovers(node: Node) -> None:
    server = ("127.0.0.1", node.sip_port)
    pid = node.service_pid("services.capture")
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(5)  # health becomes stale after a few seconds
        assert sipp.options(server, expect=503)
        code, result = sipp.invite_response_code(server, near_number="1001",
                                                 refci="67108865")
        assert code == 503, result.describe()
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not node.can_record():
        time.sleep(0.2)
    assert sipp.options(server, expect=200)
