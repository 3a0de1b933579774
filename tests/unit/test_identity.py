"""Unit tests for services.signaling.identity: which name and number a call carries.

Header forms written from RFC 3325 (P-Asserted-Identity, Privacy: id), RFC 3323
(Privacy values), draft-ietf-sip-privacy-04 (Remote-Party-ID with party/screen/
privacy) and Cisco's "SIP Trunk" chapter of the CUCM System Configuration Guide
(CUCM sends PAI and RPID with display names, Privacy when presentation is
restricted).
"""

from __future__ import annotations

import pytest

from services.signaling.identity import (
    Identity,
    address_identity,
    caller_identity,
    host_of,
    is_ip_address,
    is_private,
    number_of,
    participant,
    split_header_list,
)
from services.signaling.sip.message import Headers, SipRequest, parse_message, parse_name_addr


def _headers(*lines: tuple[str, str]) -> Headers:
    return Headers(lines)


@pytest.mark.parametrize(
    ("aor", "number", "host"),
    [
        ("sip:1001@10.1.1.1", "1001", "10.1.1.1"),
        ("<sip:1001@10.1.1.1:5060;transport=tcp>", "1001", "10.1.1.1:5060"),
        ("sips:alice@example.com", "alice", "example.com"),
        ("SIP:Bob@example.com", "Bob", "example.com"),
        ("tel:+15551234567;phone-context=example.com", "+15551234567", None),
        ("sip:+15551234567;npdi@example.com;user=phone", "+15551234567", "example.com"),
        ("sip:alice:secret@example.com", "alice", "example.com"),
        # Issue 8: a URI without a user part is not a number.
        ("sip:10.1.1.1:5060", None, "10.1.1.1:5060"),
        ("sip:example.com", None, "example.com"),
        ("sip:[2001:db8::1]:5060;transport=udp", None, "[2001:db8::1]:5060"),
        # Ribbon sends addresses without a scheme.
        ("2145551000@10.0.0.1", "2145551000", "10.0.0.1"),
        ("2145551000", "2145551000", None),
        ("10.0.0.1", None, "10.0.0.1"),
        ("sip:@example.com", None, "example.com"),
        ("", None, None),
        (None, None, None),
    ],
)
def test_number_and_host(aor: str | None, number: str | None, host: str | None) -> None:
    assert number_of(aor) == number
    assert host_of(aor) == host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.20.30.40", True),
        ("10.20.30.40:5060", True),
        ("2001:db8::1", True),
        ("[2001:db8::1]", True),
        ("[2001:db8::1]:5060", True),
        ("SEP001122334455", False),
        ("10.20.30", False),
        ("", False),
        (None, False),
    ],
)
def test_is_ip_address(text: str | None, expected: bool) -> None:
    assert is_ip_address(text) is expected


def test_split_header_list_respects_quotes_and_brackets() -> None:
    assert split_header_list('"Doe, Jo" <sip:1@a;x=1,2>, <tel:+1>') == [
        '"Doe, Jo" <sip:1@a;x=1,2>',
        "<tel:+1>",
    ]
    assert split_header_list(' , ') == []


FROM = parse_name_addr('"From Name" <sip:1001@cucm.example.com>;tag=f1')


def test_pai_wins_over_rpid_and_from() -> None:
    headers = _headers(
        ("P-Asserted-Identity", '"PAI Name" <sip:2001@cucm.example.com>'),
        ("Remote-Party-ID", '"RPID Name" <sip:3001@cucm.example.com>;party=calling;screen=yes'),
    )
    assert caller_identity(headers, FROM) == Identity(
        number="2001", name="PAI Name", host="cucm.example.com",
        uri="sip:2001@cucm.example.com", private=False, source="pai",
    )


def test_rpid_wins_over_from_and_called_party_rpid_is_ignored() -> None:
    headers = _headers(
        ("Remote-Party-ID", '"Called" <sip:9999@cucm>;party=called'),
        ("Remote-Party-ID", '"RPID Name" <sip:3001@cucm>;party=calling;privacy=off'),
    )
    ident = caller_identity(headers, FROM)
    assert (ident.name, ident.number, ident.source, ident.private) == (
        "RPID Name", "3001", "rpid", False)


def test_from_is_the_last_resort_and_default() -> None:
    raw = (
        b"INVITE sip:rec@10.0.0.50 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bK1\r\n"
        b'From: "From Name" <sip:1001@cucm.example.com>;tag=f1\r\n'
        b"To: <sip:rec@10.0.0.50>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    ident = caller_identity(msg.headers)
    assert (ident.name, ident.number, ident.source) == ("From Name", "1001", "from")


def test_name_from_a_lower_header_when_the_higher_has_none() -> None:
    # PAI without a display name still gives the number; the name comes from RPID.
    headers = _headers(
        ("P-Asserted-Identity", "<tel:+15550001111>"),
        ("Remote-Party-ID", '"Reception" <sip:100@cucm>;party=calling'),
    )
    ident = caller_identity(headers, FROM)
    assert (ident.number, ident.name) == ("+15550001111", "Reception")


def test_pai_with_two_values_takes_the_named_one() -> None:
    headers = _headers(
        ("P-Asserted-Identity", '"Alice" <sip:alice@example.com>, <tel:+15551230000>'),
    )
    ident = caller_identity(headers, FROM)
    assert (ident.number, ident.name) == ("alice", "Alice")


@pytest.mark.parametrize(
    "privacy",
    [
        [("Privacy", "id")],
        [("Privacy", "header;id")],
        [("Privacy", "user")],
        [("Privacy", "ID")],
        [("Remote-Party-ID", '"Hidden" <sip:4001@cucm>;party=calling;privacy=full')],
        [("Remote-Party-ID", '"Hidden" <sip:4001@cucm>;party=calling;privacy="name"')],
        [("Remote-Party-ID", '"Hidden" <sip:4001@cucm>;privacy=uri')],
    ],
)
def test_privacy_keeps_the_identity_but_marks_it(privacy: list[tuple[str, str]]) -> None:
    headers = _headers(("P-Asserted-Identity", '"Secret Name" <sip:5001@cucm>'), *privacy)
    ident = caller_identity(headers, FROM)
    assert ident.private is True
    assert (ident.name, ident.number) == ("Secret Name", "5001")  # still stored


@pytest.mark.parametrize("value", ["none", "", "off"])
def test_privacy_none_is_not_private(value: str) -> None:
    assert is_private(_headers(("Privacy", value))) is False
    assert caller_identity(_headers(("Privacy", value)), FROM).private is False


def test_a_user_less_uri_keeps_the_host_apart() -> None:
    from_ = parse_name_addr('"Gateway" <sip:10.9.8.7:5060>;tag=1')
    ident = caller_identity(_headers(), from_)
    assert ident.number is None
    assert ident.host == "10.9.8.7:5060"
    assert ident.name == "Gateway"


def test_broken_identity_headers_are_skipped_not_fatal() -> None:
    headers = _headers(
        ("P-Asserted-Identity", '"Broken <sip:'),
        ("Remote-Party-ID", "<mailto:x@y>"),
    )
    ident = caller_identity(headers, FROM)
    assert (ident.name, ident.number, ident.source) == ("From Name", "1001", "from")
    assert caller_identity(_headers()) == Identity()


def test_plain_sip_call_parties_never_store_host_port_as_a_number() -> None:
    # Issue 8: "A plain SIP call whose URI has no user is stored with host:port as its number."
    to = parse_name_addr("<sip:10.0.0.50:5060>")
    callee = participant(address_identity(to), "callee", channel=1)
    assert (callee.number, callee.host, callee.aor, callee.channel) == (
        None, "10.0.0.50:5060", "sip:10.0.0.50:5060", 1)
    headers = _headers(("P-Asserted-Identity", '"Ann" <sip:2001@pbx>'), ("Privacy", "id"))
    caller = participant(caller_identity(headers, FROM), "caller", channel=0)
    assert (caller.number, caller.name, caller.private, caller.host, caller.identity_source) == (
        "2001", "Ann", True, None, "pai")
    assert participant(Identity(), "other").identity_source is None
