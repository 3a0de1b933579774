"""Server transactions (RFC 3261 17.2) with a fake transaction user and short timers."""

from __future__ import annotations

import asyncio
import time

from services.signaling.sip.message import SipRequest, parse_message
from services.signaling.sip.transport import Peer
from services.signaling.transactions import ServerTransaction, ServerTransactions
from tests.unit.test_uas import sip_request

UDP = Peer("UDP", "127.0.0.1", 5999)
TCP = Peer("TCP", "127.0.0.1", 5999)


class User:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.no_ack: list[ServerTransaction] = []

    def send(self, peer: Peer, data: bytes, request: SipRequest) -> None:
        self.sent.append(data)

    async def on_no_ack(self, transaction: ServerTransaction) -> None:
        self.no_ack.append(transaction)


def req(data: bytes) -> SipRequest:
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    return message


async def test_retransmitted_request_gets_the_cached_response() -> None:
    user = User()
    layer = ServerTransactions(user, t1=0.01)
    options = req(sip_request("OPTIONS", call_id="t1", branch="z9hG4bK-a"))
    assert layer.receive(options, UDP) is not None
    assert layer.receive(options, UDP) is None  # nothing cached yet: nothing resent
    assert user.sent == []
    layer.respond(options, UDP, b"200", 200)
    assert layer.receive(options, UDP) is None
    assert user.sent == [b"200", b"200"]


async def test_timer_g_doubles_up_to_t2_then_timer_h() -> None:
    user = User()
    layer = ServerTransactions(user, t1=0.01, t2=0.02)
    invite = req(sip_request("INVITE", call_id="t2", branch="z9hG4bK-b"))
    layer.receive(invite, UDP)
    layer.respond(invite, UDP, b"200", 200, to_tag="ours")
    for _ in range(200):
        await asyncio.sleep(0.01)
        if user.no_ack:
            break
    # 64*T1 = 0.64 s at intervals 0.01, 0.02, 0.02, ...: about 32 retransmissions.
    assert 20 <= len(user.sent) - 1 <= 40
    (tx,) = user.no_ack
    assert tx.to_tag == "ours" and tx.status == 200
    assert layer.pending_timers() == []


async def test_ack_without_to_tag_or_branch_stops_timer_g() -> None:
    """RFC 3261 17.2.1: the ACK belongs to the INVITE transaction of its Call-ID and CSeq,
    even from a peer that forgot the To-tag and drew a new branch."""
    user = User()
    layer = ServerTransactions(user, t1=0.01)
    invite = req(sip_request("INVITE", call_id="t3", branch="z9hG4bK-c"))
    layer.receive(invite, UDP)
    layer.respond(invite, UDP, b"200", 200, to_tag="ours")
    tx = layer.ack(req(sip_request("ACK", call_id="t3", branch="z9hG4bK-other")))
    assert tx is not None and tx.to_tag == "ours" and tx.acked
    sent = len(user.sent)
    await asyncio.sleep(0.1)
    assert len(user.sent) == sent
    assert user.no_ack == []
    assert layer.ack(req(sip_request("ACK", call_id="t3", cseq=7))) is None


async def test_timer_h_bounds_the_wait_for_an_ack_over_tcp_without_retransmitting() -> None:
    user = User()
    layer = ServerTransactions(user, t1=0.001)
    invite = req(sip_request("INVITE", call_id="t4"))
    layer.receive(invite, TCP)
    layer.respond(invite, TCP, b"200", 200, to_tag="ours")
    for _ in range(100):
        await asyncio.sleep(0.01)
        if user.no_ack:
            break
    assert user.sent == [b"200"]
    assert len(user.no_ack) == 1


async def test_expire_forgets_old_transactions_but_not_those_waiting_for_ack() -> None:
    user = User()
    layer = ServerTransactions(user, t1=10.0)
    options = req(sip_request("OPTIONS", call_id="t5"))
    invite = req(sip_request("INVITE", call_id="t6"))
    layer.receive(options, UDP)
    layer.receive(invite, UDP)
    layer.respond(invite, UDP, b"200", 200)
    layer.expire(time.monotonic() + 641)
    assert layer.get(options) is None
    assert layer.get(invite) is not None  # Timer H has not spoken yet
    layer.shutdown()
    layer.expire(time.monotonic() + 641)
    assert layer.transactions == {} and layer.invites == {}


async def test_trying_only_when_the_answer_is_late() -> None:
    """RFC 3261 17.2.1: a 100 Trying only if the TU has not answered within the delay;
    once sent it is the response a retransmitted INVITE gets."""
    user = User()
    layer = ServerTransactions(user, trying_after=0.01)
    fast = req(sip_request("INVITE", call_id="t7", branch="z9hG4bK-fast"))
    layer.receive(fast, UDP)
    layer.trying_unless_answered(fast, lambda: layer.respond(fast, UDP, b"100", 100))
    layer.respond(fast, UDP, b"200", 200, to_tag="ours")
    slow = req(sip_request("INVITE", call_id="t8", branch="z9hG4bK-slow"))
    layer.receive(slow, UDP)
    layer.trying_unless_answered(slow, lambda: layer.respond(slow, UDP, b"100", 100))
    await asyncio.sleep(0.05)
    assert user.sent == [b"200", b"100"]
    assert layer.receive(slow, UDP) is None  # a retransmission gets the 100 again
    assert user.sent == [b"200", b"100", b"100"]
    layer.shutdown()


async def test_answered_is_told_each_invite_answer_time_once() -> None:
    user = User()
    times: list[float] = []
    layer = ServerTransactions(user, t1=10.0, answered=times.append)
    invite = req(sip_request("INVITE", call_id="t9", branch="z9hG4bK-i"))
    layer.receive(invite, UDP)
    await asyncio.sleep(0.02)
    layer.respond(invite, UDP, b"100", 100)  # provisional: not an answer
    assert times == []
    layer.respond(invite, UDP, b"200", 200, to_tag="ours")
    layer.respond(invite, UDP, b"200", 200, to_tag="ours")  # the same answer again
    assert len(times) == 1 and 0.02 <= times[0] < 5.0
    options = req(sip_request("OPTIONS", call_id="t10", branch="z9hG4bK-o"))
    layer.receive(options, UDP)
    layer.respond(options, UDP, b"200", 200)  # not an INVITE
    refused = req(sip_request("INVITE", call_id="t11", branch="z9hG4bK-r"))
    layer.receive(refused, UDP)
    layer.respond(refused, UDP, b"404", 404)  # a refusal is an answer too
    assert len(times) == 2
