"""RFC 4475 torture messages through the UDP transport, the SIP gate and the UAS.

Every request is answered where a response can be addressed (valid ones as RFC 3261
says, invalid ones with 400 naming the problem), responses are absorbed, nothing
raises, and the UAS still records a normal call afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from callrec.metrics import Registry
from services.signaling.admission import AllowList
from services.signaling.gate import SipGate
from services.signaling.sip.message import SipRequest
from services.signaling.sip.transport import UdpTransport
from tests.unit.test_uas import Harness, cucm_from, settle, sip_request

DATA = Path(__file__).resolve().parents[1] / "data" / "rfc4475"
MESSAGES = sorted(DATA.glob("*.sip"))

# What RFC 4475 (and RFC 3261) asks of a UAS, where it names one answer.
EXPECTED: dict[str, list[int]] = {
    "wsinv": [481],          # valid INVITE inside a dialog we do not know
    "esc02": [501],          # unknown method RE%47IST%45R
    "mpart01": [405],        # MESSAGE: not for a recorder
    "escnull": [405], "dblreq": [405], "cparam01": [405], "cparam02": [405],
    "regescrt": [405], "regaut01": [405], "regbadct": [405],
    "lwsdisp": [200], "semiuri": [200], "transports": [200], "badbranch": [200],
    "zeromf": [200], "unkscm": [200], "novelsc": [200],
    "bext01": [420],         # Require: nothingSupportsThis
    "invut": [415],          # a body type we do not understand (no 100: answered at once)
    "badvers": [505],
    "badinv01": [400], "clerr": [400], "scalar02": [400], "quotbal": [400],
    "ltgtruri": [400], "lwsruri": [400], "lwsstart": [400], "trws": [400],
    "mismatch01": [400], "mismatch02": [400], "ncl": [400], "insuf": [400],
    "multi01": [400], "mcl01": [400],
    # Policy: a recorder refuses NUL and control characters in headers (they would
    # reach logs and the catalog), so this valid message gets a 400 naming the NUL.
    "intmeth": [400],
    # Responses are absorbed (we never sent these requests).
    "unreason": [], "noreason": [], "scalarlg": [], "bigcode": [], "bcast": [],
}
RESPONSES = {"unreason", "noreason", "scalarlg", "bigcode", "bcast"}


def short_name(path: Path) -> str:
    return path.stem.split("-", 1)[1]


class Replies:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def reply(self, peer: object, data: bytes, via_port: int | None, rport: bool) -> None:
        self.sent.append(data)


def node() -> tuple[Harness, UdpTransport, Replies]:
    """A UAS (fake capture) behind the real gate and UDP transport, 127.0.0.1 allowed."""
    h = Harness()
    gate = SipGate(allow=AllowList.for_node("127.0.0.1", []), pbx_rate=1000.0,
                   pbx_burst=1000.0, metrics=Registry("signaling", "t"))
    replies = Replies()
    gate.connect(h.uas.on_message, h.uas.on_message_over_limit, replies)
    return h, UdpTransport(gate.on_message), replies


def status_lines(h: Harness) -> list[bytes]:
    return [data.split(b"\r\n", 1)[0] for _, data, _, _ in h.sender.sent]


def test_every_message_of_the_rfc_is_here() -> None:
    assert len(MESSAGES) == 49
    assert {short_name(p) for p in MESSAGES} >= set(EXPECTED)


@pytest.mark.parametrize("path", MESSAGES, ids=short_name)
async def test_torture_message_is_answered_or_absorbed(path: Path) -> None:
    h, udp, gate_replies = node()
    name = short_name(path)
    udp.datagram_received(path.read_bytes(), ("127.0.0.1", 5999))
    await settle(h.uas)
    assert gate_replies.sent == []  # an allow-listed source: the UAS answers
    lines = status_lines(h)
    statuses = [int(line.split(b" ", 2)[1]) for line in lines]
    if name in RESPONSES:
        assert statuses == []
    elif name in EXPECTED:
        assert statuses == EXPECTED[name], lines
    else:
        # Valid requests the RFC leaves to the element: one final answer, no 5xx.
        finals = [s for s in statuses if s >= 200]
        assert len(finals) == 1 and finals[0] < 500, lines
    for line in lines:
        if line.split(b" ", 2)[1] in (b"400", b"505"):
            assert b"(" in line, line  # the reason phrase names the problem
    await h.uas.shutdown()


async def test_after_all_of_them_a_normal_call_is_still_recorded() -> None:
    h, udp, _ = node()
    for path in MESSAGES:
        udp.datagram_received(path.read_bytes(), ("127.0.0.1", 5999))
    await settle(h.uas)
    assert h.uas.locks == {}
    h.sender.clear()
    before = len(h.backend.started)
    udp.datagram_received(sip_request("INVITE", call_id="after-torture",
                                      from_=cucm_from("near")), ("127.0.0.1", 5999))
    await settle(h.uas)
    assert h.sender.statuses("after-torture") == [200]  # no 100 Trying: answered within 100 ms
    assert len(h.backend.started) == before + 1
    await h.uas.shutdown()


def test_sip_request_helper_is_a_request() -> None:
    from services.signaling.sip.message import parse_message

    assert isinstance(parse_message(sip_request("OPTIONS", call_id="x")), SipRequest)
