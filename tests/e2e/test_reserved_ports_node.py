"""New legs answered from capture's port reserve (issue 11, set-up rate), on a real node.

Signaling answers a new leg with ports capture bound ahead of it and sends the
allocate after the 200 OK. A call answered so is recorded whole; one answered
in the instant capture is killed (signaling still trusts its last health report) is
recorded too, by the restarted capture binding the answered ports again, where it
used to get 503 and go to the backup.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callrec.audio import dominant_frequency, sound_seconds
from tests.e2e.test_single_node import RATE, check_stereo_recording, fetch_audio
from tests.support import sipp
from tests.support.node import Node

pytestmark = pytest.mark.e2e

NEAR_HZ, FAR_HZ = 440.0, 1004.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("node")).start()
    n.cli("users", "add", "alice", "--extension", "1001")
    yield n
    n.stop()


def wait_reserve(node: Node, timeout: float = 15.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reserved = node.metric_if_present("callrec_signaling_ports_reserved") or 0.0
        if reserved >= 2 and node.can_record():
            return reserved
        time.sleep(0.2)
    raise AssertionError(f"no ports reserved in {timeout} s")


def answered(node: Node, refci: str) -> list[dict[str, object]]:
    """The node's leg_answered log lines of a call (found by its recording's legs)."""
    lines = [json.loads(line) for line in node.log().splitlines()
             if line.startswith("{") and '"leg_answered"' in line]
    recordings = {r["recording_id"] for r in node.wait_recordings(0)
                  if r["metadata"].get("refci") == refci}
    return [line for line in lines if line.get("recording_id") in recordings]


def test_a_call_answered_from_the_reserve_is_recorded_whole(node: Node, tmp_path: Path) -> None:
    wait_reserve(node)
    before = len(node.wait_recordings(0))
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="5550100",
                                refci="117440513", near_tone_hz=NEAR_HZ, far_tone_hz=FAR_HZ,
                                seconds=3.0)
    assert result.ok, result.describe()
    recording = node.wait_recordings(before + 1)[0]
    assert recording["metadata"]["refci"] == "117440513"
    legs = answered(node, "117440513")
    assert [leg["reserved"] for leg in legs] == [True, True], legs
    for channel in recording["channels"]:
        assert channel["packets_received"] == 150, channel
    audio, _ = fetch_audio(node, recording, tmp_path)
    check_stereo_recording(audio, recording, NEAR_HZ, FAR_HZ, tone_s=3.0)


def test_a_call_answered_as_capture_dies_is_recorded_by_its_successor(
    node: Node, tmp_path: Path
) -> None:
    wait_reserve(node)
    before = len(node.wait_recordings(0))
    old_pid = node.service_pid("services.capture")
    os.kill(old_pid, signal.SIGKILL)
    seconds = 8.0
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="5550100",
                                refci="117440521", near_tone_hz=NEAR_HZ, far_tone_hz=FAR_HZ,
                                seconds=seconds)
    assert result.ok, result.describe()  # answered 200, not 503
    assert node.service_pid("services.capture") != old_pid
    recording = node.wait_recordings(before + 1, timeout=40)[0]
    assert recording["metadata"]["refci"] == "117440521"
    legs = answered(node, "117440521")
    assert [leg["reserved"] for leg in legs] == [True, True], legs
    assert node.metric("callrec_signaling_legs_lost_after_answer") == 0
    audio, _ = fetch_audio(node, recording, tmp_path)
    for index, hz in ((0, NEAR_HZ), (1, FAR_HZ)):
        channel = audio[index]
        assert abs(dominant_frequency(channel, RATE) - hz) < 15, (index, hz)
        kept = sound_seconds(channel, RATE)
        print(f"channel {index}: {kept:.2f} s of {seconds:.0f} s kept across the restart")
        # What is lost is what reached the ports while no capture held them.
        assert seconds - 4.0 <= kept <= seconds + 0.2, (index, kept)
