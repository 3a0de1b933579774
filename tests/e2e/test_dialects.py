"""Every PBX/SBC dialect we claim to record, end to end against one real node.

Each sample in ``tests/data/dialects/`` (written from the vendor's public
documentation, named in the file) is sent by a small UAC (``tests/support/uac.py``:
SIPp 3.6.1 sends one RTP stream and cannot build these multipart exchanges), with a
distinct tone per stream. The test then checks what a customer would: our answer
SDP, both channels of the stored recording by tone, and the participants, names,
numbers and ids the API returns. One node serves the whole module (``--record-all``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callrec.audio import decode_file, dominant_frequency
from tests.support.dialects import DialectRun, StreamPlan, load_sample, run_dialect, sample_names
from tests.support.node import Node

pytestmark = pytest.mark.e2e

RATE = 16000
SECONDS = 1.5
Hz = float | None


@dataclass(frozen=True)
class Expect:
    """What one dialect must give. ``streams``: per leg, the tone streams we send;
    ``answer_m``: m-lines in our answer to the first leg (CUCM delayed offer: our
    offer in the 200), each ``recvonly`` with a port unless listed in ``refused``;
    ``channels``: the tone on the left and right channel (None: silent);
    ``participants``: each must match one API participant on every key given;
    ``metadata``: top-level metadata values."""

    streams: list[list[StreamPlan]]
    answer_m: int
    channels: tuple[Hz, Hz]
    participants: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)
    refused: tuple[int, ...] = ()
    absent_aors: tuple[str, ...] = ()


def _cucm(near_hz: float, far_hz: float, codec: str = "PCMU", pt: int | None = None
          ) -> list[list[StreamPlan]]:
    return [[StreamPlan(0, codec, near_hz, pt)], [StreamPlan(0, codec, far_hz, pt)]]  # type: ignore[arg-type]


def _siprec(*plans: tuple[int, float], codec: str = "PCMU") -> list[list[StreamPlan]]:
    return [[StreamPlan(m, codec, hz) for m, hz in plans]]  # type: ignore[arg-type]


def _party(role: str, number: str, name: str, channel: int) -> dict[str, Any]:
    return {"role": role, "number": number, "name": name, "channel": channel}


EXPECTATIONS: dict[str, Expect] = {
    # ---- Cisco CUCM built-in bridge: two legs, near end left, far end right.
    "cucm_pt_mismatch": Expect(
        streams=_cucm(500.0, 1300.0, codec="PCMA", pt=8), answer_m=1,
        channels=(500.0, 1300.0),
        participants=[{"role": "near", "number": "1001", "channel": 0},
                      {"role": "far", "number": "1002", "channel": 1}],
        metadata={"source": "cucm"},
    ),
    "cucm_early_offer": Expect(
        streams=_cucm(440.0, 1004.0), answer_m=1, channels=(440.0, 1004.0),
        participants=[{"role": "near", "number": "1001"}, {"role": "far", "number": "1002"}],
    ),
    "cucm_g722": Expect(
        streams=_cucm(600.0, 1500.0, codec="G722"), answer_m=1, channels=(600.0, 1500.0),
        participants=[{"role": "near", "number": "1001"}, {"role": "far", "number": "1002"}],
    ),
    "cucm_g729": Expect(
        streams=_cucm(440.0, 900.0, codec="G729"), answer_m=1, channels=(440.0, 900.0),
        participants=[{"role": "near", "number": "1001"}, {"role": "far", "number": "1002"}],
    ),
    "cucm_hold": Expect(
        streams=_cucm(700.0, 1100.0), answer_m=1, channels=(700.0, 1100.0),
        participants=[{"role": "near", "number": "1001"}, {"role": "far", "number": "1002"}],
    ),
    "cucm_identity": Expect(
        streams=_cucm(550.0, 1250.0), answer_m=1, channels=(550.0, 1250.0),
        participants=[
            {"role": "near", "number": "1001", "name": "Alice Agent", "private": False},
            {"role": "far", "number": "4155550100", "name": "Bob Customer", "private": True,
             "device": "10.20.30.40"},
        ],
        metadata={"cisco_guid": "2964493056-3225977321-2170437826-0000000000"},
    ),
    # ---- SIPREC: one session, the caller on the left whatever its label or m-line.
    "freeswitch": Expect(  # caller sends label 2 (second m-line)
        streams=_siprec((0, 1004.0), (1, 440.0)), answer_m=2, channels=(440.0, 1004.0),
        participants=[_party("caller", "6001", "Ivan Caller", 0),
                      _party("callee", "6002", "Judy Callee", 1)],
        metadata={"source": "siprec"},
    ),
    "metaswitch": Expect(
        streams=_siprec((0, 520.0), (1, 1180.0)), answer_m=2, channels=(520.0, 1180.0),
        participants=[_party("caller", "+14085551000", "Kim Caller", 0),
                      _party("callee", "+14085552000", "Leo Callee", 1)],
    ),
    "opensips": Expect(
        streams=_siprec((0, 620.0), (1, 1320.0)), answer_m=2, channels=(620.0, 1320.0),
        participants=[_party("caller", "7001", "Mallory Caller", 0),
                      _party("callee", "7002", "Niaj Callee", 1)],
    ),
    "audiocodes": Expect(
        streams=_siprec((0, 480.0), (1, 1080.0), codec="PCMA"), answer_m=2,
        channels=(480.0, 1080.0),
        participants=[_party("caller", "+13125550001", "Olivia 2001", 0),
                      _party("callee", "3125550002", "Peggy Callee", 1)],
    ),
    "oracle": Expect(  # the calling party (apkt:callingParty) sends the second m-line
        streams=_siprec((0, 1400.0), (1, 660.0)), answer_m=2, channels=(660.0, 1400.0),
        participants=[_party("caller", "2145551000", "Quentin Caller", 0),
                      _party("callee", "2145552000", "Rupert Callee", 1)],
    ),
    "ribbon": Expect(
        streams=_siprec((0, 740.0), (1, 1460.0)), answer_m=2, channels=(740.0, 1460.0),
        participants=[_party("caller", "9725551000", "Sybil Caller", 0),
                      _party("callee", "9725552000", "Trent Callee", 1)],
        metadata={"call_started_at": None},  # 1970 is not a start time
    ),
    "broadworks": Expect(  # one mixed stream: on the left, the right stays silent
        streams=_siprec((0, 860.0)), answer_m=1, channels=(860.0, None),
        participants=[{"number": "2405551000", "name": "Uma Caller"},
                      {"number": "2405552000", "name": "Victor Callee"}],
    ),
    "cube": Expect(
        streams=_siprec((0, 580.0), (1, 1220.0)), answer_m=2, channels=(580.0, 1220.0),
        participants=[_party("caller", "4085551000", "Walter Caller", 0),
                      _party("callee", "4085552000", "Xena Callee", 1)],
        metadata={"cisco_guid": "1234567890-1122334455-2233445566-3344556677"},
    ),
    "avaya": Expect(  # parties only from the UPDATE; the placeholder is gone
        streams=_siprec((0, 460.0), (1, 1040.0)), answer_m=2, channels=(460.0, 1040.0),
        participants=[_party("caller", "5125551000", "Yusuf Caller", 0),
                      _party("callee", "5125552000", "Zoe Callee", 1)],
        absent_aors=("ASBCE@avaya.com",),
    ),
    "siprec_delayed_offer": Expect(  # our offer in the 200, their answer in the ACK
        streams=_siprec((0, 540.0), (1, 1160.0)), answer_m=2, channels=(540.0, 1160.0),
        participants=[_party("caller", "8005551000", "Alan Caller", 0),
                      _party("callee", "8005552000", "Beth Callee", 1)],
    ),
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("dialects"), extra_args=["--record-all"]).start()
    yield n
    n.stop()


def test_every_sample_has_expectations() -> None:
    assert sorted(EXPECTATIONS) == sample_names()


def _recording_for(node: Node, call_ids: list[str], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with node.client() as client:
        while time.monotonic() < deadline:
            items = client.get("/api/recordings", params={"limit": 1000}).json()["items"]
            for item in items:
                if set(call_ids) & set(item["metadata"].get("sip_call_ids", [])):
                    detail = client.get(f"/api/recordings/{item['recording_id']}")
                    assert detail.status_code == 200, detail.text
                    found: dict[str, Any] = detail.json()
                    return found
            time.sleep(0.3)
    raise AssertionError(f"no recording for {call_ids}\n{node.log()[-5000:]}")


def _channels(node: Node, recording: dict[str, Any], tmp_path: Path) -> np.ndarray:
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording['recording_id']}/audio")
    assert response.status_code == 200, response.text
    path = tmp_path / "audio.opus"
    path.write_bytes(response.content)
    audio, _ = decode_file(path, rate=RATE)
    assert audio.shape[0] == 2
    return audio


def _check_answer(run: DialectRun, expect: Expect) -> None:
    for leg in run.legs:
        assert leg.invite_response.status == 200, (
            f"{run.sample.name}: {leg.invite_response.start_line}\n{leg.invite_response.body}")
    answer = run.legs[0].answer
    assert len(answer) == expect.answer_m, answer
    for index, media in enumerate(answer):
        if index in expect.refused:
            assert media.port == 0, media
        else:
            assert media.port > 0, media
            assert media.direction == "recvonly", media
    for leg in run.legs:
        for response in leg.responses:
            assert 200 <= response.status < 300, response.start_line


def _check_participants(recording: dict[str, Any], expect: Expect) -> None:
    metadata = recording["metadata"]
    for key, value in expect.metadata.items():
        assert metadata.get(key) == value, (key, metadata)
    actual = metadata["participants"]
    for aor in expect.absent_aors:
        assert not [p for p in actual if aor in (p.get("aor") or "")], (aor, actual)
    for wanted in expect.participants:
        assert any(all(p.get(k) == v for k, v in wanted.items()) for p in actual), (
            wanted, actual)


@pytest.mark.parametrize("name", sorted(EXPECTATIONS))
def test_dialect_recorded(node: Node, name: str, tmp_path: Path) -> None:
    expect = EXPECTATIONS[name]
    sample = load_sample(name)
    run = run_dialect(sample, expect.streams, ("127.0.0.1", node.sip_port), seconds=SECONDS)
    _check_answer(run, expect)
    recording = _recording_for(node, run.call_ids)
    channels = recording["channels"]
    assert not [c for c in channels if c.get("silent_reason") not in (None, "no_packets")], (
        channels)
    audio = _channels(node, recording, tmp_path)
    for index, hz in enumerate(expect.channels):
        channel = audio[index]
        if hz is None:
            assert np.abs(channel).max() < 1000, (index, "should be silent")
        else:
            found = dominant_frequency(channel, RATE)
            assert abs(found - hz) < 15, (name, index, hz, found, channels)
    _check_participants(recording, expect)
