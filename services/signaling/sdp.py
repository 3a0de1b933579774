"""SDP (RFC 4566) parsing/rendering and the recorder's side of offer/answer.

A recorder only ever receives media, so the negotiation rules here are
narrower than a general RFC 3264 engine: pick one codec we can decode per
stream, keep DTMF, answer ``recvonly`` and refuse everything else with
port 0 so the m-line count still matches the offer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "DIRECTIONS",
    "MAX_SDP_SIZE",
    "SUPPORTED_CODECS",
    "Codec",
    "MediaDescription",
    "MediaSpec",
    "SdpError",
    "SessionDescription",
    "choose_codecs",
    "parse_sdp",
    "payload_codecs",
    "recorder_answer",
    "recorder_offer",
    "render_sdp",
]

MAX_SDP_SIZE = 64 * 1024
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """Raised for malformed SDP or an impossible answer request."""


@dataclass(frozen=True)
class Codec:
    """A codec we can decode, with the values we advertise for it."""

    name: str
    payload_type: int
    clock_rate: int
    fmtp: str | None = None


# Order is our offer preference.  G722's RTP clock is 8000 although it
# samples at 16 kHz (RFC 3551 4.5.2 keeps the historical mistake).
SUPPORTED_CODECS: tuple[Codec, ...] = (
    Codec("PCMU", 0, 8000),
    Codec("PCMA", 8, 8000),
    Codec("G722", 9, 8000),
    Codec("G729", 18, 8000, "annexb=no"),
    Codec("telephone-event", 101, 8000, "0-16"),
)
_AUDIO_CODECS = {c.name for c in SUPPORTED_CODECS if c.name != "telephone-event"}
_BY_NAME = {c.name: c for c in SUPPORTED_CODECS}

# RFC 3551 static audio payload types: pt -> (name, clock, channels).
_STATIC_PT: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1),
    7: ("LPC", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    10: ("L16", 44100, 2),
    11: ("L16", 44100, 1),
    12: ("QCELP", 8000, 1),
    13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1),
    15: ("G728", 8000, 1),
    16: ("DVI4", 11025, 1),
    17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1),
}


@dataclass
class MediaDescription:
    """One m= section with the attributes the recorder cares about pulled out."""

    media: str
    port: int
    proto: str
    formats: list[int] = field(default_factory=list)
    raw_formats: list[str] = field(default_factory=list)
    rtpmap: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    direction: str = "sendrecv"
    label: str | None = None
    connection_address: str | None = None
    crypto: list[str] = field(default_factory=list)
    ptime: int | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass
class SessionDescription:
    """A parsed SDP body."""

    origin_username: str = "-"
    origin_session_id: str = "0"
    origin_version: str = "0"
    origin_address: str = ""
    session_name: str = "-"
    connection_address: str | None = None
    direction: str | None = None
    media: list[MediaDescription] = field(default_factory=list)


_LINE_RE = re.compile(r"([a-z])=(.*)")
_PORT_RE = re.compile(r"([0-9]{1,5})(?:/([0-9]{1,5}))?")
_RTPMAP_RE = re.compile(r"([0-9]{1,3})\s+([^/\s]+)/([0-9]{1,7})(?:/([0-9]{1,2}))?\s*")
_TOKEN_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~/-]+")
_SAFE_VALUE_RE = re.compile(r"[^\x00-\x1f\x7f]*")


def _parse_connection(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad c= line: {value[:80]!r}")
    # Multicast addresses may carry /ttl[/count]; only the address matters here.
    return parts[2].split("/", 1)[0]


def _parse_media_line(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"bad m= line: {value[:80]!r}")
    media, port_text, proto, *fmts = parts
    m = _PORT_RE.fullmatch(port_text)
    if m is None or int(m.group(1)) > 65535:
        raise SdpError(f"bad media port: {port_text[:20]!r}")
    md = MediaDescription(media=media.lower(), port=int(m.group(1)), proto=proto, raw_formats=fmts)
    if "RTP" in proto.upper():
        for fmt in fmts:
            if not fmt.isdigit() or len(fmt) > 3 or int(fmt) > 127:
                raise SdpError(f"bad RTP payload type: {fmt[:10]!r}")
            md.formats.append(int(fmt))
    else:
        md.formats = [int(f) for f in fmts if f.isdigit() and len(f) <= 3]
    return md


def _apply_media_attribute(md: MediaDescription, name: str, value: str | None) -> None:
    if name in DIRECTIONS and value is None:
        md.direction = name
    elif name == "rtpmap" and value is not None:
        m = _RTPMAP_RE.fullmatch(value)
        if m is None or int(m.group(1)) > 127:
            raise SdpError(f"bad rtpmap: {value[:80]!r}")
        channels = int(m.group(4)) if m.group(4) else 1
        md.rtpmap[int(m.group(1))] = (m.group(2), int(m.group(3)), channels)
    elif name == "fmtp" and value is not None:
        pt, _, params = value.partition(" ")
        if not pt.isdigit() or len(pt) > 3:
            raise SdpError(f"bad fmtp: {value[:80]!r}")
        md.fmtp[int(pt)] = params.strip()
    elif name == "label" and value is not None:
        md.label = value.strip()
    elif name == "crypto" and value is not None:
        md.crypto.append(value)
    elif name == "ptime" and value is not None:
        text = value.strip()
        # Some devices send fractional ptime ("20.0"); only the integer part matters.
        whole = text.split(".", 1)[0]
        if not whole.isdigit() or len(whole) > 5:
            raise SdpError(f"bad ptime: {text[:20]!r}")
        md.ptime = int(whole)
    else:
        md.attributes.append((name, value))


def parse_sdp(text: str) -> SessionDescription:
    """Parse an SDP body, keeping unknown lines out of the way rather than failing."""
    if len(text) > MAX_SDP_SIZE:
        raise SdpError("SDP too large")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("SDP must start with v=0")
    sd = SessionDescription()
    session_direction: str | None = None
    current: MediaDescription | None = None
    media_connection: dict[int, str] = {}
    explicit_direction: set[int] = set()
    for line in lines[1:]:
        m = _LINE_RE.fullmatch(line)
        if m is None:
            raise SdpError(f"malformed SDP line: {line[:80]!r}")
        kind, value = m.group(1), m.group(2)
        if _SAFE_VALUE_RE.fullmatch(value) is None:
            raise SdpError("control characters in SDP")
        if kind == "m":
            current = _parse_media_line(value)
            sd.media.append(current)
        elif kind == "c":
            address = _parse_connection(value)
            if current is None:
                sd.connection_address = address
            else:
                media_connection[len(sd.media) - 1] = address
        elif kind == "a":
            name, colon, attr_value = value.partition(":")
            attr: str | None = attr_value if colon else None
            if current is not None:
                _apply_media_attribute(current, name, attr)
                if name in DIRECTIONS:
                    explicit_direction.add(len(sd.media) - 1)
            elif name in DIRECTIONS and attr is None:
                session_direction = name
        elif current is not None:
            continue  # i=, b=, k= ... inside a media section: not needed
        elif kind == "o":
            parts = value.split()
            if len(parts) != 6:
                raise SdpError(f"bad o= line: {value[:80]!r}")
            sd.origin_username, sd.origin_session_id, sd.origin_version = parts[:3]
            sd.origin_address = parts[5]
        elif kind == "s":
            sd.session_name = value
        elif kind == "v":
            raise SdpError("duplicate v= line")
    if not sd.media:
        raise SdpError("SDP has no m= line")
    sd.direction = session_direction
    for index, md in enumerate(sd.media):
        md.connection_address = media_connection.get(index, sd.connection_address)
        if index not in explicit_direction and session_direction is not None:
            md.direction = session_direction
    return sd


def _canonical_codec_name(encoding: str) -> str:
    upper = encoding.upper()
    if upper == "TELEPHONE-EVENT":
        return "telephone-event"
    return upper


def payload_codecs(md: MediaDescription) -> dict[int, str]:
    """Map each offered payload type to a canonical codec name.

    Static payload types need no rtpmap (RFC 3551), and case differs between
    vendors, so callers should never look at raw encoding names.
    """
    out: dict[int, str] = {}
    for pt in md.formats:
        if pt in md.rtpmap:
            out[pt] = _canonical_codec_name(md.rtpmap[pt][0])
        elif pt in _STATIC_PT:
            out[pt] = _STATIC_PT[pt][0]
    return out


def _clock_and_channels(md: MediaDescription, pt: int) -> tuple[int, int]:
    if pt in md.rtpmap:
        _, clock, channels = md.rtpmap[pt]
        return clock, channels
    _, clock, channels = _STATIC_PT[pt]
    return clock, channels


def choose_codecs(md: MediaDescription) -> list[int] | None:
    """Pick payload types for answering: the offerer's favourite codec we decode plus DTMF.

    Honouring the offer's order avoids a transcoding step upstream; the
    telephone-event type is kept so DTMF can be recorded or detected.
    """
    if md.media != "audio":
        return None
    names = payload_codecs(md)
    audio: int | None = None
    dtmf: int | None = None
    for pt in md.formats:
        name = names.get(pt)
        if name is None:
            continue
        clock, channels = _clock_and_channels(md, pt)
        if audio is None and name in _AUDIO_CODECS:
            if clock == _BY_NAME[name].clock_rate and channels == 1:
                audio = pt
        elif dtmf is None and name == "telephone-event" and clock == 8000:
            dtmf = pt
    if audio is None:
        return None
    return [audio] if dtmf is None else [audio, dtmf]


@dataclass
class MediaSpec:
    """What to put in one m= section of an SDP we generate."""

    port: int
    payload_types: list[int]
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    direction: str | None = "recvonly"
    label: str | None = None
    proto: str = "RTP/AVP"
    media: str = "audio"
    raw_formats: list[str] | None = None


def _check_value(value: str, what: str) -> None:
    if not value or any(ch in value for ch in "\r\n\x00") or value != value.strip():
        raise SdpError(f"bad {what}: {value[:40]!r}")


def _check_token(value: str, what: str) -> None:
    if _TOKEN_RE.fullmatch(value) is None:
        raise SdpError(f"bad {what}: {value[:40]!r}")


def render_sdp(
    *,
    session_id: int,
    version: int,
    address: str,
    media: list[MediaSpec],
    username: str = "callrec",
) -> str:
    """Render an SDP body; validates inputs so nothing can smuggle extra lines."""
    _check_token(username, "username")
    _check_value(address, "address")
    if " " in address:
        raise SdpError(f"bad address: {address[:40]!r}")
    if session_id < 0 or version < 0:
        raise SdpError("session id and version must be non-negative")
    addrtype = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o={username} {session_id} {version} IN {addrtype} {address}",
        "s=-",
        f"c=IN {addrtype} {address}",
        "t=0 0",
    ]
    for spec in media:
        _check_token(spec.media, "media type")
        _check_token(spec.proto, "proto")
        if not 0 <= spec.port <= 65535:
            raise SdpError(f"bad port: {spec.port}")
        if spec.raw_formats is not None:
            for fmt in spec.raw_formats:
                _check_value(fmt, "format")
                if " " in fmt or "\t" in fmt:
                    raise SdpError(f"bad format: {fmt[:20]!r}")
            formats = list(spec.raw_formats)
        else:
            for pt in spec.payload_types:
                if not 0 <= pt <= 127:
                    raise SdpError(f"bad payload type: {pt}")
            formats = [str(pt) for pt in spec.payload_types]
        if not formats:
            raise SdpError("m= line needs at least one format")
        lines.append(f"m={spec.media} {spec.port} {spec.proto} {' '.join(formats)}")
        for pt in spec.payload_types:
            if pt in spec.rtpmap:
                name, clock = spec.rtpmap[pt]
                _check_token(name, "encoding name")
                lines.append(f"a=rtpmap:{pt} {name}/{clock}")
            if pt in spec.fmtp:
                _check_value(spec.fmtp[pt], "fmtp")
                lines.append(f"a=fmtp:{pt} {spec.fmtp[pt]}")
        if spec.label is not None:
            _check_value(spec.label, "label")
            lines.append(f"a=label:{spec.label}")
        if spec.direction is not None:
            if spec.direction not in DIRECTIONS:
                raise SdpError(f"bad direction: {spec.direction!r}")
            lines.append(f"a={spec.direction}")
    return "\r\n".join(lines) + "\r\n"


def recorder_offer(port: int, address: str, session_id: int, version: int) -> str:
    """Offer for a delayed-offer INVITE (CUCM built-in bridge): everything we decode, recvonly."""
    spec = MediaSpec(
        port=port,
        payload_types=[c.payload_type for c in SUPPORTED_CODECS],
        rtpmap={c.payload_type: (c.name, c.clock_rate) for c in SUPPORTED_CODECS},
        fmtp={c.payload_type: c.fmtp for c in SUPPORTED_CODECS if c.fmtp is not None},
        direction="recvonly",
    )
    return render_sdp(session_id=session_id, version=version, address=address, media=[spec])


_ANSWER_DIRECTION = {
    "sendrecv": "recvonly",
    "sendonly": "recvonly",
    "recvonly": "inactive",
    "inactive": "inactive",
}


def _refused(md: MediaDescription) -> MediaSpec:
    # RFC 3264 6: a rejected stream keeps its m-line with port 0 and the
    # offer's formats so the answer still lines up with the offer.
    return MediaSpec(
        port=0,
        payload_types=[],
        direction=None,
        proto=md.proto,
        media=md.media,
        raw_formats=list(md.raw_formats) or ["0"],
    )


def recorder_answer(
    offer: SessionDescription,
    ports: list[int],
    address: str,
    session_id: int,
    version: int,
) -> str:
    """Answer a SIPREC offer, accepting every audio stream we can decode.

    ``ports`` is indexed like ``offer.media`` (one entry per m-line); a port of
    0 refuses that stream (the caller decides: e.g. SRTP profiles, for which the
    recorder negotiates no keys).
    """
    if len(ports) != len(offer.media):
        raise SdpError("need exactly one port per offered m-line")
    specs: list[MediaSpec] = []
    for md, port in zip(offer.media, ports, strict=True):
        # Which streams are taken is the caller's rule (signaling.planning.usable):
        # a port of 0 refuses the stream.
        chosen = choose_codecs(md) if port != 0 and md.port != 0 else None
        if chosen is None:
            specs.append(_refused(md))
            continue
        names = payload_codecs(md)
        rtpmap: dict[int, tuple[str, int]] = {}
        fmtp: dict[int, str] = {}
        for pt in chosen:
            name = names[pt]
            rtpmap[pt] = (name, _clock_and_channels(md, pt)[0])
            ours = _BY_NAME[name].fmtp
            if name == "telephone-event":
                # Echo the events the offerer will send; they are its to choose.
                fmtp[pt] = md.fmtp.get(pt) or "0-16"
            elif ours is not None:
                # For G.729 state annexb=no: silence-suppressed frames complicate decoding.
                fmtp[pt] = ours
        specs.append(
            MediaSpec(
                port=port,
                payload_types=chosen,
                rtpmap=rtpmap,
                fmtp=fmtp,
                direction=_ANSWER_DIRECTION.get(md.direction, "recvonly"),
                label=md.label,
            )
        )
    return render_sdp(session_id=session_id, version=version, address=address, media=specs)
