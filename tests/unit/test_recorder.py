"""Unit tests for services.signaling.recorder: admission policy and session helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from callrec.users import UsersProjection
from contracts.v1.events import Participant, RecordingMetadata, UserRemoved, UserUpserted
from services.signaling.identity import number_of
from services.signaling.recorder import (
    Admission,
    AdmissionResult,
    Leg,
    RecordingSession,
    admit,
    merge_cucm_participants,
)


@pytest.fixture
def users() -> UsersProjection:
    projection = UsersProjection()
    projection.apply(UserUpserted(node_id="n", username="alice", extensions=["1001", "1002"]))
    projection.apply(UserUpserted(node_id="n", username="carol", extensions=["3003"],
                                  record=False))
    return projection


def run(users: UsersProjection, numbers: list[str], **kw: Any) -> AdmissionResult:
    args: dict[str, Any] = {
        "numbers": numbers,
        "users": users,
        "record_all": False,
        "can_record": True,
        "cannot_record_reason": None,
        "active_recordings": 0,
        "max_channels": 10,
        "joins_existing": False,
    }
    args.update(kw)
    return admit(**args)


# ---------------------------------------------------------------- admit()


def test_enabled_user_is_accepted(users: UsersProjection) -> None:
    result = run(users, ["1001", "2002"])
    assert result.admission is Admission.ACCEPT
    assert result.user == "alice"
    assert Admission.ACCEPT.value == 200


def test_any_enabled_party_is_enough(users: UsersProjection) -> None:
    result = run(users, ["3003", "1002"])
    assert result.admission is Admission.ACCEPT
    assert result.user == "alice"


def test_unknown_numbers_are_404(users: UsersProjection) -> None:
    result = run(users, ["9999", "8888"])
    assert result.admission is Admission.UNKNOWN_USER
    assert result.admission.value == 404
    assert "9999" in result.reason and "8888" in result.reason
    assert result.user is None


def test_no_numbers_is_404(users: UsersProjection) -> None:
    result = run(users, [])
    assert result.admission is Admission.UNKNOWN_USER
    assert "this call" in result.reason


def test_known_but_not_recorded_is_403(users: UsersProjection) -> None:
    result = run(users, ["3003", "9999"])
    assert result.admission is Admission.NOT_ENABLED
    assert result.admission.value == 403
    assert result.user == "carol"
    assert "carol" in result.reason


def test_record_all_accepts_unknown_and_disabled(users: UsersProjection) -> None:
    unknown = run(users, ["9999"], record_all=True)
    assert unknown.admission is Admission.ACCEPT
    assert unknown.user is None
    disabled = run(users, ["3003"], record_all=True)
    assert disabled.admission is Admission.ACCEPT
    assert disabled.user == "carol"


def test_cannot_record_is_503_and_checked_first(users: UsersProjection) -> None:
    result = run(users, ["9999"], can_record=False, cannot_record_reason="disk full",
                 active_recordings=99, max_channels=1)
    assert result.admission is Admission.CANNOT_RECORD
    assert result.admission.value == 503
    assert result.reason == "disk full"
    default = run(users, ["1001"], can_record=False)
    assert default.reason == "cannot record"


def test_licence_limit_is_486(users: UsersProjection) -> None:
    result = run(users, ["1001"], active_recordings=2, max_channels=2)
    assert result.admission is Admission.NO_LICENCE
    assert result.admission.value == 486
    assert "2" in result.reason
    below = run(users, ["1001"], active_recordings=1, max_channels=2)
    assert below.admission is Admission.ACCEPT


def test_joining_leg_ignores_licence_limit(users: UsersProjection) -> None:
    result = run(users, ["1001"], active_recordings=1, max_channels=1, joins_existing=True)
    assert result.admission is Admission.ACCEPT


def test_user_policy_is_checked_before_licence(users: UsersProjection) -> None:
    # A full licence must not hide that the user is unknown (the next node would 404 too).
    assert run(users, ["9999"], active_recordings=5, max_channels=1).admission is (
        Admission.UNKNOWN_USER)
    assert run(users, ["3003"], active_recordings=5, max_channels=1).admission is (
        Admission.NOT_ENABLED)


def test_record_all_still_respects_licence(users: UsersProjection) -> None:
    result = run(users, ["9999"], record_all=True, active_recordings=1, max_channels=1)
    assert result.admission is Admission.NO_LICENCE


def test_removed_user_is_unknown(users: UsersProjection) -> None:
    users.apply(UserRemoved(node_id="n", username="alice"))
    assert run(users, ["1001"]).admission is Admission.UNKNOWN_USER


def test_user_changes_apply_immediately(users: UsersProjection) -> None:
    users.apply(UserUpserted(node_id="n", username="alice", extensions=["1001"], record=False))
    assert run(users, ["1001"]).admission is Admission.NOT_ENABLED
    assert run(users, ["1002"]).admission is Admission.UNKNOWN_USER  # extension dropped


# ---------------------------------------------------------------- number_of()
# (the one rule lives in services.signaling.identity)


@pytest.mark.parametrize(("aor", "expected"), [
    ("sip:1001@10.1.1.1", "1001"),
    ("<sip:1001@10.1.1.1>", "1001"),
    ("sips:alice@example.com", "alice"),
    ("SIP:Bob@example.com", "Bob"),
    ("tel:+15551234567", "+15551234567"),
    ("tel:+15551234567;phone-context=example.com", "+15551234567"),
    ("sip:+15551234567;npdi@example.com;user=phone", "+15551234567"),
    ("sip:2002@10.1.1.1;transport=tcp", "2002"),
    ("  <sip:3003@host>  ", "3003"),
    ("sip:example.com", None),  # no user part: never host as a number
    ("1001", "1001"),
    ("sip:@example.com", None),
    ("", None),
    (None, None),
])
def test_number_of(aor: str | None, expected: str | None) -> None:
    assert number_of(aor) == expected


# ---------------------------------------------------------------- sessions


def _meta(participants: list[Participant], call_ids: list[str]) -> RecordingMetadata:
    return RecordingMetadata(source="cucm", session_key="cucm:c:1",
                             participants=participants, sip_call_ids=call_ids)


def test_merge_cucm_participants_adds_call_id_and_keeps_known_parties() -> None:
    near = Participant(role="near", number="1001", device="SEP1", channel=0)
    far = Participant(role="far", number="2002", device="SEP2", channel=1)
    first = _meta([near, far], ["a"])
    merged = merge_cucm_participants(
        first, near.model_copy(update={"number": "other"}), far, "b")
    assert merged.sip_call_ids == ["a", "b"]
    assert merged.participants == [near, far]
    again = merge_cucm_participants(merged, near, far, "b")
    assert again.sip_call_ids == ["a", "b"]
    assert first.sip_call_ids == ["a"]  # the input is not mutated


def test_merge_cucm_participants_fills_missing_roles() -> None:
    near = Participant(role="near", number="1001", channel=0)
    far = Participant(role="far", number="2002", channel=1)
    merged = merge_cucm_participants(_meta([near], ["a"]), near, far, "b")
    assert [p.role for p in merged.participants] == ["near", "far"]
    assert merged.participants[1] == far


def test_live_legs() -> None:
    session = RecordingSession(recording_id="r", session_key="k",
                               started_at=datetime.now(UTC), metadata=_meta([], []))
    assert session.live_legs() == []
    a = Leg("a", "lt-a", "rt-a", [])
    b = Leg("b", "lt-b", "rt-b", [])
    session.legs = {"a": a, "b": b}
    assert session.live_legs() == [a, b]
    a.ended = True
    assert session.live_legs() == [b]
    b.ended = True
    assert session.live_legs() == []
