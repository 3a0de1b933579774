"""Missed calls: every refused INVITE kept, a flood bounded, the counts adding up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from callrec.metrics import Registry
from contracts.v1.missed import MISSED_REASONS, REASON_TEXT, MissedCall
from services.signaling.missed import (
    CallInfo,
    MissedAggregator,
    MissedCalls,
    MissedPublisher,
    raw_key,
)
from services.signaling.sip.transport import Peer
from services.signaling.uas import RecorderUas
from tests.unit.test_admission import make_gate, request
from tests.unit.test_uas import FakeBackend, FakeSender, settle, sip_request

T0 = datetime(2026, 12, 1, 14, 2, 0, tzinfo=UTC)
STRANGER = Peer("UDP", "127.0.0.3", 5999)
PBX = Peer("UDP", "127.0.0.1", 5999)


def total(records: list[MissedCall]) -> int:
    return sum(r.count for r in records)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_a_flood_from_one_source_is_a_few_records_and_one_aggregate_per_minute() -> None:
    agg = MissedAggregator("n1", per_source=5)
    out: list[MissedCall] = []
    for i in range(10_000):
        out += agg.note(T0 + timedelta(milliseconds=5 * i), "127.0.0.3", "not_allowed_drop",
                        None, key=f"c{i} 1")
    # 10,000 INVITEs at 200/s span 50 s: one window; five single records so far.
    assert len(out) == 5 and all(r.count == 1 and not r.aggregated for r in out)
    out += agg.tick(T0 + timedelta(seconds=61))
    assert len(out) == 6
    aggregate = out[-1]
    assert aggregate.aggregated and aggregate.count == 9_995
    assert aggregate.source == "127.0.0.3" and aggregate.reason == "not_allowed_drop"
    assert aggregate.at == T0 + timedelta(milliseconds=25)
    assert aggregate.until == T0 + timedelta(milliseconds=5 * 9_999)
    assert total(out) == 10_000
    assert agg.outcomes == {"recorded": 5, "aggregated": 9_995, "overflow": 0,
                            "retransmission": 0}


def test_many_spoofed_sources_are_bounded_per_window_and_still_add_up() -> None:
    agg = MissedAggregator("n1", per_source=5, individual_cap=60, aggregate_cap=60)
    out: list[MissedCall] = []
    n = 0
    for minute in range(3):
        for i in range(20_000):
            source = f"10.{minute}.{i // 250}.{i % 250}"
            reason = "not_allowed" if i % 2 else "unknown_user"
            out += agg.note(T0 + timedelta(minutes=minute, microseconds=i), source, reason,
                            403, key=f"{minute}-{i}")
            n += 1
    out += agg.flush()
    assert total(out) == n == 60_000
    for minute in range(3):
        start = T0 + timedelta(minutes=minute)
        in_window = [r for r in out if start <= r.at < start + timedelta(minutes=1)]
        # 60 single records, 60 aggregates, one overflow per reason seen.
        assert len(in_window) <= 60 + 60 + len(MISSED_REASONS)
        overflow = [r for r in in_window if r.source == "*"]
        assert {r.reason for r in overflow} == {"not_allowed", "unknown_user"}
        assert all(r.detail and r.detail.startswith("from ") for r in overflow)


def test_retransmissions_of_one_invite_are_one_miss() -> None:
    agg = MissedAggregator("n1")
    out = agg.note(T0, "127.0.0.1", "unknown_user", 404, "no recording user for 2999",
                   key="abc 1")
    for ms in (500, 1500, 3500, 7500):
        out += agg.note(T0 + timedelta(milliseconds=ms), "127.0.0.1", "unknown_user", 404,
                        key="abc 1")
    out += agg.note(T0 + timedelta(seconds=1), "127.0.0.2", "unknown_user", 404,
                    key="abc 1")  # another source: another INVITE
    out += agg.note(T0 + timedelta(seconds=2), "127.0.0.1", "unknown_user", 404,
                    key="abc 2")  # a new CSeq: a new attempt
    assert len(out) == 3
    assert agg.outcomes["retransmission"] == 4


def test_retransmission_memory_is_bounded() -> None:
    agg = MissedAggregator("n1", retransmission_keys=100)
    for i in range(10_000):
        agg.note(T0, "127.0.0.3", "not_allowed", 403, key=f"c{i} 1")
    assert len(agg.recent) <= 100
    assert len(agg.individual) <= agg.individual_cap


def test_details_are_taken_only_for_records_not_for_each_refusal() -> None:
    calls = 0

    def info() -> CallInfo:
        nonlocal calls
        calls += 1
        return CallInfo(from_number="1001", to_number="2999")

    agg = MissedAggregator("n1", per_source=3)
    for i in range(1000):
        agg.note(T0, "127.0.0.3", "not_allowed_drop", None, key=str(i), info=info)
    assert calls == 3 + 1  # three single records and the aggregate's sample


def test_a_wall_clock_stepping_back_does_not_reopen_the_budget() -> None:
    agg = MissedAggregator("n1", per_source=2)
    out = []
    for i in range(5):
        out += agg.note(T0 + timedelta(seconds=30), "s", "not_allowed", 403, key=f"a{i}")
    for i in range(5):
        out += agg.note(T0 - timedelta(minutes=5), "s", "not_allowed", 403, key=f"b{i}")
    assert len(out) == 2
    out += agg.tick(T0 + timedelta(minutes=1))
    assert total(out) == 10 and len(out) == 3


def test_records_are_cleaned_and_capped_and_say_why_in_words() -> None:
    record = MissedCall(node_id="n1", at=T0, source="127.0.0.1", status=404,
                        reason="unknown_user", detail="no recording user for 2999",
                        from_name="Eve\x1b[31m\r\nInjected: x" + "A" * 500,
                        to_number="2999" * 100, numbers=["1", "2\n", "3", "4", "5"],
                        call_id="\x00" * 10)
    assert record.describe() == "404 unknown user: no recording user for 2999"
    assert record.from_name is not None and len(record.from_name) <= 96
    assert "\x1b" not in record.from_name and "\n" not in record.from_name
    assert record.to_number is not None and len(record.to_number) <= 64
    assert record.numbers == ["1", "2", "3", "4"]
    assert record.call_id is None
    assert set(REASON_TEXT) == set(MISSED_REASONS)
    silent = MissedCall(node_id="n1", at=T0, source="x", reason="not_allowed_drop")
    assert silent.describe().startswith("no answer source not allowed")


def test_the_gate_keeps_a_strangers_invites_not_its_options_or_acks() -> None:
    gate, _, _, registry, _ = make_gate()
    kept: list[MissedCall] = []
    clock = Clock()
    missed = MissedCalls(MissedAggregator("n1", per_source=5), kept.append, registry, clock)
    gate.missed = missed
    for n in range(300):
        gate.on_message(request("INVITE", n), STRANGER)
    gate.on_message(request("INVITE", 0), STRANGER)  # a retransmission
    gate.on_message(request("OPTIONS", 1000), STRANGER)
    gate.on_message(request("ACK", 1001), STRANGER)
    clock.now += timedelta(minutes=1)
    missed.tick()
    assert total(kept) == 300
    answered = [r for r in kept if r.reason == "not_allowed"]
    silent = [r for r in kept if r.reason == "not_allowed_drop"]
    assert sum(r.count for r in answered) == gate.refusals.get(reason="not_allowed")
    assert all(r.status == 403 for r in answered) and all(r.status is None for r in silent)
    assert len(kept) <= 2 * (5 + 1)
    single = silent[0]
    assert single.from_number == "1001" and single.to_number == "9999"
    assert single.call_id is not None and single.transport == "UDP"
    assert missed.counter is not None
    assert missed.counter.get(outcome="retransmission") == 1


def test_raw_key_matches_the_parsed_key_and_survives_garbage() -> None:
    assert raw_key(request("INVITE", 7)) == "c7 1"
    assert raw_key(b"INVITE x\r\ni:  short-form \r\nCSEQ: 42 INVITE\r\n\r\n") == "short-form 42"
    assert raw_key(b"\xff" * 100) is None


async def test_the_uas_keeps_each_refusal_with_status_reason_and_numbers() -> None:
    backend = FakeBackend()
    backend.add_user("bob", ["1002"], record=False)
    kept: list[MissedCall] = []
    missed = MissedCalls(MissedAggregator("n1"), kept.append, None, Clock())
    uas = RecorderUas(backend=backend, sender=FakeSender(), address="10.0.0.50",
                      sip_port=5060, record_all=False, max_channels=10, missed=missed)
    try:
        for call_id, user in (("c404", "2999"), ("c403", "1002")):
            uas.on_message(sip_request("INVITE", call_id=call_id,
                                       from_=f'"Caller" <sip:{user}@10.1.1.1>;tag=a',
                                       to=f"<sip:{user}@10.0.0.50>"), PBX)
            await settle(uas)
        uas.on_message(sip_request("INVITE", call_id="c400", body=b"v=0\r\nbroken",
                                   content_type="application/sdp"), PBX)
        await settle(uas)
    finally:
        await uas.shutdown()
    by_call = {r.call_id: r for r in kept}
    assert by_call["c404"].status == 404 and by_call["c404"].reason == "unknown_user"
    assert by_call["c404"].numbers and "2999" in by_call["c404"].numbers
    assert by_call["c404"].describe().startswith("404 unknown user: no recording user for")
    assert by_call["c404"].from_name == "Caller" and by_call["c404"].kind == "sip"
    assert (by_call["c403"].status, by_call["c403"].reason) == (403, "not_enabled")
    assert by_call["c400"].status == 400 and by_call["c400"].reason == "bad_request"


async def test_the_publisher_drops_and_counts_beyond_its_queue() -> None:
    stored: list[MissedCall] = []
    release = asyncio.Event()

    async def publish(record: MissedCall) -> None:
        await release.wait()
        stored.append(record)

    registry = Registry("signaling", "n1")
    publisher = MissedPublisher(publish, registry, max_queue=10)
    for i in range(25):
        publisher.put(MissedCall(node_id="n1", at=T0, source=str(i), reason="not_allowed"))
    release.set()
    await publisher.drain(timeout=5.0)
    assert len(stored) == 10
    assert publisher.counter is not None
    assert publisher.counter.get(result="queue_full") == 15
    assert publisher.counter.get(result="stored") == 10


async def test_the_publisher_counts_what_the_stream_refuses() -> None:
    async def publish(record: MissedCall) -> None:
        raise RuntimeError("no responders")

    registry = Registry("signaling", "n1")
    publisher = MissedPublisher(publish, registry, retry_delay=0.0)
    publisher.put(MissedCall(node_id="n1", at=T0, source="x", reason="not_allowed"))
    await publisher.drain(timeout=5.0)
    assert publisher.counter is not None
    assert publisher.counter.get(result="publish_failed") == 1


@pytest.mark.parametrize("days", [30.0, 0.5])
def test_the_stream_is_bounded_by_age_and_size(days: float) -> None:
    from nats.js.api import DiscardPolicy

    from callrec.bus import missed_stream_config
    config = missed_stream_config("n-1", days)
    assert config.name == "MISSED_n_1" and config.subjects == ["callrec.v1.n-1.missed"]
    assert config.max_age == days * 86400 and config.max_bytes == 64 * 1024 * 1024
    assert config.discard == DiscardPolicy.OLD
