"""Cisco CUCM built-in-bridge recording legs.

CUCM records a call as two separate SIP calls (near-end and far-end
voice), describing the recorded call only in From-URI parameters.  The
From *user* part is not the recorded party's number in every release, so
numbers come from ``x-nearendaddr``/``x-farendaddr`` instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from contracts.v1.events import Participant
from services.signaling.identity import Identity, is_ip_address
from services.signaling.sip.message import Headers, NameAddr

__all__ = [
    "CucmLeg",
    "CucmLegError",
    "cisco_guid",
    "cucm_participants",
    "normalize_cisco_guid",
    "parse_cucm_leg",
    "session_key",
]

# Cisco-Guid is four decimal 32-bit groups joined by '-' on SIP
# ("2964493056-3225977321-2170437826-0000000000"); gateways also show 32 hex
# digits. Either way it is an opaque key compared for equality: only its
# characters are checked and letters upper-cased so hex spellings compare equal.
_GUID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")


class CucmLegError(ValueError):
    """Raised when CUCM recording parameters are present but inconsistent."""


@dataclass(frozen=True)
class CucmLeg:
    """One of the two recording calls CUCM places for a recorded call."""

    side: str  # 'near' or 'far': whose voice this leg carries
    refci: str
    cluster_id: str | None = None
    near_addr: str | None = None
    near_device: str | None = None
    far_addr: str | None = None
    far_device: str | None = None
    far_refci: str | None = None
    far_cluster_id: str | None = None
    session_id: str | None = None
    guid: str | None = None

    @property
    def far_device_is_address(self) -> bool:
        """x-farenddevice is an IP address: the far end is a trunk or gateway, not a phone."""
        return is_ip_address(self.far_device)


def _lookup(from_: NameAddr, name: str) -> tuple[bool, str | None]:
    """Return (present, value), preferring URI params over header params."""
    for params in (from_.uri.params, from_.params):
        lower = name.lower()
        for key, value in params.items():
            if key.lower() == lower:
                return True, value
    return False, None


def _value(from_: NameAddr, name: str) -> str | None:
    _, value = _lookup(from_, name)
    if value is None:
        return None
    value = value.strip().strip('"')
    return value or None


def parse_cucm_leg(from_: NameAddr) -> CucmLeg | None:
    """Extract CUCM leg metadata; None for calls that are not CUCM recording legs."""
    present, _ = _lookup(from_, "x-refci")
    if not present:
        return None
    refci = _value(from_, "x-refci")
    if refci is None:
        raise CucmLegError("x-refci without a value")
    near, _ = _lookup(from_, "x-nearend")
    far, _ = _lookup(from_, "x-farend")
    if near == far:
        raise CucmLegError("exactly one of x-nearend / x-farend must be present")
    return CucmLeg(
        side="near" if near else "far",
        refci=refci,
        cluster_id=_value(from_, "x-nearendclusterid"),
        near_addr=_value(from_, "x-nearendaddr"),
        near_device=_value(from_, "x-nearenddevice"),
        far_addr=_value(from_, "x-farendaddr"),
        far_device=_value(from_, "x-farenddevice"),
        far_refci=_value(from_, "x-farendrefci"),
        far_cluster_id=_value(from_, "x-farendclusterid"),
        session_id=_value(from_, "x-sessionid"),
        guid=_value(from_, "x-farendguid"),
    )


def session_key(leg: CucmLeg) -> str:
    """Correlation key shared by the near- and far-end legs of one recorded call.

    Both legs carry the recorded device's refci and cluster, so they meet on
    the same key regardless of arrival order.
    """
    return f"cucm:{leg.cluster_id or '-'}:{leg.refci}"


def normalize_cisco_guid(value: str | None) -> str | None:
    """Canonical form of a Cisco-Guid value; None when absent or not a plausible id."""
    if value is None:
        return None
    text = value.strip().strip('"').strip()
    if _GUID_RE.fullmatch(text) is None:
        return None
    return text.upper()


def cisco_guid(headers: Headers) -> str | None:
    """The call's Cisco-Guid header (CUCM BiB legs and CUBE SIPREC INVITEs carry it)."""
    return normalize_cisco_guid(headers.get("Cisco-Guid"))


def cucm_participants(
    leg: CucmLeg, identity: Identity | None = None
) -> tuple[Participant, Participant]:
    """The recorded call's two parties, near end on the left channel (0).

    Numbers come from x-nearendaddr / x-farendaddr. The display name (and the
    privacy mark) from the leg's identity headers (see identity.caller_identity)
    goes to the party whose number it carries; when it matches neither, to the
    near end, the recorded device on whose behalf CUCM places the recording call.
    ``x-farenddevice`` is kept as the far device even when it is an IP address
    (trunk or gateway).
    """
    near_name = far_name = None
    near_private = far_private = False
    if identity is not None and (identity.name is not None or identity.private):
        if identity.number is not None and identity.number == leg.far_addr != leg.near_addr:
            far_name, far_private = identity.name, identity.private
        else:
            near_name, near_private = identity.name, identity.private
    near = Participant(
        role="near", number=leg.near_addr, name=near_name, device=leg.near_device,
        channel=0, private=near_private, identity_source="cucm",
    )
    far = Participant(
        role="far", number=leg.far_addr, name=far_name, device=leg.far_device,
        channel=1, private=far_private, identity_source="cucm",
    )
    return near, far
