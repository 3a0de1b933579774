"""SIPREC bodies: multipart splitting and recording metadata (RFC 7866/7865).

Vendors disagree on the metadata dialect (RFC namespace, pre-RFC drafts,
BroadWorks), so the parser matches elements by a normalised local name and
treats anything it does not understand as noise.  What matters downstream
is one question: which SDP label carries whose voice.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Any
from xml.parsers import expat

__all__ = [
    "MAX_METADATA_SIZE",
    "METADATA_NAMESPACES",
    "BodyPart",
    "MetadataError",
    "Participant",
    "RecordingMetadata",
    "StreamInfo",
    "assign_channels",
    "merge_metadata",
    "parse_metadata",
    "split_multipart",
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


class MetadataError(ValueError):
    """Raised for malformed or hostile SIPREC bodies."""


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


def _read_participant(el: ET.Element, into: Participant) -> None:
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
            _append_unique(into.send if key == "send" else into.recv, _text(child))


def parse_metadata(xml: bytes) -> RecordingMetadata:
    """Parse recording metadata in any of the dialects seen in the field."""
    if len(xml) > MAX_METADATA_SIZE:
        raise MetadataError("metadata too large")
    upper = xml.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        raise MetadataError("DOCTYPE/ENTITY declarations are not allowed")
    root = _safe_parse(xml)
    if _key(root) not in ("recording", "recordingmetadata"):
        raise MetadataError(f"unexpected metadata root element: {root.tag[:80]!r}")

    md = RecordingMetadata()
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
        elif key == "participant":
            pid = _attr(el, "participant_id", "id")
            if pid is None:
                raise MetadataError("participant without an id")
            _read_participant(el, participant(pid))
        elif key == "stream":
            stream_id = _attr(el, "stream_id", "id")
            if stream_id is None:
                raise MetadataError("stream without an id")
            labels = _children(el, "label")
            md.streams.append(
                StreamInfo(
                    id=stream_id,
                    label=_text(labels[0]) if labels else "",
                    session_id=_attr(el, "session_id", "session"),
                )
            )
        elif key == "participantstreamassoc":
            pid = _attr(el, "participant_id", "id")
            if pid is None:
                raise MetadataError("participantstreamassoc without participant_id")
            target = participant(pid)
            for child in el:
                child_key = _key(child)
                if child_key in ("send", "recv"):
                    dest = target.send if child_key == "send" else target.recv
                    _append_unique(dest, _text(child))
    return md


def _merge_participant(old: Participant, new: Participant) -> Participant:
    # A partial update may only restate what changed; keep what it omits.
    return Participant(
        id=new.id,
        aors=list(new.aors or old.aors),
        names=list(new.names or old.names),
        send=list(new.send or old.send),
        recv=list(new.recv or old.recv),
    )


def _copy_participant(p: Participant) -> Participant:
    return Participant(p.id, list(p.aors), list(p.names), list(p.send), list(p.recv))


def merge_metadata(old: RecordingMetadata, new: RecordingMetadata) -> RecordingMetadata:
    """Fold a metadata update into the current view (RFC 7865 6.1 datamode)."""
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
        participants=participants,
        streams=streams,
        group_ids=union(old.group_ids, new.group_ids),
        metadata_session_ids=union(old.metadata_session_ids, new.metadata_session_ids),
    )


def _label_sort_key(label: str) -> tuple[int, int, str]:
    return (0, int(label), label) if label.isdigit() else (1, 0, label)


def assign_channels(
    metadata: RecordingMetadata, labels: list[str]
) -> dict[str, tuple[int, Participant | None]]:
    """Map SDP labels to stereo channels: caller left (0), other party right (1).

    The side is decided by who *sends* the stream, never by label value:
    SRCs number labels arbitrarily (the caller's voice is often label 2).
    """
    stream_by_label: dict[str, StreamInfo] = {}
    for stream in metadata.streams:
        if stream.label:
            stream_by_label.setdefault(stream.label, stream)
    sender: dict[str, tuple[int, Participant]] = {}
    for position, p in enumerate(metadata.participants):
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
