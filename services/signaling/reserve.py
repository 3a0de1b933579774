"""Signaling's reserve of capture's ports: what lets a new leg be answered at once.

In a burst of new calls most of INVITE->200 was the allocate round trip to capture,
waiting for CPU in two busy processes (issue 11). Capture binds ports ahead of the
INVITEs (ReserveRequest) and signaling answers a new leg with ports from here, then
sends the allocate that tells capture whose they are. Pure logic: no network, no
clock of its own (callers pass monotonic `now`).

A port is used only while capture surely still holds it: entries of one capture
process (`capture_id`), given up a third of their lease before it ends, all dropped
when another capture process answers (a restart closed its predecessor's sockets).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# Stop answering with a reserved port this long before capture's lease ends, as a
# share of the lease: room for the allocate to reach capture however busy both are.
LEASE_MARGIN = 1 / 3


@dataclass
class PortReserve:
    """Ports capture has bound for us, oldest first. `target`: how many to keep."""

    target: int = 64
    capture_id: str | None = None
    _ports: deque[tuple[int, float]] = field(default_factory=deque)  # (port, use until)

    def __len__(self) -> int:
        return len(self._ports)

    def usable(self, now: float) -> int:
        """Ports still within their time, after dropping those that are not."""
        while self._ports and self._ports[0][1] <= now:
            self._ports.popleft()
        return len(self._ports)

    def wanted(self, now: float) -> int:
        """How many to ask capture for to be back at `target`."""
        return max(0, self.target - self.usable(now))

    def take(self, count: int, capture_id: str | None, now: float) -> list[int] | None:
        """`count` ports of the capture process known to be running now, or None (and
        nothing taken) when there are not that many: the caller allocates as before."""
        if count <= 0 or capture_id is None or capture_id != self.capture_id:
            return None
        if self.usable(now) < count:
            return None
        return [self._ports.popleft()[0] for _ in range(count)]

    def add(self, capture_id: str, ports: list[int], lease_seconds: float, now: float) -> None:
        """A ReserveReply: another capture process than before means its ports are the
        only ones held now."""
        if capture_id != self.capture_id:
            self.forget()
            self.capture_id = capture_id
        until = now + lease_seconds * (1 - LEASE_MARGIN)
        self._ports.extend((port, until) for port in ports)

    def capture_seen(self, capture_id: str) -> None:
        """Capture's health named the process answering: drop another's ports."""
        if capture_id and self.capture_id is not None and capture_id != self.capture_id:
            self.forget()
            self.capture_id = None

    def discard(self, ports: set[int]) -> None:
        """Ports a leg was answered with from another capture process's reserve, and
        which this process had reserved too: no other leg may be answered with them."""
        if ports and any(port in ports for port, _ in self._ports):
            self._ports = deque(entry for entry in self._ports if entry[0] not in ports)

    def forget(self) -> None:
        self._ports.clear()
