"""Maintenance-role election: ordering, liveness, grace period, take-back, partitions."""

from __future__ import annotations

from services.scheduler.roles import NodeView, RoleTracker, elect, rank
from services.scheduler.service import parse_heartbeat

T = 3.0  # role timeout


def view(node: str, role: str = "backup", priority: int = 0, seen: float = 100.0) -> NodeView:
    return NodeView(node, role, priority, seen)


def test_elect_ordering() -> None:
    views = [
        view("b2", priority=2),
        view("b1", priority=1),
        view("a1", priority=1),
        view("p", "primary", priority=9),
    ]
    assert elect(views, 100.0, T) == "p"  # primary first whatever its priority
    assert elect(views[:3], 100.0, T) == "a1"  # then priority, then node id
    assert elect(views[:1], 100.0, T) == "b2"
    assert elect([], 100.0, T) is None
    assert sorted(views, key=rank)[0].node_id == "p"


def test_elect_timeout() -> None:
    views = [view("p", "primary", seen=100.0), view("b", seen=102.0)]
    assert elect(views, 103.0, T) == "p"  # exactly at the timeout: still alive
    assert elect(views, 103.1, T) == "b"
    assert elect(views, 105.1, T) is None


def beat(tracker: RoleTracker, nodes: dict[str, tuple[str, int]], at: float) -> None:
    for node, (role, priority) in nodes.items():
        tracker.heartbeat(node, role, priority, at)


PRIMARY = {"p": ("primary", 0)}
BACKUPS = {"b1": ("backup", 1), "b2": ("backup", 2)}


def run(
    tracker: RoleTracker, start: float, end: float, alive: dict[str, tuple[str, int]]
) -> list[tuple[str | None, str | None, int]]:
    """Heartbeats every second from `alive`, ticks every 0.25 s; the changes seen."""
    changes = []
    t = start
    while t < end:
        if abs(t - round(t)) < 1e-9:
            beat(tracker, alive, t)
        change = tracker.tick(t)
        if change is not None:
            changes.append((change.previous, change.holder, change.epoch))
        t += 0.25
    return changes


def test_grace_period_no_election_at_start() -> None:
    tracker = RoleTracker("b1", T, started_at=0.0)
    beat(tracker, {"b1": ("backup", 1)}, 0.0)  # alone for a moment: must not claim
    assert tracker.tick(0.5) is None
    assert tracker.holder is None
    beat(tracker, {**PRIMARY, **BACKUPS}, 1.0)
    assert tracker.tick(2.9) is None
    change = tracker.tick(3.0)
    assert change is not None
    assert (change.previous, change.holder, change.epoch) == (None, "p", 1)
    assert change.reason == "start-up election"
    assert not tracker.holds


def test_start_up_with_nobody_reports_nothing() -> None:
    tracker = RoleTracker("b1", T, started_at=0.0)
    assert tracker.tick(5.0) is None
    assert tracker.holder is None and tracker.epoch == 0
    beat(tracker, {"b1": ("backup", 1)}, 6.0)
    change = tracker.tick(6.0)
    assert change is not None and change.holder == "b1" and change.epoch == 1


def test_failover_and_primary_takes_back() -> None:
    tracker = RoleTracker("b1", T, started_at=0.0)
    everyone = {**PRIMARY, **BACKUPS}
    assert run(tracker, 0.0, 10.0, everyone) == [(None, "p", 1)]
    # The primary goes silent after its beat at t=9: b1 (best backup) takes over.
    changes = run(tracker, 10.0, 20.0, BACKUPS)
    assert changes == [("p", "b1", 2)]
    assert tracker.holds
    # The primary returns and takes the role back on its first heartbeat.
    changes = run(tracker, 20.0, 25.0, everyone)
    assert changes == [("b1", "p", 3)]
    assert not tracker.holds


def test_failover_reasons_and_timing() -> None:
    tracker = RoleTracker("b1", T, started_at=0.0)
    beat(tracker, {**PRIMARY, **BACKUPS}, 3.0)
    assert tracker.tick(3.0) is not None
    beat(tracker, BACKUPS, 6.0)
    assert tracker.tick(6.0) is None  # p last seen 3 s ago: still alive
    change = tracker.tick(6.25)
    assert change is not None and change.holder == "b1"
    assert change.reason == "p silent for more than 3 s"
    beat(tracker, PRIMARY, 7.0)
    change = tracker.tick(7.0)
    assert change is not None and change.holder == "p"
    assert change.reason == "p is alive and outranks b1"


def test_two_node_partition_each_side_elects_itself() -> None:
    both = {"p": ("primary", 0), "b": ("backup", 1)}
    p = RoleTracker("p", T, started_at=0.0)
    b = RoleTracker("b", T, started_at=0.0)
    assert run(p, 0.0, 10.0, both) == [(None, "p", 1)]
    assert run(b, 0.0, 10.0, both) == [(None, "p", 1)]
    # The link breaks: each side only hears itself.
    assert run(p, 10.0, 20.0, {"p": both["p"]}) == []
    assert run(b, 10.0, 20.0, {"b": both["b"]}) == [("p", "b", 2)]
    assert p.holds and b.holds  # two holders until the partition heals (accepted)
    # Healed: the backup gives the role back; the primary never lost it.
    assert run(p, 20.0, 25.0, both) == []
    assert run(b, 20.0, 25.0, both) == [("b", "p", 3)]


def test_epoch_grows_past_epochs_seen() -> None:
    tracker = RoleTracker("b1", T, started_at=0.0)
    tracker.observe_epoch(7)
    tracker.observe_epoch(4)  # an older fact arriving late changes nothing
    assert tracker.epoch == 7
    beat(tracker, PRIMARY, 3.0)
    change = tracker.tick(3.0)
    assert change is not None and change.epoch == 8
    tracker.observe_epoch(8)  # our own fact coming back from the stream
    beat(tracker, BACKUPS, 7.0)
    change = tracker.tick(7.0)
    assert change is not None and change.epoch == 9 and change.holder == "b1"
    assert tracker.epoch == 9


def test_configured_role_and_priority_follow_heartbeats() -> None:
    tracker = RoleTracker("x", T, started_at=0.0)
    beat(tracker, {"a": ("backup", 5), "b": ("backup", 3)}, 3.0)
    assert tracker.tick(3.0) is not None and tracker.holder == "b"
    beat(tracker, {"a": ("backup", 1), "b": ("backup", 3)}, 4.0)  # a was reconfigured
    change = tracker.tick(4.0)
    assert change is not None and change.holder == "a"


def test_parse_heartbeat() -> None:
    good = b'{"node_id": "n1", "role": "primary", "priority": 2, "sequence": 1, "sent_at": 0}'
    assert parse_heartbeat(good) == ("n1", "primary", 2)
    assert parse_heartbeat(b'{"node_id": "n2"}') == ("n2", "backup", 0)
    for bad in (b"nope", b"[]", b"{}", b'{"node_id": "a.b"}', b'{"node_id": "n", "priority": "x"}'):
        assert parse_heartbeat(bad) is None
