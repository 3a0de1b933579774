"""The SIP gate: every datagram and TCP message passes here before the UAS sees it.

It applies admission.py's rules (allow-list, per-source rates), answers strangers
itself (403, never reaching the UAS), hands a PBX's messages over its rate to the UAS
as such (it answers new work 503 + Retry-After, and a retransmission what its first
copy got), counts every refusal by reason, and logs each refused source at most once a
minute with the number of refusals since its last line, so a PBX missing from
--sip-allow is noticed rather than silently unrecorded.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from callrec.metrics import Counter, Registry

from .admission import AllowList, RefusalLog, RefusalReason, SipAdmission, Throttle
from .missed import MissedCalls
from .sip.message import (
    SipParseError,
    SipRequest,
    build_response,
    parse_message,
    serialize,
)
from .sip.transport import Peer, Receiver

log = structlog.get_logger()

SERVER = "callrec/0.1"


class Replier(Protocol):
    """What the gate needs to answer a peer (SipTransports in production)."""

    def reply(self, peer: Peer, data: bytes, via_port: int | None, rport: bool) -> None: ...


class SipGate:
    def __init__(
        self,
        *,
        allow: AllowList,
        pbx_rate: float,
        pbx_burst: float,
        metrics: Registry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allow = allow
        self.clock = clock
        self.admission = SipAdmission(allow, pbx_rate, pbx_burst, clock())
        self.refusal_log = RefusalLog()
        self.closed_warning = Throttle()
        self.refusals: Counter = metrics.counter(
            "signaling_sip_refused_total",
            "SIP messages and TCP connections refused, by reason",
        )
        self.forward: Receiver = lambda data, peer, received_at: None
        self.forward_over_limit: Receiver = lambda data, peer, received_at: None
        self.replier: Replier | None = None
        self.missed: MissedCalls | None = None

    def connect(self, forward: Receiver, forward_over_limit: Receiver, replier: Replier,
                missed: MissedCalls | None = None) -> None:
        """Where admitted messages go (the UAS) and those of a PBX over its rate (the UAS
        again, to be answered as such), how strangers are answered, and where refused
        INVITEs are kept for the missed-calls page."""
        self.forward = forward
        self.forward_over_limit = forward_over_limit
        self.replier = replier
        self.missed = missed

    def warn_if_closed(self, bind: str) -> None:
        if self.allow.closed:
            log.warning("sip_allow_list_empty", bind=bind,
                        message="SIP is bound beyond loopback and --sip-allow is not set: "
                                "EVERY PBX IS REFUSED (403) AND NOTHING IS RECORDED. "
                                "Set --sip-allow CIDR for each PBX/SBC network.")
        else:
            log.info("sip_allow_list", allow=self.allow.describe())

    # ---- entry ------------------------------------------------------------------------

    def on_message(self, data: bytes, peer: Peer, received_at: float | None = None) -> None:
        verdict = self.admission.classify(peer.host, self.clock())
        if verdict == "admit":
            self.forward(data, peer, received_at)
        elif verdict == "over_limit":
            self.forward_over_limit(data, peer, received_at)
        elif verdict == "refuse":
            self._refuse(data, peer)
        else:
            self.refused(peer.host, "not_allowed_drop")
            if self.missed is not None:
                self.missed.raw(data, peer, "not_allowed_drop", None)

    def is_allowed(self, host: str) -> bool:
        return self.allow.allows(host)

    def refused(self, host: str, reason: RefusalReason) -> None:
        """Count one refusal; log its source at most once a minute per reason."""
        self.refusals.inc(reason=reason)
        now = self.clock()
        count = self.refusal_log.note(host, reason, now)
        if count is not None:
            log.warning("sip_refused", source=host, reason=reason, count=count,
                        hint="add the PBX's network with --sip-allow" if reason.startswith(
                            "not_allowed") else None)
        if self.allow.closed and reason.startswith("not_allowed") \
                and self.closed_warning.ready(now):
            log.warning("sip_allow_list_empty",
                        message="no --sip-allow set: every SIP request is refused")

    # ---- answers ----------------------------------------------------------------------

    def _refuse(self, data: bytes, peer: Peer) -> None:
        request = _request(data)
        if request is None or request.method == "ACK":
            self.refused(peer.host, "not_allowed_drop")  # nothing to answer
            if request is None and self.missed is not None:
                self.missed.raw(data, peer, "not_allowed_drop", None)
            return
        self.refused(peer.host, "not_allowed")
        if request.method == "INVITE" and self.missed is not None:
            self.missed.request(request, peer, "not_allowed", 403)
        self._answer(request, peer, 403, "source not allowed (--sip-allow)", [])

    def _answer(self, request: SipRequest, peer: Peer, status: int, warning: str,
                headers: list[tuple[str, str]]) -> None:
        if self.replier is None:
            return
        extra = [("Server", SERVER), *headers, ("Warning", f'399 callrec "{warning}"')]
        try:
            response = build_response(request, status,
                                      to_tag=request.to.tag or secrets.token_hex(8),
                                      extra_headers=extra)
        except SipParseError:
            return
        via = request.vias[0]
        self.replier.reply(peer, serialize(response), via.port, via.rport_requested)


def _request(data: bytes) -> SipRequest | None:
    try:
        message = parse_message(data)
    except SipParseError:
        return None
    return message if isinstance(message, SipRequest) else None
