"""Signaling tells capture where each stream's RTP comes from, from the PBX's SDP."""

from __future__ import annotations

from contracts.v1.rpc import RtpSource, StreamSpec
from services.capture.latching import Expected, expected_from_sdp
from services.signaling import sdp
from services.signaling.uas import _media_for, _rtp_source, _with_sources

SIPREC_OFFER = sdp.parse_sdp(
    "v=0\r\no=SRC 1 1 IN IP4 192.0.2.5\r\ns=-\r\nc=IN IP4 192.0.2.5\r\nt=0 0\r\n"
    "m=audio 30000 RTP/AVP 0\r\na=label:1\r\na=sendonly\r\n"
    "m=audio 30002 RTP/AVP 0\r\nc=IN IP4 192.0.2.6\r\na=label:2\r\na=sendonly\r\n"
)
HOLD_ANSWER = sdp.parse_sdp(
    "v=0\r\no=CCM 1 2 IN IP4 10.1.1.20\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
    "m=audio 24580 RTP/AVP 0\r\na=inactive\r\n"
)


def test_each_siprec_stream_gets_its_own_c_line_and_port() -> None:
    specs = [StreamSpec(stream_id="m0", channel=1, label="1"),
             StreamSpec(stream_id="m1", channel=0, label="2")]
    with_sources = _with_sources(specs, SIPREC_OFFER)
    assert [s.source for s in with_sources] == [
        RtpSource(address="192.0.2.5", port=30000),  # session-level c=
        RtpSource(address="192.0.2.6", port=30002),  # media-level c= wins
    ]
    assert [(s.stream_id, s.channel) for s in with_sources] == [("m0", 1), ("m1", 0)]


def test_delayed_offer_allocates_without_a_source() -> None:
    specs = [StreamSpec(stream_id="near", channel=0, label="near")]
    assert _with_sources(specs, None) == specs
    assert specs[0].source is None


def test_cucm_leg_uses_the_first_usable_m_line() -> None:
    media = _media_for("near", SIPREC_OFFER)
    assert media is not None and media.port == 30000


def test_placeholders_are_passed_as_written_and_mean_nothing_to_capture() -> None:
    media = _media_for("near", HOLD_ANSWER) or HOLD_ANSWER.media[0]
    source = _rtp_source(HOLD_ANSWER, media)
    assert source == RtpSource(address="0.0.0.0", port=24580)
    assert expected_from_sdp(source.address, source.port) == Expected()
