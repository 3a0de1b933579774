"""A new leg answered from capture's reserve of ports (issue 11, set-up rate).

The 200 OK goes out before capture hears of the leg; the allocate that follows names
the reserved ports, whose capture and when they were given away. Under the call's
lock, so the leg's ACK reaches capture after it. An allocate that never succeeds
ends the leg with a BYE; one left unconfirmed by a signaling restart is sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts.v1.missed import MissedCall
from services.signaling import uas as uas_module
from services.signaling.missed import MissedAggregator, MissedCalls
from services.signaling.sessions import DialogStore
from services.signaling.uas import RecorderUas
from tests.unit.test_missed_calls import Clock
from tests.unit.test_uas import (
    ADDRESS,
    ANSWER_SDP,
    PEER,
    SIP_PORT,
    FakeBackend,
    FakeSender,
    Harness,
    body_sdp,
    cucm_from,
    settle,
    sip_request,
    siprec_invite,
    to_tag,
)

NEAR_CALL = "near-r@10.1.1.1"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uas_module, "ALLOCATE_RETRY_DELAY", 0.001)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await harness.uas.shutdown()


async def test_a_leg_is_answered_from_the_reserve_before_capture_allocates() -> None:
    h = Harness()
    h.backend.reserve = [30000, 30002]
    h.backend.gate = asyncio.Event()  # capture has not taken the allocate yet
    before = time.time()
    h.uas.on_message(sip_request("INVITE", call_id=NEAR_CALL,
                                 from_=cucm_from("near", tag="tag-near")), PEER)
    await asyncio.wait_for(h.backend.allocate_entered.wait(), 1)
    assert h.sender.statuses(NEAR_CALL) == [200]
    ok = h.sender.responses(NEAR_CALL)[-1]
    assert body_sdp(ok).media[0].port == 30000
    (allocation,) = h.backend.allocations
    assert [(s.stream_id, s.port) for s in allocation.streams] == [("near", 30000)]
    assert allocation.capture_id == "capture-1"
    assert allocation.answered_at is not None and before <= allocation.answered_at <= time.time()
    # The ACK waits for the allocate: capture learns the codecs of a stream it knows.
    h.uas.on_message(sip_request("ACK", call_id=NEAR_CALL,
                                 from_=cucm_from("near", tag="tag-near"), to_tag=to_tag(ok),
                                 body=ANSWER_SDP, content_type="application/sdp"), PEER)
    await asyncio.sleep(0.02)
    assert h.backend.updates == [] and h.backend.started == []
    h.backend.gate.set()
    await settle(h.uas)
    assert [u.stream_id for u in h.backend.updates] == ["near"]
    assert len(h.backend.started) == 1
    leg = h.uas.sessions[allocation.recording_id].legs[NEAR_CALL]
    assert leg.answered_at is None and leg.reserved_from is None
    assert h.backend.reserve == [30002]
    assert (h.uas.counters.answered_from_reserve, h.uas.counters.answered_after_allocate) == (
        1, 0)
    await h.uas.shutdown()


async def test_the_second_leg_of_a_call_takes_the_next_reserved_port(h: Harness) -> None:
    h.backend.reserve = [30000, 30002, 30004]
    near = await h.cucm_leg("near", NEAR_CALL)
    far = await h.cucm_leg("far", "far-r@10.1.1.1")
    assert (body_sdp(near).media[0].port, body_sdp(far).media[0].port) == (30000, 30002)
    first, second = h.backend.allocations
    assert first.recording_id == second.recording_id
    assert [s.port for s in second.streams] == [30002]


async def test_without_enough_reserved_ports_the_leg_allocates_first(h: Harness) -> None:
    h.backend.reserve = [30000]  # a SIPREC call needs two
    ok = await siprec_invite(h)
    assert ok.status == 200
    (allocation,) = h.backend.allocations
    assert all(s.port is None for s in allocation.streams)
    assert allocation.answered_at is None and allocation.capture_id is None
    assert h.backend.reserve == [30000]
    assert (h.uas.counters.answered_from_reserve, h.uas.counters.answered_after_allocate) == (
        0, 1)


async def test_an_early_offer_sends_its_source_with_the_reserved_ports(h: Harness) -> None:
    h.backend.reserve = [30000, 30002]
    ok = await siprec_invite(h)
    assert ok.status == 200
    (allocation,) = h.backend.allocations
    assert [s.port for s in allocation.streams] == [30000, 30002]
    assert all(s.source is not None and s.source.address for s in allocation.streams)
    assert {u.stream_id for u in h.backend.updates} == {s.stream_id for s in allocation.streams}


async def test_an_allocate_that_comes_through_on_a_retry_keeps_the_leg() -> None:
    h = Harness()
    h.backend.reserve = [30000]
    failures = 2
    allocate = h.backend.allocate

    async def flaky(request: object) -> dict[str, int]:
        nonlocal failures
        if failures:
            failures -= 1
            h.backend.allocations.append(request)  # type: ignore[arg-type]
            raise RuntimeError("capture restarting")
        return await allocate(request)  # type: ignore[arg-type]

    h.backend.allocate = flaky  # type: ignore[method-assign]
    ok = await h.cucm_leg("near", NEAR_CALL)
    assert ok.status == 200
    assert len(h.backend.allocations) == 3
    assert h.sender.requests == []  # no BYE
    assert h.uas.counters.lost_after_answer == 0
    assert len(h.backend.started) == 1
    await h.uas.shutdown()


async def test_a_leg_capture_never_takes_is_ended_with_a_bye_and_kept_as_missed() -> None:
    h = Harness()
    kept: list[MissedCall] = []
    h.uas.missed = MissedCalls(MissedAggregator("n1"), kept.append, None, Clock())
    h.backend.reserve = [30000]
    h.backend.fail_allocate = True
    ok = await h.cucm_leg("near", NEAR_CALL)
    assert ok.status == 200  # answered before capture was asked
    h.uas.missed.flush()
    (missed,) = kept
    assert (missed.reason, missed.status) == ("cannot_record", 200)
    assert len(h.backend.allocations) == uas_module.ALLOCATE_ATTEMPTS
    (bye,) = h.sender.requests
    assert bye.method == "BYE" and bye.call_id == NEAR_CALL
    assert h.uas.counters.lost_after_answer == 1
    assert h.uas.active_recording_ids() == []
    assert [reason for _, reason in h.backend.ended] == ["capture unavailable"]
    assert h.backend.started == []  # never recorded: no recording.started fact
    await h.uas.shutdown()


async def test_a_restarted_signaling_sends_an_unconfirmed_allocate_again(
    tmp_path: Path,
) -> None:
    backend = FakeBackend()
    backend.add_user("alice", ["1001"], record=True)
    backend.reserve = [30000]
    backend.gate = asyncio.Event()  # signaling dies before capture answers
    first = RecorderUas(backend=backend, sender=FakeSender(), address=ADDRESS,
                        sip_port=SIP_PORT, record_all=False, max_channels=10,
                        dialog_store=DialogStore(tmp_path, "boot"))
    first.on_message(sip_request("INVITE", call_id=NEAR_CALL,
                                 from_=cucm_from("near", tag="tag-near")), PEER)
    await asyncio.wait_for(backend.allocate_entered.wait(), 1)
    (lost,) = backend.allocations
    for task in list(first.tasks):
        task.cancel()
    await asyncio.gather(*first.tasks, return_exceptions=True)

    again = FakeBackend()
    again.add_user("alice", ["1001"], record=True)
    restarted = RecorderUas(backend=again, sender=FakeSender(), address=ADDRESS,
                            sip_port=SIP_PORT, record_all=False, max_channels=10,
                            dialog_store=DialogStore(tmp_path, "boot"))
    await restarted.resume_allocations()
    (resent,) = again.allocations
    assert resent.recording_id == lost.recording_id
    assert [(s.stream_id, s.port) for s in resent.streams] == [("near", 30000)]
    assert resent.capture_id == "capture-1"
    assert resent.answered_at == pytest.approx(lost.answered_at)
    leg = restarted.sessions[lost.recording_id].legs[NEAR_CALL]
    assert leg.answered_at is None
    await restarted.resume_allocations()  # confirmed: not sent a third time
    assert len(again.allocations) == 1
    await restarted.shutdown()
    await first.shutdown()
