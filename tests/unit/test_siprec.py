"""Unit tests for services.signaling.siprec (and the SIPREC INVITE end to end)."""

from __future__ import annotations

import pytest

from services.signaling import siprec
from services.signaling.sdp import parse_sdp, recorder_answer
from services.signaling.sip.message import SipRequest, parse_message
from services.signaling.siprec import (
    MetadataError,
    Participant,
    RecordingMetadata,
    StreamInfo,
    assign_channels,
    merge_metadata,
    parse_metadata,
    split_multipart,
)

# RFC 7865-style metadata as sent by an SBC.  Note the caller (first
# participant, Alice) sends the stream labelled "2".
RFC7865_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <group group_id="7+OTCyoxTmqmqyA/1weDAg==">
    <associate-time>2025-11-24T10:00:00Z</associate-time>
  </group>
  <session session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <sipSessionID>ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2</sipSessionID>
    <group-ref>7+OTCyoxTmqmqyA/1weDAg==</group-ref>
    <start-time>2025-11-24T10:00:00Z</start-time>
  </session>
  <participant participant_id="srfBElmCRp2QB23b7Mpk0w==">
    <nameID aor="sip:alice@atlanta.example.com">
      <name xml:lang="en">Alice</name>
    </nameID>
  </participant>
  <participant participant_id="zSfPoSvdSDCmU3A3TRDxAw==">
    <nameID aor="sip:bob@biloxi.example.com">
      <name xml:lang="en">Bob</name>
    </nameID>
    <nameID aor="tel:+15551234567"/>
  </participant>
  <stream stream_id="UAAMm5GRQKSCMVvLyl4rFw==" session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <label>1</label>
  </stream>
  <stream stream_id="i1Pz3to5hGk8fuXl+PbwCw==" session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <label>2</label>
  </stream>
  <sessionrecordingassoc session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <associate-time>2025-11-24T10:00:00Z</associate-time>
  </sessionrecordingassoc>
  <participantsessionassoc participant_id="srfBElmCRp2QB23b7Mpk0w=="
      session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <associate-time>2025-11-24T10:00:00Z</associate-time>
  </participantsessionassoc>
  <participantstreamassoc participant_id="srfBElmCRp2QB23b7Mpk0w==">
    <send>i1Pz3to5hGk8fuXl+PbwCw==</send>
    <recv>UAAMm5GRQKSCMVvLyl4rFw==</recv>
  </participantstreamassoc>
  <participantstreamassoc participant_id="zSfPoSvdSDCmU3A3TRDxAw==">
    <send>UAAMm5GRQKSCMVvLyl4rFw==</send>
    <recv>i1Pz3to5hGk8fuXl+PbwCw==</recv>
  </participantstreamassoc>
</recording>
"""

# Pre-RFC namespace with vendor extension data (Sonus/Ribbon style).
OLD_NS_METADATA = b"""<?xml version='1.0' encoding='UTF-8'?>
<recording xmlns='urn:ietf:params:xml:ns:recording'>
  <datamode>complete</datamode>
  <session id="0000-0000-0000-0000-0001">
    <associate-time>2025-11-24T10:00:00</associate-time>
    <extensiondata xmlns:sonus="http://sonusnet.com">
      <sonus:callData>
        <sonus:callingParty>2145551000</sonus:callingParty>
        <sonus:participant id="not-a-real-participant"/>
      </sonus:callData>
    </extensiondata>
  </session>
  <participant id="P1" session="0000-0000-0000-0000-0001">
    <nameID aor="sip:2145551000@10.2.0.1">
      <name>Caller</name>
    </nameID>
    <associate-time>2025-11-24T10:00:00</associate-time>
    <send>S-B</send>
    <recv>S-A</recv>
  </participant>
  <participant id="P2" session="0000-0000-0000-0000-0001">
    <nameID aor="sip:4695552000@10.2.0.2"/>
    <send>S-A</send>
    <recv>S-B</recv>
  </participant>
  <stream id="S-A" session="0000-0000-0000-0000-0001">
    <label>1</label>
    <mode>separate</mode>
  </stream>
  <stream id="S-B" session="0000-0000-0000-0000-0001">
    <label>2</label>
  </stream>
</recording>
"""

# BroadWorks / Webex Calling dialect.
BROADWORKS_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording_metadata xmlns="urn:ietf:params:xml:ns:siprec">
  <dataMode>complete</dataMode>
  <session id="bwsess1">
    <sipSessionID>BW1234567890@10.3.0.1</sipSessionID>
    <start-time>2025-11-24T11:22:33.000Z</start-time>
  </session>
  <participant id="bwp1" session="bwsess1">
    <nameID aor="sip:+12145550100@as.example.com">
      <name>Agent Smith</name>
    </nameID>
    <send>bws1</send>
    <recv>bws2</recv>
  </participant>
  <participant id="bwp2" session="bwsess1">
    <nameID aor="tel:+12145550199"/>
    <send>bws2</send>
    <recv>bws1</recv>
  </participant>
  <stream id="bws1" session="bwsess1"><label>a1</label></stream>
  <stream id="bws2" session="bwsess1"><label>a2</label></stream>
</recording_metadata>
"""

SIPREC_SDP = (
    b"v=0\r\n"
    b"o=SBC 1 1 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 20000 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=label:1\r\n"
    b"a=sendonly\r\n"
    b"m=audio 20002 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=label:2\r\n"
    b"a=sendonly\r\n"
)


def _multipart(boundary: bytes, metadata: bytes, *, preamble: bytes = b"") -> bytes:
    return (
        preamble + b"--" + boundary + b"\r\n"
        b"Content-Type: application/sdp\r\n"
        b"\r\n" + SIPREC_SDP + b"\r\n"
        b"--" + boundary + b"\r\n"
        b"Content-Type: application/rs-metadata+xml\r\n"
        b"Content-Disposition: recording-session\r\n"
        b"\r\n" + metadata + b"\r\n"
        b"--" + boundary + b"--\r\n"
    )


def _siprec_invite() -> bytes:
    body = _multipart(b"OSS-unique-boundary-42", RFC7865_METADATA)
    head = (
        "INVITE sip:recorder@10.0.0.50:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-524287-1---7a1d\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:src@sbc.example.com>;tag=src-tag-1\r\n"
        "To: <sip:recorder@10.0.0.50>\r\n"
        "Call-ID: f81d4fae-7dec-11d0-a765-00a0c91e6bf6@192.0.2.10\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:src@192.0.2.10:5060>;+sip.src\r\n"
        "Require: siprec\r\n"
        "Accept: application/sdp, application/rs-metadata,\r\n"
        " application/rs-metadata-request\r\n"
        'Content-Type: multipart/mixed;boundary="OSS-unique-boundary-42"\r\n'
        "MIME-Version: 1.0\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


# ---------------------------------------------------------------- end to end


def test_siprec_invite_end_to_end() -> None:
    msg = parse_message(_siprec_invite())
    assert isinstance(msg, SipRequest)
    assert msg.content_type == "multipart/mixed"
    assert msg.headers.get_all("Accept") == [
        "application/sdp",
        "application/rs-metadata",
        "application/rs-metadata-request",
    ]
    assert "x-refci" not in msg.from_.uri.params  # not a CUCM leg
    content_type = msg.headers.get("Content-Type")
    assert content_type is not None
    parts = split_multipart(content_type, msg.body)
    assert [p.content_type for p in parts] == ["application/sdp", "application/rs-metadata+xml"]
    assert parts[1].headers["content-disposition"] == "recording-session"
    assert parts[0].body == SIPREC_SDP

    offer = parse_sdp(parts[0].body.decode())
    metadata = parse_metadata(parts[1].body)
    labels = [m.label for m in offer.media if m.label is not None]
    channels = assign_channels(metadata, labels)
    assert channels["2"][0] == 0  # the caller sends label 2 -> left channel
    assert channels["1"][0] == 1
    caller = channels["2"][1]
    assert caller is not None and caller.aors == ["sip:alice@atlanta.example.com"]

    answer = parse_sdp(recorder_answer(offer, [40000, 40002], "10.0.0.50", 5, 1))
    assert [(m.port, m.label, m.direction) for m in answer.media] == [
        (40000, "1", "recvonly"),
        (40002, "2", "recvonly"),
    ]


# ---------------------------------------------------------------- multipart


def test_split_multipart_unquoted_boundary_preamble_and_lf() -> None:
    body = _multipart(b"b1", b"<recording/>", preamble=b"This is a preamble\r\n").replace(
        b"\r\n", b"\n"
    )
    parts = split_multipart("Multipart/Mixed; boundary=b1", body)
    assert [p.content_type for p in parts] == ["application/sdp", "application/rs-metadata+xml"]
    assert parts[1].body == b"<recording/>"
    assert parts[0].body == SIPREC_SDP.replace(b"\r\n", b"\n")


def test_split_multipart_missing_final_boundary_and_default_type() -> None:
    body = (
        b"--xyz\r\n\r\nplain text part\r\n"
        b"--xyz\r\nContent-Type: application/rs-metadata+xml;charset=UTF-8\r\n"
        b"\r\n<recording/>\r\n"
    )
    parts = split_multipart('multipart/mixed; boundary="xyz"', body)
    assert parts[0].content_type == "text/plain"
    assert parts[0].headers == {}
    assert parts[0].body == b"plain text part"
    assert parts[1].content_type == "application/rs-metadata+xml"
    assert parts[1].body == b"<recording/>"


def test_split_multipart_ignores_boundary_inside_lines_and_epilogue() -> None:
    body = (
        b"--B\r\nContent-Type: text/plain\r\n\r\nnot a --B delimiter\r\n--B--\r\nepilogue --B\r\n"
    )
    parts = split_multipart("multipart/mixed;boundary=B", body)
    assert len(parts) == 1
    assert parts[0].body == b"not a --B delimiter"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/mixed", b"--x\r\n\r\nbody\r\n--x--"),
        ("multipart/mixed; boundary=", b"--x\r\n\r\nbody\r\n--x--"),
        ("application/sdp", b"v=0"),
        ("multipart/mixed; boundary=nothere", b"--x\r\n\r\nbody\r\n--x--"),
        ('multipart/mixed; boundary="unterminated', b"--x\r\n"),
        ("multipart/mixed; boundary=x", b"--x\r\nBroken header line\r\n\r\nbody\r\n--x--"),
        ("multipart/mixed; boundary=x", b"--x\r\nContent-Type: \xff\xfe\r\n\r\nbody\r\n--x--"),
    ],
)
def test_split_multipart_errors(content_type: str, body: bytes) -> None:
    with pytest.raises(MetadataError):
        split_multipart(content_type, body)


# ---------------------------------------------------------------- metadata dialects


def test_parse_rfc7865_metadata() -> None:
    md = parse_metadata(RFC7865_METADATA)
    assert md.datamode == "complete"
    assert md.group_ids == ["7+OTCyoxTmqmqyA/1weDAg=="]
    assert md.session_ids == [
        "ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2"
    ]
    assert md.start_time == "2025-11-24T10:00:00Z"
    assert [p.id for p in md.participants] == [
        "srfBElmCRp2QB23b7Mpk0w==",
        "zSfPoSvdSDCmU3A3TRDxAw==",
    ]
    alice, bob = md.participants
    assert alice.names == ["Alice"]
    assert alice.send == ["i1Pz3to5hGk8fuXl+PbwCw=="]
    assert alice.recv == ["UAAMm5GRQKSCMVvLyl4rFw=="]
    assert bob.aors == ["sip:bob@biloxi.example.com", "tel:+15551234567"]
    assert md.streams == [
        StreamInfo("UAAMm5GRQKSCMVvLyl4rFw==", "1", "hVpd7YQgRW2nD22h7q60JQ=="),
        StreamInfo("i1Pz3to5hGk8fuXl+PbwCw==", "2", "hVpd7YQgRW2nD22h7q60JQ=="),
    ]


def test_parse_old_namespace_with_vendor_extensions() -> None:
    md = parse_metadata(OLD_NS_METADATA)
    assert [p.id for p in md.participants] == ["P1", "P2"]  # sonus:participant ignored
    p1 = md.participants[0]
    assert p1.aors == ["sip:2145551000@10.2.0.1"]
    assert p1.names == ["Caller"]
    assert p1.send == ["S-B"]
    assert [(s.id, s.label, s.session_id) for s in md.streams] == [
        ("S-A", "1", "0000-0000-0000-0000-0001"),
        ("S-B", "2", "0000-0000-0000-0000-0001"),
    ]
    channels = assign_channels(md, ["1", "2"])
    assert channels["2"][0] == 0
    assert channels["1"][0] == 1


def test_parse_broadworks_dialect() -> None:
    md = parse_metadata(BROADWORKS_METADATA)
    assert md.datamode == "complete"
    assert md.session_ids == ["BW1234567890@10.3.0.1"]
    assert md.start_time == "2025-11-24T11:22:33.000Z"
    assert [p.aors for p in md.participants] == [
        ["sip:+12145550100@as.example.com"],
        ["tel:+12145550199"],
    ]
    assert md.participants[0].send == ["bws1"]
    channels = assign_channels(md, ["a1", "a2"])
    assert channels == {"a1": (0, md.participants[0]), "a2": (1, md.participants[1])}


def test_parse_metadata_without_namespace_and_aor_element() -> None:
    md = parse_metadata(
        b"<recording><datamode>partial</datamode>"
        b"<participant participant_id='p'><nameID><aor>sip:x@y</aor><name>X</name></nameID>"
        b"</participant><stream stream_id='s'><label>9</label></stream></recording>"
    )
    assert md.datamode == "partial"
    assert md.participants == [Participant("p", ["sip:x@y"], ["X"])]
    assert md.streams == [StreamInfo("s", "9")]


@pytest.mark.parametrize(
    "xml",
    [
        b"",
        b"not xml at all",
        b"<recording>",
        b"<recording><datamode>sometimes</datamode></recording>",
        b"<other xmlns='urn:ietf:params:xml:ns:recording:1'/>",
        b"<recording xmlns='urn:example:not-siprec'/>",
        b"<recording>&undefined;</recording>",
        b"<?xml version='1.0' encoding='no-such-codec'?><recording/>",
        b"<recording>" + b"<x/>" * 20000 + b"</recording>",
    ],
)
def test_parse_metadata_errors(xml: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_metadata(xml)


@pytest.mark.parametrize(
    ("xml", "skipped"),
    [
        (b"<recording><participant><nameID aor='sip:a@b'/></participant></recording>",
         "participant without an id"),
        (b"<recording><stream><label>1</label></stream></recording>", "stream without an id"),
        (b"<recording><stream stream_id=''><label>1</label></stream></recording>",
         "stream without an id"),
        (b"<recording><participantstreamassoc><send>x</send></participantstreamassoc>"
         b"</recording>", "participantstreamassoc without a participant_id"),
        (b"<recording><participant id='p'><send/></participant></recording>", "empty <send>"),
    ],
)
def test_unassociable_elements_are_skipped_not_refused(xml: bytes, skipped: str) -> None:
    # Issue 8: one element that cannot be associated (Avaya SBCE's stream_id="")
    # must not cost the whole call; it is skipped and reported for a counter.
    md = parse_metadata(xml)
    assert len(md.skipped) == 1
    assert md.skipped[0].startswith(skipped)
    assert all(p.send == [] for p in md.participants)


@pytest.mark.parametrize(
    "xml",
    [
        b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n]>\n'
        b"<recording xmlns='urn:ietf:params:xml:ns:recording:1'>&lol2;</recording>",
        b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<recording>&xxe;</recording>",
        b"<!doctype recording><recording/>",
        # UTF-16 hides the DOCTYPE from a byte scan; the parser must still refuse it.
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r [<!ENTITY a "b">]><recording/>'.encode(
            "utf-16"
        ),
    ],
)
def test_parse_metadata_rejects_doctype(xml: bytes) -> None:
    with pytest.raises(MetadataError):
        parse_metadata(xml)


# ---------------------------------------------------------------- merge


def test_merge_partial_updates_and_complete_replaces() -> None:
    old = parse_metadata(RFC7865_METADATA)
    update = parse_metadata(
        b"<recording xmlns='urn:ietf:params:xml:ns:recording:1'>"
        b"<datamode>partial</datamode>"
        b"<participant participant_id='zSfPoSvdSDCmU3A3TRDxAw=='>"
        b"<nameID aor='sip:bob@transferred.example.com'/></participant>"
        b"<participant participant_id='carol'><nameID aor='sip:carol@example.com'/></participant>"
        b"<stream stream_id='new-stream'><label>3</label></stream>"
        b"<participantstreamassoc participant_id='carol'><send>new-stream</send>"
        b"</participantstreamassoc>"
        b"</recording>"
    )
    merged = merge_metadata(old, update)
    assert merged.datamode == "complete"
    assert [p.id for p in merged.participants] == [
        "srfBElmCRp2QB23b7Mpk0w==",
        "zSfPoSvdSDCmU3A3TRDxAw==",
        "carol",
    ]
    bob = merged.participants[1]
    assert bob.aors == ["sip:bob@transferred.example.com"]
    assert bob.send == ["UAAMm5GRQKSCMVvLyl4rFw=="]  # kept from the earlier document
    assert [s.label for s in merged.streams] == ["1", "2", "3"]
    assert merged.session_ids == old.session_ids
    channels = assign_channels(merged, ["1", "2", "3"])
    assert channels["2"][0] == 0
    assert channels["1"][0] == 1
    assert channels["3"][0] == 1  # a third party is not the caller
    # the earlier view is not mutated or aliased
    assert old.participants[1].aors == ["sip:bob@biloxi.example.com", "tel:+15551234567"]
    merged.participants[0].send.append("x")
    assert old.participants[0].send == ["i1Pz3to5hGk8fuXl+PbwCw=="]

    complete = RecordingMetadata(participants=[Participant("only")])
    assert merge_metadata(merged, complete) is complete


# ---------------------------------------------------------------- channels


def test_assign_channels_caller_on_label_2() -> None:
    md = parse_metadata(RFC7865_METADATA)
    channels = assign_channels(md, ["1", "2"])
    assert list(channels) == ["1", "2"]
    assert channels["2"] == (0, md.participants[0])
    assert channels["1"] == (1, md.participants[1])


def test_assign_channels_unassociated_labels_fill_remaining() -> None:
    md = RecordingMetadata(
        participants=[Participant("caller", send=["s2"])],
        streams=[StreamInfo("s1", "1"), StreamInfo("s2", "2")],
    )
    assert assign_channels(md, ["1", "2"]) == {"1": (1, None), "2": (0, md.participants[0])}

    empty = RecordingMetadata()
    assert assign_channels(empty, ["10", "9"]) == {"10": (1, None), "9": (0, None)}
    assert assign_channels(empty, ["b", "a", "c"]) == {
        "b": (1, None),
        "a": (0, None),
        "c": (0, None),
    }
    assert assign_channels(empty, []) == {}


def test_assign_channels_more_than_two_labels_follow_sender() -> None:
    md = RecordingMetadata(
        participants=[
            Participant("a", send=["sa1", "sa2"]),
            Participant("b", send=["sb"]),
        ],
        streams=[StreamInfo("sb", "1"), StreamInfo("sa1", "2"), StreamInfo("sa2", "3")],
    )
    result = assign_channels(md, ["1", "2", "3"])
    assert {k: v[0] for k, v in result.items()} == {"1": 1, "2": 0, "3": 0}


def test_metadata_with_times_and_call_data_survives_persistence() -> None:
    """Signaling persists sessions as JSON: every parsed field must round-trip."""
    import json
    from datetime import UTC, datetime

    md = siprec.RecordingMetadata(
        session_ids=["s1"], started_at=datetime(2026, 11, 30, 10, 0, tzinfo=UTC),
        call_data=siprec.CallData(call_id="c1", calling_party="sip:1001@x"),
        participants=[siprec.Participant(id="p1", aors=["sip:1001@x"], names=["A"])],
        streams=[siprec.StreamInfo(id="st1", label="1")],
    )
    back = siprec.metadata_from_dict(json.loads(json.dumps(siprec.metadata_to_dict(md))))
    assert back == md
