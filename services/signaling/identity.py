"""Who a SIP call says it is from: number, display name, privacy (pure functions).

People search recordings by number and name, so this module decides, in one
place, which header wins and what counts as a number:

* the name and number come from ``P-Asserted-Identity`` (RFC 3325), then
  ``Remote-Party-ID`` (draft-ietf-sip-privacy-04, still sent by CUCM), then
  ``From``; the first header carrying a display name gives the name, the first
  carrying a user part gives the number;
* ``Privacy: id`` (RFC 3325), ``header`` or ``user`` (RFC 3323), or RPID's
  ``privacy=full|name|uri`` keep both name and number (the recorder belongs to
  the company whose PBX sent them) but mark them private;
* a URI without a user part (``sip:10.0.0.1:5060``) has no number: its host is
  kept apart, never stored as if it were one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from contracts.v1.events import Participant
from services.signaling.sip.message import Headers, NameAddr, SipParseError, parse_name_addr

__all__ = [
    "PRIVACY_HIDING",
    "Identity",
    "IdentitySource",
    "address_identity",
    "caller_identity",
    "host_of",
    "is_ip_address",
    "is_private",
    "number_of",
    "participant",
    "split_header_list",
]

IdentitySource = Literal["pai", "rpid", "from", "none"]

# Privacy header values (RFC 3323 4.2, RFC 3325 9.3) asking to hide the identity.
PRIVACY_HIDING = frozenset({"id", "user", "header", "critical"})
# Remote-Party-ID privacy values that hide something (draft-ietf-sip-privacy-04 6).
_RPID_HIDING = frozenset({"full", "name", "uri", "ipaddr"})
_SCHEMES = ("sips:", "sip:", "tel:")
MAX_IDENTITY_LENGTH = 256


@dataclass(frozen=True)
class Identity:
    """A party as the signalling presented it."""

    number: str | None = None
    name: str | None = None
    host: str | None = None
    uri: str | None = None
    private: bool = False
    source: IdentitySource = "none"


def _strip_scheme(aor: str) -> tuple[str, str | None]:
    text = aor.strip().strip("<>").strip()
    lower = text.lower()
    for scheme in _SCHEMES:
        if lower.startswith(scheme):
            return text[len(scheme) :], scheme[:-1]
    return text, None


def number_of(aor: str | None) -> str | None:
    """The user part of a SIP/TEL address: what people search recordings by.

    Accepts addresses without a scheme (Ribbon sends ``2145551000@10.0.0.1``).
    An address without a user part (``sip:10.1.1.1:5060``) has no number: None,
    so that ``host:port`` is never stored as one.
    """
    if not aor:
        return None
    text, scheme = _strip_scheme(aor)
    if scheme == "tel":
        number = text.split(";", 1)[0].strip()
    elif "@" in text:
        number = text.rsplit("@", 1)[0].split(";", 1)[0].split(":", 1)[0].strip()
    elif scheme is not None:
        return None  # "sip:host[:port]": a URI without a user part
    else:
        # A bare token without dots or colons is a number some SBCs send alone.
        bare = text.split(";", 1)[0].strip()
        if not bare or ":" in bare or "." in bare or bare.startswith("["):
            return None
        number = bare
    if not number or len(number) > MAX_IDENTITY_LENGTH:
        return None
    return number


def host_of(aor: str | None) -> str | None:
    """The host[:port] of a SIP address (None for tel: and bare numbers)."""
    if not aor:
        return None
    text, scheme = _strip_scheme(aor)
    if scheme == "tel":
        return None
    hostpart = text.rsplit("@", 1)[1] if "@" in text else text
    hostpart = hostpart.split(";", 1)[0].split("?", 1)[0].strip()
    if not hostpart or len(hostpart) > MAX_IDENTITY_LENGTH:
        return None
    if "@" not in text and scheme is None and number_of(aor) is not None:
        return None  # a bare user name, not a host
    return hostpart


def is_ip_address(text: str | None) -> bool:
    """True for an IPv4/IPv6 literal (with or without brackets or a port)."""
    if not text:
        return False
    value = text.strip()
    if value.startswith("["):
        value = value[1:].split("]", 1)[0]
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]  # IPv4 with a port
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def split_header_list(value: str) -> list[str]:
    """Split a comma list, leaving commas inside quotes and <...> alone."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [item for item in out if item]


def is_private(headers: Headers) -> bool:
    """``Privacy: id`` (or user/header/critical) asks to keep the identity private."""
    for value in headers.get_all("Privacy"):
        for token in value.replace(",", ";").split(";"):
            if token.strip().lower() in PRIVACY_HIDING:
                return True
    return False


def _addresses(headers: Headers, name: str) -> list[NameAddr]:
    out: list[NameAddr] = []
    try:
        values = headers.get_all(name)
    except SipParseError:  # e.g. an unterminated quote in a comma-list header
        values = []
    for value in values:
        for item in split_header_list(value):
            try:
                out.append(parse_name_addr(item))
            except SipParseError:
                continue  # a broken identity header must not cost us the call
    return out


def _clean_name(display: str | None) -> str | None:
    if display is None:
        return None
    name = " ".join(display.split())
    if not name or len(name) > MAX_IDENTITY_LENGTH:
        return None
    return name


def _rpid_usable(addr: NameAddr) -> bool:
    # RPID also describes the called party (party=called) in some flows; only the
    # calling party identifies who placed this call.
    party = (addr.params.get("party") or "calling").strip('"').lower()
    return party == "calling"


def _rpid_private(addr: NameAddr) -> bool:
    value = (addr.params.get("privacy") or "off").strip('"').lower()
    return any(v.strip() in _RPID_HIDING for v in value.split(","))


def caller_identity(headers: Headers, from_: NameAddr | None = None) -> Identity:
    """The identity of whoever placed this SIP call: PAI, then RPID, then From.

    ``from_`` defaults to the parsed ``From`` header. Never raises on bad
    identity headers: they are skipped, so a recording is never lost over one.
    """
    froms = _addresses(headers, "From")[:1] if from_ is None else [from_]
    pai = _addresses(headers, "P-Asserted-Identity")
    rpid = [a for a in _addresses(headers, "Remote-Party-ID") if _rpid_usable(a)]
    # Within PAI, a sip: value carries the name more often than a tel: one.
    candidates: list[tuple[IdentitySource, NameAddr]] = [
        *(("pai", a) for a in pai),
        *(("rpid", a) for a in rpid),
        *(("from", a) for a in froms),
    ]
    name: str | None = None
    number: str | None = None
    host: str | None = None
    uri: str | None = None
    source: IdentitySource = "none"
    for origin, addr in candidates:
        text = str(addr.uri)
        if name is None:
            name = _clean_name(addr.display)
            if name is not None and source == "none":
                source = origin
        if number is None:
            number = number_of(text)
            if number is not None:
                uri = text
                host = host_of(text)
                source = origin
        if name is not None and number is not None:
            break
    if number is None and candidates:
        # No user part anywhere: keep where the call came from, apart from the number.
        first = str(candidates[0][1].uri)
        uri = first
        host = host_of(first)
        if source == "none":
            source = candidates[0][0]
    private = is_private(headers) or any(_rpid_private(a) for a in rpid)
    return Identity(number=number, name=name, host=host, uri=uri, private=private, source=source)


def address_identity(addr: NameAddr, source: IdentitySource = "from") -> Identity:
    """The identity one address shows (e.g. the To of a plain SIP call: the callee)."""
    text = str(addr.uri)
    number = number_of(text)
    return Identity(
        number=number,
        name=_clean_name(addr.display),
        host=host_of(text),
        uri=text,
        source=source,
    )


def participant(
    identity: Identity,
    role: Literal["near", "far", "caller", "callee", "other"],
    *,
    channel: int | None = None,
    device: str | None = None,
) -> Participant:
    """The contracts' Participant for an identity: number only when there is a user part."""
    return Participant(
        role=role,
        number=identity.number,
        name=identity.name,
        device=device,
        aor=identity.uri,
        channel=channel,
        private=identity.private,
        host=identity.host if identity.number is None else None,
        identity_source=None if identity.source == "none" else identity.source,
    )
