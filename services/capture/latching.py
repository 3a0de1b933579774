"""RTP admission: which source a stream's packets may come from (pure, no I/O).

The rule, in one place:

* The peer's SDP for the stream (the offer of a SIPREC or early-offer INVITE, the
  answer in the ACK of a CUCM delayed offer, a re-INVITE or UPDATE) names an address
  (c=) and a port (m=). An address that is missing, unspecified (0.0.0.0, ::) or not
  an IP literal, and a port of 0 or 9 (the discard placeholder), say nothing. A port
  without an address says nothing either: the address is what the rule rests on.
* Address known: only packets from that address are admitted, and from one port of
  it at a time (the latched source). Port known too: exactly (address, port) is always
  admitted and, if another port was latched, takes the latch over. Without a packet
  from the exact port, the first packet from the address on another port latches that
  port (a NAT that rewrites source ports, a gateway that sends from another port than
  the one it receives on); other ports of the address are then dropped.
* Nothing known (yet): the first source latches, address and port (symmetric-RTP
  latching, RFC 4961 peers send from where they receive).
* A latched source holds until an SDP names another endpoint; an SDP that says nothing
  (a hold with c=0.0.0.0, port 9) keeps what is known rather than reopening the port.

Everything else is dropped with a reason: another address, or another port of the
right address.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["accept", "latch", "wrong_address", "wrong_port"]
# before_answer: it reached a reserved port before our 200 OK named that port, so no
# PBX could have sent it there (see ReservedPorts).
DropReason = Literal["wrong_address", "wrong_port", "before_answer"]
DROP_REASONS: tuple[DropReason, ...] = ("wrong_address", "wrong_port", "before_answer")
PLACEHOLDER_PORTS = frozenset({0, 9})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A source as compared: a canonical IP address text and a port."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class Expected:
    """What the SDP said, normalised; `address` None means it said nothing usable."""

    address: str | None = None
    port: int | None = None


UNKNOWN = Expected()


def canonical_address(text: str) -> str | None:
    """An IP literal in one canonical text form (IPv4-mapped IPv6 as IPv4); else None."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0].strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def expected_from_sdp(address: str | None, port: int | None) -> Expected:
    """Normalise a stream's SDP c= address and m= port into an expectation."""
    canonical = _usable_address(address) if address else None
    if canonical is None:
        return UNKNOWN
    if port is None or port in PLACEHOLDER_PORTS or not 0 < port < 65536:
        return Expected(canonical, None)
    return Expected(canonical, port)


@functools.lru_cache(maxsize=1024)
def _usable_address(text: str) -> str | None:
    """The canonical address an SDP's c= text names, None if it names none usable.

    Cached: a node's SDPs name a few addresses (its PBXs and gateways) again and
    again, and parsing one twice with `ipaddress` was about a seventh of an update's CPU."""
    canonical = canonical_address(text)
    if canonical is None or ipaddress.ip_address(canonical).is_unspecified:
        return None
    return canonical


def endpoint_of(addr: tuple[object, ...]) -> Endpoint:
    """The socket's (host, port[, flow, scope]) as an Endpoint."""
    host = str(addr[0])
    port = int(addr[1])  # type: ignore[call-overload]
    if ":" in host:  # IPv6 text from the kernel: strip the scope, unmap IPv4
        host = canonical_address(host) or host
    return Endpoint(host, port)


def admit(source: Endpoint, expected: Expected, latched: Endpoint | None) -> Verdict:
    """The verdict for a packet from `source`; "latch" means admit and remember it."""
    if latched is not None and source == latched:
        return "accept"
    if expected.address is not None:
        if source.address != expected.address:
            return "wrong_address"
        if source.port == expected.port or latched is None:
            return "latch"
        return "wrong_port"
    if latched is None:
        return "latch"
    return "wrong_port" if source.address == latched.address else "wrong_address"


def on_sdp(
    current: Expected, latched: Endpoint | None, new: Expected
) -> tuple[Expected, Endpoint | None]:
    """A new SDP for the stream (re-INVITE, UPDATE, the ACK's answer): what to expect
    next and whether the latched source still holds."""
    if new.address is None or new == current or (
        new.port is None and new.address == current.address
    ):
        return current, latched  # says nothing new: a hold, a session refresh
    if latched is not None and latched.address == new.address and (
        new.port is None or new.port == latched.port
    ):
        return new, latched
    return new, None
