"""Disk pressure policy: the free-space reserve, JetStream's budget, retry back-off.

Pure functions and one small state machine, so the rules are tested without a disk.

- Below the **reserve** the node refuses new calls (OPTIONS/INVITE 503, the PBX fails
  over) while the calls in progress keep recording into it. It accepts again only
  once free space is back above the reserve plus a margin (hysteresis), so a disk
  hovering at the limit does not flap the PBX's trunk in and out of service.
- JetStream gets an explicit store budget (`max_file_store`) instead of
  nats-server's default (75 % of whatever was free when it started); past it
  JetStream refuses writes. The event streams refuse rather than drop
  (discard new, no age or count limit): they are the source of truth.
- A finalize that fails for a transient reason (a full disk, the bus) is retried
  with capped exponential back-off, forever.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Literal

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# The default reserve ("auto"): max(1 GiB, 5 % of the file system), but never more
# than a quarter of it, so a small data disk is still usable.
AUTO_RESERVE_MIN = 1 * GIB
AUTO_RESERVE_SHARE = 0.05
AUTO_RESERVE_CAP_SHARE = 0.25
# Accept again only at reserve + margin (the margin: a tenth of the reserve).
HYSTERESIS_SHARE = 0.10
# JetStream's store budget: a quarter of the data file system. Events are a few KiB
# per recording (well under 1 % of its audio), so this is a runaway guard, not a quota.
JETSTREAM_SHARE = 0.25
JETSTREAM_MIN = 16 * MIB
# Refuse new calls when JetStream has used this share of its budget: what is left
# is for the facts of the calls in progress.
JETSTREAM_REFUSE_SHARE = 0.90
# Finalize retry back-off.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1024 * GIB}


@dataclass(frozen=True)
class Reserve:
    """A reserve as configured: "auto", a size in bytes, or a share of the file system."""

    kind: Literal["auto", "bytes", "percent"]
    value: float = 0.0

    def bytes_for(self, total: int) -> int:
        """The reserve in bytes on a file system of `total` bytes."""
        if self.kind == "bytes":
            return int(self.value)
        if self.kind == "percent":
            return int(total * self.value / 100)
        auto = max(AUTO_RESERVE_MIN, int(total * AUTO_RESERVE_SHARE))
        return min(auto, int(total * AUTO_RESERVE_CAP_SHARE))


def parse_reserve(text: str) -> Reserve:
    """`auto`, `0` (off), `500M`, `2G`, `2GiB`, `1048576`, or `5%`."""
    cleaned = text.strip().lower()
    if cleaned in ("", "auto"):
        return Reserve("auto")
    percent = _PERCENT.match(cleaned)
    if percent:
        value = float(percent.group(1))
        if not 0 <= value < 100:
            raise ValueError(f"disk reserve {text!r}: a percentage must be below 100")
        return Reserve("percent", value)
    size = _SIZE.match(cleaned)
    if size is None:
        raise ValueError(
            f"disk reserve {text!r}: use auto, a size (500M, 2G) or a percentage (5%)")
    return Reserve("bytes", float(int(float(size.group(1)) * _UNITS[size.group(2).lower()])))


Pressure = Literal["ok", "low"]


@dataclass
class ReserveGate:
    """Hysteresis over free-space readings: `low` below the reserve, `ok` again only
    at reserve + margin."""

    reserve: Reserve
    state: Pressure = "ok"

    def update(self, free: int, total: int) -> Pressure:
        reserve = self.reserve.bytes_for(total)
        if reserve <= 0:
            self.state = "ok"
        elif self.state == "ok" and free < reserve:
            self.state = "low"
        elif self.state == "low" and free >= reserve + int(reserve * HYSTERESIS_SHARE):
            self.state = "ok"
        return self.state

    def reason(self, free: int, total: int) -> str:
        reserve = self.reserve.bytes_for(total)
        return (f"disk space below the reserve: {free // MIB} MiB free, "
                f"reserve {reserve // MIB} MiB")


def jetstream_budget(total: int) -> int:
    """JetStream's `max_file_store` for a data file system of `total` bytes."""
    return max(JETSTREAM_MIN, int(total * JETSTREAM_SHARE))


MISSED_CALLS_MAX = 64 * MIB
MISSED_CALLS_SHARE = 1 / 8


def missed_calls_budget(jetstream: int) -> int:
    """Bytes the missed-calls stream may hold: 64 MiB, or an eighth of JetStream's budget
    on a small disk (a stream's byte limit is reserved from that budget, and the facts
    need the rest)."""
    return max(1 * MIB, min(MISSED_CALLS_MAX, int(jetstream * MISSED_CALLS_SHARE)))


def jetstream_nearly_full(used: int, budget: int) -> bool:
    """New calls are refused once JetStream holds this much of its budget."""
    return budget > 0 and used >= budget * JETSTREAM_REFUSE_SHARE


def jetstream_can_resume(free: int, total: int, reserve: Reserve) -> bool:
    """Enough room again to restart a JetStream that stopped for lack of space:
    half the reserve (at least 16 MiB), so recovery does not wait on calls in progress
    that are still eating into the reserve."""
    return free >= max(16 * MIB, reserve.bytes_for(total) // 2)


def retry_delay(attempt: int) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): 1, 2, 4, ... capped at 30."""
    return float(min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** max(0, attempt - 1)))


def is_out_of_space(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT anywhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        current = current.__cause__ or current.__context__
    return False


# Lines nats-server writes when its file store could not write: after one of these
# the stream (or all of JetStream) stays stopped until the server restarts, even
# once space has returned (nats-server 2.10-2.15).
NATS_STORE_FAILURE_MARKERS = (
    "critical write error",
    "JetStream out of space",
    "JetStream out of resources",
    "no space left on device",
)


def is_store_failure_line(line: str) -> bool:
    return any(marker in line for marker in NATS_STORE_FAILURE_MARKERS)
