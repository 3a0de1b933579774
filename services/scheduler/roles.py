"""Who holds the maintenance role: a pure election over heartbeats (no I/O, no clock).

With one primary and a few backups, each its own JetStream domain, there is no
quorum to ask; every node instead computes the same answer from the same inputs:
among the nodes heard from within `timeout`, the primary first, then the lowest
priority number, then the node id. A partition therefore gives one holder per
side until it heals (accepted: maintenance jobs are idempotent). An epoch that
grows with each change orders the `role.changed` facts across nodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeView:
    """What this node last heard from one node (`last_seen`: local monotonic seconds)."""

    node_id: str
    configured_role: str
    priority: int
    last_seen: float


@dataclass(frozen=True)
class RoleChange:
    """The holder moved from `previous` to `holder` (either may be None: nobody)."""

    previous: str | None
    holder: str | None
    epoch: int
    reason: str


def rank(view: NodeView) -> tuple[int, int, str]:
    """Sort key of candidates: primary before backup, then priority, then node id."""
    return (0 if view.configured_role == "primary" else 1, view.priority, view.node_id)


def is_alive(view: NodeView, now: float, timeout: float) -> bool:
    return now - view.last_seen <= timeout


def elect(views: Iterable[NodeView], now: float, timeout: float) -> str | None:
    """The best node heard from within `timeout`, or None when nobody is."""
    alive = [view for view in views if is_alive(view, now, timeout)]
    return min(alive, key=rank).node_id if alive else None


class RoleTracker:
    """This node's view of the maintenance role, fed with heartbeats and clock ticks.

    No election happens before `timeout` has passed since `started_at`: at start-up
    every node briefly hears only itself and would otherwise claim the role.
    """

    def __init__(self, node_id: str, timeout: float, started_at: float) -> None:
        self.node_id = node_id
        self.timeout = timeout
        self.started_at = started_at
        self.views: dict[str, NodeView] = {}
        self.holder: str | None = None
        self.epoch = 0
        self.elected = False

    def heartbeat(self, node_id: str, configured_role: str, priority: int, at: float) -> None:
        """Record a heartbeat; a node's role and priority are whatever it last announced."""
        self.views[node_id] = NodeView(node_id, configured_role, priority, at)

    def observe_epoch(self, epoch: int) -> None:
        """An epoch from any node's `role.changed` fact: ours must grow beyond it."""
        self.epoch = max(self.epoch, epoch)

    def in_grace(self, now: float) -> bool:
        return now - self.started_at < self.timeout

    @property
    def holds(self) -> bool:
        return self.holder == self.node_id

    def tick(self, now: float) -> RoleChange | None:
        """Re-elect; returns the change when the holder differs from the last tick's."""
        if self.in_grace(now):
            return None
        new = elect(self.views.values(), now, self.timeout)
        first = not self.elected
        self.elected = True
        if new == self.holder and not first:
            return None
        if new == self.holder and new is None:
            return None  # nobody before the first election either: nothing happened
        previous = self.holder
        self.holder = new
        self.epoch += 1
        return RoleChange(previous, new, self.epoch, self._reason(previous, new, now, first))

    def _reason(self, previous: str | None, new: str | None, now: float, first: bool) -> str:
        if first:
            return "start-up election" if new else "start-up: no node alive"
        if new is None:
            return "no node alive"
        old = self.views.get(previous) if previous else None
        if old is None:
            return f"{new} is alive"
        if not is_alive(old, now, self.timeout):
            return f"{previous} silent for more than {self.timeout:g} s"
        return f"{new} is alive and outranks {previous}"
