"""Signaling's reserve of capture's ports (services/signaling/reserve.py): ports used
only while their capture process runs and their lease has room, oldest first."""

from __future__ import annotations

from services.signaling.reserve import LEASE_MARGIN, PortReserve


def test_ports_are_taken_oldest_first_and_only_all_or_none() -> None:
    reserve = PortReserve(target=8)
    reserve.add("c1", [100, 102, 104], lease_seconds=30.0, now=0.0)
    assert reserve.wanted(0.0) == 5
    assert reserve.take(2, "c1", now=1.0) == [100, 102]
    assert reserve.take(2, "c1", now=1.0) is None  # one left: the caller allocates
    assert len(reserve) == 1
    assert reserve.take(1, "c1", now=1.0) == [104]


def test_a_port_is_not_used_in_the_last_part_of_its_lease() -> None:
    reserve = PortReserve()
    reserve.add("c1", [100], lease_seconds=30.0, now=0.0)
    last_use = 30.0 * (1 - LEASE_MARGIN)
    assert reserve.usable(last_use - 0.1) == 1
    assert reserve.take(1, "c1", now=last_use) is None
    assert len(reserve) == 0 and reserve.wanted(last_use) == reserve.target


def test_only_the_running_capture_process_ports_are_used() -> None:
    reserve = PortReserve()
    reserve.add("c1", [100, 102], lease_seconds=30.0, now=0.0)
    assert reserve.take(1, "c2", now=0.0) is None  # health names another process
    assert reserve.take(1, None, now=0.0) is None  # capture not known to be running
    reserve.capture_seen("c2")  # a restart closed c1's sockets
    assert len(reserve) == 0 and reserve.capture_id is None
    reserve.add("c2", [200], lease_seconds=30.0, now=1.0)
    assert reserve.take(1, "c2", now=1.0) == [200]


def test_a_reply_from_a_new_capture_process_replaces_the_old_ports() -> None:
    reserve = PortReserve()
    reserve.add("c1", [100, 102], lease_seconds=30.0, now=0.0)
    reserve.add("c2", [200], lease_seconds=30.0, now=0.0)
    assert reserve.take(1, "c2", now=0.0) == [200]
    assert len(reserve) == 0


def test_the_same_process_in_health_keeps_the_ports() -> None:
    reserve = PortReserve()
    reserve.add("c1", [100], lease_seconds=30.0, now=0.0)
    reserve.capture_seen("c1")
    reserve.capture_seen("")  # an older capture that does not name itself
    assert reserve.take(1, "c1", now=0.0) == [100]


def test_ports_given_to_a_leg_of_the_last_process_are_discarded() -> None:
    reserve = PortReserve()
    reserve.add("c2", [100, 102, 104], lease_seconds=30.0, now=0.0)
    reserve.discard({102, 999})
    assert reserve.take(2, "c2", now=0.0) == [100, 104]
