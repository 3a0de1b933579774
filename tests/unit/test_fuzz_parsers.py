"""Property-based fuzz of the parsers that read what peers send: SIP, SDP, SIPREC.

Properties:
- each parser returns a value or raises its declared error (SipParseError,
  SdpError, MetadataError), never anything else, on random bytes, on random
  text from the grammar's alphabet, and on mutations of valid messages;
- round trips hold where they are defined: a parsed SIP message, URI,
  name-addr or Via re-parses from its rendering to the same value; a rendered
  SDP parses back to what was rendered; metadata generated from a model
  parses back to that model;
- what the recorder derives from a parsed value never fails (the SDP answer
  has one m-line per offered one; every SDP label gets channel 0 or 1).

Run time: in CI each test runs a bounded number of examples (the whole module
takes well under 20 s on a loaded 2-core machine). For a long run set
CALLREC_FUZZ_EXAMPLES, e.g.

    CALLREC_FUZZ_EXAMPLES=100000 PYTHONPATH=$PWD .venv/bin/pytest -q -p no:cacheprovider \
        tests/unit/test_fuzz_parsers.py

which also lifts the per-example deadline. CALLREC_FUZZ_SEED=N replays one run.
Failures print the shrunk input and a @reproduce_failure line to paste.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from services.signaling.identity import caller_identity, host_of, number_of
from services.signaling.sdp import (
    DIRECTIONS,
    MediaSpec,
    SdpError,
    choose_codecs,
    parse_sdp,
    payload_codecs,
    recorder_answer,
    render_sdp,
)
from services.signaling.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    serialize,
)
from services.signaling.siprec import (
    MetadataError,
    assign_channels,
    contract_participants,
    merge_metadata,
    parse_metadata,
    split_multipart,
    split_siprec_body,
)

_LONG = os.environ.get("CALLREC_FUZZ_EXAMPLES")
EXAMPLES = int(_LONG) if _LONG else 150
FUZZ = settings(
    max_examples=EXAMPLES,
    # CI: a generous per-example bound that still catches a pathological
    # (super-linear) parse; long runs only count examples.
    deadline=None if _LONG else timedelta(seconds=2),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_SEED = os.environ.get("CALLREC_FUZZ_SEED")


def fuzz(test: Any) -> Any:
    """Apply the module's settings (and an optional fixed seed)."""
    wrapped = FUZZ(test)
    return seed(int(_SEED))(wrapped) if _SEED else wrapped


# ---------------------------------------------------------------- seeds and mutations

SDP_SEED = (
    "v=0\r\no=SBC 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    "m=audio 20000 RTP/AVP 0 8 18 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:18 G729/8000\r\n"
    "a=fmtp:18 annexb=no\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
    "a=ptime:20\r\na=label:1\r\na=sendonly\r\n"
    "m=audio 20002 RTP/SAVP 9 101\r\nc=IN IP6 2001:db8::1\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
    "a=label:2\r\na=inactive\r\n"
)

METADATA_SEED = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
<datamode>complete</datamode>
<session session_id="s1"><sipSessionID>abc;remote=def</sipSessionID>
<start-time>2026-11-30T09:15:02Z</start-time></session>
<participant participant_id="p1"><nameID aor="sip:alice@a.example"><name>Alice</name></nameID>
<extensiondata xmlns:apkt="http://acmepacket.com/siprec/extensiondata">
<apkt:callingParty>true</apkt:callingParty></extensiondata></participant>
<participant participant_id="p2"><nameID aor="bob@b.example"/><send>x2</send></participant>
<stream stream_id="x1" session_id="s1"><label>1</label></stream>
<stream stream_id="x2" session_id="s1"><label>2</label></stream>
<stream stream_id="" session_id="s1"><label>3</label></stream>
<participantstreamassoc participant_id="p1"><send>x1</send><recv>x2</recv>
</participantstreamassoc>
<participantsessionassoc participant_id="p2" session_id="s1">
<disassociate-time>2026-11-30T09:20:00Z</disassociate-time></participantsessionassoc>
</recording>
"""


def _multipart_body() -> bytes:
    return (
        b"--b0undary\r\nContent-Type: application/sdp\r\n\r\n" + SDP_SEED.encode() + b"\r\n"
        b"--b0undary\r\nContent-Type: application/rs-metadata\r\n"
        b"Content-Disposition: recording-session;handling=required\r\n\r\n"
        + METADATA_SEED + b"\r\n--b0undary\r\nContent-Type: application/gtd\r\n\r\nIAM,\r\n"
        b"--b0undary--\r\n"
    )


def _sip_seed(body: bytes, content_type: str) -> bytes:
    head = (
        "INVITE sip:rec@10.0.0.50:5060;transport=tcp SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 10.1.1.1:5060;branch=z9hG4bK7f3a;rport, SIP/2.0/UDP [2001:db8::9]\r\n"
        'From: "Front Desk" <sip:1001@10.1.1.1;x-nearend;x-refci=25165957;'
        "x-nearendaddr=1001;x-farenddevice=10.2.2.2>;tag=12345\r\n"
        "To: <sip:rec@10.0.0.50>\r\n"
        "Call-ID: 4d8c5e00-1234-abcd@10.1.1.1\r\n"
        "CSeq: 101 INVITE\r\n"
        "Max-Forwards: 70\r\n"
        "Contact: <sip:src@10.1.1.1:5060>;+sip.src\r\n"
        'P-Asserted-Identity: "PAI, Name" <sip:1001@10.1.1.1>, <tel:+15551234567>\r\n'
        'Remote-Party-ID: "RPID" <sip:1001@10.1.1.1>;party=calling;privacy=full\r\n'
        "Privacy: id\r\n"
        "Cisco-Guid: 2964493056-3225977321-2170437826-0000000042\r\n"
        "Supported: timer,\r\n replaces\r\n"
        "Require: siprec\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


SIP_SEEDS = [
    _sip_seed(_multipart_body(), "multipart/mixed;boundary=b0undary"),
    _sip_seed(SDP_SEED.encode(), "application/sdp"),
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\n"
    b"To: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    b"ACK sip:rec@10.0.0.50 SIP/2.0\r\nv: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKy\r\n"
    b"f: <sip:a@b>;tag=1\r\nt: <sip:c@d>\r\ni: y\r\nCSeq: 1 ACK\r\n\r\n",
]

# Bytes that matter to these grammars: separators, quotes, brackets, controls.
_SPECIAL = b"\r\n\t :;,<>\"'@=/[]?&%\\-\x00\x7f\xff\xc3"


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid input with a few random edits: what a broken peer plausibly sends."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup", "special"]))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif op == "dup":
            end = min(len(data), at + draw(st.integers(1, 80)))
            data[at:at] = data[at:end]
        else:
            data[at:at] = bytes([draw(st.sampled_from(_SPECIAL))])
    return bytes(data)


@st.composite
def line_mutated(draw: st.DrawFn, source: st.SearchStrategy[bytes]) -> bytes:
    """Whole-line edits that keep each line well formed: drop, repeat, move, empty a value.

    Byte edits mostly yield refusals; these reach the code behind the syntax
    checks (missing ids, duplicated parties, headers out of order).
    """
    lines = draw(source).split(b"\n")
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "repeat", "move", "empty", "swap-case"]))
        if op == "drop" and len(lines) > 1:
            del lines[at]
        elif op == "repeat":
            lines.insert(at, lines[at])
        elif op == "move":
            lines.insert(draw(st.integers(0, len(lines) - 1)), lines.pop(at))
        elif op == "empty":
            line = lines[at]
            for quote in (b'"', b"'", b">"):
                start = line.find(b"=" + quote) if quote != b">" else line.find(b">")
                end = line.find(quote if quote != b">" else b"<", start + 2)
                if start != -1 and end != -1:
                    lines[at] = line[: start + 2] + line[end:]
                    break
        else:
            lines[at] = lines[at].swapcase()
    return b"\n".join(lines)


def _text(alphabet: str, max_size: int = 200) -> st.SearchStrategy[str]:
    return st.text(alphabet=st.sampled_from(alphabet), max_size=max_size)


_URI_ALPHABET = "sipStel:+@;=.[]0123456789abcdefABCDEF-_~!*'()%?&<> \"\\,\t/"

# ---------------------------------------------------------------- SIP message


def _expect_sip(data: bytes) -> SipRequest | SipResponse | None:
    try:
        return parse_message(data)
    except SipParseError:
        return None


def _check_round_trip(msg: SipRequest | SipResponse) -> None:
    again = parse_message(serialize(msg))
    assert type(again) is type(msg)
    if isinstance(msg, SipRequest):
        assert isinstance(again, SipRequest)
        assert (again.method, again.uri) == (msg.method, msg.uri)
    else:
        assert isinstance(again, SipResponse)
        assert (again.status, again.reason) == (msg.status, msg.reason)
    assert again.body == msg.body

    def without_length(h: Headers) -> list[tuple[str, str]]:
        return [(n, v) for n, v in h.items() if n != "Content-Length"]

    assert without_length(again.headers) == without_length(msg.headers)


@fuzz
@given(st.binary(max_size=1500))
def test_sip_random_bytes_only_raise_parse_error(data: bytes) -> None:
    _expect_sip(data)


@fuzz
@given(st.one_of(mutated(SIP_SEEDS), line_mutated(st.sampled_from(SIP_SEEDS))))
def test_sip_mutated_messages_parse_or_refuse_and_round_trip(data: bytes) -> None:
    msg = _expect_sip(data)
    if msg is None:
        return
    _check_round_trip(msg)
    # What the recorder reads from a parsed request must not fail differently.
    for accessor in ("from_", "to", "vias", "cseq", "content_type", "max_forwards"):
        with contextlib.suppress(SipParseError):
            getattr(msg, accessor)
    caller_identity(msg.headers)
    if msg.body:
        with contextlib.suppress(MetadataError):
            split_siprec_body(msg.headers.get("Content-Type"), msg.body)


def test_sip_seeds_are_valid() -> None:
    # The mutations start from valid messages, or they fuzz nothing useful.
    for data in SIP_SEEDS:
        msg = parse_message(data)
        _check_round_trip(msg)


@fuzz
@given(_text(_URI_ALPHABET))
def test_sip_uri_parse_or_refuse_and_round_trip(text: str) -> None:
    try:
        uri = parse_uri(text)
    except SipParseError:
        return
    assert parse_uri(str(uri)) == uri
    number_of(str(uri))
    host_of(str(uri))


@fuzz
@given(st.one_of(_text(_URI_ALPHABET), st.builds(lambda d, u: f'"{d}" <{u}>;tag=x',
                                                  _text("ab \\\"é,;<>", 12),
                                                  _text(_URI_ALPHABET, 40))))
def test_name_addr_parse_or_refuse_and_round_trip(text: str) -> None:
    try:
        addr = parse_name_addr(text)
    except SipParseError:
        return
    assert parse_name_addr(str(addr)) == addr


@fuzz
@given(_text("SIP/2.0UDPTCPTLSudp 0123456789.:;=[]abcdefbranchz9hG4bKrportreceived,\t", 120))
def test_via_parse_or_refuse_and_round_trip(text: str) -> None:
    try:
        via = parse_via(text)
    except SipParseError:
        return
    assert parse_via(str(via)) == via


# ---------------------------------------------------------------- SDP

_SDP_ALPHABET = "vosctmab=0123456789 ./:-IN4P6RTAVSudiorcvnlypemtxG\r\n\t"


def _sdp_consequences(text: str) -> None:
    try:
        offer = parse_sdp(text)
    except SdpError:
        return
    for md in offer.media:
        payload_codecs(md)
        choose_codecs(md)
    try:
        answer = recorder_answer(offer, [40000 + 2 * i for i in range(len(offer.media))],
                                 "10.0.0.50", 1, 1)
    except SdpError:
        return
    assert len(parse_sdp(answer).media) == len(offer.media)


@fuzz
@given(st.text(max_size=800))
def test_sdp_random_text_only_raises_sdp_error(text: str) -> None:
    _sdp_consequences(text)


@fuzz
@given(_text(_SDP_ALPHABET, 400).map(lambda t: "v=0\r\n" + t))
def test_sdp_grammar_text_only_raises_sdp_error(text: str) -> None:
    _sdp_consequences(text)


@fuzz
@given(st.one_of(mutated([SDP_SEED.encode()]), line_mutated(st.just(SDP_SEED.encode()))))
def test_sdp_mutated_offers_parse_or_refuse_and_answer(data: bytes) -> None:
    _sdp_consequences(data.decode("utf-8", errors="replace"))


_codec_names = st.sampled_from(["PCMU", "PCMA", "G722", "G729", "telephone-event", "opus"])


@st.composite
def media_specs(draw: st.DrawFn) -> MediaSpec:
    pts = draw(st.lists(st.integers(0, 127), min_size=1, max_size=5, unique=True))
    rtpmap = {pt: (draw(_codec_names), draw(st.sampled_from([8000, 16000, 48000])))
              for pt in pts if draw(st.booleans())}
    return MediaSpec(
        port=draw(st.integers(0, 65535)),
        payload_types=pts,
        rtpmap=rtpmap,
        direction=draw(st.sampled_from([None, *DIRECTIONS])),
        label=draw(st.none() | st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True)),
        proto=draw(st.sampled_from(["RTP/AVP", "RTP/SAVP", "RTP/AVPF"])),
    )


@fuzz
@given(st.lists(media_specs(), min_size=1, max_size=4),
       st.sampled_from(["10.0.0.50", "2001:db8::50"]))
def test_sdp_render_parse_round_trip(specs: list[MediaSpec], address: str) -> None:
    parsed = parse_sdp(render_sdp(session_id=7, version=3, address=address, media=specs))
    assert parsed.connection_address == address
    assert len(parsed.media) == len(specs)
    for spec, md in zip(specs, parsed.media, strict=True):
        assert (md.port, md.proto, md.formats, md.label) == (
            spec.port, spec.proto, spec.payload_types, spec.label)
        assert md.direction == (spec.direction or "sendrecv")
        assert {pt: (n, c) for pt, (n, c, _ch) in md.rtpmap.items()} == spec.rtpmap


# ---------------------------------------------------------------- SIPREC metadata


@fuzz
@given(st.binary(max_size=1500))
def test_metadata_random_bytes_only_raise_metadata_error(data: bytes) -> None:
    with contextlib.suppress(MetadataError):
        parse_metadata(data)


def test_metadata_seed_is_valid() -> None:
    md = parse_metadata(METADATA_SEED)
    assert [p.id for p in md.participants] == ["p1", "p2"]
    assert len(md.skipped) == 1


_ids = st.from_regex(r"[A-Za-z0-9+/=]{1,16}", fullmatch=True)
_xml_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20
)


def _esc(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


@st.composite
def metadata_models(draw: st.DrawFn) -> tuple[bytes, dict[str, Any]]:
    """A metadata document and the model it encodes, in one of the dialects."""
    ns, root, id_attr, sess_attr = draw(st.sampled_from([
        ("urn:ietf:params:xml:ns:recording:1", "recording", "{kind}_id", "session_id"),
        ("urn:ietf:params:xml:ns:recording", "recording", "id", "session"),
        ("urn:ietf:params:xml:ns:siprec", "recording_metadata", "id", "session"),
    ]))
    prefix = draw(st.sampled_from(["", "tns:"]))
    stream_ids = draw(st.lists(_ids, min_size=1, max_size=4, unique=True))
    labels = draw(st.lists(st.from_regex(r"[0-9]{1,9}", fullmatch=True),
                           min_size=len(stream_ids), max_size=len(stream_ids), unique=True))
    party_ids = draw(st.lists(_ids.filter(lambda i: i not in stream_ids),
                              min_size=1, max_size=3, unique=True))
    parties = {
        pid: {
            "aor": draw(st.sampled_from(["sip:", "", "tel:"])) + draw(
                st.from_regex(r"\+?[0-9]{3,12}", fullmatch=True)) + "@x.example",
            "name": draw(_xml_text).strip() or None,
            "send": draw(st.lists(st.sampled_from(stream_ids), max_size=2, unique=True)),
        }
        for pid in party_ids
    }
    inline = draw(st.booleans())  # <send> inside <participant> (Oracle, BroadWorks)
    started = draw(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2300, 1, 1),
                                timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))])))
    start_text = draw(st.sampled_from([
        started.isoformat(), started.replace(tzinfo=None).isoformat(timespec="seconds"),
        started.isoformat().replace("+00:00", "Z"), "1970-01-01T00:00:00",
        draw(_text("0123456789-:TZ+. ", 30)),
    ]))
    xmlns = f'xmlns:tns="{ns}"' if prefix else f'xmlns="{ns}"'
    p = prefix
    out = [f"<{p}{root} {xmlns}>", f"<{p}datamode>complete</{p}datamode>",
           f'<{p}session {id_attr.format(kind="session")}="s"><{p}start-time>{start_text}'
           f"</{p}start-time></{p}session>"]
    for pid, party in parties.items():
        name = f"<{p}name>{_esc(party['name'])}</{p}name>" if party["name"] else ""
        sends = "".join(f"<{p}send>{s}</{p}send>" for s in party["send"]) if inline else ""
        attr = id_attr.format(kind="participant")
        out.append(f'<{p}participant {attr}="{pid}"><{p}nameID aor="{_esc(party["aor"])}">'
                   f"{name}</{p}nameID>{sends}</{p}participant>")
    for sid, label in zip(stream_ids, labels, strict=True):
        attr = id_attr.format(kind="stream")
        out.append(f'<{p}stream {attr}="{sid}" {sess_attr}="s"><{p}label>{label}</{p}label>'
                   f"</{p}stream>")
    if not inline:
        for pid, party in parties.items():
            sends = "".join(f"<{p}send>{s}</{p}send>" for s in party["send"])
            out.append(f'<{p}participantstreamassoc participant_id="{pid}">{sends}'
                       f"</{p}participantstreamassoc>")
    out.append(f"</{p}{root}>")
    model = {"parties": parties, "streams": dict(zip(stream_ids, labels, strict=True)),
             "start": (start_text, started)}
    return "\n".join(out).encode(), model


@fuzz
@given(st.one_of(
    mutated([METADATA_SEED]),
    line_mutated(st.just(METADATA_SEED)),
    line_mutated(metadata_models().map(lambda doc: doc[0])),
))
def test_metadata_mutations_parse_or_refuse_and_derive(data: bytes) -> None:
    try:
        md = parse_metadata(data)
    except MetadataError:
        return
    labels = [s.label for s in md.streams] + ["1", "2", "9"]
    channels = assign_channels(md, labels)
    assert set(channels) == set(labels)
    assert all(channel in (0, 1) for channel, _ in channels.values())
    contract_participants(md, channels)
    merged = merge_metadata(md, md)
    assign_channels(merged, labels)


@fuzz
@given(metadata_models())
def test_metadata_generated_documents_round_trip(doc: tuple[bytes, dict[str, Any]]) -> None:
    xml, model = doc
    md = parse_metadata(xml)
    assert md.skipped == []
    start_text, started = model["start"]
    assert md.start_time == (start_text.strip() or None)
    if md.started_at is not None:
        assert md.started_at.tzinfo is UTC and 1990 <= md.started_at.year <= 2200
    if start_text == started.isoformat() and 1990 <= started.astimezone(UTC).year <= 2200:
        assert md.started_at == started
    assert {s.id: s.label for s in md.streams} == model["streams"]
    parsed = {p.id: p for p in md.participants}
    assert set(parsed) == set(model["parties"])
    for pid, party in model["parties"].items():
        assert parsed[pid].aors == [party["aor"]]
        assert parsed[pid].names == ([party["name"]] if party["name"] else [])
        assert parsed[pid].send == party["send"]
    labels = list(model["streams"].values())
    channels = assign_channels(md, labels)
    first = md.participants[0]
    for stream_id in first.send:  # the caller's streams are on the left
        assert channels[model["streams"][stream_id]][0] == 0
    parties = contract_participants(md, channels)
    assert [p.number for p in parties] == [number_of(model["parties"][p.id]["aor"])
                                           for p in md.participants]


@fuzz
@given(st.text(alphabet=st.sampled_from("abc-_'\"= ;"), max_size=30), st.binary(max_size=600))
def test_multipart_only_raises_metadata_error(boundary: str, body: bytes) -> None:
    for content_type in (f"multipart/mixed;boundary={boundary}",
                         f'multipart/mixed; boundary="{boundary}"'):
        with contextlib.suppress(MetadataError):
            split_multipart(content_type, body)


@fuzz
@given(mutated([_multipart_body()]))
def test_siprec_body_mutations_only_raise_metadata_error(data: bytes) -> None:
    try:
        parts = split_siprec_body("multipart/mixed;boundary=b0undary", data)
    except MetadataError:
        return
    if parts.metadata is not None:
        with contextlib.suppress(MetadataError):
            parse_metadata(parts.metadata)
