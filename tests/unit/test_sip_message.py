"""Unit tests for services.signaling.sip.message."""

from __future__ import annotations

import contextlib
import random

import pytest

from services.signaling.sip.message import (
    Headers,
    SipParseError,
    SipRequest,
    SipResponse,
    StreamFramer,
    build_response,
    parse_message,
    parse_name_addr,
    parse_name_addr_cached,
    parse_uri,
    parse_via,
    serialize,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


CUCM_INVITE = crlf(
    "INVITE sip:rec@10.0.0.50:5060 SIP/2.0\n"
    "Via: SIP/2.0/TCP 10.1.1.1:5060;branch=z9hG4bK1a2b3c4d5e\n"
    "From: <sip:1001@10.1.1.1;x-nearend;x-refci=25165957;"
    "x-nearendclusterid=StandAloneCluster;x-nearenddevice=SEP001122334455;"
    "x-nearendaddr=1001;x-farendrefci=25165956;x-farendclusterid=StandAloneCluster;"
    "x-farenddevice=SEP665544332211;x-farendaddr=2002>;tag=12345~abc\n"
    "To: <sip:rec@10.0.0.50>\n"
    "Date: Mon, 24 Nov 2025 10:00:00 GMT\n"
    "Call-ID: 9f8e7d00-1234abcd-5678-101010a@10.1.1.1\n"
    "Supported: timer,resource-priority,replaces\n"
    "Min-SE:  1800\n"
    "User-Agent: Cisco-CUCM14.0\n"
    "Allow: INVITE, OPTIONS, INFO, BYE, CANCEL, ACK, PRACK, UPDATE, REFER, SUBSCRIBE, NOTIFY\n"
    "CSeq: 101 INVITE\n"
    "Expires: 180\n"
    "Allow-Events: presence, kpml\n"
    "Supported: X-cisco-srtp-fallback,X-cisco-original-called\n"
    "Call-Info: <urn:x-cisco-remotecc:callinfo>;x-cisco-video-traffic-class=DESKTOP\n"
    "Cisco-Guid: 2676915456-0305416141-0000022136-0168296714\n"
    "Session-Expires:  1800\n"
    "P-Asserted-Identity: <sip:1001@10.1.1.1>\n"
    'Contact: <sip:1001@10.1.1.1:5060;transport=tcp>;+u.sip!devicename.ccm.cisco.com="SEP0011"\n'
    "Max-Forwards: 70\n"
    "Content-Length: 0\n"
    "\n"
)


# ---------------------------------------------------------------- URIs


def test_parse_uri_with_params_and_flags() -> None:
    uri = parse_uri("sip:1001@10.1.1.1;x-nearend;x-refci=25165957;transport=tcp")
    assert uri.scheme == "sip"
    assert uri.user == "1001"
    assert uri.host == "10.1.1.1"
    assert uri.port is None
    assert uri.params["x-nearend"] is None
    assert uri.params["X-RefCI"] == "25165957"  # case-insensitive look-up
    assert "X-NEAREND" in uri.params
    assert list(uri.params) == ["x-nearend", "x-refci", "transport"]
    assert str(uri) == "sip:1001@10.1.1.1;x-nearend;x-refci=25165957;transport=tcp"


def test_parse_uri_ipv6_and_password_and_headers() -> None:
    uri = parse_uri("sips:alice:secret@[2001:db8::1]:5061;transport=tls?subject=hi&x=1")
    assert uri.scheme == "sips"
    assert uri.user == "alice"
    assert uri.password == "secret"
    assert uri.host == "2001:db8::1"
    assert uri.port == 5061
    assert uri.headers == {"subject": "hi", "x": "1"}
    assert str(uri) == "sips:alice:secret@[2001:db8::1]:5061;transport=tls?subject=hi&x=1"


def test_parse_uri_ipv6_without_port_and_no_user() -> None:
    uri = parse_uri("sip:[::1]")
    assert uri.host == "::1"
    assert uri.user is None
    assert str(uri) == "sip:[::1]"


def test_parse_tel_uri() -> None:
    uri = parse_uri("tel:+14085551234;phone-context=example.com")
    assert uri.scheme == "tel"
    assert uri.user == "+14085551234"
    assert uri.params["phone-context"] == "example.com"
    assert str(uri) == "tel:+14085551234;phone-context=example.com"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "http://example.com/",
        "sip:",
        "sip:@host",
        "sip:host:99999",
        "sip:host:abc",
        "sip:[::1",
        "sip:[zz]:5060",
        "sip:a b@host",
        "sip:host;=x",
        "sip:host;;x",
        "sip:ho<st",
        "sip:host?novalue",
    ],
)
def test_parse_uri_rejects_garbage(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


# ---------------------------------------------------------------- name-addr


def test_name_addr_quoted_display_and_tag() -> None:
    na = parse_name_addr('"Doe, John \\"JD\\"" <sip:jd@example.com;user=phone>;tag=a1;x')
    assert na.display == 'Doe, John "JD"'
    assert na.uri.user == "jd"
    assert na.uri.params["user"] == "phone"
    assert na.tag == "a1"
    assert na.params["x"] is None
    assert str(na) == '"Doe, John \\"JD\\"" <sip:jd@example.com;user=phone>;tag=a1;x'


def test_name_addr_angle_only_and_token_display() -> None:
    assert parse_name_addr("<sip:rec@10.0.0.50>").display is None
    na = parse_name_addr("Alice Smith <sip:alice@atlanta.example.com>")
    assert na.display == "Alice Smith"
    assert na.tag is None


def test_name_addr_addr_spec_params_belong_to_header() -> None:
    na = parse_name_addr("sip:bob@biloxi.example.com;tag=xyz;foo=bar")
    assert na.uri.params == {}
    assert na.tag == "xyz"
    assert na.params["foo"] == "bar"


@pytest.mark.parametrize(
    "text",
    ["", '"unterminated <sip:a@b>', "<sip:a@b", '"x" sip:a@b', "<sip:a@b> junk", "<>"],
)
def test_name_addr_rejects_garbage(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(text)


# ---------------------------------------------------------------- Via


def test_parse_via_with_rport_received() -> None:
    via = parse_via("SIP/2.0/udp 192.0.2.1:5060;branch=z9hG4bKabc;rport=5062;received=198.51.100.7")
    assert via.transport == "UDP"
    assert via.host == "192.0.2.1"
    assert via.port == 5060
    assert via.branch == "z9hG4bKabc"
    assert via.rport == 5062
    assert via.received == "198.51.100.7"
    assert str(via) == (
        "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc;rport=5062;received=198.51.100.7"
    )


def test_parse_via_bare_rport_and_ipv6_and_spaces() -> None:
    via = parse_via("SIP / 2.0 / TCP [2001:db8::9]:5060 ;rport;branch=z9hG4bK1")
    assert via.host == "2001:db8::9"
    assert via.port == 5060
    assert via.rport is None
    assert via.rport_requested
    assert str(via) == "SIP/2.0/TCP [2001:db8::9]:5060;rport;branch=z9hG4bK1"


@pytest.mark.parametrize("text", ["", "SIP/3.0/UDP host", "SIP/2.0/UDP", "SIP/2.0/UDP h:0x1"])
def test_parse_via_rejects_garbage(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(text)


# ---------------------------------------------------------------- Headers


def test_headers_compact_and_case_insensitive() -> None:
    h = Headers([("i", "abc@host"), ("v", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("l", "0")])
    assert h.get("Call-ID") == "abc@host"
    assert h.get("call-id") == "abc@host"
    assert h.get("I") == "abc@host"
    assert "Via" in h
    assert "content-length" in h
    assert "Contact" not in h
    assert [n for n, _ in h.items()] == ["Call-ID", "Via", "Content-Length"]


def test_headers_canonical_names() -> None:
    h = Headers()
    h.add("www-authenticate", 'Digest realm="a", nonce="b"')
    h.add("cseq", "1 INVITE")
    h.add("call-id", "x")
    h.add("X-Cisco-Foo", "1")
    assert [n for n, _ in h.items()] == ["WWW-Authenticate", "CSeq", "Call-ID", "X-Cisco-Foo"]


def test_headers_get_all_splits_only_list_headers() -> None:
    h = Headers()
    h.add("Contact", '"Smith, J" <sip:a@b?x=1,2>;q=0.5, <sip:c@d>')
    h.add("m", "sip:e@f")
    h.add("WWW-Authenticate", 'Digest realm="x", nonce="y"')
    h.add("Date", "Sat, 13 Nov 2010 23:29:00 GMT")
    assert h.get_all("Contact") == ['"Smith, J" <sip:a@b?x=1,2>;q=0.5', "<sip:c@d>", "sip:e@f"]
    assert h.get_all("WWW-Authenticate") == ['Digest realm="x", nonce="y"']
    assert h.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert h.get_all("Route") == []


def test_headers_set_remove() -> None:
    h = Headers([("X-A", "1"), ("Via", "v1"), ("X-B", "2"), ("via", "v2")])
    h.set("Via", "v3")
    assert h.items() == [("X-A", "1"), ("Via", "v3"), ("X-B", "2")]
    h.set("New", "x")
    assert h.items()[-1] == ("New", "x")
    h.remove("VIA")
    h.remove("missing")
    assert h.items() == [("X-A", "1"), ("X-B", "2"), ("New", "x")]
    # single letters are compact forms: "b" is Referred-By
    assert Headers([("b", "<sip:x@y>")]).items() == [("Referred-By", "<sip:x@y>")]
    assert h.get("nope", "dflt") == "dflt"


def test_headers_reject_injection() -> None:
    h = Headers()
    with pytest.raises(SipParseError):
        h.add("Subject", "hi\r\nVia: evil")
    with pytest.raises(SipParseError):
        h.add("Bad Name", "x")


# ---------------------------------------------------------------- parse_message


def test_parse_cucm_invite_without_sdp() -> None:
    msg = parse_message(CUCM_INVITE)
    assert isinstance(msg, SipRequest)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:rec@10.0.0.50:5060"
    assert msg.call_id == "9f8e7d00-1234abcd-5678-101010a@10.1.1.1"
    assert msg.cseq == (101, "INVITE")
    assert msg.body == b""
    assert msg.content_type is None
    assert msg.max_forwards == 70
    assert msg.from_.tag == "12345~abc"
    assert msg.from_.uri.params["x-refci"] == "25165957"
    assert msg.from_.uri.params["x-nearend"] is None
    assert msg.to.tag is None
    assert [v.branch for v in msg.vias] == ["z9hG4bK1a2b3c4d5e"]
    assert msg.headers.get_all("Supported") == [
        "timer",
        "resource-priority",
        "replaces",
        "X-cisco-srtp-fallback",
        "X-cisco-original-called",
    ]
    assert msg.headers.get("Date") == "Mon, 24 Nov 2025 10:00:00 GMT"
    assert msg.headers.get("cisco-guid") == "2676915456-0305416141-0000022136-0168296714"
    contacts = msg.headers.get_all("Contact")
    assert len(contacts) == 1
    assert parse_name_addr(contacts[0]).params["+u.sip!devicename.ccm.cisco.com"] == '"SEP0011"'


def test_compact_headers_lf_only_leading_crlf_and_folding() -> None:
    raw = (
        b"\r\n\r\nOPTIONS sip:rec@example.com SIP/2.0\n"
        b"v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKa, SIP/2.0/UDP 192.0.2.2;branch=z9hG4bKb\n"
        b"f: <sip:a@example.com>;tag=1\n"
        b"t: <sip:rec@example.com>\n"
        b"i: c1@192.0.2.1\n"
        b"CSeq: 7\n"
        b"  OPTIONS\n"
        b"Subject: a very\n"
        b"\tlong subject\n"
        b"l: 0\n"
        b"\n"
    )
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    assert msg.cseq == (7, "OPTIONS")
    assert msg.call_id == "c1@192.0.2.1"
    assert msg.headers.get("s") == "a very long subject"
    vias = msg.vias
    assert [(v.host, v.port, v.branch) for v in vias] == [
        ("192.0.2.1", 5060, "z9hG4bKa"),
        ("192.0.2.2", None, "z9hG4bKb"),
    ]


def test_multiple_via_lines_and_comma_lists_keep_order() -> None:
    raw = crlf(
        "BYE sip:rec@example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1,"
        "SIP/2.0/UDP p2.example.com;branch=z9hG4bK2\n"
        "Via: SIP/2.0/UDP ua.example.com;branch=z9hG4bK3\n"
        "From: <sip:a@example.com>;tag=1\n"
        "To: <sip:rec@example.com>;tag=2\n"
        "Call-ID: x\n"
        "CSeq: 2 BYE\n"
        "\n"
    )
    msg = parse_message(raw)
    assert [v.branch for v in msg.vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]


def test_parse_response() -> None:
    raw = crlf(
        "SIP/2.0 486 Busy Here\n"
        "Via: SIP/2.0/UDP 10.0.0.50:5060;branch=z9hG4bKx\n"
        "From: <sip:rec@10.0.0.50>;tag=r1\n"
        "To: <sip:1001@10.1.1.1>;tag=u1\n"
        "Call-ID: abc\n"
        "CSeq: 1 INVITE\n"
        "Content-Length: 0\n"
        "\n"
    )
    msg = parse_message(raw)
    assert isinstance(msg, SipResponse)
    assert msg.status == 486
    assert msg.reason == "Busy Here"
    assert msg.cseq == (1, "INVITE")


def test_body_truncated_to_content_length_and_content_type() -> None:
    raw = (
        crlf(
            "INVITE sip:rec@example.com SIP/2.0\n"
            "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\n"
            "From: <sip:a@example.com>;tag=1\n"
            "To: <sip:rec@example.com>\n"
            "Call-ID: x\n"
            "CSeq: 1 INVITE\n"
            "c: Application/SDP; charset=utf-8\n"
            "Content-Length: 4\n"
            "\n"
        )
        + b"v=0\r\nEXTRA GARBAGE"
    )
    msg = parse_message(raw)
    assert msg.body == b"v=0\r"
    assert msg.content_type == "application/sdp"


def test_no_content_length_on_udp_takes_rest() -> None:
    raw = crlf(
        "MESSAGE sip:rec@example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\n"
        "From: <sip:a@example.com>;tag=1\n"
        "To: <sip:rec@example.com>\n"
        "Call-ID: x\n"
        "CSeq: 1 MESSAGE\n"
        "\n"
        "hello"
    )
    assert parse_message(raw).body == b"hello"


def test_extension_method_tokens() -> None:
    raw = crlf(
        "X-Custom.Method! sip:rec@example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\n"
        "From: <sip:a@example.com>;tag=1\n"
        "To: <sip:rec@example.com>\n"
        "Call-ID: x\n"
        "CSeq: 1 X-Custom.Method!\n"
        "\n"
    )
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    assert msg.method == "X-Custom.Method!"


REQUEST_TEMPLATE = (
    "INVITE sip:rec@example.com SIP/2.0\n"
    "Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\n"
    "From: <sip:a@example.com>;tag=1\n"
    "To: <sip:rec@example.com>\n"
    "Call-ID: x\n"
    "CSeq: 1 INVITE\n"
    "Content-Length: 0\n"
    "\n"
)


def _mutate(old: str, new: str) -> bytes:
    assert old in REQUEST_TEMPLATE
    return crlf(REQUEST_TEMPLATE.replace(old, new))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"\x00\x01\x02\xff\xfe garbage",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0",  # no headers at all
        _mutate("CSeq: 1 INVITE", "CSeq: abc INVITE"),
        _mutate("CSeq: 1 INVITE", "CSeq: 2147483648 INVITE"),
        _mutate("CSeq: 1 INVITE", "CSeq: 99999999999 INVITE"),
        _mutate("CSeq: 1 INVITE", "CSeq: 1 BYE"),
        _mutate("CSeq: 1 INVITE", "CSeq: 1"),
        _mutate("Content-Length: 0", "Content-Length: 999999"),
        _mutate("Content-Length: 0", "Content-Length: -1"),
        _mutate("Content-Length: 0", "Content-Length: 0\nContent-Length: 5"),
        _mutate("Call-ID: x\n", ""),
        _mutate("Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1\n", ""),
        _mutate("From: <sip:a@example.com>;tag=1\n", ""),
        _mutate("To: <sip:rec@example.com>\n", ""),
        _mutate("CSeq: 1 INVITE\n", ""),
        _mutate("From: <sip:a@example.com>;tag=1", "From: <sip:a@example.com"),
        _mutate("Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1", "Via: garbage"),
        _mutate("INVITE sip:rec@example.com SIP/2.0", "INVITE sip:rec@example.com SIP/3.0"),
        _mutate("INVITE sip:rec@example.com SIP/2.0", "INVITE  sip:rec@example.com SIP/2.0"),
        _mutate("INVITE sip:rec@example.com SIP/2.0", "INV(ITE sip:rec@example.com SIP/2.0"),
        _mutate("INVITE sip:rec@example.com SIP/2.0", "INVITE sip:rec@ex ample SIP/2.0"),
        _mutate("Call-ID: x", "Call ID: x"),
        _mutate("Call-ID: x", "Call-ID x"),
        _mutate("Call-ID: x", "Call-ID: \x01x"),
        _mutate(
            "INVITE sip:rec@example.com SIP/2.0\n", "INVITE sip:rec@example.com SIP/2.0\n foo\n"
        ),
        crlf("SIP/2.0 99 Too Low\nContent-Length: 0\n\n"),
        crlf("SIP/2.0 2000 OK\nContent-Length: 0\n\n"),
        crlf("SIP/2.0 200 OK\nCSeq: x INVITE\n\n"),
        crlf("SIP/2.0 200 OK\nMax-Forwards: 70\nCSeq: 1 INVITE\n\n").replace(b"OK", b"O\x00K"),
        _mutate("Call-ID: x", "Call-ID: ") + b"",
        b"INVITE sip:a@b SIP/2.0\r\nSubject: \xc3\x28\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
    ],
)
def test_malformed_messages_raise_parse_error(raw: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(raw)


def test_bad_max_forwards_rejected() -> None:
    with pytest.raises(SipParseError):
        parse_message(_mutate("Call-ID: x", "Call-ID: x\nMax-Forwards: lots"))


def test_utf8_display_name_is_fine() -> None:
    raw = _mutate(
        "From: <sip:a@example.com>;tag=1", 'From: "Jürgen Müller" <sip:a@example.com>;tag=1'
    )
    msg = parse_message(raw)
    assert msg.from_.display == "Jürgen Müller"


def test_random_garbage_never_escapes_as_other_exception() -> None:
    rng = random.Random(1234)
    base = crlf(REQUEST_TEMPLATE)
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        with contextlib.suppress(SipParseError):
            parse_message(bytes(data))


# ---------------------------------------------------------------- serialize / build_response


def test_serialize_round_trip_and_content_length() -> None:
    msg = parse_message(CUCM_INVITE)
    msg.body = b"v=0\r\n"
    msg.headers.set("Content-Type", "application/sdp")
    wire = serialize(msg)
    assert wire.count(b"Content-Length:") == 1
    assert b"\r\nContent-Length: 5\r\n\r\nv=0\r\n" in wire
    again = parse_message(wire)
    assert isinstance(again, SipRequest)
    assert again.body == b"v=0\r\n"
    assert again.headers.get_all("Supported") == msg.headers.get_all("Supported")
    assert again.from_ == msg.from_


def test_serialize_response_start_line() -> None:
    wire = serialize(SipResponse(200, "OK"))
    assert wire == b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_build_response_copies_headers() -> None:
    raw = crlf(
        "INVITE sip:rec@example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1, SIP/2.0/UDP p2;branch=z9hG4bK2\n"
        "Via: SIP/2.0/UDP ua.example.com;branch=z9hG4bK3;received=192.0.2.9\n"
        "Max-Forwards: 69\n"
        'From: "A" <sip:a@example.com>;tag=1\n'
        "To: <sip:rec@example.com>\n"
        "Call-ID: x@y\n"
        "CSeq: 5 INVITE\n"
        "Timestamp: 54.2\n"
        "Content-Length: 0\n"
        "\n"
    )
    req = parse_message(raw)
    assert isinstance(req, SipRequest)

    trying = build_response(req, 100)
    assert trying.reason == "Trying"
    assert trying.headers.get("Timestamp") == "54.2"
    assert [v.branch for v in trying.vias] == ["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]
    assert trying.headers.get("Max-Forwards") is None

    ok = build_response(
        req,
        200,
        to_tag="rec42",
        extra_headers=[("Contact", "<sip:rec@10.0.0.50>")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    assert ok.reason == "OK"
    assert ok.to.tag == "rec42"
    assert ok.from_.tag == "1"
    assert ok.call_id == "x@y"
    assert ok.cseq == (5, "INVITE")
    assert ok.headers.get("Timestamp") is None
    assert ok.content_type == "application/sdp"
    assert ok.headers.get("Contact") == "<sip:rec@10.0.0.50>"
    parsed = parse_message(serialize(ok))
    assert isinstance(parsed, SipResponse)
    assert parsed.body == b"v=0\r\n"
    assert [n for n, _ in parsed.headers.items()][:5] == ["Via", "Via", "From", "To", "Call-ID"]


def test_build_response_keeps_existing_to_tag_and_reason_table() -> None:
    req = parse_message(_mutate("To: <sip:rec@example.com>", "To: <sip:rec@example.com>;tag=old"))
    assert isinstance(req, SipRequest)
    resp = build_response(req, 481, to_tag="new")
    assert resp.to.tag == "old"
    assert resp.reason == "Call/Transaction Does Not Exist"
    assert build_response(req, 488).reason == "Not Acceptable Here"
    assert build_response(req, 499).reason == "Unknown"
    assert build_response(req, 603, "Decline").reason == "Decline"
    with pytest.raises(ValueError):
        build_response(req, 700)
    with pytest.raises(ValueError):
        build_response(req, 200, "OK\r\nX: y")


# ---------------------------------------------------------------- StreamFramer


def _msg_with_body(body: bytes, *, compact: bool = False) -> bytes:
    cl = "l" if compact else "Content-Length"
    return crlf(REQUEST_TEMPLATE.replace("Content-Length: 0", f"{cl}: {len(body)}")) + body


def test_framer_split_across_feeds() -> None:
    one = _msg_with_body(b"v=0\r\no=x\r\n")
    two = _msg_with_body(b"hello", compact=True)
    stream = b"\r\n\r\n" + one + b"\r\n" + two
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(0, len(stream), 7):
        out.extend(framer.feed(stream[i : i + 7]))
    assert out == [one, two]
    assert framer.buffered == 0
    assert parse_message(out[1]).body == b"hello"


def test_framer_many_in_one_feed_and_keepalive_only() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    assert framer.feed(b"\r\n") == []
    one = _msg_with_body(b"")
    assert framer.feed(one + one + one[:10]) == [one, one]
    assert framer.buffered == 10
    assert framer.feed(one[10:]) == [one]


def test_framer_lf_only_headers() -> None:
    msg = REQUEST_TEMPLATE.replace("Content-Length: 0", "Content-Length: 3").encode() + b"abc"
    assert StreamFramer().feed(msg) == [msg]


def test_framer_requires_content_length() -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError):
        framer.feed(crlf(REQUEST_TEMPLATE.replace("Content-Length: 0\n", "")))


@pytest.mark.parametrize("value", ["abc", "-1", "99999999999", "70000"])
def test_framer_rejects_bad_or_huge_content_length(value: str) -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError):
        framer.feed(crlf(REQUEST_TEMPLATE.replace("Content-Length: 0", f"Content-Length: {value}")))


def test_framer_rejects_endless_headers() -> None:
    framer = StreamFramer()
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\n")
    with pytest.raises(SipParseError):
        for _ in range(2000):
            framer.feed(b"X-Junk: " + b"a" * 60 + b"\r\n")


# ---------------------------------------------------------------- caches and indexes


def test_header_lookups_follow_every_change() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("To", "<sip:b@c>")])
    assert headers.get("v") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    headers.add("v", "SIP/2.0/UDP b;branch=z9hG4bK2")
    assert headers.get_lines("Via")[1] == "SIP/2.0/UDP b;branch=z9hG4bK2"
    headers.set("To", "<sip:d@e>")
    assert headers.get("t") == "<sip:d@e>"
    headers.remove("Via")
    assert headers.get_lines("Via") == [] and headers.get("Via") is None
    lines = headers.get_lines("To")
    lines.append("x")  # a caller's list is its own
    assert headers.get_lines("To") == ["<sip:d@e>"]


def test_params_differing_in_case_only_keep_the_last_spelling_and_value() -> None:
    addr = parse_name_addr("<sip:a@b;Lr;x=1;X=2;x=3>;tag=1;TAG=2")
    assert dict(addr.uri.params) == {"Lr": None, "x": "3"}
    assert dict(addr.params) == {"TAG": "2"} and addr.tag == "2"


def test_a_remembered_address_is_a_fresh_copy_for_each_message() -> None:
    text = "<sip:1001@10.1.1.1;x-nearend;x-refci=42>;tag=abc"
    first = parse_name_addr_cached(text)
    first.params["tag"] = "changed"
    first.uri.params["x-refci"] = "0"
    second = parse_name_addr_cached(text)
    assert second == parse_name_addr(text)
    assert second.tag == "abc" and second.uri.params["x-refci"] == "42"
