"""Server transactions (RFC 3261 17.2): absorb retransmitted requests, retransmit final
INVITE responses over UDP until the ACK, and say when an ACK never came.

The transaction layer knows messages, not calls: it calls its transaction user back
through `TransactionUser` (send bytes; an INVITE's final response was never
acknowledged) and never imports it. The RFC timers are constructor parameters:

- Timer G: a final INVITE response over UDP is sent again after T1, 2*T1, ... capped at T2;
- Timer H: after 64*T1 without an ACK the transaction gives up (`on_no_ack`);
- Timers I and J: a transaction is remembered 64*T1 after it began (`expire`), so
  retransmitted requests and ACKs are absorbed rather than processed twice;
- 100 Trying (17.2.1): sent only when the TU has not answered an INVITE within
  TRYING_AFTER (the RFC lets a UAS skip it when the answer comes within 200 ms), so
  an INVITE answered at once costs one response on the wire, not two.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from .sip.message import SipRequest
from .sip.transport import Peer

log = structlog.get_logger()

T1 = 0.5
T2 = 4.0
TRYING_AFTER = 0.1  # under the RFC's 200 ms, with room for the timer to run late

TransactionKey = tuple[str, ...]


class TransactionUser(Protocol):
    """What the transaction layer calls back (the UAS)."""

    def send(self, peer: Peer, data: bytes, request: SipRequest) -> None:
        """Put a response on the wire toward the request's sender."""
        ...

    async def on_no_ack(self, transaction: ServerTransaction) -> None:
        """Timer H fired: a final INVITE response was never acknowledged."""
        ...


@dataclass
class ServerTransaction:
    key: TransactionKey
    method: str
    peer: Peer
    created: float
    request: SipRequest
    response: bytes | None = None
    status: int = 0
    to_tag: str | None = None
    cancelled: bool = False
    acked: bool = False
    # Timer G's next retransmission, or Timer H's deadline over a reliable transport:
    # a loop timer, not a task, so the ACK that stops it costs a cancel, not a wake-up.
    timer_g: asyncio.TimerHandle | None = field(default=None, repr=False)
    trying: asyncio.TimerHandle | None = field(default=None, repr=False)


def transaction_key(request: SipRequest, method: str | None = None) -> TransactionKey:
    """RFC 3261 17.2.3: the top Via's branch (with sent-by) and the method; for RFC 2543
    peers without a magic-cookie branch, the request's identity instead."""
    via = request.vias[0]
    branch = via.branch or ""
    method = method or request.method
    if branch.startswith("z9hG4bK"):
        return (branch, via.host, str(via.port), method)
    return (request.call_id, str(request.cseq[0]), request.from_.tag or "", method)


# Stateless answers remembered at most (the oldest forgotten first): a few MB.
STATELESS_ANSWERS_KEPT = 8192


class StatelessAnswers:
    """Final answers sent without a transaction, by transaction key, for 64*T1.

    A PBX over its --sip-rate gets 503 for new work without a transaction: no state
    and no Timer G per refused request, so a flood over the rate (perhaps from a
    spoofed address) costs a parse and a response, in bounded memory. Remembered
    here, a retransmission of a refused request gets the same answer (the same To
    tag), even once the PBX is back under its rate: a call the PBX took to its backup
    is never answered 200 here later. Beyond `capacity` the oldest are forgotten."""

    def __init__(self, *, lifetime: float = 64 * T1, capacity: int = STATELESS_ANSWERS_KEPT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.capacity = capacity
        self.clock = clock
        self._answers: OrderedDict[TransactionKey, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: TransactionKey) -> bytes | None:
        if not self._answers:
            return None
        self._expire()
        kept = self._answers.get(key)
        return None if kept is None else kept[1]

    def remember(self, key: TransactionKey, response: bytes) -> None:
        self._expire()
        self._answers[key] = (self.clock(), response)
        self._answers.move_to_end(key)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def _expire(self) -> None:
        horizon = self.clock() - self.lifetime
        answers = self._answers
        while answers:
            key, (sent, _) = next(iter(answers.items()))
            if sent > horizon:
                return
            del answers[key]


class ServerTransactions:
    def __init__(self, user: TransactionUser, *, t1: float = T1, t2: float = T2,
                 trying_after: float = TRYING_AFTER,
                 answered: Callable[[float], None] | None = None) -> None:
        self.user = user
        # Told the seconds from an INVITE's transaction to its first final response.
        self.answered = answered
        self.t1 = t1
        self.t2 = t2
        self.trying_after = trying_after
        self.lifetime = 64 * t1
        self.transactions: dict[TransactionKey, ServerTransaction] = {}
        # INVITE transactions by (Call-ID, CSeq number): where an ACK belongs even when
        # it carries no To-tag or another branch (RFC 3261 17.2.1, 13.2.2.4).
        self.invites: dict[tuple[str, int], ServerTransaction] = {}
        self._no_ack_tasks: set[asyncio.Task[None]] = set()

    def get(self, request: SipRequest, method: str | None = None) -> ServerTransaction | None:
        return self.transactions.get(transaction_key(request, method))

    def __contains__(self, key: TransactionKey) -> bool:
        """Whether a transaction with this key is remembered."""
        return key in self.transactions

    def receive(self, request: SipRequest, peer: Peer,
                key: TransactionKey | None = None) -> ServerTransaction | None:
        """A new transaction for a request; None for a retransmission (the cached
        response, if any, has been sent again). `key`: its transaction key, if known."""
        key = key or transaction_key(request)
        tx = self.transactions.get(key)
        if tx is not None:
            if tx.response is not None:
                self.user.send(tx.peer, tx.response, request)
            return None
        tx = ServerTransaction(key, request.method, peer, time.monotonic(), request)
        self.transactions[key] = tx
        if request.method == "INVITE":
            self.invites[(request.call_id, request.cseq[0])] = tx
        return tx

    def trying_unless_answered(self, request: SipRequest, send: Callable[[], None]) -> None:
        """Call `send` (which sends a 100 Trying through `respond`) after `trying_after`
        unless a response has gone out by then (RFC 3261 17.2.1)."""
        tx = self.transactions.get(transaction_key(request))
        if tx is None or tx.status or tx.trying is not None:
            return

        def fire() -> None:
            tx.trying = None
            if not tx.status:
                send()

        tx.trying = asyncio.get_running_loop().call_later(self.trying_after, fire)

    def respond(self, request: SipRequest, peer: Peer, data: bytes, status: int,
                to_tag: str | None = None) -> None:
        """Send a response within the request's transaction; final INVITE responses over
        UDP are retransmitted (Timer G) until the ACK or Timer H."""
        tx = self.transactions.get(transaction_key(request))
        if tx is not None and tx.trying is not None:
            tx.trying.cancel()
            tx.trying = None
        if (self.answered is not None and tx is not None and request.method == "INVITE"
                and status >= 200 > tx.status):
            self.answered(time.monotonic() - tx.created)
        if tx is not None and status >= tx.status:
            tx.status = status
            tx.response = data
            if to_tag is not None:
                tx.to_tag = to_tag
        self.user.send(peer, data, request)
        if request.method == "INVITE" and status >= 200 and tx is not None:
            if tx.timer_g is not None:
                tx.timer_g.cancel()
            if peer.transport == "UDP":
                self._timer_g(tx, peer, data, request, self.t1, 0.0)
            else:
                # Reliable transports need no retransmission, but Timer H still bounds
                # the wait for the ACK (RFC 3261 17.2.1).
                tx.timer_g = asyncio.get_running_loop().call_later(
                    self.lifetime, self._timer_h, tx)

    def ack(self, request: SipRequest) -> ServerTransaction | None:
        """The INVITE transaction an ACK acknowledges (by Call-ID and CSeq number, so an
        ACK without To-tag or with a new branch still matches); stops its timers."""
        tx = self.invites.get((request.call_id, request.cseq[0]))
        if tx is None:
            return None
        tx.acked = True
        if tx.timer_g is not None:
            tx.timer_g.cancel()
            tx.timer_g = None
        return tx

    def ack_answered(self, request: SipRequest) -> None:
        """Take an ACK as the transaction layer does, on arrival: it stops Timer G of an
        answered INVITE at once, even while the TU is still busy with the call (an ACK
        queued behind other work must not cost a retransmitted 200 per T1)."""
        tx = self.invites.get((request.call_id, request.cseq[0]))
        if tx is not None and tx.status >= 200:
            self.ack(request)

    def waiting_for_ack(self, call_id: str, cseq: int) -> bool:
        tx = self.invites.get((call_id, cseq))
        return tx is not None and tx.timer_g is not None

    def _timer_g(self, tx: ServerTransaction, peer: Peer, data: bytes, request: SipRequest,
                 interval: float, waited: float) -> None:
        """Arm the next retransmission (after T1, 2*T1, ... capped at T2) or, once
        64*T1 have passed, Timer H."""
        if waited >= self.lifetime:
            self._timer_h(tx)
            return
        tx.timer_g = asyncio.get_running_loop().call_later(
            interval, self._retransmit, tx, peer, data, request, interval, waited)

    def _retransmit(self, tx: ServerTransaction, peer: Peer, data: bytes,
                    request: SipRequest, interval: float, waited: float) -> None:
        # The next timer first: a failing send must not leave the transaction without
        # its Timer H.
        self._timer_g(tx, peer, data, request, min(interval * 2, self.t2), waited + interval)
        self.user.send(peer, data, request)

    def _timer_h(self, tx: ServerTransaction) -> None:
        tx.timer_g = None
        log.warning("ack_timeout", call_id=tx.request.call_id, status=tx.status)
        task = asyncio.get_running_loop().create_task(self.user.on_no_ack(tx))
        self._no_ack_tasks.add(task)
        task.add_done_callback(self._no_ack_tasks.discard)

    def expire(self, now: float) -> None:
        """Forget transactions older than 64*T1 (Timers I and J); those still waiting
        for an ACK stay until Timer H has spoken."""
        cutoff = now - self.lifetime
        for key, tx in list(self.transactions.items()):
            if tx.created < cutoff and tx.timer_g is None:
                del self.transactions[key]
                if tx.method == "INVITE":
                    ikey = (tx.request.call_id, tx.request.cseq[0])
                    if self.invites.get(ikey) is tx:
                        del self.invites[ikey]

    def pending_timers(self) -> list[ServerTransaction]:
        return [tx for tx in self.transactions.values() if tx.timer_g is not None]

    def shutdown(self) -> None:
        for tx in self.transactions.values():
            if tx.trying is not None:
                tx.trying.cancel()
                tx.trying = None
            if tx.timer_g is not None:
                tx.timer_g.cancel()
                tx.timer_g = None
        for task in self._no_ack_tasks:
            task.cancel()
