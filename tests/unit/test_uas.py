"""Unit tests for services.signaling.uas (RecorderUas), without any network.

A FakeBackend stands in for capture/NATS and a FakeSender collects what the UAS
would put on the wire; raw SIP bytes go in through ``on_message``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import pytest

from callrec.users import UsersProjection
from contracts.v1.events import Participant, RecordingMetadata, UserUpserted
from contracts.v1.rpc import AllocateRequest, QuietStream, UpdateRequest
from services.signaling.recorder import RecordingSession
from services.signaling.sdp import SessionDescription, parse_sdp
from services.signaling.sip.message import SipRequest, SipResponse, parse_message
from services.signaling.sip.transport import Peer
from services.signaling.uas import RecorderUas

PEER = Peer("UDP", "127.0.0.1", 5999)
ADDRESS = "10.0.0.50"
SIP_PORT = 5060

# ---------------------------------------------------------------- fakes


class FakeBackend:
    """Implements the uas.Backend protocol; records every call."""

    def __init__(self) -> None:
        self.users = UsersProjection()
        self.allocations: list[AllocateRequest] = []
        self.updates: list[UpdateRequest] = []
        self.releases: list[tuple[str, str]] = []
        self.finalized: list[tuple[str, datetime, RecordingMetadata]] = []
        self.started: list[RecordingSession] = []
        self.ended: list[tuple[RecordingSession, str]] = []
        self.participant_changes: list[tuple[str, datetime, list[Participant]]] = []
        self.ports: dict[tuple[str, str], int] = {}
        self._next_port = itertools.count(20000, 2)
        self.fail_allocate = False
        self.record_ok: tuple[bool, str | None] = (True, None)
        self.over: str | None = None  # over_capacity's answer
        # When set, allocate waits for it (to test CANCEL while allocating).
        self.gate: asyncio.Event | None = None
        self.allocate_entered = asyncio.Event()
        # Ports capture would hold in reserve (empty: every leg allocates first).
        self.reserve: list[int] = []
        self.capture_id = "capture-1"

    def add_user(self, username: str, extensions: list[str], record: bool = True) -> None:
        self.users.apply(UserUpserted(node_id="test", username=username,
                                      extensions=extensions, record=record))

    def can_record(self) -> tuple[bool, str | None]:
        return self.record_ok

    def over_capacity(self) -> str | None:
        return self.over

    async def allocate(self, request: AllocateRequest) -> dict[str, int]:
        self.allocations.append(request)
        self.allocate_entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_allocate:
            raise RuntimeError("capture down")
        out: dict[str, int] = {}
        for spec in request.streams:
            key = (request.recording_id, spec.stream_id)
            if key not in self.ports:
                self.ports[key] = spec.port if spec.port is not None else next(self._next_port)
            out[spec.stream_id] = self.ports[key]
        return out

    def reserved_ports(self, count: int) -> tuple[str, list[int]] | None:
        if len(self.reserve) < count:
            return None
        taken, self.reserve = self.reserve[:count], self.reserve[count:]
        return self.capture_id, taken

    async def update(self, request: UpdateRequest) -> None:
        self.updates.append(request)

    async def release(self, recording_id: str, stream_id: str) -> None:
        self.releases.append((recording_id, stream_id))

    async def finalize(
        self, recording_id: str, ended_at: datetime, metadata: RecordingMetadata
    ) -> None:
        self.finalized.append((recording_id, ended_at, metadata))

    async def recording_started(self, session: RecordingSession) -> None:
        self.started.append(session)

    async def recording_ended(self, session: RecordingSession, reason: str) -> None:
        self.ended.append((session, reason))

    async def participants_changed(self, session: RecordingSession, at: datetime) -> None:
        self.participant_changes.append(
            (session.recording_id, at, list(session.metadata.participants)))

    def quiet_streams(self) -> tuple[float, list[QuietStream]] | None:
        return None


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[Peer, bytes, int | None, bool]] = []
        self.requests: list[SipRequest] = []

    def send_request(self, peer: Peer, data: bytes) -> None:
        msg = parse_message(data)
        assert isinstance(msg, SipRequest)
        self.requests.append(msg)

    def reply(self, peer: Peer, data: bytes, via_port: int | None, rport: bool) -> None:
        self.sent.append((peer, data, via_port, rport))

    def responses(self, call_id: str | None = None, method: str | None = None
                  ) -> list[SipResponse]:
        out = []
        for _, data, _, _ in self.sent:
            msg = parse_message(data)
            assert isinstance(msg, SipResponse)
            if call_id is not None and msg.call_id != call_id:
                continue
            if method is not None and msg.cseq[1] != method:
                continue
            out.append(msg)
        return out

    def statuses(self, call_id: str | None = None, method: str | None = None) -> list[int]:
        return [r.status for r in self.responses(call_id, method)]

    def clear(self) -> None:
        self.sent.clear()


# ---------------------------------------------------------------- messages

CUCM_PARAMS = (
    "x-refci={refci};x-nearendclusterid=StandAloneCluster;"
    "x-nearenddevice=SEP001122334455;x-nearendaddr={near};x-farendrefci=25165956;"
    "x-farendclusterid=StandAloneCluster;x-farenddevice=SEP665544332211;x-farendaddr={far}"
)


def cucm_from(side: str = "near", *, refci: str = "25165957", near: str = "1001",
              far: str = "2002", tag: str = "abc") -> str:
    user = near if side == "near" else far
    params = CUCM_PARAMS.format(refci=refci, near=near, far=far)
    return f"<sip:{user}@10.1.1.1;x-{side}end;{params}>;tag={tag}"


_branches = itertools.count(1)


def new_branch() -> str:
    return f"z9hG4bK-test-{next(_branches)}"


def sip_request(
    method: str,
    *,
    call_id: str,
    cseq: int = 1,
    branch: str | None = None,
    from_: str = "<sip:1001@10.1.1.1>;tag=abc",
    to: str = "<sip:recorder@10.0.0.50>",
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    cseq_method: str | None = None,
) -> bytes:
    branch = branch or new_branch()
    to_value = to + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:recorder@{ADDRESS}:{SIP_PORT} SIP/2.0",
        f"Via: SIP/2.0/UDP 10.1.1.1:5060;branch={branch};rport",
        "Max-Forwards: 70",
        f"From: {from_}",
        f"To: {to_value}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:1001@10.1.1.1:5060>",
        "User-Agent: Cisco-CUCM14.0",
    ]
    lines += [f"{name}: {value}" for name, value in extra]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


ANSWER_SDP = (
    b"v=0\r\n"
    b"o=CiscoSystemsCCM-SIP 2000 1 IN IP4 10.1.1.20\r\n"
    b"s=SIP Call\r\n"
    b"c=IN IP4 10.1.1.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 24580 RTP/AVP 0 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendonly\r\n"
)

PLAIN_OFFER_SDP = (
    b"v=0\r\n"
    b"o=- 1 1 IN IP4 192.0.2.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 30000 RTP/AVP 8 0 101\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=sendonly\r\n"
)

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

# The caller (first participant, 1001) sends the stream labelled "2".
SIPREC_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>complete</datamode>
  <session session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <sipSessionID>ab30317f1a784dc48ff824d0d3715d86</sipSessionID>
  </session>
  <participant participant_id="P-CALLER">
    <nameID aor="sip:1001@atlanta.example.com"><name>Alice</name></nameID>
  </participant>
  <participant participant_id="P-CALLEE">
    <nameID aor="sip:+15551234567@biloxi.example.com"><name>Bob</name></nameID>
  </participant>
  <stream stream_id="S-ONE" session_id="hVpd7YQgRW2nD22h7q60JQ=="><label>1</label></stream>
  <stream stream_id="S-TWO" session_id="hVpd7YQgRW2nD22h7q60JQ=="><label>2</label></stream>
  <participantstreamassoc participant_id="P-CALLER">
    <send>S-TWO</send><recv>S-ONE</recv>
  </participantstreamassoc>
  <participantstreamassoc participant_id="P-CALLEE">
    <send>S-ONE</send><recv>S-TWO</recv>
  </participantstreamassoc>
</recording>
"""

# A partial update: the callee got a new display name (e.g. after a transfer).
SIPREC_PARTIAL_METADATA = b"""<?xml version="1.0" encoding="UTF-8"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>partial</datamode>
  <participant participant_id="P-CALLEE">
    <nameID aor="sip:+15551234567@biloxi.example.com"><name>Robert</name></nameID>
  </participant>
</recording>
"""

BOUNDARY = "OSS-unique-boundary-42"


def siprec_body(metadata: bytes = SIPREC_METADATA, sdp: bytes = SIPREC_SDP) -> bytes:
    b = BOUNDARY.encode()
    return (
        b"--" + b + b"\r\n"
        b"Content-Type: application/sdp\r\n"
        b"\r\n" + sdp + b"\r\n"
        b"--" + b + b"\r\n"
        b"Content-Type: application/rs-metadata+xml\r\n"
        b"Content-Disposition: recording-session\r\n"
        b"\r\n" + metadata + b"\r\n"
        b"--" + b + b"--\r\n"
    )


SIPREC_HEADERS = [("Require", "siprec"), ("MIME-Version", "1.0")]
SIPREC_CT = f'multipart/mixed;boundary="{BOUNDARY}"'
SIPREC_FROM = "<sip:src@sbc.example.com>;tag=src-tag-1"

# ---------------------------------------------------------------- harness


async def settle(uas: RecorderUas) -> None:
    """Wait until every spawned handler (and the tasks they spawn) has finished."""
    for _ in range(100):
        await asyncio.sleep(0)
        if not uas.tasks:
            await asyncio.sleep(0)
            if not uas.tasks:
                return
        else:
            await asyncio.gather(*list(uas.tasks), return_exceptions=True)
    raise AssertionError("UAS never became idle")


class Harness:
    def __init__(self, *, record_all: bool = False, max_channels: int = 10,
                 **timers: float) -> None:
        self.backend = FakeBackend()
        self.backend.add_user("alice", ["1001"], record=True)
        self.backend.add_user("carol", ["3003"], record=False)
        self.sender = FakeSender()
        self.uas = RecorderUas(backend=self.backend, sender=self.sender, address=ADDRESS,
                               sip_port=SIP_PORT, record_all=record_all,
                               max_channels=max_channels, **timers)

    async def send(self, data: bytes, peer: Peer = PEER) -> None:
        self.uas.on_message(data, peer)
        await settle(self.uas)

    async def invite(self, call_id: str, **kw: Any) -> SipResponse:
        """Send an INVITE and return its final response."""
        await self.send(sip_request("INVITE", call_id=call_id, **kw))
        finals = [r for r in self.sender.responses(call_id, "INVITE") if r.status >= 200]
        assert finals, self.sender.statuses(call_id)
        return finals[-1]

    async def cucm_leg(self, side: str, call_id: str, **kw: Any) -> SipResponse:
        tag = kw.pop("tag", f"tag-{side}")
        extra = kw.pop("extra", ())
        return await self.invite(call_id, from_=cucm_from(side, tag=tag, **kw), extra=extra)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await harness.uas.shutdown()


def to_tag(response: SipResponse) -> str:
    tag = response.to.tag
    assert tag
    return tag


def body_sdp(response: SipResponse) -> SessionDescription:
    assert response.headers.get("Content-Type") == "application/sdp"
    return parse_sdp(response.body.decode())


# ---------------------------------------------------------------- CUCM built-in bridge


async def test_cucm_invite_answered_at_once_gets_no_trying(h: Harness) -> None:
    """RFC 3261 17.2.1: no 100 Trying when the final answer comes within 200 ms."""
    await h.cucm_leg("near", "near-0@10.1.1.1")
    assert h.sender.statuses("near-0@10.1.1.1") == [200]


async def test_cucm_invite_gets_trying_then_offer() -> None:
    h = Harness(trying_after=0.01)
    h.backend.gate = asyncio.Event()  # capture is slow to allocate
    h.uas.on_message(sip_request("INVITE", call_id="near-1@10.1.1.1",
                                 from_=cucm_from("near", tag="tag-near")), PEER)
    await asyncio.wait_for(h.backend.allocate_entered.wait(), 1)
    await asyncio.sleep(0.05)
    assert h.sender.statuses("near-1@10.1.1.1") == [100]
    h.backend.gate.set()
    await settle(h.uas)
    ok = h.sender.responses("near-1@10.1.1.1")[-1]
    assert h.sender.statuses("near-1@10.1.1.1") == [100, 200]
    trying = h.sender.responses("near-1@10.1.1.1")[0]
    assert trying.to.tag is None
    assert ok.headers.get("Content-Type") == "application/sdp"
    contact = ok.headers.get("Contact")
    assert contact is not None and f"{ADDRESS}:{SIP_PORT}" in contact
    assert "+sip.srs" not in contact
    assert to_tag(ok)
    offer = body_sdp(ok)
    assert len(offer.media) == 1
    media = offer.media[0]
    assert media.direction == "recvonly"
    assert media.formats == [0, 8, 9, 18, 101]
    (allocation,) = h.backend.allocations
    (spec,) = allocation.streams
    assert (spec.stream_id, spec.channel) == ("near", 0)
    assert media.port == h.backend.ports[(allocation.recording_id, "near")]
    assert (media.connection_address or offer.connection_address) == ADDRESS
    # No codecs are known before the ACK brings the answer.
    assert h.backend.updates == []
    assert len(h.backend.started) == 1
    await h.uas.shutdown()


async def test_cucm_two_legs_one_recording_full_lifecycle(h: Harness) -> None:
    near_call, far_call = "near-1@10.1.1.1", "far-1@10.1.1.1"
    near_ok = await h.cucm_leg("near", near_call)
    far_ok = await h.cucm_leg("far", far_call)
    assert near_ok.status == far_ok.status == 200

    assert len(h.backend.allocations) == 2
    first, second = h.backend.allocations
    assert first.recording_id == second.recording_id
    assert [(s.stream_id, s.channel) for s in first.streams] == [("near", 0)]
    assert [(s.stream_id, s.channel) for s in second.streams] == [("far", 1)]
    assert len(h.backend.started) == 1
    assert h.uas.active_recording_ids() == [first.recording_id]
    recording_id = first.recording_id

    session = h.uas.sessions[recording_id]
    meta = session.metadata
    assert meta.source == "cucm"
    assert meta.refci == "25165957"
    assert meta.cluster_id == "StandAloneCluster"
    assert meta.sip_call_ids == [near_call, far_call]
    assert meta.recorded_user == "alice"
    assert {(p.role, p.number, p.channel) for p in meta.participants} == {
        ("near", "1001", 0), ("far", "2002", 1)}
    assert body_sdp(near_ok).media[0].port != body_sdp(far_ok).media[0].port

    # ACK with the SDP answer -> payload types pushed to capture.
    await h.send(sip_request("ACK", call_id=near_call, from_=cucm_from("near", tag="tag-near"),
                             to_tag=to_tag(near_ok), body=ANSWER_SDP,
                             content_type="application/sdp"))
    (update,) = h.backend.updates
    assert update.recording_id == recording_id
    assert update.stream_id == "near"
    assert update.payload_codecs == {0: "PCMU", 101: "telephone-event"}
    assert session.legs[near_call].confirmed
    await h.send(sip_request("ACK", call_id=far_call, from_=cucm_from("far", tag="tag-far"),
                             to_tag=to_tag(far_ok), body=ANSWER_SDP,
                             content_type="application/sdp"))
    assert [(u.stream_id, u.payload_codecs) for u in h.backend.updates][1] == (
        "far", {0: "PCMU", 101: "telephone-event"})

    # BYE on the first leg: 200, the recording goes on.
    h.sender.clear()
    await h.send(sip_request("BYE", call_id=near_call, cseq=2,
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(near_ok)))
    assert h.sender.statuses(near_call, "BYE") == [200]
    assert h.backend.finalized == []
    assert h.backend.ended == []
    assert h.uas.active_recording_ids() == [recording_id]

    # BYE on the second leg: finalize once.
    await h.send(sip_request("BYE", call_id=far_call, cseq=2,
                             from_=cucm_from("far", tag="tag-far"), to_tag=to_tag(far_ok)))
    assert h.sender.statuses(far_call, "BYE") == [200]
    assert [f[0] for f in h.backend.finalized] == [recording_id]
    assert h.backend.finalized[0][2].sip_call_ids == [near_call, far_call]
    assert [(s.recording_id, reason) for s, reason in h.backend.ended] == [
        (recording_id, "bye")]
    assert h.uas.active_recording_ids() == []
    assert h.uas.dialogs == {}
    assert h.uas.by_key == {}


async def test_far_leg_first_then_near_leg(h: Harness) -> None:
    await h.cucm_leg("far", "far-2@10.1.1.1")
    await h.cucm_leg("near", "near-2@10.1.1.1")
    first, second = h.backend.allocations
    assert first.recording_id == second.recording_id
    assert [(s.stream_id, s.channel) for s in first.streams] == [("far", 1)]
    assert [(s.stream_id, s.channel) for s in second.streams] == [("near", 0)]
    assert len(h.backend.started) == 1


async def test_new_call_after_finished_one_with_same_refci_is_new_recording(h: Harness) -> None:
    ok = await h.cucm_leg("near", "n1")
    await h.send(sip_request("BYE", call_id="n1", cseq=2, from_=cucm_from("near", tag="tag-near"),
                             to_tag=to_tag(ok)))
    assert len(h.backend.finalized) == 1
    await h.cucm_leg("near", "n2")
    assert h.backend.allocations[0].recording_id != h.backend.allocations[1].recording_id
    assert len(h.backend.started) == 2


async def test_cucm_leg_with_offer_is_answered(h: Harness) -> None:
    ok = await h.invite("n-offer", from_=cucm_from("near"), body=PLAIN_OFFER_SDP,
                        content_type="application/sdp")
    assert ok.status == 200
    answer = body_sdp(ok)
    (media,) = answer.media
    assert media.direction == "recvonly"
    assert media.port == h.backend.ports[(h.backend.allocations[0].recording_id, "near")]
    (update,) = h.backend.updates
    assert update.payload_codecs == {8: "PCMA", 0: "PCMU", 101: "telephone-event"}


# ---------------------------------------------------------------- retransmissions


async def test_retransmitted_invite_is_absorbed(h: Harness) -> None:
    branch = new_branch()
    invite = sip_request("INVITE", call_id="rt-1", branch=branch, from_=cucm_from("near"))
    await h.send(invite)
    assert h.sender.statuses("rt-1") == [200]  # answered at once: no 100 Trying
    first_ok = h.sender.sent[-1][1]
    await h.send(invite)
    assert len(h.backend.allocations) == 1
    assert h.sender.statuses("rt-1") == [200, 200]
    assert h.sender.sent[-1][1] == first_ok  # the cached response, byte for byte
    assert h.uas.counters.retransmissions == 1
    assert len(h.backend.started) == 1


async def test_retransmission_while_allocating_is_absorbed(h: Harness) -> None:
    h.backend.gate = asyncio.Event()
    invite = sip_request("INVITE", call_id="rt-2", branch=new_branch(), from_=cucm_from("near"))
    h.uas.on_message(invite, PEER)
    await h.backend.allocate_entered.wait()
    h.uas.on_message(invite, PEER)
    await asyncio.sleep(0.01)
    h.backend.gate.set()
    await settle(h.uas)
    assert len(h.backend.allocations) == 1
    statuses = h.sender.statuses("rt-2")
    # Absorbed as it was read (RFC 3261 17.2.1, Proceeding: only a provisional answer,
    # if one was sent, goes out again); the 200 then goes out once (Timer G resends it).
    assert statuses.count(200) == 1
    assert h.uas.counters.retransmissions == 1
    assert len({r.to.tag for r in h.sender.responses("rt-2") if r.status == 200}) == 1


async def test_retransmitted_bye_gets_200_without_second_finalize(h: Harness) -> None:
    ok = await h.cucm_leg("near", "rt-bye")
    bye = sip_request("BYE", call_id="rt-bye", cseq=2, from_=cucm_from("near", tag="tag-near"),
                      to_tag=to_tag(ok), branch=new_branch())
    await h.send(bye)
    await h.send(bye)
    assert h.sender.statuses("rt-bye", "BYE") == [200, 200]
    assert len(h.backend.finalized) == 1
    assert len(h.backend.ended) == 1


async def test_200_ok_is_retransmitted_until_ack() -> None:
    h = Harness(t1=0.01)
    ok = await h.cucm_leg("near", "rt-ack")
    await asyncio.sleep(0.1)  # 10 + 20 + 40 ms -> at least 2 retransmissions
    oks = [r for r in h.sender.responses("rt-ack", "INVITE") if r.status == 200]
    assert len(oks) >= 3
    assert all(r.body == ok.body and r.to.tag == ok.to.tag for r in oks)
    await h.send(sip_request("ACK", call_id="rt-ack", from_=cucm_from("near", tag="tag-near"),
                             to_tag=to_tag(ok), body=ANSWER_SDP,
                             content_type="application/sdp"))
    assert h.uas.transactions.pending_timers() == []
    count = len(h.sender.sent)
    await asyncio.sleep(0.1)
    assert len(h.sender.sent) == count
    await h.uas.shutdown()


async def test_error_response_is_retransmitted_until_ack() -> None:
    h = Harness(t1=0.01)
    response = await h.invite("rt-404", from_=cucm_from("near", near="9999"))
    assert response.status == 404
    await asyncio.sleep(0.05)
    assert h.sender.statuses("rt-404", "INVITE").count(404) >= 2
    await h.send(sip_request("ACK", call_id="rt-404", from_=cucm_from("near", near="9999"),
                             to_tag=to_tag(response)))
    count = len(h.sender.sent)
    await asyncio.sleep(0.05)
    assert len(h.sender.sent) == count


async def test_tcp_final_response_is_not_retransmitted() -> None:
    h = Harness(t1=0.01)
    tcp = Peer("TCP", "127.0.0.1", 5999)
    await h.send(sip_request("INVITE", call_id="tcp-1", from_=cucm_from("near")), tcp)
    ok = h.sender.responses("tcp-1")[-1]
    contact = ok.headers.get("Contact")
    assert contact is not None and "transport=tcp" in contact
    await asyncio.sleep(0.05)
    assert h.sender.statuses("tcp-1") == [200]
    await h.uas.shutdown()


# ---------------------------------------------------------------- SIPREC


async def siprec_invite(h: Harness, call_id: str = "siprec-1@192.0.2.10") -> SipResponse:
    return await h.invite(call_id, from_=SIPREC_FROM, body=siprec_body(),
                          content_type=SIPREC_CT, extra=SIPREC_HEADERS)


async def test_siprec_invite_answer_and_channels(h: Harness) -> None:
    ok = await siprec_invite(h)
    assert ok.status == 200
    contact = ok.headers.get("Contact")
    assert contact is not None and "+sip.srs" in contact
    assert "siprec" in (ok.headers.get_all("Require") or [])
    answer = body_sdp(ok)
    assert len(answer.media) == 2
    assert all(m.direction == "recvonly" for m in answer.media)
    ports = [m.port for m in answer.media]
    assert ports[0] != ports[1] and 0 not in ports
    assert [m.label for m in answer.media] == ["1", "2"]

    (allocation,) = h.backend.allocations
    by_label = {s.label: s for s in allocation.streams}
    assert by_label["2"].channel == 0  # the caller sends label 2
    assert by_label["1"].channel == 1
    assert ports == [h.backend.ports[(allocation.recording_id, by_label["1"].stream_id)],
                     h.backend.ports[(allocation.recording_id, by_label["2"].stream_id)]]

    meta = h.uas.sessions[allocation.recording_id].metadata
    assert meta.source == "siprec"
    assert meta.siprec_session_ids == ["ab30317f1a784dc48ff824d0d3715d86"]
    assert [(p.role, p.number, p.name, p.channel) for p in meta.participants] == [
        ("caller", "1001", "Alice", 0),
        ("callee", "+15551234567", "Bob", 1),
    ]
    assert meta.recorded_user == "alice"
    assert allocation.metadata.participants == meta.participants
    # codecs pushed for both streams from the offer
    assert {u.stream_id for u in h.backend.updates} == {s.stream_id for s in allocation.streams}
    assert all(u.payload_codecs == {0: "PCMU", 101: "telephone-event"}
               for u in h.backend.updates)
    assert len(h.backend.started) == 1


async def test_siprec_reinvite_with_partial_metadata(h: Harness) -> None:
    call_id = "siprec-2@192.0.2.10"
    ok = await siprec_invite(h, call_id)
    ports = [m.port for m in body_sdp(ok).media]
    await h.send(sip_request("ACK", call_id=call_id, from_=SIPREC_FROM, to_tag=to_tag(ok)))
    h.backend.updates.clear()
    h.sender.clear()

    await h.send(sip_request("INVITE", call_id=call_id, cseq=2, from_=SIPREC_FROM,
                             to_tag=to_tag(ok), body=siprec_body(SIPREC_PARTIAL_METADATA),
                             content_type=SIPREC_CT, extra=SIPREC_HEADERS))
    assert h.sender.statuses(call_id) == [200]
    reok = h.sender.responses(call_id)[0]
    assert reok.to.tag == ok.to.tag
    assert [m.port for m in body_sdp(reok).media] == ports
    contact = reok.headers.get("Contact")
    assert contact is not None and "+sip.srs" in contact

    meta_updates = [u for u in h.backend.updates if u.metadata is not None]
    assert len(meta_updates) == 1
    new_meta = meta_updates[0].metadata
    assert new_meta is not None
    assert [(p.role, p.number, p.name, p.channel) for p in new_meta.participants] == [
        ("caller", "1001", "Alice", 0),
        ("callee", "+15551234567", "Robert", 1),
    ]
    recording_id = h.backend.allocations[0].recording_id
    assert h.uas.sessions[recording_id].metadata == new_meta
    assert len(h.backend.allocations) == 1
    assert h.backend.finalized == []

    # BYE ends the single-dialog recording; finalize gets the updated metadata.
    await h.send(sip_request("BYE", call_id=call_id, cseq=3, from_=SIPREC_FROM,
                             to_tag=to_tag(ok)))
    assert [f[0] for f in h.backend.finalized] == [recording_id]
    assert h.backend.finalized[0][2].participants[1].name == "Robert"


async def test_siprec_without_metadata_is_400(h: Harness) -> None:
    response = await h.invite("siprec-3", from_=SIPREC_FROM, body=SIPREC_SDP,
                              content_type="application/sdp", extra=[("Require", "siprec")])
    assert response.status == 400
    assert h.backend.allocations == []


SIPREC_ANSWER_SDP = SIPREC_SDP.replace(b"RTP/AVP 0 101", b"RTP/AVP 8 101").replace(
    b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:8 PCMA/8000")


@pytest.mark.parametrize("metadata_type", ["application/rs-metadata+xml",
                                           "application/rs-metadata"])
async def test_siprec_delayed_offer_offers_the_metadata_streams(
    h: Harness, metadata_type: str
) -> None:
    """RFC 7866: an SRC may send its INVITE with metadata and no SDP; we offer one
    recvonly m=audio per metadata stream, labelled, and take the answer from the ACK."""
    b = BOUNDARY.encode()
    body = (b"--" + b + b"\r\nContent-Type: " + metadata_type.encode() + b"\r\n\r\n"
            + SIPREC_METADATA + b"\r\n--" + b + b"--\r\n")
    ok = await h.invite("siprec-4", from_=SIPREC_FROM, body=body,
                        content_type=SIPREC_CT, extra=SIPREC_HEADERS)
    assert ok.status == 200
    offer = body_sdp(ok)
    assert [m.label for m in offer.media] == ["1", "2"]
    assert all(m.direction == "recvonly" and m.port > 0 for m in offer.media)
    assert all(m.formats == [0, 8, 9, 18, 101] for m in offer.media)
    (allocation,) = h.backend.allocations
    # Label 2 is sent by the caller (first participant): left channel.
    assert [(s.stream_id, s.label, s.channel) for s in allocation.streams] == [
        ("m0", "1", 1), ("m1", "2", 0)]
    assert h.backend.updates == []
    await h.send(sip_request("ACK", call_id="siprec-4", from_=SIPREC_FROM, to_tag=to_tag(ok),
                             body=SIPREC_ANSWER_SDP, content_type="application/sdp"))
    by_stream = {u.stream_id: u for u in h.backend.updates}
    assert set(by_stream) == {"m0", "m1"}
    m0, m1 = by_stream["m0"], by_stream["m1"]
    assert m0.payload_codecs == {8: "PCMA", 101: "telephone-event"}
    assert m0.source is not None and m1.source is not None
    assert (m0.source.address, m0.source.port) == ("192.0.2.10", 20000)
    assert (m1.source.address, m1.source.port) == ("192.0.2.10", 20002)
    (_, leg), = h.uas.dialogs.values()
    assert leg.confirmed and not leg.offer_pending


async def test_siprec_delayed_offer_without_streams_is_488(h: Harness) -> None:
    no_streams = SIPREC_METADATA.replace(b"<label>1</label>", b"").replace(
        b"<label>2</label>", b"")
    response = await h.invite("siprec-5", from_=SIPREC_FROM, body=no_streams,
                              content_type="application/rs-metadata+xml",
                              extra=SIPREC_HEADERS)
    assert response.status == 488
    assert h.backend.allocations == []


# ---------------------------------------------------------------- in-dialog


async def test_cucm_reinvite_without_sdp_keeps_port(h: Harness) -> None:
    ok = await h.cucm_leg("near", "hold-1")
    port = body_sdp(ok).media[0].port
    await h.send(sip_request("ACK", call_id="hold-1", from_=cucm_from("near", tag="tag-near"),
                             to_tag=to_tag(ok), body=ANSWER_SDP,
                             content_type="application/sdp"))
    h.sender.clear()
    for cseq in (2, 3):  # hold, then resume
        await h.send(sip_request("INVITE", call_id="hold-1", cseq=cseq,
                                 from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok)))
        response = h.sender.responses("hold-1", "INVITE")[-1]
        assert response.status == 200
        assert response.to.tag == ok.to.tag
        offer = body_sdp(response)
        assert offer.media[0].port == port
        assert offer.media[0].direction == "recvonly"
        assert offer.origin_version == str(cseq)  # o= version increases with each new offer
        await h.send(sip_request("ACK", call_id="hold-1", cseq=cseq,
                                 from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok),
                                 body=ANSWER_SDP, content_type="application/sdp"))
    assert 100 not in h.sender.statuses("hold-1")
    assert len(h.backend.allocations) == 1
    assert h.backend.finalized == []
    assert len(h.uas.active_recording_ids()) == 1
    assert len(h.backend.updates) == 3  # one per ACK answer


async def test_update_with_and_without_sdp(h: Harness) -> None:
    ok = await h.cucm_leg("near", "upd-1")
    port = body_sdp(ok).media[0].port
    h.sender.clear()
    await h.send(sip_request("UPDATE", call_id="upd-1", cseq=2,
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok),
                             body=PLAIN_OFFER_SDP, content_type="application/sdp"))
    (response,) = h.sender.responses("upd-1", "UPDATE")
    assert response.status == 200
    answer = body_sdp(response)
    assert answer.media[0].port == port
    assert answer.media[0].direction == "recvonly"
    assert h.backend.updates[-1].payload_codecs == {8: "PCMA", 0: "PCMU",
                                                    101: "telephone-event"}
    h.sender.clear()
    await h.send(sip_request("UPDATE", call_id="upd-1", cseq=3,
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok)))
    (response,) = h.sender.responses("upd-1", "UPDATE")
    assert response.status == 200
    assert response.body == b""


async def test_update_unknown_dialog_is_481(h: Harness) -> None:
    await h.send(sip_request("UPDATE", call_id="nope", to_tag="xyz"))
    assert h.sender.statuses("nope") == [481]


async def test_info_in_dialog_and_unknown_dialog(h: Harness) -> None:
    ok = await h.cucm_leg("near", "info-1")
    await h.send(sip_request("INFO", call_id="info-1", cseq=2,
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok)))
    assert h.sender.statuses("info-1", "INFO") == [200]
    await h.send(sip_request("INFO", call_id="info-2", to_tag="unknown"))
    assert h.sender.statuses("info-2", "INFO") == [481]


async def test_bye_unknown_dialog_is_481(h: Harness) -> None:
    await h.send(sip_request("BYE", call_id="bye-x", to_tag="unknown"))
    assert h.sender.statuses("bye-x") == [481]
    ok = await h.cucm_leg("near", "bye-y")
    await h.send(sip_request("BYE", call_id="bye-y", cseq=2,
                             from_=cucm_from("near", tag="tag-near"), to_tag="wrong-tag"))
    assert h.sender.statuses("bye-y", "BYE") == [481]
    assert h.backend.finalized == []
    assert to_tag(ok)


async def test_reinvite_unknown_dialog_is_481(h: Harness) -> None:
    await h.send(sip_request("INVITE", call_id="re-x", to_tag="unknown"))
    assert h.sender.statuses("re-x") == [481]
    assert h.backend.allocations == []


# ---------------------------------------------------------------- admission


async def test_unknown_extension_is_404(h: Harness) -> None:
    response = await h.cucm_leg("near", "adm-1", near="9999", far="8888")
    assert response.status == 404
    assert response.to.tag
    assert response.headers.get("Warning")
    assert h.backend.allocations == []
    assert h.uas.active_recording_ids() == []


async def test_not_recorded_user_is_403(h: Harness) -> None:
    response = await h.cucm_leg("near", "adm-2", near="3003")
    assert response.status == 403
    assert h.backend.allocations == []


async def test_record_all_accepts_unknown() -> None:
    harness = Harness(record_all=True)
    try:
        response = await harness.cucm_leg("near", "adm-3", near="9999", far="8888")
        assert response.status == 200
        assert len(harness.backend.allocations) == 1
        meta = harness.uas.sessions[harness.backend.allocations[0].recording_id].metadata
        assert meta.recorded_user is None
    finally:
        await harness.uas.shutdown()


async def test_licence_limit_486_but_second_leg_joins() -> None:
    harness = Harness(max_channels=1)
    try:
        assert (await harness.cucm_leg("near", "lic-near")).status == 200
        other = await harness.cucm_leg("near", "lic-other", refci="99999999", tag="t2")
        assert other.status == 486
        far = await harness.cucm_leg("far", "lic-far")
        assert far.status == 200
        assert len(harness.backend.allocations) == 2
        assert len(harness.uas.active_recording_ids()) == 1
    finally:
        await harness.uas.shutdown()


async def test_cannot_record_is_503_with_retry_after(h: Harness) -> None:
    h.backend.record_ok = (False, "disk full")
    response = await h.cucm_leg("near", "adm-503")
    assert response.status == 503
    assert response.headers.get("Retry-After") == "5"
    warning = response.headers.get("Warning")
    assert warning is not None and "disk full" in warning
    assert h.backend.allocations == []


async def test_allocate_failure_is_503_and_session_forgotten(h: Harness) -> None:
    h.backend.fail_allocate = True
    response = await h.cucm_leg("near", "adm-alloc")
    assert response.status == 503
    assert response.headers.get("Retry-After") == "5"
    assert h.uas.active_recording_ids() == []
    assert h.uas.by_key == {}
    assert h.uas.dialogs == {}
    assert h.backend.started == []
    # The node recovers: the next call is recorded.
    h.backend.fail_allocate = False
    assert (await h.cucm_leg("near", "adm-alloc-2")).status == 200
    assert len(h.uas.active_recording_ids()) == 1


async def test_inconsistent_cucm_parameters_are_400(h: Harness) -> None:
    bad_from = cucm_from("near").replace("x-nearend;", "x-nearend;x-farend;")
    response = await h.invite("bad-cucm", from_=bad_from)
    assert response.status == 400


# ---------------------------------------------------------------- other requests


async def test_options(h: Harness) -> None:
    await h.send(sip_request("OPTIONS", call_id="opt-1"))
    (response,) = h.sender.responses("opt-1")
    assert response.status == 200
    allow = response.headers.get("Allow")
    assert allow is not None and "INVITE" in allow and "BYE" in allow
    h.backend.record_ok = (False, "no capture")
    await h.send(sip_request("OPTIONS", call_id="opt-2"))
    (response,) = h.sender.responses("opt-2")
    assert response.status == 503
    assert response.headers.get("Retry-After") == "5"


async def test_register_is_405(h: Harness) -> None:
    await h.send(sip_request("REGISTER", call_id="reg-1"))
    (response,) = h.sender.responses("reg-1")
    assert response.status == 405
    assert response.headers.get("Allow")


async def test_unknown_method_is_501(h: Harness) -> None:
    await h.send(sip_request("FOO", call_id="foo-1"))
    assert h.sender.statuses("foo-1") == [501]


async def test_require_100rel_is_420(h: Harness) -> None:
    response = await h.invite("req-1", from_=cucm_from("near"), extra=[("Require", "100rel")])
    assert response.status == 420
    assert response.headers.get("Unsupported") == "100rel"
    assert h.backend.allocations == []


async def test_session_timer_is_honoured(h: Harness) -> None:
    ok = await h.invite("timer-1", from_=cucm_from("near"),
                        extra=[("Supported", "timer"), ("Session-Expires", "1800")])
    assert ok.status == 200
    assert ok.headers.get("Session-Expires") == "1800;refresher=uac"
    assert "timer" in ok.headers.get_all("Require")


async def test_unsupported_body_type_is_415(h: Harness) -> None:
    response = await h.invite("ct-1", from_=cucm_from("near"), body=b"hello",
                              content_type="text/plain")
    assert response.status == 415


async def test_plain_invite_with_offer_gets_answer(h: Harness) -> None:
    ok = await h.invite("plain-1", from_="<sip:1001@192.0.2.20>;tag=p1",
                        to="<sip:2002@10.0.0.50>", body=PLAIN_OFFER_SDP,
                        content_type="application/sdp")
    assert ok.status == 200
    answer = body_sdp(ok)
    (media,) = answer.media
    assert media.direction == "recvonly"
    assert media.port != 0
    assert set(media.formats) <= {8, 0, 101} and 101 in media.formats
    (allocation,) = h.backend.allocations
    assert [(s.stream_id, s.channel) for s in allocation.streams] == [("m0", 0)]
    assert media.port == h.backend.ports[(allocation.recording_id, "m0")]
    meta = h.uas.sessions[allocation.recording_id].metadata
    assert meta.source == "sip"
    assert meta.numbers() == ["1001", "2002"]
    contact = ok.headers.get("Contact")
    assert contact is not None and "+sip.srs" not in contact


async def test_plain_invite_without_usable_codec_is_488(h: Harness) -> None:
    sdp = PLAIN_OFFER_SDP.replace(b"RTP/AVP 8 0 101", b"RTP/AVP 97").replace(
        b"a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\n", b"a=rtpmap:97 opus/48000/2\r\n")
    response = await h.invite("plain-488", from_="<sip:1001@192.0.2.20>;tag=p1", body=sdp,
                              content_type="application/sdp")
    assert response.status == 488
    assert h.backend.allocations == []


# ---------------------------------------------------------------- CANCEL


async def test_cancel_unknown_transaction_is_481(h: Harness) -> None:
    await h.send(sip_request("CANCEL", call_id="can-x"))
    assert h.sender.statuses("can-x") == [481]


async def test_cancel_after_answer_is_200_and_call_goes_on(h: Harness) -> None:
    branch = new_branch()
    await h.send(sip_request("INVITE", call_id="can-late", branch=branch,
                             from_=cucm_from("near")))
    await h.send(sip_request("CANCEL", call_id="can-late", branch=branch,
                             from_=cucm_from("near")))
    assert h.sender.statuses("can-late", "CANCEL") == [200]
    assert 487 not in h.sender.statuses("can-late", "INVITE")
    assert len(h.uas.active_recording_ids()) == 1


async def test_cancel_while_allocating_gives_487_and_no_200(h: Harness) -> None:
    h.backend.gate = asyncio.Event()
    branch = new_branch()
    h.uas.on_message(sip_request("INVITE", call_id="can-1", branch=branch,
                                 from_=cucm_from("near")), PEER)
    await asyncio.wait_for(h.backend.allocate_entered.wait(), 1)
    h.uas.on_message(sip_request("CANCEL", call_id="can-1", branch=branch,
                                 from_=cucm_from("near")), PEER)
    for _ in range(20):
        await asyncio.sleep(0)
    # CANCEL is answered at once, not after the INVITE's allocation.
    assert h.sender.statuses("can-1", "CANCEL") == [200]
    assert h.sender.statuses("can-1", "INVITE") == [487]  # cancelled before a 100 was due
    h.backend.gate.set()
    await settle(h.uas)
    assert h.sender.statuses("can-1", "INVITE") == [487]
    recording_id = h.backend.allocations[0].recording_id
    assert h.backend.releases == [(recording_id, "near")]
    assert h.uas.active_recording_ids() == []
    assert h.uas.by_key == {}
    assert h.uas.dialogs == {}
    assert h.backend.started == []
    # The ACK for the 487 is absorbed quietly.
    response = h.sender.responses("can-1", "INVITE")[-1]
    await h.send(sip_request("ACK", call_id="can-1", branch=branch, from_=cucm_from("near"),
                             to_tag=to_tag(response)))
    assert h.uas.transactions.pending_timers() == []
    # A new call on the same refci is a fresh recording.
    assert (await h.cucm_leg("near", "can-2")).status == 200
    assert h.backend.allocations[1].recording_id != recording_id


async def test_cancel_of_joining_leg_keeps_the_recording(h: Harness) -> None:
    ok = await h.cucm_leg("near", "cj-near")
    recording_id = h.backend.allocations[0].recording_id
    h.backend.gate = asyncio.Event()
    h.backend.allocate_entered.clear()
    branch = new_branch()
    h.uas.on_message(sip_request("INVITE", call_id="cj-far", branch=branch,
                                 from_=cucm_from("far", tag="tag-far")), PEER)
    await asyncio.wait_for(h.backend.allocate_entered.wait(), 1)
    h.uas.on_message(sip_request("CANCEL", call_id="cj-far", branch=branch,
                                 from_=cucm_from("far", tag="tag-far")), PEER)
    for _ in range(20):
        await asyncio.sleep(0)
    h.backend.gate.set()
    await settle(h.uas)
    assert h.sender.statuses("cj-far", "INVITE") == [487]
    assert h.backend.releases == [(recording_id, "far")]
    assert h.uas.active_recording_ids() == [recording_id]
    assert list(h.uas.sessions[recording_id].legs) == ["cj-near"]
    # The recording ends normally with the near leg's BYE.
    await h.send(sip_request("BYE", call_id="cj-near", cseq=2,
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok)))
    assert [f[0] for f in h.backend.finalized] == [recording_id]


# ---------------------------------------------------------------- robustness


@pytest.mark.parametrize("data", [
    b"\x00\x01\x02garbage\xff",
    b"hello world\r\n\r\n",
    b"",
    # No Via: nowhere to send a response.
    b"INVITE sip:x@y SIP/2.0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
    b"Call-ID: x\r\nCSeq: 1 INVITE\r\n\r\n",
    # An ACK is never answered.
    b"ACK sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 ACK\r\n\r\n",
])
async def test_malformed_datagrams_without_address_are_counted_drops(
    h: Harness, data: bytes
) -> None:
    h.uas.on_message(data, PEER)
    await settle(h.uas)
    assert h.uas.counters.malformed == 1
    assert h.uas.counters.unanswerable == 1
    assert h.uas.counters.received == 1
    assert h.sender.sent == []


@pytest.mark.parametrize(("data", "problem"), [
    (b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\n"
     b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 INVITE\r\n\r\n", "Call-ID"),
    (b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\n"
     b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 BYE\r\n\r\n",
     "CSeq method"),
    (b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4:5070;branch=z9hG4bK1;rport\r\n"
     b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n"
     b"Max-Forwards: many\r\n\r\n", "Max-Forwards"),
])
async def test_malformed_requests_are_answered_400_naming_the_problem(
    h: Harness, data: bytes, problem: str
) -> None:
    """RFC 3261 8.2 / 16.3: wherever a response can be addressed (a parseable Via), a
    request that fails to parse gets 400 with a reason phrase saying why."""
    h.uas.on_message(data, PEER)
    await settle(h.uas)
    assert h.uas.counters.malformed == 1 and h.uas.counters.unanswerable == 0
    ((peer, raw, via_port, rport),) = h.sender.sent
    response = parse_message(raw)
    assert isinstance(response, SipResponse)
    assert response.status == 400
    assert problem in response.reason
    assert response.headers.get("Via") is not None
    assert response.to.tag  # a To-tag of our own, as for any final response
    assert peer == PEER
    assert via_port == (5070 if b"5070" in data else None) and rport == (b"rport" in data)


async def test_bye_with_wrong_cseq_method_gets_400_and_the_call_goes_on(h: Harness) -> None:
    ok = await h.cucm_leg("near", "badbye")
    h.sender.clear()
    await h.send(sip_request("BYE", call_id="badbye", cseq=2, cseq_method="INVITE",
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok)))
    (response,) = h.sender.responses("badbye")
    assert response.status == 400 and "CSeq" in response.reason
    assert h.uas.active_recording_ids()  # not ended by a request we could not accept
    await h.send(sip_request("BYE", call_id="badbye", cseq=3,
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok)))
    assert h.sender.statuses("badbye", "BYE") == [200]
    assert len(h.backend.finalized) == 1


async def test_responses_are_ignored(h: Harness) -> None:
    response = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.50:5060;branch=z9hG4bK9\r\n"
                b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: r\r\n"
                b"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")
    h.uas.on_message(response, PEER)
    await settle(h.uas)
    assert h.sender.sent == []
    assert h.uas.counters.malformed == 0


async def test_backend_exception_gives_500() -> None:
    # T1 long: Timer G runs from the 200's sending, and the handler's failure is logged
    # with a traceback that can take longer than the default T1 to render here.
    h = Harness(t1=60.0)

    async def broken(session: RecordingSession) -> None:
        raise RuntimeError("boom")

    h.backend.recording_started = broken  # type: ignore[method-assign]
    await h.send(sip_request("INVITE", call_id="boom-1", from_=cucm_from("near")))
    # The 200 went out before the failure; a late 500 is not allowed to replace it.
    statuses = h.sender.statuses("boom-1")
    assert statuses == [200]
    assert h.uas.counters.responses.get(500) is None
    assert all(tx.status != 500 for tx in h.uas.transactions.transactions.values())


async def test_handler_exception_before_answer_gives_500(h: Harness) -> None:
    def broken() -> tuple[bool, str | None]:
        raise RuntimeError("boom")

    h.backend.can_record = broken  # type: ignore[method-assign]
    await h.send(sip_request("INVITE", call_id="boom-2", from_=cucm_from("near")))
    assert h.sender.statuses("boom-2") == [500]


async def test_reply_goes_to_via_port_with_rport(h: Harness) -> None:
    await h.send(sip_request("OPTIONS", call_id="via-1"))
    peer, _, via_port, rport = h.sender.sent[-1]
    assert peer == PEER
    assert via_port == 5060
    assert rport is True


async def test_siprec_update_keeps_srs_contact_and_ports(h: Harness) -> None:
    call_id = "siprec-upd@192.0.2.10"
    ok = await siprec_invite(h, call_id)
    ports = [m.port for m in body_sdp(ok).media]
    h.sender.clear()
    await h.send(sip_request("UPDATE", call_id=call_id, cseq=2, from_=SIPREC_FROM,
                             to_tag=to_tag(ok), body=SIPREC_SDP,
                             content_type="application/sdp"))
    (response,) = h.sender.responses(call_id, "UPDATE")
    assert response.status == 200
    assert [m.port for m in body_sdp(response).media] == ports
    contact = response.headers.get("Contact")
    assert contact is not None and "+sip.srs" in contact
    h.sender.clear()
    await h.send(sip_request("UPDATE", call_id=call_id, cseq=3, from_=SIPREC_FROM,
                             to_tag=to_tag(ok)))
    (response,) = h.sender.responses(call_id, "UPDATE")
    contact = response.headers.get("Contact")
    assert response.status == 200 and contact is not None and "+sip.srs" in contact


async def test_siprec_update_with_metadata_only(h: Harness) -> None:
    call_id = "siprec-upd-meta@192.0.2.10"
    ok = await siprec_invite(h, call_id)
    h.backend.updates.clear()
    await h.send(sip_request("UPDATE", call_id=call_id, cseq=2, from_=SIPREC_FROM,
                             to_tag=to_tag(ok), body=SIPREC_PARTIAL_METADATA,
                             content_type="application/rs-metadata+xml"))
    # A metadata-only body (no SDP) is applied and answered without SDP.
    (response,) = h.sender.responses(call_id, "UPDATE")
    assert response.status == 200
    assert response.body == b""
    (update,) = h.backend.updates
    assert update.metadata is not None
    assert [p.name for p in update.metadata.participants] == ["Alice", "Robert"]


async def test_session_timer_expiry_sends_bye_and_finalizes() -> None:
    h = Harness(sweep_interval=0.01)
    ok = await h.invite("st-expire", from_=cucm_from("near", tag="tag-near"),
                        extra=[("Supported", "timer"), ("Session-Expires", "1800")])
    await h.send(sip_request("ACK", call_id="st-expire", from_=cucm_from("near", tag="tag-near"),
                             to_tag=to_tag(ok), body=ANSWER_SDP,
                             content_type="application/sdp"))
    session, leg = next(iter(h.uas.dialogs.values()))
    assert leg.session_expires == 1800
    leg.refreshed_at -= 1801  # the PBX stopped refreshing half an hour ago
    sweeper = asyncio.create_task(h.uas.expire_transactions())
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
            if h.backend.finalized:
                break
    finally:
        sweeper.cancel()
    assert [f[0] for f in h.backend.finalized] == [session.recording_id]
    bye = h.sender.requests[-1]
    assert bye.method == "BYE" and bye.call_id == "st-expire"
    assert bye.uri == "sip:1001@10.1.1.1:5060"  # the PBX's Contact
    assert bye.from_.tag == to_tag(ok) and bye.to.tag == "tag-near"
    assert not h.uas.dialogs


async def test_missing_ack_abandons_leg_with_bye() -> None:
    h = Harness(t1=0.001, t2=0.004)
    await h.cucm_leg("near", "no-ack")
    for _ in range(100):
        await asyncio.sleep(0.01)
        if h.backend.finalized:
            break
    await settle(h.uas)
    assert len(h.backend.finalized) == 1
    assert h.sender.requests and h.sender.requests[-1].method == "BYE"
    assert not h.uas.sessions


async def test_restarted_uas_takes_back_its_calls(tmp_path: Any) -> None:
    from services.signaling.sessions import DialogStore

    store = DialogStore(tmp_path / "dialogs")
    first = Harness()
    first.uas.registry.store = store
    ok = await first.invite("restart-1", from_=cucm_from("near", tag="tag-near"),
                            extra=[("Supported", "timer"), ("Session-Expires", "1800")])
    await first.send(sip_request("ACK", call_id="restart-1",
                                 from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok),
                                 body=ANSWER_SDP, content_type="application/sdp"))
    sip_ok = await first.invite("restart-2", from_=SIPREC_FROM, body=siprec_body(),
                                content_type=SIPREC_CT, extra=SIPREC_HEADERS)
    recordings = set(first.uas.active_recording_ids())
    assert len(recordings) == 2
    await first.uas.shutdown()

    # A new process: nothing in memory, everything from the store.
    second = Harness()
    second.uas = RecorderUas(backend=second.backend, sender=second.sender, address=ADDRESS,
                             sip_port=SIP_PORT, record_all=False, max_channels=10,
                             dialog_store=store)
    assert set(second.uas.active_recording_ids()) == recordings
    session, leg = second.uas.dialogs[("restart-1", to_tag(ok))]
    assert leg.confirmed and leg.session_expires == 1800 and not leg.expired(0 + leg.refreshed_at)
    assert [s.port for s in leg.streams] == [s.port for s in first.uas.dialogs[
        ("restart-1", to_tag(ok))][1].streams]
    assert second.uas.siprec_meta  # partial SIPREC updates still merge after a restart

    await second.send(sip_request("BYE", call_id="restart-1", cseq=2,
                                  from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok)))
    assert second.sender.statuses("restart-1", "BYE") == [200]
    assert [f[0] for f in second.backend.finalized] == [session.recording_id]
    assert session.recording_id not in store.recording_ids()
    assert len(store.recording_ids()) == 1  # the SIPREC call remains
    del sip_ok
    await second.uas.shutdown()


async def test_sessions_of_a_previous_node_boot_are_not_taken_back(tmp_path: Any) -> None:
    from services.signaling.sessions import DialogStore

    h = Harness()
    h.uas.registry.store = DialogStore(tmp_path / "dialogs", "boot-1")
    await h.cucm_leg("near", "old-boot")
    assert len(DialogStore(tmp_path / "dialogs", "boot-1").load_all()) == 1
    assert DialogStore(tmp_path / "dialogs", "boot-2").load_all() == []
    # capture finalizes that call: not even its own boot takes it back any more
    assert DialogStore(tmp_path / "dialogs", "boot-1").load_all() == []
    await h.uas.shutdown()


# ---------------------------------------------------------------- broken peers


async def test_ack_without_to_tag_confirms_the_leg_and_brings_its_answer() -> None:
    """An ACK that forgot the To-tag still belongs to its INVITE transaction (Call-ID and
    CSeq, RFC 3261 17.2.1): it stops the 200's retransmissions *and* confirms the leg,
    so Timer H does not end a call the PBX believes is up, nor does the leg stay
    unconfirmed forever."""
    h = Harness(t1=0.005)
    ok = await h.cucm_leg("near", "ack-notag")
    await h.send(sip_request("ACK", call_id="ack-notag",
                             from_=cucm_from("near", tag="tag-near"),
                             body=ANSWER_SDP, content_type="application/sdp"))
    (_, leg), = h.uas.dialogs.values()
    assert leg.confirmed and not leg.offer_pending
    assert [u.payload_codecs for u in h.backend.updates] == [
        {0: "PCMU", 101: "telephone-event"}]
    sent = len(h.sender.sent)
    await asyncio.sleep(0.5)  # beyond Timer H (64 * T1 = 0.32 s)
    assert len(h.sender.sent) == sent and h.sender.requests == []
    assert h.backend.finalized == [] and h.uas.active_recording_ids()
    await h.send(sip_request("BYE", call_id="ack-notag", cseq=2,
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok)))
    assert len(h.backend.finalized) == 1
    await h.uas.shutdown()


async def test_invite_with_to_tag_of_unknown_dialog_is_481(h: Harness) -> None:
    """RFC 4475 wsinv-like: a valid INVITE inside a dialog we do not know gets 481."""
    await h.send(sip_request("INVITE", call_id="nodialog", to_tag="1918181833n",
                             body=PLAIN_OFFER_SDP, content_type="application/sdp"))
    assert h.sender.statuses("nodialog") == [481]
    assert h.backend.allocations == []


# ---------------------------------------------------------------- every leg has a way out


async def test_timer_h_ends_an_unacknowledged_tcp_leg() -> None:
    h = Harness(t1=0.002)
    tcp = Peer("TCP", "127.0.0.1", 5999)
    await h.send(sip_request("INVITE", call_id="tcp-noack", from_=cucm_from("near")), tcp)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if h.backend.finalized:
            break
    await settle(h.uas)
    assert [reason for _, reason in h.backend.ended] == ["no ACK"]
    assert h.sender.requests[-1].method == "BYE"
    assert h.sender.statuses("tcp-noack") == [200]  # never retransmitted over TCP
    assert not h.uas.sessions


async def test_a_hold_exempts_from_the_media_timeout_but_not_forever() -> None:
    from services.signaling.uas import RecorderUas

    h = Harness()
    h.uas = RecorderUas(backend=h.backend, sender=h.sender, address=ADDRESS,
                        sip_port=SIP_PORT, record_all=False, max_channels=10,
                        media_timeout_s=30.0, max_hold_s=3600.0)
    ok = await h.cucm_leg("near", "held")
    await h.send(sip_request("ACK", call_id="held", from_=cucm_from("near", tag="tag-near"),
                             to_tag=to_tag(ok), body=ANSWER_SDP,
                             content_type="application/sdp"))
    # Hold: a re-INVITE whose SDP says a=inactive.
    await h.send(sip_request("INVITE", call_id="held", cseq=2,
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok),
                             body=ANSWER_SDP.replace(b"a=sendonly", b"a=inactive"),
                             content_type="application/sdp"))
    assert h.sender.statuses("held", "INVITE")[-1] == 200
    (session, leg), = h.uas.dialogs.values()
    assert leg.on_hold
    quiet = [QuietStream(recording_id=session.recording_id, stream_id="near", packets=0,
                         silent_s=600.0)]
    leg.media_since -= 600  # ten minutes of silence on hold: still recorded
    now = time.monotonic()
    assert await h.uas.apply_media_report(now, quiet, now=now) == []
    leg.media_since -= 3600  # an hour more: the PBX is gone
    now = time.monotonic()
    assert await h.uas.apply_media_report(now, quiet, now=now) == [leg]
    assert [reason for _, reason in h.backend.ended] == ["hold too long"]
    assert h.sender.requests[-1].method == "BYE"
    await h.uas.shutdown()


# ---------------------------------------------------------------- dialects and mid-call changes


LEGACY_CT = "application/rs-metadata"


def legacy_siprec_body() -> bytes:
    return siprec_body().replace(b"application/rs-metadata+xml", LEGACY_CT.encode())


async def test_legacy_metadata_type_in_invite_and_update(h: Harness) -> None:
    """application/rs-metadata (no +xml: Metaswitch, Procomm, the RFC examples) is
    recording metadata, in the INVITE and in later UPDATEs and re-INVITEs."""
    ok = await h.invite("legacy-1", from_=SIPREC_FROM, body=legacy_siprec_body(),
                        content_type=SIPREC_CT, extra=SIPREC_HEADERS)
    assert ok.status == 200
    assert [p.name for p in h.backend.allocations[0].metadata.participants] == [
        "Alice", "Bob"]
    await h.send(sip_request("UPDATE", call_id="legacy-1", cseq=2, from_=SIPREC_FROM,
                             to_tag=to_tag(ok), body=SIPREC_PARTIAL_METADATA,
                             content_type=LEGACY_CT))
    assert h.sender.statuses("legacy-1", "UPDATE") == [200]
    assert [p.name for p in h.backend.participant_changes[-1][2]] == ["Alice", "Robert"]
    b = BOUNDARY.encode()
    reinvite_body = (b"--" + b + b"\r\nContent-Type: application/sdp\r\n\r\n" + SIPREC_SDP
                     + b"\r\n--" + b + b"\r\nContent-Type: " + LEGACY_CT.encode()
                     + b"\r\n\r\n" + SIPREC_PARTIAL_METADATA.replace(b"Robert", b"Rob")
                     + b"\r\n--" + b + b"--\r\n")
    await h.send(sip_request("INVITE", call_id="legacy-1", cseq=3, from_=SIPREC_FROM,
                             to_tag=to_tag(ok), body=reinvite_body, content_type=SIPREC_CT,
                             extra=SIPREC_HEADERS))
    assert h.sender.statuses("legacy-1", "INVITE")[-1] == 200
    assert [p.name for p in h.backend.participant_changes[-1][2]] == ["Alice", "Rob"]


async def test_cucm_update_after_transfer_changes_the_participants(h: Harness) -> None:
    """After a transfer CUCM sends an UPDATE whose From names the new far end: the
    recording's parties follow, as a fact with the time it changed."""
    ok = await h.cucm_leg("near", "xfer-near")
    await h.send(sip_request("ACK", call_id="xfer-near",
                             from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok),
                             body=ANSWER_SDP, content_type="application/sdp"))
    before = datetime.now(UTC)
    await h.send(sip_request("UPDATE", call_id="xfer-near", cseq=2,
                             from_=cucm_from("near", far="3003", tag="tag-near"),
                             to_tag=to_tag(ok)))
    assert h.sender.statuses("xfer-near", "UPDATE") == [200]
    ((recording_id, at, participants),) = h.backend.participant_changes
    assert recording_id == h.backend.allocations[0].recording_id
    assert at >= before
    assert [(p.role, p.number) for p in participants] == [("near", "1001"), ("far", "3003")]
    assert h.backend.updates[-1].metadata is not None
    assert h.backend.updates[-1].metadata.participants == participants
    # The same parties again: nothing changed, no new fact.
    await h.send(sip_request("UPDATE", call_id="xfer-near", cseq=3,
                             from_=cucm_from("near", far="3003", tag="tag-near"),
                             to_tag=to_tag(ok)))
    assert len(h.backend.participant_changes) == 1


async def test_cucm_restart_with_new_refci_is_a_new_segment_linked_by_cisco_guid(
    h: Harness
) -> None:
    """A conference or transfer makes CUCM restart recording with new x-refci values:
    each segment is its own recording; Cisco-Guid links the segments of one call."""
    guid = [("Cisco-Guid", "1234567890-0987654321-1122334455-6677889900")]
    first = await h.cucm_leg("near", "seg-1", refci="111", extra=guid)
    await h.cucm_leg("far", "seg-1f", refci="111", extra=guid)
    await h.send(sip_request("BYE", call_id="seg-1", cseq=2,
                             from_=cucm_from("near", refci="111", tag="tag-near"),
                             to_tag=to_tag(first)))
    await h.cucm_leg("near", "seg-2", refci="222", extra=guid)
    recordings = {a.recording_id: a.metadata for a in h.backend.allocations}
    assert len(recordings) == 2
    assert {m.refci for m in recordings.values()} == {"111", "222"}
    assert {m.cisco_guid for m in recordings.values()} == {guid[0][1]}
    assert {s.metadata.cisco_guid for s in h.backend.started} == {guid[0][1]}
