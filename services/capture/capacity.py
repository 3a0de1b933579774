"""Whether capture keeps pace with the calls in progress, and when to refuse new ones.

Pure, no clock of its own: the service hands in the time and what its live loop last
encoded up to.

Why refuse by the live encoding's lag: the peer copies each call as it is encoded, so
how far the encoding is behind is what a lost host costs every call in progress. The
encoder workers run only on CPU nothing else wants; when the node records more calls
than its cores encode, that lag grows without bound and the promise of "about a second"
is gone for every call. Refusing new calls (503: the PBX records them on the backup)
while calls in progress go on, and their other legs still join them, lets the encoding
catch up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .live import EMIT_DELAY_MS

LagState = Literal["keeping_pace", "behind"]

# Admit again once the lag is back under this share of the limit, so that one
# round of steps finishing does not flip the answer at every health poll.
RECOVER_SHARE = 0.5


def live_lag(now: float, encoded_to: float | None) -> float:
    """Seconds of every call in progress not yet in its live.opus, so not yet at the
    peer: since the flush the last finished round of live steps encoded up to, plus
    the emit delay. 0 before any round (no call yet)."""
    if encoded_to is None:
        return 0.0
    return max(0.0, now - encoded_to) + EMIT_DELAY_MS / 1000


@dataclass
class LagGate:
    """Hysteresis over the live lag: `behind` over `max_lag_s`, `keeping_pace` again only
    at RECOVER_SHARE of it. A limit of 0 never refuses."""

    max_lag_s: float
    state: LagState = "keeping_pace"

    def update(self, lag: float) -> LagState:
        if self.max_lag_s <= 0:
            self.state = "keeping_pace"
        elif self.state == "keeping_pace" and lag > self.max_lag_s:
            self.state = "behind"
        elif self.state == "behind" and lag <= self.max_lag_s * RECOVER_SHARE:
            self.state = "keeping_pace"
        return self.state

    def reason(self, lag: float) -> str:
        return (f"over capacity: calls in progress {lag:.1f} s behind in encoding "
                f"(--max-live-lag {self.max_lag_s:g})")
