"""RTP injection (issue 7, finding 4), tried as a stranger on the network would.

A real CUCM call (SIPp from 127.0.0.1, 440 Hz near, 600 Hz far) is recorded while a
stranger on 127.0.0.2 sends a 1 kHz tone, faster than the real source, to the ports
the recorder allocated, and a local process on the PBX's own address sends it from
another port. The recording must hold the caller's tones, whole, and no 1 kHz; every
stranger packet is counted in /metrics.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callrec.audio import decode_file, dominant_frequency, sound_seconds
from tests.support import sipp
from tests.support.node import Node
from tests.support.rtp import pcmu_tone

pytestmark = pytest.mark.e2e

RATE = 16000
NEAR_HZ, FAR_HZ, STRANGER_HZ = 440.0, 600.0, 1000.0
REJECTED = "callrec_capture_packets_rejected_total"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("node")).start()
    n.cli("users", "add", "alice", "--extension", "1001")
    n.cli("users", "add", "carol", "--extension", "2001")
    time.sleep(0.5)
    yield n
    n.stop()


class Stranger:
    """Sends a 1 kHz PCMU tone as RTP from `bind` to `ports`, every `interval` s per
    port (faster than the real 20 ms, so it is first whenever a port opens)."""

    def __init__(self, bind: tuple[str, int], ports: list[int], interval: float = 0.005
                 ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.ports = ports
        self.interval = interval
        self.payload = pcmu_tone(STRANGER_HZ, 1.0)
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq, ts, chunk = 0, 0, 0
        while not self._stop.wait(self.interval):
            body = self.payload[chunk * 160:(chunk + 1) * 160]
            chunk = (chunk + 1) % (len(self.payload) // 160)
            header = bytes([0x80, 0]) + seq.to_bytes(2, "big") + ts.to_bytes(4, "big")
            packet = header + (0x5EED).to_bytes(4, "big") + body
            for port in self.ports:
                try:
                    self.sock.sendto(packet, ("127.0.0.1", port))
                    self.sent += 1
                except OSError:
                    pass
            seq, ts = (seq + 1) & 0xFFFF, (ts + 160) & 0xFFFFFFFF

    def __enter__(self) -> Stranger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def rejected(node: Node) -> dict[str, float]:
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"{node.base_url}/metrics", timeout=5.0).text.splitlines():
        if line.startswith(REJECTED + "{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = out.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def stranger_frames(channel: np.ndarray) -> int:
    """How many 40 ms frames (10 ms apart) carry the stranger's tone: sound whose 1 kHz
    line is at least half the frame's strongest and ten times the median 100-400 Hz
    around it. The codec's own noise near 1 kHz stays below a quarter of that, one
    injected 20 ms packet reaches it in any position (`check_no_stranger` proves both
    on the recording at hand)."""
    frame, hop = RATE // 25, RATE // 100
    x = channel.astype(np.float64)
    starts = np.arange(0, len(x) - frame + 1, hop)
    frames = x[starts[:, None] + np.arange(frame)[None, :]]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(frame), axis=1))
    distance = np.abs(np.fft.rfftfreq(frame, 1 / RATE) - STRANGER_HZ)
    line = spectrum[:, distance <= 25].max(axis=1)
    around = np.median(spectrum[:, (distance > 100) & (distance < 400)], axis=1)
    strongest = spectrum[:, 1:].max(axis=1)
    sound = np.sqrt((frames**2).mean(axis=1)) > 300
    tonal = (line >= 0.5 * strongest) & (line >= 10 * np.maximum(around, 1e-9))
    return int((sound & tonal).sum())


def with_one_stranger_packet(channel: np.ndarray, at: int) -> np.ndarray:
    """The channel as it would be had one 20 ms stranger packet got in at sample `at`,
    at the level of the caller's tone."""
    spliced = channel.astype(np.float64)
    amplitude = np.sqrt(2 * np.mean(spliced[RATE:2 * RATE] ** 2))
    span = np.arange(at, at + RATE // 50)
    spliced[span] = amplitude * np.sin(2 * np.pi * STRANGER_HZ * span / RATE)
    return spliced


def audio_of(node: Node, recording: dict[str, Any], tmp_path: Path) -> np.ndarray:
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording['recording_id']}/audio")
    assert response.status_code == 200
    path = tmp_path / f"{recording['recording_id']}.opus"
    path.write_bytes(response.content)
    audio, _ = decode_file(path, rate=RATE)
    return audio


def check_no_stranger(audio: np.ndarray) -> None:
    assert audio.shape[0] == 2
    for index, hz in ((0, NEAR_HZ), (1, FAR_HZ)):
        channel = audio[index]
        assert abs(dominant_frequency(channel, RATE) - hz) < 15, (index, hz)
        found = stranger_frames(channel)
        print(f"channel {index}: {found} frames with the stranger's 1 kHz")
        assert found == 0, (index, found)
        for at in (RATE, RATE + RATE // 200, RATE + RATE // 100, RATE + 3 * RATE // 200):
            # The measure would see a single packet of it, wherever it fell.
            assert stranger_frames(with_one_stranger_packet(channel, at)) > 0, (index, at)


def test_rtp_injected_from_a_stranger_is_dropped_counted_and_absent(
    node: Node, tmp_path: Path
) -> None:
    before_count = len(node.wait_recordings(0))
    before = rejected(node)
    seconds = 4.0
    call = sipp.start_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="100663297", near_tone_hz=NEAR_HZ, far_tone_hz=FAR_HZ,
                                seconds=seconds)
    try:
        near = call.near.wait_for_received_sdp()[0]
        far = call.far.wait_for_received_sdp()[0]
        ports = [near.port, far.port]
        # The stranger starts the moment our 200 OK gives the ports away (before or
        # around the ACK); a process on the PBX's address but another port joins later.
        with Stranger(("127.0.0.2", 0), ports) as stranger:
            time.sleep(1.0)
            with Stranger(("127.0.0.1", 0), ports, interval=0.02) as local:
                result = call.wait(timeout=seconds + 20)
    finally:
        call.close()
    assert result.ok, result.describe()
    recording = node.wait_recordings(before_count + 1)[0]
    assert recording["metadata"]["refci"] == "100663297"
    for channel in recording["channels"]:
        # Only the real source's packets: 200 tone packets per leg, none injected.
        assert channel["packets_received"] == seconds * 50, channel
    audio = audio_of(node, recording, tmp_path)
    check_no_stranger(audio)
    for index in (0, 1):  # the caller's tone fills its channel: nothing lost
        kept = sound_seconds(audio[index], RATE)
        assert abs(kept - seconds) <= 0.1, (index, kept)
    after = rejected(node)
    wrong_address = after.get("wrong_address", 0) - before.get("wrong_address", 0)
    wrong_port = after.get("wrong_port", 0) - before.get("wrong_port", 0)
    print(f"stranger sent {stranger.sent}, local sent {local.sent}; "
          f"rejected wrong_address={wrong_address:g} wrong_port={wrong_port:g}")
    # Datagrams sent after the call ended hit closed ports: wide margins.
    assert wrong_address >= 0.5 * stranger.sent > 0
    assert wrong_port >= 0.5 * local.sent > 0


def test_after_a_capture_restart_the_stranger_still_cannot_take_the_stream(
    node: Node, tmp_path: Path
) -> None:
    """Capture is killed mid-call and re-opens the ports from its manifest while the
    stranger floods them: the admitted source comes from disk, not from whoever is
    first after the restart."""
    before_count = len(node.wait_recordings(0))
    seconds = 8.0
    call = sipp.start_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="100663301", near_tone_hz=NEAR_HZ, far_tone_hz=FAR_HZ,
                                seconds=seconds)
    try:
        ports = [call.near.wait_for_received_sdp()[0].port,
                 call.far.wait_for_received_sdp()[0].port]
        time.sleep(2.0)
        with Stranger(("127.0.0.2", 0), ports, interval=0.002):
            old_pid = node.service_pid("services.capture")
            os.kill(old_pid, signal.SIGKILL)
            result = call.wait(timeout=seconds + 20)
    finally:
        call.close()
    assert result.ok, result.describe()
    assert node.service_pid("services.capture") != old_pid
    recording = node.wait_recordings(before_count + 1, timeout=40)[0]
    assert recording["recovered"] is True
    audio = audio_of(node, recording, tmp_path)
    check_no_stranger(audio)
    for index in (0, 1):  # the restart loses about a second, no more
        kept = sound_seconds(audio[index], RATE)
        assert seconds - 2.5 <= kept <= seconds + 0.1, (index, kept)


def test_a_stranger_spraying_every_port_cannot_inject_into_a_siprec_call(
    node: Node, tmp_path: Path
) -> None:
    """SIPREC (early offer: the source is known when the ports open). The stranger does
    not know the ports and sprays the node's whole RTP range from before the call."""
    before_count = len(node.wait_recordings(0))
    low, high = node.rtp_ports
    every_port = list(range(low + low % 2, high + 1, 2))
    with Stranger(("127.0.0.2", 0), every_port, interval=0.02) as stranger:
        time.sleep(0.5)
        result = sipp.run_siprec_call(("127.0.0.1", node.sip_port), caller="2001",
                                      callee="2002", caller_hz=NEAR_HZ, callee_hz=FAR_HZ,
                                      seconds=3.0)
    assert result.ok, result.describe()
    assert stranger.sent > 0
    recording = node.wait_recordings(before_count + 1)[0]
    assert recording["metadata"]["source"] == "siprec"
    audio = audio_of(node, recording, tmp_path)
    check_no_stranger(audio)
    for index in (0, 1):
        kept = sound_seconds(audio[index], RATE)
        assert abs(kept - 3.0) <= 0.1, (index, kept)
