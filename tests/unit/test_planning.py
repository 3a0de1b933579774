"""Pure planning: what an INVITE records and the one rule for a usable stream."""

from __future__ import annotations

import pytest

from services.signaling import sdp
from services.signaling.planning import (
    BadRequest,
    answer_sdp,
    cucm_update,
    is_metadata_type,
    plan_invite,
    split_body,
    unsupported_required,
    usable,
)
from services.signaling.recorder import Stream
from services.signaling.sip.message import SipRequest, parse_message
from tests.unit.test_uas import (
    SIPREC_CT,
    SIPREC_FROM,
    SIPREC_HEADERS,
    SIPREC_SDP,
    cucm_from,
    sip_request,
    siprec_body,
)


def request(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


SAVP = SIPREC_SDP.replace(b"RTP/AVP", b"RTP/SAVP")
ONE_SAVP = SIPREC_SDP.replace(b"m=audio 20000 RTP/AVP", b"m=audio 20000 RTP/SAVP", 1)


def media(line: str, *attrs: str) -> sdp.MediaDescription:
    text = "v=0\r\nc=IN IP4 192.0.2.1\r\n" + line + "\r\n" + "".join(a + "\r\n" for a in attrs)
    return sdp.parse_sdp(text).media[0]


@pytest.mark.parametrize(("line", "expected"), [
    ("m=audio 5000 RTP/AVP 0", True),
    ("m=audio 5000 RTP/AVP 18", True),
    ("m=audio 0 RTP/AVP 0", False),            # refused by the offerer
    ("m=audio 5000 RTP/SAVP 0", False),         # no SRTP keys are negotiated here
    ("m=audio 5000 RTP/AVP 3", False),          # GSM: no decoder
    ("m=video 5000 RTP/AVP 96", False),
])
def test_usable_is_one_rule(line: str, expected: bool) -> None:
    assert usable(media(line)) is expected


@pytest.mark.parametrize("kind", ["siprec", "cucm", "sip"])
def test_an_srtp_only_offer_is_488_whatever_the_kind(kind: str) -> None:
    """The rule used to live twice: an SAVP-only offer was planned as usable, then every
    stream refused in a 200. It is one rule now, and the answer is 488."""
    if kind == "siprec":
        data = sip_request("INVITE", call_id="p1", from_=SIPREC_FROM, body=siprec_body(sdp=SAVP),
                           content_type=SIPREC_CT, extra=SIPREC_HEADERS)
    elif kind == "cucm":
        data = sip_request("INVITE", call_id="p1", from_=cucm_from("near"), body=SAVP,
                           content_type="application/sdp")
    else:
        data = sip_request("INVITE", call_id="p1", body=SAVP, content_type="application/sdp")
    with pytest.raises(BadRequest) as caught:
        plan_invite(request(data))
    assert caught.value.status == 488


def test_a_mixed_offer_records_the_plain_rtp_stream_and_refuses_the_other() -> None:
    data = sip_request("INVITE", call_id="p2", from_=SIPREC_FROM,
                       body=siprec_body(sdp=ONE_SAVP), content_type=SIPREC_CT,
                       extra=SIPREC_HEADERS)
    plan = plan_invite(request(data))
    assert [s.stream_id for s in plan.streams] == ["m1"]
    assert plan.offer is not None
    answer = sdp.parse_sdp(answer_sdp(plan.offer, [Stream("m1", 0, "2", 40002)],
                                      "10.0.0.50", 1, 1))
    assert [m.port for m in answer.media] == [0, 40002]


def test_cucm_early_offer_answers_only_its_first_usable_stream() -> None:
    data = sip_request("INVITE", call_id="p3", from_=cucm_from("near"), body=SIPREC_SDP,
                       content_type="application/sdp")
    plan = plan_invite(request(data))
    assert plan.offer is not None
    answer = sdp.parse_sdp(answer_sdp(plan.offer, [Stream("near", 0, "near", 40000)],
                                      "10.0.0.50", 1, 1))
    assert [m.port for m in answer.media] == [40000, 0]


def test_too_many_streams_is_488() -> None:
    five = b"v=0\r\nc=IN IP4 192.0.2.1\r\n" + b"m=audio 5000 RTP/AVP 0\r\n" * 5
    data = sip_request("INVITE", call_id="p4", body=five, content_type="application/sdp")
    with pytest.raises(BadRequest) as caught:
        plan_invite(request(data))
    assert caught.value.status == 488


def test_unknown_body_type_is_415() -> None:
    data = sip_request("INVITE", call_id="p5", body=b"<x/>", content_type="application/xml")
    with pytest.raises(BadRequest) as caught:
        split_body(request(data))
    assert caught.value.status == 415


def test_unsupported_required_option_tags() -> None:
    data = sip_request("INVITE", call_id="p6", extra=[("Require", "siprec, 100rel, Timer")])
    assert unsupported_required(request(data)) == ["100rel"]


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/rs-metadata+xml", True),
    ("application/rs-metadata", True),
    ("Application/RS-Metadata; charset=utf-8", True),
    ("application/sdp", False),
    (None, False),
])
def test_metadata_types(content_type: str | None, expected: bool) -> None:
    assert is_metadata_type(content_type) is expected


def test_cucm_update_names_only_real_changes() -> None:
    invite = request(sip_request("INVITE", call_id="p7", from_=cucm_from("near")))
    recorded = plan_invite(invite).metadata
    same = request(sip_request("UPDATE", call_id="p7", from_=cucm_from("near"), to_tag="x"))
    assert cucm_update(recorded, same) is None
    moved = request(sip_request("UPDATE", call_id="p7", from_=cucm_from("near", far="4004"),
                                to_tag="x"))
    changed = cucm_update(recorded, moved)
    assert changed is not None
    assert [(p.role, p.number) for p in changed.participants] == [
        ("near", "1001"), ("far", "4004")]
    plain = request(sip_request("UPDATE", call_id="p7", to_tag="x"))
    assert cucm_update(recorded, plain) is None


def test_cisco_guid_is_kept_in_the_metadata() -> None:
    invite = request(sip_request("INVITE", call_id="p8", from_=cucm_from("near"),
                                 extra=[("Cisco-Guid", " 0123-4567 ")]))
    assert plan_invite(invite).metadata.cisco_guid == "0123-4567"
