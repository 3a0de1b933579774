"""Unit tests for services.signaling.cucm."""

from __future__ import annotations

import pytest

from services.signaling.cucm import CucmLeg, CucmLegError, parse_cucm_leg, session_key
from services.signaling.sip.message import SipRequest, parse_message, parse_name_addr

NEAR_FROM = (
    "<sip:1001@10.1.1.1;x-nearend;x-refci=25165957;x-nearendclusterid=StandAloneCluster;"
    "x-nearenddevice=SEP001122334455;x-nearendaddr=1001;x-farendrefci=25165956;"
    "x-farendclusterid=StandAloneCluster;x-farenddevice=SEP665544332211;x-farendaddr=2002>"
    ";tag=12345"
)
# The far-end leg of the same recorded call: same refci and cluster, other side.
FAR_FROM = (
    "<sip:2002@10.1.1.1;x-farend;x-refci=25165957;x-nearendclusterid=StandAloneCluster;"
    "x-nearenddevice=SEP001122334455;x-nearendaddr=1001;x-farendrefci=25165956;"
    "x-farendclusterid=StandAloneCluster;x-farenddevice=SEP665544332211;x-farendaddr=2002;"
    "x-farendguid=F0E1D2C3B4A5968778695A4B3C2D1E0F;x-sessionid=abc123>;tag=67890"
)


def test_parse_near_leg() -> None:
    leg = parse_cucm_leg(parse_name_addr(NEAR_FROM))
    assert leg == CucmLeg(
        side="near",
        refci="25165957",
        cluster_id="StandAloneCluster",
        near_addr="1001",
        near_device="SEP001122334455",
        far_addr="2002",
        far_device="SEP665544332211",
        far_refci="25165956",
        far_cluster_id="StandAloneCluster",
    )


def test_parse_far_leg_and_shared_session_key() -> None:
    near = parse_cucm_leg(parse_name_addr(NEAR_FROM))
    far = parse_cucm_leg(parse_name_addr(FAR_FROM))
    assert near is not None and far is not None
    assert far.side == "far"
    assert far.guid == "F0E1D2C3B4A5968778695A4B3C2D1E0F"
    assert far.session_id == "abc123"
    assert session_key(near) == session_key(far) == "cucm:StandAloneCluster:25165957"


def test_numbers_come_from_params_not_user_part() -> None:
    leg = parse_cucm_leg(
        parse_name_addr("<sip:recorder-trunk@10.1.1.1;x-farend;x-refci=7;x-nearendaddr=3003>")
    )
    assert leg is not None
    assert leg.near_addr == "3003"
    assert leg.far_addr is None
    assert session_key(leg) == "cucm:-:7"


def test_case_insensitive_param_names() -> None:
    leg = parse_cucm_leg(
        parse_name_addr("<sip:1001@cucm;X-NearEnd;X-RefCI=42;X-NearEndClusterID=Cl1>")
    )
    assert leg is not None
    assert (leg.side, leg.refci, leg.cluster_id) == ("near", "42", "Cl1")


def test_not_a_cucm_leg() -> None:
    assert parse_cucm_leg(parse_name_addr("<sip:src@sbc.example.com>;tag=1")) is None
    assert parse_cucm_leg(parse_name_addr("<sip:1001@cucm;x-nearend>;tag=1")) is None


@pytest.mark.parametrize(
    "text",
    [
        "<sip:1001@cucm;x-refci=1>",  # neither side
        "<sip:1001@cucm;x-nearend;x-farend;x-refci=1>",  # both sides
        "<sip:1001@cucm;x-nearend;x-refci>",  # refci without value
    ],
)
def test_inconsistent_legs_raise(text: str) -> None:
    with pytest.raises(CucmLegError):
        parse_cucm_leg(parse_name_addr(text))
    assert issubclass(CucmLegError, ValueError)


def test_from_realistic_cucm_invite() -> None:
    raw = (
        "INVITE sip:rec@10.0.0.50:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 10.1.1.1:5060;branch=z9hG4bK7f3a\r\n"
        f"From: {NEAR_FROM}\r\n"
        "To: <sip:rec@10.0.0.50>\r\n"
        "Call-ID: 4d8c5e00-1234-abcd@10.1.1.1\r\n"
        "CSeq: 101 INVITE\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    leg = parse_cucm_leg(msg.from_)
    assert leg is not None
    assert leg.side == "near"
    assert session_key(leg) == "cucm:StandAloneCluster:25165957"
