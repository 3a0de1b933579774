"""Overload: a new INVITE that waited too long in the node's queue gets 503 at once,
so the PBX records the call on its backup and the queue drains, rather than being
answered seconds late with its retransmissions parsed again behind it. And a PBX over
its --sip-rate: its new work gets 503, each retransmission the answer its first copy
got."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta

from callrec.metrics import Registry
from contracts.v1.missed import MissedCall
from services.signaling.admission import AllowList, queue_wait, waited_too_long
from services.signaling.gate import SipGate
from services.signaling.missed import MissedAggregator, MissedCalls
from services.signaling.sip.message import SipResponse, StreamFramer, parse_message
from services.signaling.sip.transport import TCP_READ_CHUNK, Peer, SipTransports
from services.signaling.transactions import StatelessAnswers
from services.signaling.uas import RecorderUas
from tests.unit.test_admission import Clock as GateClock
from tests.unit.test_admission import Replies
from tests.unit.test_admission_uas import Refusals
from tests.unit.test_missed_calls import Clock
from tests.unit.test_uas import (
    FakeBackend,
    FakeSender,
    cucm_from,
    settle,
    sip_request,
    to_tag,
)

PBX = Peer("UDP", "127.0.0.1", 5999)
# Linux turns receive timestamps on a moment after the first socket asks (a deferred
# work item); a datagram received before that is stamped when it is read.
KERNEL_STAMPING_ON = 0.2


def test_the_wait_is_measured_from_the_arrival_and_a_clock_step_back_is_no_wait() -> None:
    assert queue_wait(None, 100.0) is None
    assert queue_wait(98.5, 100.0) == 1.5
    assert queue_wait(101.0, 100.0) == 0.0


def test_only_a_known_wait_over_the_limit_sheds_and_0_never_does() -> None:
    assert waited_too_long(1.5, 1.0)
    assert not waited_too_long(1.0, 1.0)
    assert not waited_too_long(0.2, 1.0)
    assert not waited_too_long(None, 1.0)
    assert not waited_too_long(30.0, 0.0)


def leg(call: int) -> bytes:
    return sip_request("INVITE", call_id=f"near-{call}@10.1.1.1", branch=f"z9hG4bK-ov-{call}",
                       from_=cucm_from("near", refci=str(3000 + call), tag=f"t{call}"))


class Node:
    """A UAS (fake capture) that sheds after 1 s, with its refusals and missed calls."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.sender = FakeSender()
        self.refusals = Refusals()
        self.kept: list[MissedCall] = []
        self.clock = Clock()
        self.missed = MissedCalls(MissedAggregator("n1"), self.kept.append, None, self.clock)
        self.waits: list[float] = []
        self.uas = RecorderUas(backend=self.backend, sender=self.sender, address="10.0.0.50",
                               sip_port=5060, record_all=True, max_channels=10,
                               refusals=self.refusals, missed=self.missed,
                               shed_after_s=1.0, waited=self.waits.append)

    def finals(self, call: int) -> list[SipResponse]:
        return [r for r in self.sender.responses(f"near-{call}@10.1.1.1", "INVITE")
                if r.status >= 200]


async def test_a_late_invite_gets_503_with_retry_after_and_its_retransmission_the_same() -> None:
    node = Node()
    try:
        node.uas.on_message(leg(1), PBX, time.time() - 2.5)
        await settle(node.uas)
        (final,) = node.finals(1)
        assert final.status == 503 and final.headers.get("Retry-After") == "5"
        assert node.backend.allocations == [] and node.uas.sessions == {}
        # The PBX's retransmission, queued behind it, is answered from the transaction:
        # the same 503, never a 200 for a call the PBX has moved to its backup.
        node.uas.on_message(leg(1), PBX, time.time() - 2.0)
        await settle(node.uas)
        assert [r.status for r in node.finals(1)] == [503, 503]
        assert node.backend.allocations == []
        assert node.uas.counters.shed == 1
        assert node.refusals.seen == [("127.0.0.1", "overloaded")]
        node.clock.now += timedelta(minutes=1)
        node.missed.tick()
        assert [(r.reason, r.status) for r in node.kept] == [("overloaded", 503)]
        assert node.waits and node.waits[0] >= 2.5
    finally:
        await node.uas.shutdown()


async def test_a_prompt_or_unstamped_invite_is_recorded() -> None:
    node = Node()
    try:
        node.uas.on_message(leg(2), PBX, time.time() - 0.3)
        node.uas.on_message(leg(3), PBX)  # arrival unknown: never shed
        await settle(node.uas)
        assert [r.status for r in node.finals(2)] == [200]
        assert [r.status for r in node.finals(3)] == [200]
        assert node.uas.counters.shed == 0 and len(node.backend.allocations) == 2
    finally:
        await node.uas.shutdown()


async def shedding_chain() -> tuple[FakeBackend, SipGate, SipTransports, RecorderUas]:
    """The real chain on loopback, as the service wires it: the transports (kernel
    stamps), the gate, a UAS (fake capture) that sheds after 1 s."""
    backend = FakeBackend()
    gate = SipGate(allow=AllowList.for_node("127.0.0.1", []), pbx_rate=1000.0,
                   pbx_burst=1000.0, metrics=Registry("signaling", "t"))
    transports = SipTransports(gate.on_message)
    uas = RecorderUas(backend=backend, sender=transports, address="127.0.0.1", sip_port=5060,
                      record_all=True, max_channels=100, refusals=gate, shed_after_s=1.0)
    gate.connect(uas.on_message, uas.on_message_over_limit, transports)
    await transports.start("127.0.0.1", 0)
    await asyncio.sleep(KERNEL_STAMPING_ON)
    return backend, gate, transports, uas


async def final_statuses(pbx: socket.socket, expected: int,
                         framer: StreamFramer | None = None) -> dict[str, list[int]]:
    """The final answers the PBX's socket gets, by Call-ID, until ``expected`` of them
    (or 3 s); a TCP stream is cut into messages by ``framer``."""
    finals: dict[str, list[int]] = {}
    for _ in range(300):
        await asyncio.sleep(0.01)
        while True:
            try:
                data = pbx.recv(65536)
            except BlockingIOError:
                break
            assert data, "the node closed the PBX's connection"
            for raw in framer.feed(data) if framer is not None else [data]:
                response = parse_message(raw)
                assert isinstance(response, SipResponse)
                if response.status >= 200:
                    finals.setdefault(response.call_id, []).append(response.status)
        if sum(len(s) for s in finals.values()) >= expected:
            break
    return finals


async def test_a_burst_queued_while_the_loop_was_busy_is_shed_and_the_next_calls_recorded(
) -> None:
    """The real chain: kernel stamps on the UDP socket, the gate, the UAS. INVITEs that
    sat in the socket's buffer through a 1.5 s stall get 503; those sent after it, 200."""
    backend, gate, transports, uas = await shedding_chain()
    pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pbx.bind(("127.0.0.1", 0))
    pbx.setblocking(False)
    target = ("127.0.0.1", transports.udp.sockname[1])
    try:
        for call in range(20):
            pbx.sendto(leg(call), target)
        time.sleep(1.5)  # signaling is busy: the INVITEs wait in the socket
        for call in range(20, 25):
            pbx.sendto(leg(call), target)
        pbx.sendto(leg(0), target)  # a retransmission of a shed one
        finals = await final_statuses(pbx, 26)
        assert all(finals.get(f"near-{c}@10.1.1.1") == [503] for c in range(1, 20)), finals
        assert finals["near-0@10.1.1.1"] == [503, 503]
        assert all(finals[f"near-{c}@10.1.1.1"] == [200] for c in range(20, 25))
        assert len(backend.allocations) == 5
        assert gate.refusals.get(reason="overloaded") == 20
    finally:
        pbx.close()
        await uas.shutdown()
        transports.close()


async def test_over_tcp_too_a_burst_queued_while_the_loop_was_busy_is_shed(
) -> None:
    """The same chain over a PBX's TCP connection (CUCM trunks and SBCs often use TCP).
    Read through the loop's own transport, an INVITE's arrival was the time of reading:
    a TCP backlog was never shed, however long it had waited (all 25 answered 200). Now
    each read carries the kernel's stamp of its newest segment: INVITEs that sat in the
    connection's buffer through a 1.5 s stall get 503, those sent after it 200, on the
    same connection."""
    backend, gate, transports, uas = await shedding_chain()
    pbx = socket.create_connection(transports.tcp.sockname)
    pbx.setblocking(False)
    try:
        for _ in range(100):  # accepted and being read
            await asyncio.sleep(0.01)
            if transports.tcp.connections:
                break
        for call in range(20):
            pbx.sendall(leg(call))
        time.sleep(1.5)  # signaling is busy: the INVITEs wait in the connection
        for call in range(20, 25):
            pbx.sendall(leg(call))
        finals = await final_statuses(pbx, 25, StreamFramer())
        before = [finals.get(f"near-{c}@10.1.1.1") for c in range(20)]
        shed = before.count([503])
        # The kernel merges what queues behind the last segment sent before the stall
        # with what came after it, under the newest stamp: those few INVITEs (at most a
        # read's worth) cannot be told from fresh ones and are answered.
        merged = TCP_READ_CHUNK // len(leg(0)) + 2
        assert before == [[503]] * shed + [[200]] * (20 - shed), finals
        assert shed >= 20 - merged, (shed, merged)
        assert all(finals.get(f"near-{c}@10.1.1.1") == [200] for c in range(20, 25)), finals
        assert len(backend.allocations) == 25 - shed
        assert gate.refusals.get(reason="overloaded") == shed
    finally:
        pbx.close()
        await uas.shutdown()
        transports.close()


async def test_over_its_rate_a_pbx_gets_503_for_new_work_and_every_retransmission_its_first_answer(
) -> None:
    """The gate (2 messages a second) in front of the UAS, as the service wires them.
    Before, the gate answered 503 itself, statelessly: a retransmission of an INVITE
    being answered 200 got a contradicting 503, and a retransmission of a refused
    INVITE that came once the rate allowed it again was recorded (200) after the PBX
    had taken the 503 and recorded the call on its backup."""
    registry = Registry("signaling", "n1")
    gate_clock = GateClock()
    gate = SipGate(allow=AllowList.for_node("127.0.0.1", []), pbx_rate=2.0, pbx_burst=2.0,
                   metrics=registry, clock=gate_clock)
    node = Node()
    kept: list[MissedCall] = []
    node.uas.refusals = gate
    node.uas.missed = MissedCalls(MissedAggregator("n1"), kept.append, None, node.clock)
    strangers = Replies()
    gate.connect(node.uas.on_message, node.uas.on_message_over_limit, strangers)
    try:
        gate.on_message(leg(1), PBX)
        gate.on_message(leg(2), PBX)  # the bucket is empty now
        gate.on_message(leg(3), PBX)
        await settle(node.uas)
        assert [r.status for r in node.finals(1)] == [200]
        assert [r.status for r in node.finals(2)] == [200]
        (refused,) = node.finals(3)
        assert refused.status == 503 and refused.headers.get("Retry-After") == "5"
        assert len(node.backend.allocations) == 2
        # Refused without a transaction: a flood over the rate leaves no state but the
        # bounded memory of its answers.
        transactions = len(node.uas.transactions.transactions)
        for n in range(100, 300):
            gate.on_message(leg(n), PBX)
        await settle(node.uas)
        assert all([r.status for r in node.finals(n)] == [503] for n in range(100, 300))
        assert len(node.uas.transactions.transactions) == transactions
        assert len(node.uas.stateless) == 201
        # Still over the rate: leg 1's retransmission gets leg 1's 200 again (and Timer
        # G may have sent it again meanwhile: no ACK in this test).
        answered = len(node.finals(1))
        gate.on_message(leg(1), PBX)
        await settle(node.uas)
        assert len(node.finals(1)) > answered
        assert {r.status for r in node.finals(1)} == {200}
        # Back under the rate: leg 3's retransmission gets the same 503 (same To tag),
        # and nothing is allocated for it.
        gate_clock.now += 10.0
        gate.on_message(leg(3), PBX)
        await settle(node.uas)
        assert [(r.status, to_tag(r)) for r in node.finals(3)] == [(503, to_tag(refused))] * 2
        assert len(node.backend.allocations) == 2
        # The retransmission took one token: leg 4 takes the last, leg 5 is over the
        # rate; OPTIONS is new work (503) too, a BYE in a dialog goes through.
        gate.on_message(leg(4), PBX)
        gate.on_message(leg(5), PBX)
        gate.on_message(sip_request("OPTIONS", call_id="ping", branch="z9hG4bK-ping"), PBX)
        bye = sip_request("BYE", call_id="near-1@10.1.1.1", branch="z9hG4bK-bye-1",
                          from_=cucm_from("near", refci="3001", tag="t1"),
                          to_tag=to_tag(node.finals(1)[0]))
        gate.on_message(bye, PBX)
        await settle(node.uas)
        assert [r.status for r in node.finals(4)] == [200]
        assert [r.status for r in node.finals(5)] == [503]
        assert node.sender.statuses("ping", "OPTIONS") == [503]
        assert node.sender.statuses("near-1@10.1.1.1", "BYE") == [200]
        assert strangers.sent == []
        assert gate.refusals.get(reason="rate_limited") == 203  # legs 3, 100-299, 5, OPTIONS
        node.clock.now += timedelta(minutes=1)
        node.uas.missed.tick()
        assert sum(r.count for r in kept) == 202
        assert {(r.reason, r.status) for r in kept} == {("rate_limited", 503)}
    finally:
        await node.uas.shutdown()


def test_stateless_answers_are_kept_64_t1_and_at_most_their_capacity() -> None:
    clock = GateClock()
    answers = StatelessAnswers(lifetime=32.0, capacity=3, clock=clock)
    for n in range(4):
        answers.remember(("z9hG4bK", str(n)), f"503 #{n}".encode())
        clock.now += 1.0
    assert len(answers) == 3 and answers.get(("z9hG4bK", "0")) is None  # the oldest went
    assert answers.get(("z9hG4bK", "3")) == b"503 #3"
    clock.now += 29.5  # 32 s after #1 was sent, 30.5 after #2
    assert answers.get(("z9hG4bK", "1")) is None and answers.get(("z9hG4bK", "2")) == b"503 #2"
    clock.now += 10.0
    assert answers.get(("z9hG4bK", "3")) is None and len(answers) == 0
