"""SIPREC bodies: multipart splitting and recording metadata (RFC 7866/7865).

Vendors disagree on the metadata dialect (RFC namespace, pre-RFC drafts,
BroadWorks), so the parser matches elements by a normalised local name and
treats anything it does not understand as noise.  What matters downstream
is one question: which SDP label carries whose voice.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from xml.parsers import expat

from contracts.v1 import events as contract
from services.signaling.identity import host_of, number_of

__all__ = [
    "MAX_METADATA_SIZE",
    "METADATA_CONTENT_TYPES",
    "METADATA_NAMESPACES",
    "PLACEHOLDER_AORS",
    "BodyPart",
    "CallData",
    "Dialect",
    "MetadataError",
    "Participant",
    "RecordingMetadata",
    "SiprecBody",
    "StreamInfo",
    "UnsupportedBody",
    "assign_channels",
    "contract_participants",
    "is_metadata_content_type",
    "is_placeholder",
    "merge_metadata",
    "ordered_participants",
    "parse_metadata",
    "parse_start_time",
    "recorded_call_ids",
    "split_multipart",
    "split_siprec_body",
    "stream_labels",
]

MAX_METADATA_SIZE = 64 * 1024

METADATA_NAMESPACES = frozenset(
    {
        "urn:ietf:params:xml:ns:recording:1",  # RFC 7865
        "urn:ietf:params:xml:ns:recording",  # pre-RFC drafts (Sonus, older SBCs)
        "urn:ietf:params:xml:ns:siprec",  # BroadWorks / Webex
        "",  # no namespace at all
    }
)


# RFC 7866 registers application/rs-metadata+xml; the RFC 7865/7866 examples
# themselves, Metaswitch and Procomm send the pre-registration application/rs-metadata.
METADATA_CONTENT_TYPES = frozenset({"application/rs-metadata+xml", "application/rs-metadata"})

# Parties an SRC puts in the metadata before it knows the real ones (Avaya SBCE
# sends ASBCE@avaya.com in the INVITE and the real parties in a later UPDATE).
PLACEHOLDER_AORS = frozenset({"asbce@avaya.com"})

Dialect = Literal["rfc7865", "draft", "broadworks", "bare"]
_DIALECTS: dict[str, Dialect] = {
    "urn:ietf:params:xml:ns:recording:1": "rfc7865",
    "urn:ietf:params:xml:ns:recording": "draft",
    "urn:ietf:params:xml:ns:siprec": "broadworks",
    "": "bare",
}


class MetadataError(ValueError):
    """Raised for malformed or hostile SIPREC bodies."""


class UnsupportedBody(MetadataError):
    """A body type the recorder does not take (answer 415, not 400)."""


def is_metadata_content_type(content_type: str | None) -> bool:
    """The one rule for "is this SIPREC recording metadata": both registered spellings.

    Takes a media type or a whole Content-Type header value (parameters ignored).
    """
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in METADATA_CONTENT_TYPES


# --------------------------------------------------------------------------
# multipart/mixed
# --------------------------------------------------------------------------


@dataclass
class BodyPart:
    """One MIME part of a SIPREC INVITE body."""

    content_type: str
    headers: dict[str, str]
    body: bytes


def _parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split ``type/subtype; a=b; c="d"`` into media type and lower-cased params."""
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i = 0
    n = len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        start = i
        while i < n and rest[i] not in "=;":
            i += 1
        name = rest[start:i].strip().lower()
        if i >= n or rest[i] == ";":
            continue  # flag without value: not meaningful for Content-Type
        i += 1  # skip '='
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            if i >= n:
                raise MetadataError("unterminated quoted parameter in Content-Type")
            i += 1
            val = "".join(chars)
        else:
            start = i
            while i < n and rest[i] != ";":
                i += 1
            val = rest[start:i].strip()
        if name:
            params[name] = val
    return media.strip().lower(), params


def _parse_part(raw: bytes) -> BodyPart:
    # The part starts right after the delimiter line's line break.
    if raw.startswith(b"\r\n"):
        raw = raw[2:]
    elif raw.startswith(b"\n"):
        raw = raw[1:]
    m = re.search(rb"\r?\n\r?\n", raw)
    if raw.startswith(b"\r\n"):  # no part headers at all
        head, body = b"", raw[2:]
    elif raw.startswith(b"\n"):
        head, body = b"", raw[1:]
    elif m is None:
        head, body = raw, b""
    else:
        head, body = raw[: m.start()], raw[m.end() :]
    try:
        head_text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MetadataError("MIME part headers are not valid UTF-8") from exc
    headers: dict[str, str] = {}
    last: str | None = None
    for line in head_text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if line[0] in " \t" and last is not None:
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MetadataError(f"bad MIME part header: {line[:60]!r}")
        last = name.strip().lower()
        headers[last] = value.strip()
    content_type = _parse_content_type(headers.get("content-type", "text/plain"))[0]
    return BodyPart(content_type=content_type, headers=headers, body=body)


def split_multipart(content_type_header: str, body: bytes) -> list[BodyPart]:
    """Split a multipart body into parts (RFC 2046 5.1).

    Tolerates a missing close delimiter because some SBCs truncate it; the
    last part then runs to the end of the body.
    """
    media, params = _parse_content_type(content_type_header)
    if not media.startswith("multipart/"):
        raise MetadataError(f"not a multipart body: {media!r}")
    boundary = params.get("boundary")
    if not boundary or len(boundary) > 200:
        raise MetadataError("multipart body without a usable boundary")
    delim = re.compile(
        rb"(?:^|\r?\n)--" + re.escape(boundary.encode("utf-8")) + rb"(--)?[ \t]*(?=\r?\n|$)"
    )
    matches = list(delim.finditer(body))
    if not matches:
        raise MetadataError("boundary not found in body")
    parts: list[BodyPart] = []
    for index, m in enumerate(matches):
        if m.group(1):  # close delimiter: epilogue follows
            break
        if index + 1 < len(matches):
            raw = body[m.end() : matches[index + 1].start()]
        else:
            raw = body[m.end() :].rstrip(b"\r\n")
        parts.append(_parse_part(raw))
    return parts


@dataclass
class SiprecBody:
    """The parts of an INVITE/re-INVITE/UPDATE body the recorder uses."""

    sdp: bytes | None = None
    metadata: bytes | None = None
    ignored: list[str] = field(default_factory=list)  # media types of other parts


def _is_metadata_part(part: BodyPart) -> bool:
    if is_metadata_content_type(part.content_type):
        return True
    # A recording-session disposition on an XML part is metadata whatever the label.
    disposition = part.headers.get("content-disposition", "").split(";", 1)[0].strip().lower()
    return disposition == "recording-session" and part.content_type.endswith("xml")


def split_siprec_body(content_type_header: str | None, body: bytes) -> SiprecBody:
    """Find the SDP and the recording metadata in a body, in any order.

    Handles a bare SDP, bare metadata (a metadata-only UPDATE, RFC 7866 6.1.2),
    and multipart/mixed with the parts in any order plus parts we do not use
    (Cisco CUBE's application/gtd, ``handling=required``). Raises
    UnsupportedBody for another body type, MetadataError for a broken multipart.
    """
    if not body:
        return SiprecBody()
    media = (content_type_header or "").split(";", 1)[0].strip().lower()
    if media == "application/sdp":
        return SiprecBody(sdp=body)
    if is_metadata_content_type(media):
        return SiprecBody(metadata=body)
    if not media.startswith("multipart/"):
        raise UnsupportedBody(f"unsupported body type {media[:60] or 'none'!r}")
    result = SiprecBody()
    for part in split_multipart(content_type_header or "", body):
        if part.content_type == "application/sdp" and result.sdp is None:
            result.sdp = part.body
        elif _is_metadata_part(part) and result.metadata is None:
            result.metadata = part.body
        else:
            result.ignored.append(part.content_type[:60])
    return result


# --------------------------------------------------------------------------
# Metadata model
# --------------------------------------------------------------------------


@dataclass
class Participant:
    """A party to the recorded call and the streams it sends/receives."""

    id: str
    aors: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    send: list[str] = field(default_factory=list)
    recv: list[str] = field(default_factory=list)
    # The SRC marked this party as the caller (Oracle apkt:callingParty, Ribbon
    # callData callingParty); None when it said nothing.
    calling: bool | None = None


@dataclass
class StreamInfo:
    """Ties a metadata stream id to the SDP a=label of an m-line."""

    id: str
    label: str
    session_id: str | None = None


@dataclass
class RecordingMetadata:
    """What the SRC told us about the communication session."""

    datamode: str = "complete"
    session_ids: list[str] = field(default_factory=list)
    start_time: str | None = None
    participants: list[Participant] = field(default_factory=list)
    streams: list[StreamInfo] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)
    metadata_session_ids: list[str] = field(default_factory=list)
    started_at: datetime | None = None
    call_data: CallData | None = None
    # Participants the SRC says have left (participantsessionassoc disassociate-time).
    departed: list[str] = field(default_factory=list)
    # What could not be associated and was skipped (for logs and a counter).
    skipped: list[str] = field(default_factory=list)
    # Labels of streams that had no usable id: not associable, but still streams.
    orphan_labels: list[str] = field(default_factory=list)
    dialect: Dialect = "rfc7865"


@dataclass
class CallData:
    """The recorded call's own identifiers as some SRCs copy them (Ribbon <callData>)."""

    call_id: str | None = None
    from_: str | None = None
    to: str | None = None
    gcid: str | None = None
    calling_party: str | None = None


def metadata_to_dict(md: RecordingMetadata) -> dict[str, Any]:
    """JSON-ready form of parsed metadata (signaling persists it with its sessions)."""
    data = dataclasses.asdict(md)
    data["started_at"] = md.started_at.isoformat() if md.started_at else None
    return data


def metadata_from_dict(data: dict[str, Any]) -> RecordingMetadata:
    """The inverse of metadata_to_dict."""
    started = data.get("started_at")
    call_data = data.get("call_data")
    return RecordingMetadata(**{
        **data,
        "participants": [Participant(**p) for p in data.get("participants", [])],
        "streams": [StreamInfo(**s) for s in data.get("streams", [])],
        "call_data": CallData(**call_data) if call_data else None,
        "started_at": datetime.fromisoformat(started) if started else None,
    })


def parse_start_time(text: str | None) -> datetime | None:
    """An ISO 8601 start time in UTC; None when absent, malformed or implausible.

    Ribbon sends 1970-01-01 when it has no clock value: before 1990 means unknown.
    A time without an offset is taken as UTC.
    """
    if not text:
        return None
    value = text.strip()
    if len(value) > 40:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    if not 1990 <= parsed.year <= 2200:
        return None
    return parsed


def _reject_doctype(*_args: Any) -> None:
    raise MetadataError("DOCTYPE/ENTITY declarations are not allowed")


def _reject_external(*_args: Any) -> int:
    raise MetadataError("external entities are not allowed")


def _safe_parse(xml: bytes) -> ET.Element:
    """Parse XML with expat directly so DTDs (entity bombs, XXE) are refused outright."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _reject_doctype
    parser.EntityDeclHandler = _reject_doctype
    parser.UnparsedEntityDeclHandler = _reject_doctype
    parser.ExternalEntityRefHandler = _reject_external

    def clark(name: str) -> str:
        uri, sep, local = name.rpartition(" ")
        return f"{{{uri}}}{local}" if sep else local

    def start(name: str, attrs: dict[str, str]) -> None:
        builder.start(clark(name), {clark(k): v for k, v in attrs.items()})

    def end(name: str) -> None:
        builder.end(clark(name))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(xml, True)
        return builder.close()
    except expat.ExpatError as exc:
        raise MetadataError(f"malformed metadata XML: {exc}") from exc
    except (ValueError, LookupError, AssertionError) as exc:  # LookupError: bad encoding=
        if isinstance(exc, MetadataError):
            raise
        raise MetadataError(f"malformed metadata XML: {exc}") from exc


def _split_tag(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        uri, _, local = tag[1:].partition("}")
        return uri, local
    return "", tag


def _key(el: ET.Element) -> str | None:
    """Normalised local name, or None for elements from foreign namespaces."""
    uri, local = _split_tag(el.tag)
    if uri not in METADATA_NAMESPACES:
        return None
    return local.lower().replace("-", "").replace("_", "")


def _attr(el: ET.Element, *names: str) -> str | None:
    for name in names:
        value = el.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def _text(el: ET.Element) -> str:
    return "".join(el.itertext()).strip()


def _children(el: ET.Element, key: str) -> list[ET.Element]:
    return [child for child in el if _key(child) == key]


def _append_unique(target: list[str], value: str) -> None:
    if value and value not in target:
        target.append(value)


def _local(el: ET.Element) -> str:
    """Normalised local name whatever the namespace (for vendor extension data)."""
    return _split_tag(el.tag)[1].lower().replace("-", "").replace("_", "")


def _flag(text: str) -> bool | None:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    return None


def _read_extension(el: ET.Element, into: Participant) -> None:
    # Oracle/Acme Packet: <extensiondata><apkt:callingParty>true</apkt:callingParty>.
    for sub in el.iter():
        if sub is not el and _local(sub) == "callingparty":
            flag = _flag(_text(sub))
            if flag is not None:
                into.calling = flag
            return  # the first one says it; nested copies would only cost time


def _read_participant(el: ET.Element, into: Participant, skipped: list[str]) -> None:
    for child in el:
        key = _key(child)
        if key == "nameid":
            aor = _attr(child, "aor")
            if aor:
                _append_unique(into.aors, aor)
            for sub in child:
                sub_key = _key(sub)
                if sub_key == "name":
                    _append_unique(into.names, _text(sub))
                elif sub_key == "aor":
                    _append_unique(into.aors, _text(sub))
        elif key == "aor":
            _append_unique(into.aors, _text(child))
        elif key == "name":
            _append_unique(into.names, _text(child))
        elif key in ("send", "recv"):
            _add_stream_ref(into, key, child, skipped)
        elif key == "extensiondata" or (key is None and _local(child) == "extensiondata"):
            _read_extension(child, into)


def _add_stream_ref(into: Participant, key: str, el: ET.Element, skipped: list[str]) -> None:
    stream_id = _text(el)
    if not stream_id:
        skipped.append(f"empty <{key}> for participant {into.id[:40]!r}")
        return
    _append_unique(into.send if key == "send" else into.recv, stream_id)


_CALL_DATA_FIELDS = {
    "callid": "call_id",
    "sipcallid": "call_id",
    "from": "from_",
    "fromhdr": "from_",
    "fromheader": "from_",
    "to": "to",
    "tohdr": "to",
    "toheader": "to",
    "gcid": "gcid",
    "callingparty": "calling_party",
}


def _read_call_data(root: ET.Element) -> CallData | None:
    """Ribbon/Sonus copy the recorded call's From/To/Call-ID into a <callData> element."""
    for el in root.iter():
        if _local(el) != "calldata":
            continue
        data = CallData()
        for child in el:  # the fields are direct children; no descent into nested junk
            name = _CALL_DATA_FIELDS.get(_local(child))
            text = _text(child) if name else ""
            if name and text and len(text) <= 512 and getattr(data, name) is None:
                setattr(data, name, text)
        return data
    return None


def _caller_first(participants: list[Participant]) -> list[Participant]:
    """Stable order with the party the SRC marked as calling first."""
    return sorted(participants, key=lambda p: 0 if p.calling else 1)


def parse_metadata(xml: bytes) -> RecordingMetadata:
    """Parse recording metadata in any of the dialects seen in the field.

    Refuses only what is not metadata at all (bad XML, DTDs, a foreign root).
    Elements that cannot be associated (an empty ``stream_id``, a participant
    without an id, an empty ``<send>``) are skipped and listed in ``skipped``,
    so one vendor's quirk never costs the whole recording.
    """
    if len(xml) > MAX_METADATA_SIZE:
        raise MetadataError("metadata too large")
    upper = xml.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        raise MetadataError("DOCTYPE/ENTITY declarations are not allowed")
    root = _safe_parse(xml)
    if _key(root) not in ("recording", "recordingmetadata"):
        raise MetadataError(f"unexpected metadata root element: {root.tag[:80]!r}")

    md = RecordingMetadata(dialect=_DIALECTS.get(_split_tag(root.tag)[0], "rfc7865"))
    by_id: dict[str, Participant] = {}

    def participant(pid: str) -> Participant:
        if pid not in by_id:
            by_id[pid] = Participant(pid)
            md.participants.append(by_id[pid])
        return by_id[pid]

    for el in root:
        key = _key(el)
        if key == "datamode":
            mode = _text(el).lower()
            if mode not in ("complete", "partial"):
                raise MetadataError(f"bad datamode: {mode[:20]!r}")
            md.datamode = mode
        elif key == "group":
            gid = _attr(el, "group_id", "id")
            if gid:
                _append_unique(md.group_ids, gid)
        elif key == "session":
            sid = _attr(el, "session_id", "id")
            if sid:
                _append_unique(md.metadata_session_ids, sid)
            for child in el:
                child_key = _key(child)
                if child_key == "sipsessionid":
                    _append_unique(md.session_ids, _text(child))
                elif child_key == "starttime" and md.start_time is None:
                    md.start_time = _text(child) or None
                    md.started_at = parse_start_time(md.start_time)
        elif key == "participant":
            pid = _attr(el, "participant_id", "id")
            if pid is None:
                md.skipped.append("participant without an id")
                continue
            _read_participant(el, participant(pid), md.skipped)
        elif key == "stream":
            stream_id = _attr(el, "stream_id", "id")
            labels = _children(el, "label")
            label = _text(labels[0]) if labels else ""
            if stream_id is None:
                md.skipped.append(f"stream without an id (label {label[:20]!r})")
                if label:
                    _append_unique(md.orphan_labels, label)
                continue
            md.streams.append(
                StreamInfo(id=stream_id, label=label, session_id=_attr(el, "session_id", "session"))
            )
        elif key == "participantstreamassoc":
            pid = _attr(el, "participant_id", "id")
            if pid is None:
                md.skipped.append("participantstreamassoc without a participant_id")
                continue
            target = participant(pid)
            for child in el:
                child_key = _key(child)
                if child_key in ("send", "recv"):
                    _add_stream_ref(target, child_key, child, md.skipped)
        elif key == "participantsessionassoc":
            pid = _attr(el, "participant_id", "id")
            if pid and _children(el, "disassociatetime"):
                _append_unique(md.departed, pid)
    md.call_data = _read_call_data(root)
    if md.call_data is not None and md.call_data.calling_party:
        _mark_calling(md.participants, md.call_data.calling_party)
    md.participants = _caller_first(md.participants)
    return md


def _mark_calling(participants: list[Participant], calling_party: str) -> None:
    # Ribbon names the caller by number in callData; mark the party with that number.
    if any(p.calling is not None for p in participants):
        return
    wanted = number_of(calling_party) or calling_party
    for p in participants:
        if any(number_of(aor) == wanted for aor in p.aors):
            p.calling = True
            return


def is_placeholder(p: Participant) -> bool:
    """A stand-in party the SRC replaces later (Avaya SBCE's ASBCE@avaya.com)."""
    if not p.aors:
        return False
    for aor in p.aors:
        text = aor.strip().strip("<>").lower()
        for scheme in ("sip:", "sips:"):
            text = text.removeprefix(scheme)
        if text.split(";", 1)[0] not in PLACEHOLDER_AORS:
            return False
    return True


def ordered_participants(md: RecordingMetadata) -> list[Participant]:
    """The real parties, caller first (placeholders left out): caller/callee order."""
    return _caller_first([p for p in md.participants if not is_placeholder(p)])


def _merge_participant(old: Participant, new: Participant) -> Participant:
    # A partial update may only restate what changed; keep what it omits.
    return Participant(
        id=new.id,
        aors=list(new.aors or old.aors),
        names=list(new.names or old.names),
        send=list(new.send or old.send),
        recv=list(new.recv or old.recv),
        calling=new.calling if new.calling is not None else old.calling,
    )


def _copy_participant(p: Participant) -> Participant:
    return Participant(p.id, list(p.aors), list(p.names), list(p.send), list(p.recv), p.calling)


def merge_metadata(old: RecordingMetadata, new: RecordingMetadata) -> RecordingMetadata:
    """Fold a metadata update into the current view (RFC 7865 6.1 datamode).

    ``complete`` replaces everything. ``partial`` restates only what changed:
    participants and streams are merged by id, parties that left
    (disassociate-time) are dropped, and placeholder parties (Avaya SBCE) give
    way as soon as a real party is known.
    """
    if new.datamode == "complete":
        return new
    participants = [_copy_participant(p) for p in old.participants]
    index = {p.id: i for i, p in enumerate(participants)}
    for p in new.participants:
        if p.id in index:
            participants[index[p.id]] = _merge_participant(participants[index[p.id]], p)
        else:
            index[p.id] = len(participants)
            participants.append(_copy_participant(p))
    departed = set(new.departed)
    participants = [p for p in participants if p.id not in departed]
    if any(not is_placeholder(p) for p in participants):
        participants = [p for p in participants if not is_placeholder(p)]
    streams = list(old.streams)
    stream_index = {s.id: i for i, s in enumerate(streams)}
    for s in new.streams:
        if s.id in stream_index:
            prev = streams[stream_index[s.id]]
            streams[stream_index[s.id]] = replace(
                s, label=s.label or prev.label, session_id=s.session_id or prev.session_id
            )
        else:
            stream_index[s.id] = len(streams)
            streams.append(s)

    def union(a: list[str], b: list[str]) -> list[str]:
        out = list(a)
        for item in b:
            _append_unique(out, item)
        return out

    return RecordingMetadata(
        datamode=old.datamode,
        session_ids=union(old.session_ids, new.session_ids),
        start_time=old.start_time or new.start_time,
        participants=_caller_first(participants),
        streams=streams,
        group_ids=union(old.group_ids, new.group_ids),
        metadata_session_ids=union(old.metadata_session_ids, new.metadata_session_ids),
        started_at=old.started_at or new.started_at,
        call_data=new.call_data or old.call_data,
        departed=[],
        skipped=list(new.skipped),
        orphan_labels=[
            label for label in union(old.orphan_labels, new.orphan_labels)
            if label not in {s.label for s in streams}
        ],
        dialect=new.dialect,
    )


def _label_sort_key(label: str) -> tuple[int, int, str]:
    return (0, int(label), label) if label.isdigit() and len(label) < 20 else (1, 0, label)


def assign_channels(
    metadata: RecordingMetadata, labels: list[str]
) -> dict[str, tuple[int, Participant | None]]:
    """Map SDP labels to stereo channels: caller left (0), other party right (1).

    The side is decided by who *sends* the stream, never by label value:
    SRCs number labels arbitrarily (the caller's voice is often label 2). The
    caller is the party the SRC marked as calling, else the first listed;
    placeholder parties are ignored, so their streams fall back to label order.
    """
    stream_by_label: dict[str, StreamInfo] = {}
    for stream in metadata.streams:
        if stream.label:
            stream_by_label.setdefault(stream.label, stream)
    sender: dict[str, tuple[int, Participant]] = {}
    for position, p in enumerate(ordered_participants(metadata)):
        channel = 0 if position == 0 else 1
        for stream_id in p.send:
            sender.setdefault(stream_id, (channel, p))

    result: dict[str, tuple[int, Participant | None]] = {}
    unassigned: list[str] = []
    for label in labels:
        info = stream_by_label.get(label)
        if info is not None and info.id in sender:
            result[label] = sender[info.id]
        else:
            unassigned.append(label)

    used = {channel for channel, _ in result.values()}
    free = [c for c in (0, 1) if c not in used] or [0, 1]
    for i, label in enumerate(sorted(dict.fromkeys(unassigned), key=_label_sort_key)):
        result[label] = (free[i % len(free)], None)
    return {label: result[label] for label in labels}


def _best_aor(p: Participant) -> tuple[str | None, str | None]:
    """(aor, number): the first address with a user part, else the first address."""
    for aor in p.aors:
        number = number_of(aor)
        if number is not None:
            return aor, number
    return (p.aors[0] if p.aors else None), None


def contract_participants(
    md: RecordingMetadata,
    channels: dict[str, tuple[int, Participant | None]] | None = None,
) -> list[contract.Participant]:
    """The parties as the contracts store them: caller, callee, then others.

    Placeholders are left out; a number is a user part, never ``host:port``
    (the host is kept apart); ``channels`` (from assign_channels) gives each
    party the channel carrying their voice.
    """
    channel_of: dict[str, int] = {}
    for channel, party in (channels or {}).values():
        if party is not None:
            channel_of.setdefault(party.id, channel)
    out: list[contract.Participant] = []
    for position, p in enumerate(ordered_participants(md)):
        role: Literal["caller", "callee", "other"] = (
            "caller" if position == 0 else "callee" if position == 1 else "other"
        )
        aor, number = _best_aor(p)
        out.append(
            contract.Participant(
                role=role,
                number=number,
                name=next((n for n in p.names if n), None),
                aor=aor,
                host=host_of(aor) if number is None else None,
                channel=channel_of.get(p.id),
                identity_source="metadata",
            )
        )
    return out


def recorded_call_ids(md: RecordingMetadata) -> list[str]:
    """The recorded call's own Call-IDs as the SRC reported them (Ribbon callData)."""
    if md.call_data is not None and md.call_data.call_id:
        return [md.call_data.call_id]
    return []


def stream_labels(md: RecordingMetadata) -> list[str]:
    """Every stream label the metadata names, once each (streams first, then orphans).

    For a SIPREC delayed offer (INVITE without SDP, RFC 7866): the SRS offers
    one m-line per label, ``a=label`` set, in this order. A stream whose id was
    unusable (Avaya's stream_id="") still gets its m-line.
    """
    labels = [s.label for s in md.streams if s.label] + md.orphan_labels
    return list(dict.fromkeys(labels))
