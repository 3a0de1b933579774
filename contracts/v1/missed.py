"""Missed calls: the INVITEs a node refused or could not record, kept for a while.

Not facts: a refusal changes no state anywhere, and a scanner can send millions, so
these records live in a bounded stream of their own per node (`MISSED_<node>`, with
a maximum age and size, oldest dropped first) rather than in the EVENTS stream that
keeps facts for good. Signaling writes them; the web reads them for the admin's
"why is this call not recorded?".

Everything here came from the network, so every text is cleaned (no control
characters) and capped on the way in, whoever builds the record.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .events import new_id

MissedReason = Literal[
    "not_allowed",        # source not on --sip-allow: 403
    "not_allowed_drop",   # same, beyond the refusal rate: not answered
    "rate_limited",       # allow-listed source over --sip-rate: 503
    "overloaded",         # waited over --sip-shed-after in the node's queue: 503
    "over_capacity",      # live encoding over --max-live-lag behind: 503 to new calls
    "pending_media",      # too many legs from this source without RTP yet: 503
    "leg_source",         # second CUCM leg of a call from another source: 403
    "unknown_user",       # no recording user has the number: 404
    "not_enabled",        # the user is not recorded: 403
    "no_licence",         # --max-channels reached: 486
    "cannot_record",      # capture, storage or bus unavailable: 503
    "bad_request",        # the INVITE or its body is wrong: 400/415/420
    "unsupported_media",  # no audio stream we can record: 488
    "malformed",          # not parseable as SIP: 400/505, or not answerable
    "internal_error",     # a fault of ours while handling it: 500
]
MISSED_REASONS: tuple[MissedReason, ...] = (
    "not_allowed", "not_allowed_drop", "rate_limited", "overloaded", "over_capacity",
    "pending_media",
    "leg_source", "unknown_user", "not_enabled", "no_licence", "cannot_record", "bad_request",
    "unsupported_media", "malformed", "internal_error",
)

# The reason in words, for pages and logs (the one place that says it).
REASON_TEXT: dict[MissedReason, str] = {
    "not_allowed": "source not allowed (--sip-allow)",
    "not_allowed_drop": "source not allowed (--sip-allow), not answered (over the refusal rate)",
    "rate_limited": "over the SIP rate for this source (--sip-rate)",
    "overloaded": "node overloaded: waited too long in its queue (--sip-shed-after)",
    "over_capacity": "node over capacity: calls in progress behind in encoding "
                     "(--max-live-lag)",
    "pending_media": "too many calls from this source still without RTP (--sip-pending-media)",
    "leg_source": "second leg of a call from another source",
    "unknown_user": "unknown user",
    "not_enabled": "user not recorded",
    "no_licence": "licence limit reached (--max-channels)",
    "cannot_record": "cannot record",
    "bad_request": "bad request",
    "unsupported_media": "no recordable audio",
    "malformed": "malformed SIP",
    "internal_error": "internal error",
}

# Caps on what a stranger can make us store per record.
TEXT_MAX = 200
NAME_MAX = 96
NUMBER_MAX = 64
MAX_NUMBERS = 4


def clean(value: object, limit: int) -> str | None:
    """Printable text of at most `limit` characters (control characters become
    spaces), or None when nothing is left."""
    if value is None:
        return None
    text = "".join(" " if ord(c) < 32 or 127 <= ord(c) < 160 else c for c in str(value))
    text = " ".join(text.split())[:limit]
    return text or None


class MissedCall(BaseModel):
    """One refused INVITE, or (aggregated) `count` refusals of one source and reason
    between `at` and `until`, whose other fields are those of the first of them."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    record_id: str = Field(default_factory=new_id)
    node_id: str
    at: datetime
    until: datetime | None = None
    count: int = Field(default=1, ge=1)
    aggregated: bool = False
    # Source address; "*" for the per-minute overflow of many sources together.
    source: str
    transport: Literal["UDP", "TCP"] | None = None
    # The answer we sent; None when none was sent (dropped, or nothing to answer).
    status: int | None = Field(default=None, ge=100, le=699)
    reason: MissedReason
    detail: str | None = None
    from_number: str | None = None
    from_name: str | None = None
    to_number: str | None = None
    to_name: str | None = None
    # The numbers admission looked up (recorded party candidates).
    numbers: list[str] = Field(default_factory=list)
    call_id: str | None = None
    user_agent: str | None = None
    kind: Literal["cucm", "siprec", "sip"] | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> str:
        return clean(value, NUMBER_MAX) or "?"

    @field_validator("detail", "call_id", "user_agent", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str | None:
        return clean(value, TEXT_MAX)

    @field_validator("from_name", "to_name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str | None:
        return clean(value, NAME_MAX)

    @field_validator("from_number", "to_number", mode="before")
    @classmethod
    def _number(cls, value: Any) -> str | None:
        return clean(value, NUMBER_MAX)

    @field_validator("numbers", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> list[str]:
        if not isinstance(value, list | tuple):
            return []
        cleaned = (clean(item, NUMBER_MAX) for item in value[:MAX_NUMBERS])
        return [item for item in cleaned if item]

    def describe(self) -> str:
        """'404 unknown user: no recording user for 2999' (status, reason, detail)."""
        status = str(self.status) if self.status is not None else "no answer"
        words = REASON_TEXT[self.reason]
        return f"{status} {words}: {self.detail}" if self.detail else f"{status} {words}"

