"""The UAS side of SIP admission: whose leg may join a call, how many legs a source
may keep waiting for media, and the media timeout (hold exempt)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from contracts.v1.rpc import QuietStream
from services.signaling.admission import RefusalReason
from services.signaling.sip.transport import Peer
from services.signaling.uas import RecorderUas
from tests.unit.test_uas import (
    ANSWER_SDP,
    FakeBackend,
    FakeSender,
    cucm_from,
    settle,
    sip_request,
    to_tag,
)

PBX = Peer("UDP", "127.0.0.1", 5999)
OTHER_PBX = Peer("UDP", "127.0.0.2", 5999)
HOLD_SDP = ANSWER_SDP.replace(b"a=sendonly", b"a=inactive")


class Refusals:
    def __init__(self) -> None:
        self.seen: list[tuple[str, RefusalReason]] = []

    def refused(self, host: str, reason: RefusalReason) -> None:
        self.seen.append((host, reason))


class H:
    def __init__(self, *, pending: int | None = None, timeout: float = 30.0,
                 max_channels: int = 10) -> None:
        self.backend = FakeBackend()
        self.backend.add_user("alice", ["1001"])
        self.sender = FakeSender()
        self.refusals = Refusals()
        self.uas = RecorderUas(backend=self.backend, sender=self.sender, address="10.0.0.50",
                               sip_port=5060, record_all=True, max_channels=max_channels,
                               pending_media_limit=pending, media_timeout_s=timeout,
                               refusals=self.refusals)

    async def invite(self, call_id: str, peer: Peer, side: str = "near",
                     refci: str = "25165957") -> int:
        tag = f"tag-{call_id}"
        self.uas.on_message(sip_request("INVITE", call_id=call_id,
                                        from_=cucm_from(side, refci=refci, tag=tag)), peer)
        await settle(self.uas)
        finals = [r for r in self.sender.responses(call_id, "INVITE") if r.status >= 200]
        if finals[-1].status == 200:
            self.uas.on_message(sip_request(
                "ACK", call_id=call_id, from_=cucm_from(side, refci=refci, tag=tag),
                to_tag=to_tag(finals[-1]), body=ANSWER_SDP, content_type="application/sdp"),
                peer)
            await settle(self.uas)
        return finals[-1].status

    def quiet(self, silent_s: float, *, packets: int = 0,
              skip: frozenset[str] | set[str] = frozenset()) -> list[QuietStream]:
        return [QuietStream(recording_id=session.recording_id, stream_id=stream.stream_id,
                            packets=packets, silent_s=silent_s)
                for session, leg in self.uas.dialogs.values() if leg.call_id not in skip
                for stream in leg.streams]


@pytest.fixture
async def h() -> AsyncIterator[H]:
    harness = H()
    yield harness
    await harness.uas.shutdown()


async def test_second_leg_from_another_source_is_refused(h: H) -> None:
    assert await h.invite("near-1", PBX, "near") == 200
    # A guessed x-refci from another (even allow-listed) source: no joining.
    assert await h.invite("far-evil", OTHER_PBX, "far") == 403
    assert h.refusals.seen == [("127.0.0.2", "leg_source")]
    (session,) = h.uas.sessions.values()
    assert list(session.legs) == ["near-1"] and len(h.backend.allocations) == 1
    # The real far leg from the first leg's source joins as always.
    assert await h.invite("far-1", Peer("UDP", "::ffff:127.0.0.1", 6000), "far") == 200
    assert list(session.legs) == ["near-1", "far-1"] and len(h.uas.sessions) == 1


async def test_source_with_too_many_legs_without_media_gets_503() -> None:
    h = H(pending=3, max_channels=10)
    statuses = [await h.invite(f"flood-{n}", OTHER_PBX, refci=str(1000 + n))
                for n in range(10)]
    assert statuses == [200] * 3 + [503] * 7
    retry = [r for r in h.sender.responses("flood-5", "INVITE") if r.status == 503]
    assert retry and retry[0].headers.get("Retry-After") == "5"
    assert h.refusals.seen.count(("127.0.0.2", "pending_media")) == 7
    # Another source's real call still finds a licence.
    assert await h.invite("real", PBX, refci="42") == 200
    # Once capture reports the flood legs' media, the source may call again.
    asked = time.monotonic()
    await h.uas.apply_media_report(asked, h.quiet(0.0, skip={f"flood-{n}" for n in range(3)}),
                                   now=asked)
    assert h.uas.awaiting_by_source == {"127.0.0.1": 1}
    assert await h.invite("flood-again", OTHER_PBX, refci="77") == 200


async def test_media_timeout_ends_silent_legs_with_bye_but_not_held_ones(h: H) -> None:
    assert await h.invite("silent", PBX, refci="1") == 200
    assert await h.invite("held", PBX, refci="2") == 200
    assert await h.invite("talking", PBX, refci="3") == 200
    held = next(leg for _, leg in h.uas.dialogs.values() if leg.call_id == "held")
    h.uas.on_message(sip_request("INVITE", call_id="held", cseq=2,
                                 from_=cucm_from("near", refci="2", tag="tag-held"),
                                 to_tag=held.local_tag, body=HOLD_SDP,
                                 content_type="application/sdp"), PBX)
    await settle(h.uas)
    assert held.on_hold
    for _, leg in h.uas.dialogs.values():
        leg.media_since -= 60  # answered (or held) a minute ago
    asked = time.monotonic()
    quiet = h.quiet(45.0, skip={"talking"})
    # A stale report (capture not answering) never ends a call.
    assert await h.uas.apply_media_report(asked - 10, quiet, now=asked) == []
    ended = await h.uas.apply_media_report(asked, quiet, now=asked)
    assert [leg.call_id for leg in ended] == ["silent"]
    assert [r.method for r in h.sender.requests] == ["BYE"]
    assert [reason for _, reason in h.backend.ended] == ["media timeout"]
    assert len(h.backend.finalized) == 1
    assert {leg.call_id for _, leg in h.uas.dialogs.values()} == {"held", "talking"}


async def test_media_timeout_counts_from_the_resume_and_can_be_off() -> None:
    h = H(timeout=30.0)
    assert await h.invite("resumed", PBX) == 200
    (_, leg) = next(iter(h.uas.dialogs.values()))
    now = time.monotonic()
    leg.media_since = now - 10  # resumed ten seconds ago after a long hold
    assert await h.uas.apply_media_report(now, h.quiet(300.0, packets=50), now=now) == []
    off = H(timeout=0.0)
    assert await off.invite("x", PBX) == 200
    for _, leg in off.uas.dialogs.values():
        leg.media_since -= 3600
    now = time.monotonic()
    assert await off.uas.apply_media_report(now, off.quiet(3600.0), now=now) == []


async def test_pending_media_cap_holds_for_concurrent_invites() -> None:
    """A flood arrives faster than capture allocates ports: the cap still holds."""
    import asyncio

    h = H(pending=3, max_channels=50)
    h.backend.gate = asyncio.Event()  # every allocation waits
    for n in range(20):
        h.uas.on_message(sip_request("INVITE", call_id=f"c-{n}",
                                     from_=cucm_from("near", refci=str(500 + n), tag=f"t{n}")),
                         OTHER_PBX)
    for _ in range(20):
        await asyncio.sleep(0)
    h.backend.gate.set()
    await settle(h.uas)
    statuses = [r.status for n in range(20) for r in h.sender.responses(f"c-{n}", "INVITE")
                if r.status >= 200]
    assert sorted(statuses) == [200] * 3 + [503] * 17
    assert len(h.uas.awaiting_media) == 3  # the answered legs; no reservation left over


async def test_both_legs_of_one_call_count_once_and_licence_comes_first() -> None:
    """A CUCM call is two legs but one licence: its far leg is never held back by the
    cap, and a full licence still says 486 (no failover) rather than 503."""
    h = H(pending=1, max_channels=1)
    assert await h.invite("near", PBX, "near") == 200
    assert await h.invite("far", PBX, "far") == 200  # joins: not a new pending call
    assert h.uas.awaiting_by_source == {"127.0.0.1": 1}
    assert await h.invite("next", PBX, refci="99") == 486


async def test_leg_racing_the_first_legs_setup_is_checked_too() -> None:
    """The intruder's leg arrives while the first leg's ports are still being allocated."""
    import asyncio

    h = H()
    h.backend.gate = asyncio.Event()
    h.uas.on_message(sip_request("INVITE", call_id="first",
                                 from_=cucm_from("near", tag="t1")), PBX)
    await h.backend.allocate_entered.wait()
    h.uas.on_message(sip_request("INVITE", call_id="racer",
                                 from_=cucm_from("far", tag="t2")), OTHER_PBX)
    for _ in range(10):
        await asyncio.sleep(0)
    h.backend.gate.set()
    await settle(h.uas)
    assert [r.status for r in h.sender.responses("racer", "INVITE") if r.status >= 200] == [403]
    assert [r.status for r in h.sender.responses("first", "INVITE") if r.status >= 200] == [200]
