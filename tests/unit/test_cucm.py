"""Unit tests for services.signaling.cucm."""

from __future__ import annotations

import pytest

from services.signaling.cucm import (
    CucmLeg,
    CucmLegError,
    cisco_guid,
    cucm_participants,
    normalize_cisco_guid,
    parse_cucm_leg,
    session_key,
)
from services.signaling.identity import caller_identity
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


# ---------------------------------------------------------------- issue 8: ids and names
# Header forms written from Cisco's "Cisco Unified Communications Manager System
# Configuration Guide", SIP trunk chapter (PAI/RPID with display names, Privacy
# when presentation is restricted) and the CUBE "Third-Party GUID Capture" chapter
# (Cisco-Guid is passed to the recorder, so it links BiB and CUBE recordings).

CUCM_INVITE = (
    "INVITE sip:rec@10.0.0.50:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/TCP 10.1.1.1:5060;branch=z9hG4bK7f3b\r\n"
    f"From: \"Reception\" {NEAR_FROM}\r\n"
    "To: <sip:rec@10.0.0.50>\r\n"
    "Call-ID: 4d8c5e00-1235-abcd@10.1.1.1\r\n"
    "CSeq: 101 INVITE\r\n"
    "Max-Forwards: 70\r\n"
    "Cisco-Guid: 2964493056-3225977321-2170437826-0000000042\r\n"
    'P-Asserted-Identity: "Front Desk" <sip:1001@10.1.1.1>\r\n'
    'Remote-Party-ID: "Front Desk RPID" <sip:1001@10.1.1.1>;party=calling;screen=yes;'
    "privacy=off\r\n"
    "Supported: timer\r\n"
    "Supported: X-cisco-srtp-fallback\r\n"
    "User-Agent: Cisco-CUCM14.0\r\n"
    "Content-Length: 0\r\n\r\n"
)


def _invite(text: str = CUCM_INVITE) -> SipRequest:
    msg = parse_message(text.encode())
    assert isinstance(msg, SipRequest)
    return msg


def test_cisco_guid_from_the_invite() -> None:
    msg = _invite()
    assert cisco_guid(msg.headers) == "2964493056-3225977321-2170437826-0000000042"
    assert cisco_guid(_invite(CUCM_INVITE.replace("Cisco-Guid", "X-Other")).headers) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" 2964493056-3225977321-2170437826-0000000042 ",
         "2964493056-3225977321-2170437826-0000000042"),
        ("f0e1d2c3b4a5968778695a4b3c2d1e0f", "F0E1D2C3B4A5968778695A4B3C2D1E0F"),
        ('"ABC-123"', "ABC-123"),
        ("", None),
        ("has space", None),
        ("x" * 65, None),
        ("<script>", None),
        (None, None),
    ],
)
def test_normalize_cisco_guid(value: str | None, expected: str | None) -> None:
    assert normalize_cisco_guid(value) == expected


def test_participants_take_the_pai_name_for_the_matching_party() -> None:
    msg = _invite()
    leg = parse_cucm_leg(msg.from_)
    assert leg is not None
    near, far = cucm_participants(leg, caller_identity(msg.headers, msg.from_))
    assert (near.role, near.number, near.name, near.device, near.channel) == (
        "near", "1001", "Front Desk", "SEP001122334455", 0)
    assert (far.role, far.number, far.name, far.device, far.channel) == (
        "far", "2002", None, "SEP665544332211", 1)
    assert near.private is False and near.identity_source == "cucm"


def test_a_far_end_identity_names_the_far_party_and_privacy_marks_it() -> None:
    text = (CUCM_INVITE.replace('"Front Desk" <sip:1001@', '"Outside Caller" <sip:2002@')
            .replace("Cisco-Guid", "Privacy: id\r\nCisco-Guid"))
    msg = _invite(text)
    leg = parse_cucm_leg(msg.from_)
    assert leg is not None
    near, far = cucm_participants(leg, caller_identity(msg.headers, msg.from_))
    assert (far.name, far.private) == ("Outside Caller", True)
    assert (near.name, near.private) == (None, False)


def test_far_device_ip_address_is_kept_as_the_device() -> None:
    leg = parse_cucm_leg(parse_name_addr(
        "<sip:1001@10.1.1.1;x-nearend;x-refci=9;x-nearendaddr=1001;"
        "x-farenddevice=10.20.30.40;x-farendaddr=+15550001111>"
    ))
    assert leg is not None
    assert leg.far_device == "10.20.30.40"
    assert leg.far_device_is_address
    _, far = cucm_participants(leg)
    assert (far.device, far.number) == ("10.20.30.40", "+15550001111")
    phone = parse_cucm_leg(parse_name_addr(NEAR_FROM))
    assert phone is not None and not phone.far_device_is_address


def test_update_after_transfer_carries_the_new_far_party() -> None:
    # After a transfer CUCM sends an UPDATE whose From has a new x-farendaddr:
    # parsing that From gives the party the recording must follow.
    update_from = NEAR_FROM.replace("x-farendaddr=2002", "x-farendaddr=3003")
    moved = parse_cucm_leg(parse_name_addr(update_from))
    assert moved is not None
    assert moved.far_addr == "3003"
    original = parse_cucm_leg(parse_name_addr(NEAR_FROM))
    assert original is not None and session_key(moved) == session_key(original)
