"""What to answer: pure decisions about an INVITE, re-INVITE or UPDATE, taken before
any resource is allocated and without any network.

One rule in one place: which offered stream the recorder can receive (`usable`),
which body part is SDP and which is recording metadata (`split_body`,
`is_metadata_type`), which option tags we support, what a CUCM leg or a SIPREC
session records and how its parties map to channels, and the SDP we offer or answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from contracts.v1.events import RecordingMetadata
from contracts.v1.rpc import RtpSource, StreamSpec

from . import cucm, identity, sdp, siprec
from .cucm import CucmLeg, CucmLegError, parse_cucm_leg, session_key
from .recorder import Stream
from .sip.message import SipParseError, SipRequest, parse_name_addr_cached

log = structlog.get_logger()

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO, NOTIFY"
SUPPORTED_TAGS = frozenset({"siprec", "timer"})
MAX_STREAMS = 4

Kind = Literal["cucm", "siprec", "sip"]


class BadRequest(Exception):
    """A request we answer with an error status (and a Warning naming why)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Plan:
    """What an initial INVITE asks us to record, before any resource is taken."""

    kind: Kind
    session_key: str
    numbers: list[str]
    streams: list[StreamSpec]
    metadata: RecordingMetadata
    offer: sdp.SessionDescription | None
    siprec_metadata: siprec.RecordingMetadata | None = None


# ---- bodies -------------------------------------------------------------------------


def is_metadata_type(content_type: str | None) -> bool:
    """Recording metadata (RFC 7865), under its registered or its legacy type."""
    return siprec.is_metadata_content_type(content_type)


def split_body(request: SipRequest) -> tuple[sdp.SessionDescription | None, bytes | None]:
    """The SDP (parsed) and the recording metadata (raw XML) a request carries, in
    any order and beside parts we do not use (CUBE's application/gtd)."""
    if not request.body:
        return None, None
    try:
        parts = siprec.split_siprec_body(request.headers.get("Content-Type"), request.body)
    except siprec.UnsupportedBody as exc:
        raise BadRequest(415, str(exc)) from exc
    except siprec.MetadataError as exc:
        raise BadRequest(400, f"bad multipart body: {exc}") from exc
    if parts.ignored:
        log.info("body_parts_ignored", types=parts.ignored)
    sdp_bytes, metadata = parts.sdp, parts.metadata
    offer = None
    if sdp_bytes is not None:
        try:
            offer = sdp.parse_sdp(sdp_bytes.decode("utf-8"))
        except (sdp.SdpError, UnicodeDecodeError) as exc:
            raise BadRequest(400, f"bad SDP: {exc}") from exc
    return offer, metadata


# ---- streams ------------------------------------------------------------------------


def usable(media: sdp.MediaDescription) -> bool:
    """The one rule for a stream the recorder takes: audio, not refused (port 0), plain
    RTP (no SRTP keys are negotiated here), with a codec we decode. Anything else is
    answered with port 0; an offer with no usable stream gets 488."""
    return (media.port != 0 and media.proto.upper() == "RTP/AVP"
            and sdp.choose_codecs(media) is not None)


def media_for(
    stream_id: str, sdp_doc: sdp.SessionDescription
) -> sdp.MediaDescription | None:
    """The m-line of a stream: `m<i>` is the i-th; a CUCM leg's one stream the first usable."""
    if stream_id.startswith("m") and stream_id[1:].isdigit():
        index = int(stream_id[1:])
        return sdp_doc.media[index] if index < len(sdp_doc.media) else None
    found = [m for m in sdp_doc.media if usable(m)]
    return found[0] if found else None


def rtp_source(sdp_doc: sdp.SessionDescription, media: sdp.MediaDescription) -> RtpSource:
    """The PBX's c= address and m= port for a stream, as written (capture interprets)."""
    return RtpSource(address=media.connection_address or sdp_doc.connection_address,
                     port=media.port)


def with_sources(
    specs: list[StreamSpec], offer: sdp.SessionDescription | None
) -> list[StreamSpec]:
    """Streams to allocate, each with the RTP source the PBX's offer names, so capture
    admits only that source from the moment the port opens."""
    if offer is None:
        return specs
    out = []
    for spec in specs:
        media = media_for(spec.stream_id, offer)
        out.append(spec if media is None
                   else spec.model_copy(update={"source": rtp_source(offer, media)}))
    return out


def on_hold(description: sdp.SessionDescription) -> bool:
    """The PBX will send us nothing on any audio stream (hold, pause; RFC 3264 8.4)."""
    audio = [m for m in description.media if m.media == "audio"]
    if not audio:
        return False
    for media in audio:
        address = media.connection_address or description.connection_address or ""
        held = (media.port == 0 or media.direction in ("inactive", "recvonly")
                or address in ("0.0.0.0", "::"))
        if not held:
            return False
    return True


def answer_sdp(offer: sdp.SessionDescription, streams: list[Stream], address: str,
               session_id: int, version: int) -> str:
    """Our answer: each stream on its port, every other m-line refused (port 0)."""
    by_index = {int(s.stream_id[1:]): s.port for s in streams
                if s.stream_id.startswith("m") and s.stream_id[1:].isdigit()}
    if not by_index and streams:  # a CUCM leg that came with an offer: its one stream
        first = next((i for i, m in enumerate(offer.media) if usable(m)), None)
        if first is not None:
            by_index = {first: streams[0].port}
    ports = [by_index.get(i, 0) if usable(m) else 0 for i, m in enumerate(offer.media)]
    return sdp.recorder_answer(offer, ports, address, session_id, version)


def offer_sdp(streams: list[Stream], address: str, session_id: int, version: int) -> str:
    """Our offer for a delayed-offer INVITE: everything we decode, recvonly; one m-line
    per stream, each with its SIPREC label (RFC 7866 delayed offer)."""
    if len(streams) == 1 and streams[0].label in (None, "0", "near", "far"):
        return sdp.recorder_offer(streams[0].port, address, session_id, version)
    codecs = sdp.SUPPORTED_CODECS
    media = [sdp.MediaSpec(
        port=s.port,
        payload_types=[c.payload_type for c in codecs],
        rtpmap={c.payload_type: (c.name, c.clock_rate) for c in codecs},
        fmtp={c.payload_type: c.fmtp for c in codecs if c.fmtp is not None},
        direction="recvonly",
        label=s.label,
    ) for s in streams]
    return sdp.render_sdp(session_id=session_id, version=version, address=address,
                          media=media)


# ---- option tags ----------------------------------------------------------------------


def option_tags(request: SipRequest, header: str) -> set[str]:
    tags: set[str] = set()
    for value in request.headers.get_all(header):
        tags.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tags


def requires(request: SipRequest, tag: str) -> bool:
    return tag in option_tags(request, "Require")


def supports(request: SipRequest, tag: str) -> bool:
    return tag in option_tags(request, "Supported") | option_tags(request, "Require")


def unsupported_required(request: SipRequest) -> list[str]:
    return sorted(option_tags(request, "Require") - SUPPORTED_TAGS)


def contact_uri(request: SipRequest) -> str:
    """Where in-dialog requests to the PBX go: its Contact, else its From URI."""
    contact = request.headers.get("Contact")
    if contact:
        try:
            return str(parse_name_addr_cached(contact).uri)
        except SipParseError:
            pass
    return str(request.from_.uri)


# ---- what an INVITE records -----------------------------------------------------------


def cisco_guid(request: SipRequest) -> str | None:
    """The Cisco-Guid header: one id per call across CUCM and CUBE, linking the
    segments of a call that CUCM restarted recording for (new x-refci)."""
    return cucm.cisco_guid(request.headers)


def plan_invite(request: SipRequest) -> Plan:
    """What an initial INVITE records, or BadRequest saying how to refuse it."""
    offer, metadata_xml = split_body(request)
    try:
        leg = parse_cucm_leg(request.from_)
    except CucmLegError as exc:
        raise BadRequest(400, f"inconsistent CUCM recording parameters: {exc}") from exc
    if metadata_xml is not None or requires(request, "siprec"):
        if metadata_xml is None:
            raise BadRequest(400, "SIPREC INVITE without recording metadata")
        return _plan_siprec(request, offer, metadata_xml)
    if offer is not None:
        if len(offer.media) > MAX_STREAMS:
            raise BadRequest(488, "too many media streams")
        if not any(usable(m) for m in offer.media):
            raise BadRequest(488, "no usable audio stream in the offer")
    if leg is not None:
        return _plan_cucm(request, leg, offer)
    # A plain INVITE: record its (first two) audio streams, the caller on the left
    # (named by P-Asserted-Identity, Remote-Party-ID, then From).
    caller_id = identity.caller_identity(request.headers, request.from_)
    callee_id = identity.address_identity(request.to)
    caller, callee = caller_id.number, callee_id.number
    if offer is not None:
        indexes = [i for i, m in enumerate(offer.media) if usable(m)][:2]
        streams = [StreamSpec(stream_id=f"m{i}", channel=min(n, 1), label=str(i))
                   for n, i in enumerate(indexes)]
    else:
        streams = [StreamSpec(stream_id="m0", channel=0, label="0")]
    key = f"sip:{request.call_id}"
    return Plan(
        kind="sip",
        session_key=key,
        numbers=[n for n in (caller, callee) if n],
        streams=streams,
        metadata=RecordingMetadata(
            source="sip",
            session_key=key,
            sip_call_ids=[request.call_id],
            participants=[identity.participant(caller_id, "caller", channel=0),
                          identity.participant(callee_id, "callee", channel=1)],
            recorded_extension=caller,
            user_agent=request.headers.get("User-Agent"),
            cisco_guid=cisco_guid(request),
        ),
        offer=offer,
    )


def _plan_cucm(request: SipRequest, leg: CucmLeg, offer: sdp.SessionDescription | None
               ) -> Plan:
    near, far = cucm.cucm_participants(
        leg, identity.caller_identity(request.headers, request.from_))
    side = leg.side
    key = session_key(leg)
    return Plan(
        kind="cucm",
        session_key=key,
        numbers=[leg.near_addr] if leg.near_addr else [],
        streams=[StreamSpec(stream_id=side, channel=0 if side == "near" else 1, label=side)],
        metadata=RecordingMetadata(
            source="cucm",
            session_key=key,
            refci=leg.refci,
            cluster_id=leg.cluster_id,
            sip_call_ids=[request.call_id],
            participants=[near, far],
            recorded_extension=leg.near_addr,
            user_agent=request.headers.get("User-Agent"),
            cisco_guid=cisco_guid(request),
        ),
        offer=offer,
    )


def cucm_update(metadata: RecordingMetadata, request: SipRequest) -> RecordingMetadata | None:
    """The parties an in-dialog CUCM request (UPDATE, re-INVITE after a transfer) names
    in its From parameters, when they differ from what is recorded; else None."""
    try:
        leg = parse_cucm_leg(request.from_)
    except (CucmLegError, SipParseError):
        return None
    if leg is None:
        return None
    near, far = cucm.cucm_participants(leg)
    by_role = {p.role: p for p in metadata.participants}
    changed = False
    participants = []
    for new in (near, far):
        old = by_role.get(new.role)
        if old is None or (new.number, new.device) != (old.number, old.device):
            if new.number is None and new.device is None and old is not None:
                participants.append(old)  # nothing said about this party
                continue
            participants.append(new)
            changed = True
        else:
            participants.append(old)
    if not changed:
        return None
    return metadata.model_copy(update={"participants": participants})


def _plan_siprec(
    request: SipRequest, offer: sdp.SessionDescription | None, metadata_xml: bytes
) -> Plan:
    try:
        meta = siprec.parse_metadata(metadata_xml)
    except siprec.MetadataError as exc:
        raise BadRequest(400, f"bad recording metadata: {exc}") from exc
    if offer is None:
        # RFC 7866 delayed offer: we offer, one stream per metadata stream.
        labels = siprec.stream_labels(meta)
        if not labels:
            raise BadRequest(488, "SIPREC INVITE without SDP and without streams in "
                                  "its metadata")
        if len(labels) > MAX_STREAMS:
            raise BadRequest(488, "too many media streams")
        indexes = list(range(len(labels)))
    else:
        if len(offer.media) > MAX_STREAMS:
            raise BadRequest(488, "too many media streams")
        indexes = [i for i, m in enumerate(offer.media) if usable(m)]
        if not indexes:
            raise BadRequest(488, "no usable audio stream in the offer")
        labels = [offer.media[i].label or str(i) for i in indexes]
    channels = siprec.assign_channels(meta, labels)
    streams = [
        StreamSpec(stream_id=f"m{i}", channel=channels[label][0], label=label)
        for i, label in zip(indexes, labels, strict=True)
    ]
    metadata = siprec_metadata(meta, channels, request)
    return Plan(
        kind="siprec",
        session_key=metadata.session_key,
        numbers=metadata.numbers(),
        streams=streams,
        metadata=metadata,
        offer=offer,
        siprec_metadata=meta,
    )


def siprec_metadata(
    meta: siprec.RecordingMetadata,
    channels: dict[str, tuple[int, siprec.Participant | None]],
    request: SipRequest | None,
    previous: RecordingMetadata | None = None,
) -> RecordingMetadata:
    """The contract's view of SIPREC metadata: parties caller first (placeholders left
    out, never host:port as a number), each with its channel."""
    participants = siprec.contract_participants(meta, channels)
    call_ids = siprec.recorded_call_ids(meta)
    if previous is not None:
        return previous.model_copy(update={
            "participants": participants,
            "siprec_session_ids": meta.session_ids or previous.siprec_session_ids,
            "recorded_call_ids": call_ids or previous.recorded_call_ids,
            "call_started_at": meta.started_at or previous.call_started_at,
        })
    assert request is not None
    return RecordingMetadata(
        source="siprec",
        session_key=f"siprec:{request.call_id}",
        siprec_session_ids=meta.session_ids,
        sip_call_ids=[request.call_id],
        participants=participants,
        recorded_extension=participants[0].number if participants else None,
        user_agent=request.headers.get("User-Agent"),
        cisco_guid=cisco_guid(request),
        recorded_call_ids=call_ids,
        call_started_at=meta.started_at,
    )
