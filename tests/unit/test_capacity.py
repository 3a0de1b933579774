"""Over capacity: capture's live encoding falls behind, so new calls get 503 (the PBX
records them on the backup) while calls in progress, and their other legs, go on."""

from __future__ import annotations

from callrec.users import UsersProjection
from contracts.v1.events import UserUpserted
from contracts.v1.missed import MissedCall
from services.capture.capacity import RECOVER_SHARE, LagGate
from services.signaling.missed import MissedAggregator, MissedCalls
from services.signaling.recorder import Admission, AdmissionResult, admit
from services.signaling.uas import RecorderUas
from tests.unit.test_missed_calls import PBX, Clock
from tests.unit.test_uas import FakeBackend, FakeSender, cucm_from, settle, sip_request


def test_the_gate_trips_over_the_limit_and_recovers_only_well_under_it() -> None:
    gate = LagGate(5.0)
    assert gate.update(1.0) == "keeping_pace"
    assert gate.update(5.0) == "keeping_pace"  # at the limit: still admitting
    assert gate.update(5.1) == "behind"
    assert gate.update(4.0) == "behind"  # under the limit, not yet caught up
    assert gate.update(5.0 * RECOVER_SHARE + 0.01) == "behind"
    assert gate.update(5.0 * RECOVER_SHARE) == "keeping_pace"
    assert gate.update(4.9) == "keeping_pace"
    assert "5.1 s behind" in gate.reason(5.1) and "--max-live-lag 5" in gate.reason(5.1)


def test_a_limit_of_zero_never_refuses() -> None:
    gate = LagGate(0.0)
    assert gate.update(3600.0) == "keeping_pace"


def _users() -> UsersProjection:
    users = UsersProjection()
    users.apply(UserUpserted(node_id="n1", username="alice", extensions=["1001"], record=True))
    return users


def test_over_capacity_refuses_new_calls_only_after_the_users_checks() -> None:
    def decide(number: str, joins: bool) -> AdmissionResult:
        return admit(numbers=[number], users=_users(), record_all=False, can_record=True,
                     cannot_record_reason=None, active_recordings=3, max_channels=10,
                     joins_existing=joins, over_capacity="over capacity: 7.0 s behind")

    new = decide("1001", joins=False)
    assert (new.admission, new.missed, new.reason) == (
        Admission.CANNOT_RECORD, "over_capacity", "over capacity: 7.0 s behind")
    assert new.admission.value == 503
    assert decide("1001", joins=True).admission is Admission.ACCEPT
    nobody = decide("9999", joins=False)
    assert (nobody.admission, nobody.missed) == (Admission.UNKNOWN_USER, "unknown_user")


async def test_the_uas_answers_new_calls_503_and_lets_the_second_leg_of_a_call_join() -> None:
    backend = FakeBackend()
    backend.add_user("alice", ["1001"])
    sender = FakeSender()
    kept: list[MissedCall] = []
    uas = RecorderUas(backend=backend, sender=sender, address="10.0.0.50", sip_port=5060,
                      record_all=False, max_channels=10,
                      missed=MissedCalls(MissedAggregator("n1"), kept.append, None, Clock()))

    async def leg(call_id: str, side: str, refci: str) -> int:
        uas.on_message(sip_request("INVITE", call_id=call_id,
                                   from_=cucm_from(side, refci=refci, tag=f"t-{call_id}")),
                       PBX)
        await settle(uas)
        finals = [r for r in sender.responses(call_id, "INVITE") if r.status >= 200]
        return finals[-1].status

    try:
        assert await leg("a-near", "near", "111") == 200
        backend.over = "over capacity: calls in progress 6.2 s behind in encoding"
        assert await leg("a-far", "far", "111") == 200  # joins the call being recorded
        assert await leg("b-near", "near", "222") == 503
        (refused,) = [r for r in sender.responses("b-near", "INVITE") if r.status == 503]
        assert refused.headers.get("Retry-After") == "5"
        warning = refused.headers.get("Warning")
        assert warning is not None and "6.2 s behind" in warning
        assert [(r.call_id, r.status, r.reason) for r in kept] == [
            ("b-near", 503, "over_capacity")]
        assert uas.counters.over_capacity == 1
        backend.over = None  # caught up
        assert await leg("c-near", "near", "333") == 200
    finally:
        await uas.shutdown()
    assert len(backend.allocations) == 3  # a-near, a-far, c-near
