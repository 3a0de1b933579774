"""SIPREC metadata as each vendor sends it: samples written from public documentation.

Each sample names the document it was written from. None is copied from
another project; identifiers, numbers and addresses are invented.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.v1.events import RecordingMetadata as ContractMetadata
from services.signaling.sdp import parse_sdp
from services.signaling.siprec import (
    MetadataError,
    UnsupportedBody,
    assign_channels,
    contract_participants,
    is_metadata_content_type,
    is_placeholder,
    merge_metadata,
    ordered_participants,
    parse_metadata,
    parse_start_time,
    recorded_call_ids,
    split_siprec_body,
    stream_labels,
)


def _sdp(labels: list[str], *, pt: int = 0) -> bytes:
    lines = ["v=0", "o=SRC 1 1 IN IP4 192.0.2.20", "s=-", "c=IN IP4 192.0.2.20", "t=0 0"]
    for i, label in enumerate(labels):
        lines += [f"m=audio {30000 + 2 * i} RTP/AVP {pt} 101", f"a=rtpmap:{pt} PCMU/8000",
                  "a=rtpmap:101 telephone-event/8000", f"a=label:{label}", "a=sendonly"]
    return ("\r\n".join(lines) + "\r\n").encode()


def _multipart(boundary: str, *parts: tuple[str, bytes]) -> bytes:
    out = b""
    for headers, body in parts:
        out += f"--{boundary}\r\n{headers}\r\n\r\n".encode() + body + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


# ---------------------------------------------------------------- Oracle / Acme Packet
# Written from: Oracle Enterprise Session Border Controller Configuration Guide,
# "SIPREC Extension Data Enhancements" > "Sample Metadata" (docs.oracle.com,
# E92503_01). Old namespace without ":1", id/session attributes, <send>/<recv>
# inside <participant>, large labels, the caller marked by apkt:callingParty.
# Here the callee is listed first: only the extension says who called.
ORACLE_METADATA = b"""<?xml version='1.0' encoding='UTF-8'?>
<recording xmlns='urn:ietf:params:xml:ns:recording'>
  <datamode>complete</datamode>
  <session id="Qm9yYWNsZVNlc3Npb24x">
    <associate-time>2026-11-30T09:15:02</associate-time>
  </session>
  <participant id="Y2FsbGVlLXBhcnR5" session="Qm9yYWNsZVNlc3Npb24x">
    <nameID aor="sip:4085550142@10.20.0.7">
      <name>Service Desk</name>
    </nameID>
    <send>c3RyZWFtLWNhbGxlZQ==</send>
    <recv>c3RyZWFtLWNhbGxlcg==</recv>
    <associate-time>2026-11-30T09:15:02</associate-time>
    <extensiondata xmlns:apkt="http://acmepacket.com/siprec/extensiondata">
      <apkt:callingParty>false</apkt:callingParty>
    </extensiondata>
  </participant>
  <participant id="Y2FsbGVyLXBhcnR5" session="Qm9yYWNsZVNlc3Npb24x">
    <nameID aor="sip:+14155550123@carrier.example.net">
      <name>Jo Customer</name>
    </nameID>
    <send>c3RyZWFtLWNhbGxlcg==</send>
    <recv>c3RyZWFtLWNhbGxlZQ==</recv>
    <associate-time>2026-11-30T09:15:02</associate-time>
    <extensiondata xmlns:apkt="http://acmepacket.com/siprec/extensiondata">
      <apkt:callingParty>true</apkt:callingParty>
      <apkt:in-realm>carrier</apkt:in-realm>
    </extensiondata>
  </participant>
  <stream id="c3RyZWFtLWNhbGxlZQ==" session="Qm9yYWNsZVNlc3Npb24x">
    <label>16777227</label>
  </stream>
  <stream id="c3RyZWFtLWNhbGxlcg==" session="Qm9yYWNsZVNlc3Npb24x">
    <label>16777228</label>
  </stream>
</recording>
"""


def test_oracle_calling_party_extension_decides_the_caller() -> None:
    md = parse_metadata(ORACLE_METADATA)
    assert md.dialect == "draft"
    assert [p.calling for p in md.participants] == [True, False]
    assert md.participants[0].names == ["Jo Customer"]
    channels = assign_channels(md, ["16777227", "16777228"])
    assert channels["16777228"][0] == 0  # the caller's stream, although listed second
    assert channels["16777227"][0] == 1
    parties = contract_participants(md, channels)
    assert [(p.role, p.number, p.name, p.channel) for p in parties] == [
        ("caller", "+14155550123", "Jo Customer", 0),
        ("callee", "4085550142", "Service Desk", 1),
    ]


# ---------------------------------------------------------------- Ribbon / Sonus
# Written from: Ribbon SBC Core documentation, "SIPREC Metadata Profile - CLI"
# (publicdoc.rbbn.com, SBXDOC120: the callData section carries gcid, call-id,
# from and to) and "SIPREC" feature pages (draft-ietf-siprec-metadata based
# format). tns: prefixed elements, addresses without "sip:", a 1970 start time.
RIBBON_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<tns:recording xmlns:tns="urn:ietf:params:xml:ns:recording">
  <tns:datamode>complete</tns:datamode>
  <tns:session id="0d4c5b6a0001">
    <tns:start-time>1970-01-01T00:00:00</tns:start-time>
    <tns:extensiondata>
      <tns:callData>
        <tns:gcid>51123987</tns:gcid>
        <tns:callid>7788aa@203.0.113.5</tns:callid>
        <tns:fromhdr>&lt;sip:2145551000@203.0.113.5&gt;;tag=a1</tns:fromhdr>
        <tns:tohdr>&lt;sip:4695552000@198.51.100.9&gt;</tns:tohdr>
        <tns:callingParty>4695552000</tns:callingParty>
      </tns:callData>
    </tns:extensiondata>
  </tns:session>
  <tns:participant id="rb-p1" session="0d4c5b6a0001">
    <tns:nameID aor="2145551000@203.0.113.5"/>
    <tns:send>rb-s1</tns:send>
  </tns:participant>
  <tns:participant id="rb-p2" session="0d4c5b6a0001">
    <tns:nameID aor="4695552000@198.51.100.9"/>
    <tns:send>rb-s2</tns:send>
  </tns:participant>
  <tns:stream id="rb-s1" session="0d4c5b6a0001"><tns:label>1</tns:label></tns:stream>
  <tns:stream id="rb-s2" session="0d4c5b6a0001"><tns:label>2</tns:label></tns:stream>
</tns:recording>
"""


def test_ribbon_prefixed_call_data_and_1970() -> None:
    md = parse_metadata(RIBBON_METADATA)
    assert md.start_time == "1970-01-01T00:00:00"
    assert md.started_at is None  # 1970 means "unknown", not a real start
    assert md.call_data is not None
    assert md.call_data.gcid == "51123987"
    assert md.call_data.from_ == "<sip:2145551000@203.0.113.5>;tag=a1"
    assert recorded_call_ids(md) == ["7788aa@203.0.113.5"]
    # callData names the caller by number: that party goes first and left.
    assert [p.id for p in md.participants] == ["rb-p2", "rb-p1"]
    channels = assign_channels(md, ["1", "2"])
    assert channels == {"1": (1, md.participants[1]), "2": (0, md.participants[0])}
    parties = contract_participants(md, channels)
    assert [(p.number, p.aor, p.host) for p in parties] == [
        ("4695552000", "4695552000@198.51.100.9", None),
        ("2145551000", "2145551000@203.0.113.5", None),
    ]


# ---------------------------------------------------------------- BroadWorks
# Written from: Cisco BroadWorks "SIPREC Interface Specification" / "Call
# Recording Platform Interface" feature description: root recording_metadata in
# urn:ietf:params:xml:ns:siprec, send inside participant, the metadata part
# before the SDP, one mixed stream.
BROADWORKS_MIXED = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording_metadata xmlns="urn:ietf:params:xml:ns:siprec">
  <dataMode>complete</dataMode>
  <session id="bw-s">
    <sipSessionID>BW0915021301120@10.3.0.1</sipSessionID>
    <start-time>2026-11-30T09:15:02.120Z</start-time>
  </session>
  <participant id="bw-a" session="bw-s">
    <nameID aor="sip:+12145550100@as.example.com"><name>Front Desk</name></nameID>
    <send>bw-mix</send>
  </participant>
  <participant id="bw-b" session="bw-s">
    <nameID aor="tel:+12145550199"/>
    <send>bw-mix</send>
  </participant>
  <stream id="bw-mix" session="bw-s"><label>1</label><mode>mixed</mode></stream>
</recording_metadata>
"""


def test_broadworks_metadata_first_and_one_mixed_stream() -> None:
    body = _multipart(
        "bw-boundary",
        ("Content-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session",
         BROADWORKS_MIXED),
        ("Content-Type: application/sdp", _sdp(["1"])),
    )
    parts = split_siprec_body('multipart/mixed;boundary="bw-boundary"', body)
    assert parts.sdp is not None and parts.metadata is not None and parts.ignored == []
    md = parse_metadata(parts.metadata)
    assert md.dialect == "broadworks"
    assert md.started_at == datetime(2026, 11, 30, 9, 15, 2, 120000, tzinfo=UTC)
    labels = [m.label or "" for m in parse_sdp(parts.sdp.decode()).media]
    assert assign_channels(md, labels) == {"1": (0, md.participants[0])}


# ---------------------------------------------------------------- Avaya SBCE
# Written from: Avaya "Administering Avaya Session Border Controller for
# Enterprise", Recording profiles (SIPREC) and the DevConnect application notes
# for SIPREC recorders: the INVITE carries a placeholder participant
# (ASBCE@avaya.com) and the real parties follow in an UPDATE; a stream whose
# stream_id is empty has been seen.
AVAYA_INVITE_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="YXZheWEtc2Vzcw==">
    <sipSessionID>8a1b2c3d4e5f;remote=00000000000000000000000000000000</sipSessionID>
  </session>
  <participant participant_id="YXZheWEtcGg=">
    <nameID aor="sip:ASBCE@avaya.com"><name>ASBCE</name></nameID>
  </participant>
  <stream stream_id="YXZheWEtczE=" session_id="YXZheWEtc2Vzcw=="><label>1</label></stream>
  <stream stream_id="" session_id="YXZheWEtc2Vzcw=="><label>2</label></stream>
  <participantstreamassoc participant_id="YXZheWEtcGg=">
    <send>YXZheWEtczE=</send>
    <send></send>
  </participantstreamassoc>
</recording>
"""

AVAYA_UPDATE_PARTIAL = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>partial</datamode>
  <participant participant_id="YXZheWEtYQ==">
    <nameID aor="sip:3035550111@enterprise.example.com"><name>Agent 0111</name></nameID>
  </participant>
  <participant participant_id="YXZheWEtYg==">
    <nameID aor="sip:+17205550188@carrier.example.net"/>
  </participant>
  <stream stream_id="YXZheWEtczI=" session_id="YXZheWEtc2Vzcw=="><label>2</label></stream>
  <participantstreamassoc participant_id="YXZheWEtYQ==">
    <send>YXZheWEtczE=</send>
  </participantstreamassoc>
  <participantstreamassoc participant_id="YXZheWEtYg==">
    <send>YXZheWEtczI=</send>
  </participantstreamassoc>
</recording>
"""


def test_avaya_placeholder_then_real_parties_in_a_partial_update() -> None:
    first = parse_metadata(AVAYA_INVITE_METADATA)
    assert len(first.skipped) == 2  # stream_id="" and the empty <send>: skipped, not refused
    assert [s.label for s in first.streams] == ["1"]
    assert is_placeholder(first.participants[0])
    assert ordered_participants(first) == []
    assert contract_participants(first) == []  # ASBCE@avaya.com is never stored as a party
    # Neither stream goes to one channel because a placeholder "sends" it: label order.
    assert {k: v[0] for k, v in assign_channels(first, ["1", "2"]).items()} == {"1": 0, "2": 1}

    merged = merge_metadata(first, parse_metadata(AVAYA_UPDATE_PARTIAL))
    assert [p.id for p in merged.participants] == ["YXZheWEtYQ==", "YXZheWEtYg=="]
    channels = assign_channels(merged, ["1", "2"])
    parties = contract_participants(merged, channels)
    assert [(p.role, p.number, p.name, p.channel) for p in parties] == [
        ("caller", "3035550111", "Agent 0111", 0),
        ("callee", "+17205550188", None, 1),
    ]


def test_avaya_complete_update_replaces_the_placeholder() -> None:
    first = parse_metadata(AVAYA_INVITE_METADATA)
    update = parse_metadata(AVAYA_UPDATE_PARTIAL.replace(b">partial<", b">complete<"))
    merged = merge_metadata(first, update)
    assert merged is update
    assert not any(is_placeholder(p) for p in merged.participants)


def test_partial_update_drops_a_party_that_left() -> None:
    md = parse_metadata(AVAYA_UPDATE_PARTIAL)
    left = parse_metadata(
        b"<recording xmlns='urn:ietf:params:xml:ns:recording:1'><datamode>partial</datamode>"
        b"<participantsessionassoc participant_id='YXZheWEtYg==' session_id='x'>"
        b"<disassociate-time>2026-11-30T09:20:00Z</disassociate-time>"
        b"</participantsessionassoc></recording>"
    )
    assert left.departed == ["YXZheWEtYg=="]
    assert [p.id for p in merge_metadata(md, left).participants] == ["YXZheWEtYQ=="]


# ---------------------------------------------------------------- AudioCodes
# Written from: AudioCodes Mediant SBC User's Manual (version 7.4), "SIP-based
# Media Recording" and "SIPREC with Avaya Equipment" (techdocs.audiocodes.com):
# RFC 7865 namespace, two m-lines, vendor tags such as ac:AvayaUCID.
AUDIOCODES_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1" xmlns:ac="http://AudioCodes">
  <datamode>complete</datamode>
  <group group_id="00000000-0000-0000-0000-0000000000a1">
    <associate-time>2026-11-30T09:15:02Z</associate-time>
    <ac:AvayaUCID xmlns="urn:ietf:params:xml:ns:Avaya">FA080019001038F725B3</ac:AvayaUCID>
  </group>
  <session session_id="00000000-0000-0000-0000-0000000000b1">
    <group-ref>00000000-0000-0000-0000-0000000000a1</group-ref>
    <sipSessionID>ac0915021</sipSessionID>
    <start-time>2026-11-30T09:15:02+01:00</start-time>
  </session>
  <participant participant_id="ac-p1">
    <nameID aor="sip:0612345678@ac.example.com"><name>Caller Name</name></nameID>
  </participant>
  <participant participant_id="ac-p2">
    <nameID aor="sip:301@ac.example.com"/>
  </participant>
  <stream stream_id="ac-s1" session_id="00000000-0000-0000-0000-0000000000b1">
    <label>1</label></stream>
  <stream stream_id="ac-s2" session_id="00000000-0000-0000-0000-0000000000b1">
    <label>2</label></stream>
  <participantstreamassoc participant_id="ac-p1"><send>ac-s1</send><recv>ac-s2</recv>
  </participantstreamassoc>
  <participantstreamassoc participant_id="ac-p2"><send>ac-s2</send><recv>ac-s1</recv>
  </participantstreamassoc>
</recording>
"""


def test_audiocodes_with_vendor_tags() -> None:
    md = parse_metadata(AUDIOCODES_METADATA)
    assert md.started_at == datetime(2026, 11, 30, 8, 15, 2, tzinfo=UTC)
    assert md.group_ids == ["00000000-0000-0000-0000-0000000000a1"]
    assert {k: v[0] for k, v in assign_channels(md, ["1", "2"]).items()} == {"1": 0, "2": 1}


# ---------------------------------------------------------------- OpenSIPS
# Written from: OpenSIPS "siprec" module documentation (opensips.org, 3.x):
# labels start at 0, the Contact carries +sip.src, RFC 7865 metadata.
OPENSIPS_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="b3BlbnNpcHM=">
    <sipSessionID>opensips-call-1@192.0.2.30</sipSessionID>
    <start-time>2026-11-30T09:15:02Z</start-time>
  </session>
  <participant participant_id="b3MtYQ=="><nameID aor="sip:alice@192.0.2.31"/></participant>
  <participant participant_id="b3MtYg=="><nameID aor="sip:192.0.2.32:5060"/></participant>
  <stream stream_id="b3MtMA==" session_id="b3BlbnNpcHM="><label>0</label></stream>
  <stream stream_id="b3MtMQ==" session_id="b3BlbnNpcHM="><label>1</label></stream>
  <participantstreamassoc participant_id="b3MtYQ=="><send>b3MtMA==</send>
  </participantstreamassoc>
  <participantstreamassoc participant_id="b3MtYg=="><send>b3MtMQ==</send>
  </participantstreamassoc>
</recording>
"""


def test_opensips_labels_from_zero_and_a_user_less_party() -> None:
    md = parse_metadata(OPENSIPS_METADATA)
    offer = parse_sdp(_sdp(["0", "1"]).decode())
    labels = [m.label or "" for m in offer.media]
    assert labels == ["0", "1"]
    channels = assign_channels(md, labels)
    assert {k: v[0] for k, v in channels.items()} == {"0": 0, "1": 1}
    parties = contract_participants(md, channels)
    # sip:192.0.2.32:5060 has no user part: no number, the host is kept apart.
    assert [(p.number, p.host) for p in parties] == [("alice", None), (None, "192.0.2.32:5060")]


# ---------------------------------------------------------------- FreeSWITCH / RFC
# Written from: RFC 7865 section 10 (metadata example) and RFC 7866 section 8
# (INVITE example with "application/rs-metadata"), the format FreeSWITCH-based
# SRCs emit: participantsessionassoc and sessionrecordingassoc elements, xml:lang.
FREESWITCH_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="ZnMtc2Vzcw==">
    <sipSessionID>fs0a1b2c3d;remote=fs9f8e7d6c</sipSessionID>
  </session>
  <participant participant_id="ZnMtMQ==">
    <nameID aor="sip:1000@pbx.example.org"><name xml:lang="en">Ext 1000</name></nameID>
  </participant>
  <participant participant_id="ZnMtMg==">
    <nameID aor="sip:1001@pbx.example.org"><name xml:lang="en">Ext 1001</name></nameID>
  </participant>
  <stream stream_id="ZnMtczE=" session_id="ZnMtc2Vzcw=="><label>a</label></stream>
  <stream stream_id="ZnMtczI=" session_id="ZnMtc2Vzcw=="><label>b</label></stream>
  <sessionrecordingassoc session_id="ZnMtc2Vzcw==">
    <associate-time>2026-11-30T09:15:02Z</associate-time>
  </sessionrecordingassoc>
  <participantsessionassoc participant_id="ZnMtMQ==" session_id="ZnMtc2Vzcw==">
    <associate-time>2026-11-30T09:15:02Z</associate-time>
  </participantsessionassoc>
  <participantstreamassoc participant_id="ZnMtMQ=="><send>ZnMtczI=</send></participantstreamassoc>
  <participantstreamassoc participant_id="ZnMtMg=="><send>ZnMtczE=</send></participantstreamassoc>
</recording>
"""


def test_freeswitch_rfc_sample_with_legacy_content_type() -> None:
    body = _multipart(
        "fs-b",
        ("Content-Type: application/sdp", _sdp(["a", "b"])),
        ("Content-Type: application/rs-metadata\r\nContent-Disposition: recording-session",
         FREESWITCH_METADATA),
    )
    parts = split_siprec_body("multipart/mixed; boundary=fs-b", body)
    assert parts.metadata == FREESWITCH_METADATA
    md = parse_metadata(parts.metadata)
    assert md.departed == []  # an associate-time is not a departure
    assert {k: v[0] for k, v in assign_channels(md, ["a", "b"]).items()} == {"a": 1, "b": 0}


# ---------------------------------------------------------------- Cisco CUBE
# Written from: Cisco Unified Border Element Configuration Guide, "Network-Based
# Recording Using SIPREC" (cisco.com, IOS XE): multipart with SDP, metadata and
# an application/gtd part, Content-Disposition handling=required; the Cisco-Guid
# header is passed to the recorder ("Third-Party GUID Capture" chapter).
CUBE_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns='urn:ietf:params:xml:ns:recording:1'>
  <datamode>complete</datamode>
  <session session_id="Y3ViZS1zZXNz">
    <sipSessionID>c1c2c3c4c5c6c7c8c9c0c1c2c3c4c5c6;remote=00000000000000000000000000000000</sipSessionID>
    <start-time>2026-11-30T09:15:02.000Z</start-time>
  </session>
  <participant participant_id="Y3ViZS1h">
    <nameID aor="sip:8005550100@10.10.10.1"><name>Inbound Caller</name></nameID>
  </participant>
  <participant participant_id="Y3ViZS1i"><nameID aor="sip:5001@10.10.10.2"/></participant>
  <stream stream_id="Y3ViZS1zMQ==" session_id="Y3ViZS1zZXNz"><label>1</label></stream>
  <stream stream_id="Y3ViZS1zMg==" session_id="Y3ViZS1zZXNz"><label>2</label></stream>
  <participantstreamassoc participant_id="Y3ViZS1h"><send>Y3ViZS1zMQ==</send>
  </participantstreamassoc>
  <participantstreamassoc participant_id="Y3ViZS1i"><send>Y3ViZS1zMg==</send>
  </participantstreamassoc>
</recording>
"""


def test_cube_extra_gtd_part_and_handling_required() -> None:
    body = _multipart(
        "uniqueBoundary",
        ("Content-Type: application/sdp\r\nContent-Disposition: session;handling=required",
         _sdp(["1", "2"])),
        ("Content-Type: application/rs-metadata+xml\r\n"
         "Content-Disposition: recording-session;handling=required", CUBE_METADATA),
        ("Content-Type: application/gtd\r\nContent-Disposition: signal;handling=optional",
         b"IAM,\r\nPRN,isdn*,,NET5*,\r\nUSI,rate,c,s,c,1\r\nCPN,00,,1,5001\r\n"),
    )
    parts = split_siprec_body("multipart/mixed;boundary=uniqueBoundary", body)
    assert parts.ignored == ["application/gtd"]
    assert parts.metadata == CUBE_METADATA
    md = parse_metadata(parts.metadata)
    assert {k: v[0] for k, v in assign_channels(md, ["1", "2"]).items()} == {"1": 0, "2": 1}


# ---------------------------------------------------------------- content types


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/rs-metadata+xml", True),
        ("application/rs-metadata", True),  # Metaswitch, Procomm, the RFC examples
        ("Application/RS-Metadata+XML; charset=UTF-8", True),
        (" application/rs-metadata ;charset=utf-8", True),
        ("application/rs-metadata-request", False),
        ("application/sdp", False),
        ("application/xml", False),
        ("", False),
        (None, False),
    ],
)
def test_is_metadata_content_type(value: str | None, expected: bool) -> None:
    assert is_metadata_content_type(value) is expected


def test_split_siprec_body_single_parts_and_refusals() -> None:
    assert split_siprec_body("application/sdp", b"v=0").sdp == b"v=0"
    only = split_siprec_body("application/rs-metadata", b"<recording/>")  # metadata-only UPDATE
    assert only.metadata == b"<recording/>" and only.sdp is None
    assert split_siprec_body(None, b"") == split_siprec_body("application/sdp", b"")
    with pytest.raises(UnsupportedBody):
        split_siprec_body("text/plain", b"hello")
    with pytest.raises(UnsupportedBody):
        split_siprec_body(None, b"hello")
    with pytest.raises(MetadataError):
        split_siprec_body("multipart/mixed", b"--x\r\n\r\nbody\r\n--x--")


def test_recording_session_disposition_marks_xml_metadata() -> None:
    body = _multipart(
        "d",
        ("Content-Type: application/sdp", _sdp(["1"])),
        ("Content-Type: application/xml\r\nContent-Disposition: recording-session",
         b"<recording/>"),
    )
    assert split_siprec_body("multipart/mixed;boundary=d", body).metadata == b"<recording/>"


# ---------------------------------------------------------------- start time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-30T09:15:02Z", datetime(2026, 11, 30, 9, 15, 2, tzinfo=UTC)),
        ("2026-11-30T09:15:02", datetime(2026, 11, 30, 9, 15, 2, tzinfo=UTC)),
        ("2026-11-30T10:15:02+01:00", datetime(2026, 11, 30, 9, 15, 2, tzinfo=UTC)),
        ("1970-01-01T00:00:00", None),
        ("1970-01-01T00:00:00Z", None),
        ("not a time", None),
        ("", None),
        (None, None),
        ("9999-12-31T23:59:59-23:59", None),
    ],
)
def test_parse_start_time(text: str | None, expected: datetime | None) -> None:
    assert parse_start_time(text) == expected


def test_contract_metadata_fields_are_optional_for_old_events() -> None:
    old = ContractMetadata.model_validate_json(
        '{"source": "siprec", "session_key": "siprec:x",'
        ' "participants": [{"role": "caller", "number": "1001"}]}'
    )
    assert old.cisco_guid is None and old.recorded_call_ids == [] and old.call_started_at is None
    assert old.participants[0].private is False and old.participants[0].host is None


def test_stream_labels_for_a_delayed_offer() -> None:
    # RFC 7866: an INVITE with metadata and no SDP; the SRS offers one m-line per stream.
    assert stream_labels(parse_metadata(ORACLE_METADATA)) == ["16777227", "16777228"]
    # stream_id="" cannot be associated, but its stream is still offered.
    assert stream_labels(parse_metadata(AVAYA_INVITE_METADATA)) == ["1", "2"]
    merged = merge_metadata(parse_metadata(AVAYA_INVITE_METADATA),
                            parse_metadata(AVAYA_UPDATE_PARTIAL))
    assert merged.orphan_labels == []  # the update gave label 2 a real stream
    assert stream_labels(merged) == ["1", "2"]
