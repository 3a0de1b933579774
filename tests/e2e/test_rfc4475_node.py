"""RFC 4475 torture messages sent over UDP to a real node from an allow-listed
source (127.0.0.1): every request gets the answer tests/unit/test_rfc4475.py names
(or one final answer), responses are absorbed, the node stays healthy, and a real
CUCM call recorded afterwards has both its tones.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callrec.audio import decode_file, dominant_frequency
from tests.support import sipp
from tests.support.node import Node
from tests.unit.test_rfc4475 import EXPECTED, MESSAGES, RESPONSES, short_name

pytestmark = pytest.mark.e2e

RATE = 16000


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("rfc4475"), extra_args=["--sip-allow", "127.0.0.1/32"])
    n.start()
    n.cli("users", "add", "alice", "--extension", "1001", "--password", "alice-pw")
    time.sleep(0.5)
    yield n
    n.stop()


_CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)")
_TOP_VIA = re.compile(rb"(?im)^(?:via|v)[ \t]*:(.*)$")


def call_id(data: bytes) -> bytes | None:
    head = data.split(b"\r\n\r\n", 1)[0]
    m = _CALL_ID.search(head)
    return m.group(1) if m else None


def answered_here(data: bytes) -> bool:
    """Whether the node answers to our socket: replies go to the source address, at
    the top Via's port unless it has none or asks for rport (RFC 3261 18.2.2, RFC 3581)."""
    m = _TOP_VIA.search(data.split(b"\r\n\r\n", 1)[0])
    if m is None:
        return True
    top = m.group(1).split(b",", 1)[0]
    sent_by = top.split(b";", 1)[0]
    return b"rport" in top or re.search(rb"[a-z0-9\]]:\s*[0-9]+\s*$", sent_by) is None


def transaction_key(data: bytes) -> bytes:
    head = data.split(b"\r\n\r\n", 1)[0]
    m = _TOP_VIA.search(head)
    via = re.sub(rb"\s+", b"", m.group(1).split(b",", 1)[0]) if m else b""
    return via + b" " + head.split(b" ", 1)[0]


def receive(sock: socket.socket, seconds: float, into: dict[bytes | None, set[int]]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            continue
        parts = data.split(b"\r\n", 1)[0].split(b" ", 2)
        if parts[0] == b"SIP/2.0" and len(parts) > 1 and parts[1].isdigit():
            into.setdefault(call_id(data), set()).add(int(parts[1]))


def test_torture_messages_then_a_normal_call(node: Node, tmp_path: Path) -> None:
    node.wait_healthy()
    malformed_before = node.metric("callrec_signaling_sip_malformed")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    got: dict[bytes | None, set[int]] = {}
    try:
        for path in MESSAGES:
            sock.sendto(path.read_bytes(), ("127.0.0.1", node.sip_port))
            receive(sock, 0.2, got)
        receive(sock, 1.0, got)
    finally:
        sock.close()
    checked = 0
    transactions: set[bytes] = set()
    for path in MESSAGES:
        name, data = short_name(path), path.read_bytes()
        # Several of the RFC's messages share a branch, sent-by and method: to a
        # server that is the same transaction (RFC 3261 17.2.3), so the later ones
        # are retransmissions, answered with the first one's response.
        key = transaction_key(data)
        repeated = key in transactions
        transactions.add(key)
        if repeated:
            continue
        finals = sorted(s for s in got.get(call_id(data), set()) if s >= 200)
        if name in RESPONSES:
            assert finals == [], (name, finals)  # absorbed: nothing sent back
            continue
        if not answered_here(data):
            continue  # answered at the Via's port, which is not ours
        checked += 1
        if name in EXPECTED:
            assert finals == [s for s in EXPECTED[name] if s >= 200], (name, finals)
        else:
            assert len(finals) == 1 and finals[0] < 500, (name, finals)
    assert checked >= 30
    node.wait_healthy()
    assert node.metric("callrec_signaling_sip_malformed") - malformed_before >= 15
    # Nothing crashed and nothing hangs: a real call is recorded with both tones.
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="67108865", near_tone_hz=440.0, far_tone_hz=1004.0,
                                seconds=2.0)
    assert result.ok, result.describe()
    recording = next(r for r in node.wait_recordings(1)
                     if r["metadata"].get("refci") == "67108865")
    with node.client() as client:
        response = client.get(f"/api/recordings/{recording['recording_id']}/audio")
    assert response.status_code == 200
    audio_path = tmp_path / "call.opus"
    audio_path.write_bytes(response.content)
    audio, _ = decode_file(audio_path, rate=RATE)
    near, far = dominant_frequency(audio[0], RATE), dominant_frequency(audio[1], RATE)
    assert abs(near - 440.0) < 15 and abs(far - 1004.0) < 15, (near, far)
