"""Cisco CUCM built-in-bridge recording legs.

CUCM records a call as two separate SIP calls (near-end and far-end
voice), describing the recorded call only in From-URI parameters.  The
From *user* part is not the recorded party's number in every release, so
numbers come from ``x-nearendaddr``/``x-farendaddr`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.signaling.sip.message import NameAddr

__all__ = ["CucmLeg", "CucmLegError", "parse_cucm_leg", "session_key"]


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
