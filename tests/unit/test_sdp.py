"""Unit tests for services.signaling.sdp."""

from __future__ import annotations

import pytest

from services.signaling.sdp import (
    SUPPORTED_CODECS,
    MediaSpec,
    SdpError,
    choose_codecs,
    parse_sdp,
    payload_codecs,
    recorder_answer,
    recorder_offer,
    render_sdp,
)

SIPREC_OFFER = (
    "v=0\r\n"
    "o=SBC 1234 5678 IN IP4 192.0.2.10\r\n"
    "s=SIPREC\r\n"
    "c=IN IP4 192.0.2.10\r\n"
    "t=0 0\r\n"
    "m=audio 20000 RTP/AVP 8 0 101\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:20\r\n"
    "a=label:1\r\n"
    "a=sendonly\r\n"
    "m=audio 20002 RTP/AVP 18 0 101\r\n"
    "c=IN IP4 192.0.2.11\r\n"
    "a=rtpmap:18 G729/8000\r\n"
    "a=fmtp:18 annexb=yes\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=label:2\r\n"
    "a=sendonly\r\n"
    "a=x-custom:thing\r\n"
)


def test_parse_siprec_offer() -> None:
    sd = parse_sdp(SIPREC_OFFER)
    assert sd.origin_username == "SBC"
    assert sd.origin_session_id == "1234"
    assert sd.origin_version == "5678"
    assert sd.origin_address == "192.0.2.10"
    assert sd.session_name == "SIPREC"
    assert sd.connection_address == "192.0.2.10"
    assert len(sd.media) == 2
    m1, m2 = sd.media
    assert (m1.media, m1.port, m1.proto, m1.formats) == ("audio", 20000, "RTP/AVP", [8, 0, 101])
    assert m1.rtpmap[101] == ("telephone-event", 8000, 1)
    assert m1.fmtp == {101: "0-15"}
    assert m1.ptime == 20
    assert m1.label == "1"
    assert m1.direction == "sendonly"
    assert m1.connection_address == "192.0.2.10"
    assert m2.connection_address == "192.0.2.11"
    assert m2.label == "2"
    assert ("x-custom", "thing") in m2.attributes


def test_parse_lf_only_session_direction_and_static_pts() -> None:
    sd = parse_sdp(
        "v=0\no=- 1 1 IN IP6 2001:db8::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\na=recvonly\n"
        "m=audio 4000 RTP/AVP 0 9 18\nm=audio 4002 RTP/AVP 0\na=inactive\n"
    )
    assert sd.direction == "recvonly"
    assert sd.media[0].direction == "recvonly"
    assert sd.media[1].direction == "inactive"
    assert sd.connection_address == "2001:db8::1"
    assert payload_codecs(sd.media[0]) == {0: "PCMU", 9: "G722", 18: "G729"}


def test_parse_crypto_and_savp() -> None:
    sd = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "m=audio 16384 RTP/SAVP 0\r\nc=IN IP4 10.0.0.1\r\n"
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
    )
    md = sd.media[0]
    assert md.proto == "RTP/SAVP"
    assert md.crypto == [
        "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
    ]
    assert sd.connection_address is None
    assert md.connection_address == "10.0.0.1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "o=- 1 1 IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",  # missing v=
        "v=1\r\nm=audio 1 RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n",  # no m=
        "v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
        "v=0\r\nm=audio -1 RTP/AVP 0\r\n",
        "v=0\r\nm=audio abc RTP/AVP 0\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP 0 x\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP 200\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:x PCMU\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=fmtp:abc x\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=ptime:fast\r\n",
        "v=0\r\nc=IN IP4\r\nm=audio 4000 RTP/AVP 0\r\n",
        "v=0\r\no=short\r\nm=audio 4000 RTP/AVP 0\r\n",
        "v=0\r\nthis is not sdp\r\nm=audio 4000 RTP/AVP 0\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=label:\x01\r\n",
        "v=0\r\nv=0\r\nm=audio 4000 RTP/AVP 0\r\n",
        "v=0\r\n" + "a=x\r\n" * 20000 + "m=audio 4000 RTP/AVP 0\r\n",
    ],
)
def test_parse_errors(text: str) -> None:
    with pytest.raises(SdpError):
        parse_sdp(text)


def test_parse_tolerates_unknown_lines_and_fractional_ptime() -> None:
    sd = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nz=0 0\r\nb=AS:64\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 0\r\ni=info\r\nb=TIAS:64000\r\na=ptime:20.0\r\na=rtcp-mux\r\n"
        "m=application 9 TCP/BFCP *\r\n"
    )
    assert sd.media[0].ptime == 20
    assert ("rtcp-mux", None) in sd.media[0].attributes
    assert sd.media[1].formats == []
    assert sd.media[1].raw_formats == ["*"]


def test_payload_codecs_canonical_names() -> None:
    sd = parse_sdp(
        "v=0\r\nm=audio 4000 RTP/AVP 0 8 9 18 96 97 101 3\r\n"
        "a=rtpmap:0 pcmu/8000\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 TELEPHONE-EVENT/8000\r\n"
    )
    assert payload_codecs(sd.media[0]) == {
        0: "PCMU",
        8: "PCMA",
        9: "G722",
        18: "G729",
        96: "OPUS",
        101: "telephone-event",
        3: "GSM",
    }  # 97 has no rtpmap and is dynamic: unknown, left out


def test_choose_codecs_follows_offer_order() -> None:
    sd = parse_sdp(SIPREC_OFFER)
    assert choose_codecs(sd.media[0]) == [8, 101]
    assert choose_codecs(sd.media[1]) == [18, 101]
    sd = parse_sdp(
        "v=0\r\nm=audio 4000 RTP/AVP 96 9 0\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:9 G722/8000\r\n"
    )
    assert choose_codecs(sd.media[0]) == [9]


def test_choose_codecs_none_without_common_codec() -> None:
    sd = parse_sdp(
        "v=0\r\nm=audio 4000 RTP/AVP 96 101\r\na=rtpmap:96 opus/48000/2\r\n"
        "a=rtpmap:101 telephone-event/48000\r\nm=video 4002 RTP/AVP 0\r\n"
    )
    assert choose_codecs(sd.media[0]) is None
    assert choose_codecs(sd.media[1]) is None
    # PCMU announced at a wrong clock is not PCMU we can decode.
    sd = parse_sdp("v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/16000\r\n")
    assert choose_codecs(sd.media[0]) is None


def test_render_sdp_basic() -> None:
    text = render_sdp(
        session_id=42,
        version=1,
        address="10.0.0.50",
        media=[
            MediaSpec(
                port=30000,
                payload_types=[0, 101],
                rtpmap={0: ("PCMU", 8000), 101: ("telephone-event", 8000)},
                fmtp={101: "0-16"},
                label="7",
            )
        ],
    )
    assert text == (
        "v=0\r\n"
        "o=callrec 42 1 IN IP4 10.0.0.50\r\n"
        "s=-\r\n"
        "c=IN IP4 10.0.0.50\r\n"
        "t=0 0\r\n"
        "m=audio 30000 RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        "a=fmtp:101 0-16\r\n"
        "a=label:7\r\n"
        "a=recvonly\r\n"
    )
    assert parse_sdp(text).media[0].label == "7"


def test_render_sdp_ipv6() -> None:
    text = render_sdp(session_id=1, version=2, address="2001:db8::5", media=[MediaSpec(4000, [0])])
    assert "o=callrec 1 2 IN IP6 2001:db8::5\r\n" in text
    assert "c=IN IP6 2001:db8::5\r\n" in text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"address": "10.0.0.1\r\na=evil"},
        {"address": ""},
        {"address": "1.2.3.4 5"},
        {"username": "bad name"},
        {"media": [MediaSpec(70000, [0])]},
        {"media": [MediaSpec(4000, [])]},
        {"media": [MediaSpec(4000, [200])]},
        {"media": [MediaSpec(4000, [0], direction="sideways")]},
        {"media": [MediaSpec(4000, [0], label="a\r\nb")]},
        {"media": [MediaSpec(4000, [0], fmtp={0: "x\ny"})]},
    ],
)
def test_render_sdp_rejects_bad_input(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "session_id": 1,
        "version": 1,
        "address": "10.0.0.1",
        "media": [MediaSpec(4000, [0])],
    }
    args.update(kwargs)
    with pytest.raises(SdpError):
        render_sdp(**args)  # type: ignore[arg-type]


def test_recorder_offer() -> None:
    text = recorder_offer(31000, "10.0.0.50", 99, 1)
    sd = parse_sdp(text)
    assert len(sd.media) == 1
    md = sd.media[0]
    assert md.port == 31000
    assert md.formats == [0, 8, 9, 18, 101]
    assert md.direction == "recvonly"
    assert md.fmtp == {18: "annexb=no", 101: "0-16"}
    assert payload_codecs(md) == {
        0: "PCMU",
        8: "PCMA",
        9: "G722",
        18: "G729",
        101: "telephone-event",
    }
    assert md.rtpmap[9] == ("G722", 8000, 1)
    assert [c.name for c in SUPPORTED_CODECS] == ["PCMU", "PCMA", "G722", "G729", "telephone-event"]


def test_recorder_answer_two_streams_keeps_labels_and_dtmf() -> None:
    offer = parse_sdp(SIPREC_OFFER)
    text = recorder_answer(offer, [40000, 40002], "10.0.0.50", 7, 1)
    answer = parse_sdp(text)
    assert len(answer.media) == 2
    a1, a2 = answer.media
    assert (a1.port, a1.formats, a1.label, a1.direction) == (40000, [8, 101], "1", "recvonly")
    assert a1.fmtp == {101: "0-15"}
    assert (a2.port, a2.formats, a2.label, a2.direction) == (40002, [18, 101], "2", "recvonly")
    assert a2.fmtp[18] == "annexb=no"
    assert answer.connection_address == "10.0.0.50"


def test_recorder_answer_refuses_port0_video_no_codec_and_srtp() -> None:
    offer = parse_sdp(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        "m=audio 0 RTP/AVP 0\r\na=label:1\r\n"
        "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
        "m=audio 5002 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\na=label:3\r\n"
        "m=audio 5004 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abcd\r\n"
        "m=audio 5006 RTP/AVP 9 0\r\na=label:5\r\n"
        "m=application 5008 TCP/BFCP *\r\n"
    )
    # The caller refuses the SRTP stream with port 0 (planning.usable is the rule).
    answer_text = recorder_answer(offer, [1, 2, 3, 0, 6000, 5], "10.0.0.50", 1, 1)
    lines = [line for line in answer_text.split("\r\n") if line.startswith("m=")]
    assert lines == [
        "m=audio 0 RTP/AVP 0",
        "m=video 0 RTP/AVP 96",
        "m=audio 0 RTP/AVP 96",
        "m=audio 0 RTP/SAVP 0",
        "m=audio 6000 RTP/AVP 9",
        "m=application 0 TCP/BFCP *",
    ]
    answer = parse_sdp(answer_text)
    assert answer.media[4].label == "5"
    assert answer.media[4].rtpmap[9] == ("G722", 8000, 1)
    assert answer.media[2].label is None  # refused streams carry no attributes


def test_recorder_answer_direction_rules() -> None:
    offer = parse_sdp(
        "v=0\r\nc=IN IP4 1.1.1.1\r\n"
        "m=audio 5000 RTP/AVP 0\r\n"
        "m=audio 5002 RTP/AVP 0\r\na=recvonly\r\n"
        "m=audio 5004 RTP/AVP 0\r\na=inactive\r\n"
    )
    answer = parse_sdp(recorder_answer(offer, [1000, 1002, 1004], "10.0.0.50", 1, 1))
    assert [m.direction for m in answer.media] == ["recvonly", "inactive", "inactive"]


def test_recorder_answer_port_count_must_match() -> None:
    offer = parse_sdp(SIPREC_OFFER)
    with pytest.raises(SdpError):
        recorder_answer(offer, [40000], "10.0.0.50", 1, 1)
