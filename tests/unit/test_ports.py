"""RTP port allocation: random even ports in range, never twice, not guessable."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import structlog

from services.capture import ports
from services.capture.ports import PortPool


def allocate(pool: PortPool, count: int) -> list[int]:
    out = []
    for _ in range(count):
        port = next(pool.candidates())
        pool.take(port)
        out.append(port)
    return out


def test_ports_are_even_in_range_and_never_handed_out_twice() -> None:
    pool = PortPool(20001, 20041)  # even ports 20002..20040: 20 of them
    ports = allocate(pool, 20)
    assert sorted(ports) == list(range(20002, 20041, 2))
    assert pool.free == 0
    assert list(pool.candidates()) == []
    pool.give_back(ports[3])
    assert list(pool.candidates()) == [ports[3]]  # a cooling port, when nothing else is
    pool.give_back(ports[3])  # twice: no effect
    assert pool.free == 1


def test_consecutive_allocations_are_not_sequential_or_predictable() -> None:
    """Statistical, wide margins: 300 draws from 5,000 ports."""
    low, high = 20000, 29999
    pool = PortPool(low, high)
    ports = allocate(pool, 300)
    assert all(low <= p <= high and p % 2 == 0 for p in ports)
    assert len(set(ports)) == len(ports)
    steps = [b - a for a, b in itertools.pairwise(ports)]
    # In order, every step would be +2; at random, a step of +-2 has p = 2/5000.
    assert sum(1 for s in steps if abs(s) == 2) < 10
    assert sum(1 for s in steps if s > 0) < 250  # not ascending (about 150 expected)
    # Spread over the range: each tenth gets some (30 expected, 0 means a bias).
    tenths = [0] * 10
    for p in ports:
        tenths[(p - low) * 10 // (high - low + 1)] += 1
    assert min(tenths) >= 5 and max(tenths) <= 80, tenths
    # Two pools (two restarts) do not hand out the same sequence.
    assert allocate(PortPool(low, high), 5) != allocate(PortPool(low, high), 5)


def test_a_port_given_back_is_not_handed_out_again_at_once() -> None:
    pool = PortPool(20000, 20999)  # 500 ports, 64 cool down
    first = allocate(pool, 1)[0]
    pool.give_back(first)
    assert first not in allocate(pool, 400)


def test_taken_ports_from_recovery_are_respected() -> None:
    pool = PortPool(20000, 20019)
    pool.take(20010)  # re-opened after a restart
    pool.take(31000)  # outside the (new) range: tracked, harmless
    assert pool.free == 9
    ports = allocate(pool, 9)
    assert 20010 not in ports and len(set(ports)) == 9
    pool.give_back(31000)
    assert pool.free == 0


def test_empty_range_is_an_error() -> None:
    with pytest.raises(ValueError):
        PortPool(20001, 20001)


def test_ports_another_process_holds_are_skipped_until_none_is_left() -> None:
    """The quick draws come straight from the free list; when binding fails for them
    all, the rest are still each tried once."""
    pool = PortPool(20000, 20199)  # 100 ports
    seen = []
    for port in pool.candidates():  # the caller fails to bind every one
        seen.append(port)
    assert sorted(seen) == list(range(20000, 20200, 2))
    pool.take(20100)
    assert 20100 not in set(pool.candidates())


def test_a_capped_rtp_receive_buffer_is_logged_once_per_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked for more than net.core.rmem_max, the kernel grants less, silently: the
    first RTP socket says so (with the fix), the others do not repeat it."""
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    monkeypatch.setattr(ports, "RECV_BUFFER", 2 * rmem_max)
    monkeypatch.setattr(ports._BufferCheck, "done", False)
    with structlog.testing.capture_logs() as logs:
        sockets = [ports.open_rtp_socket("127.0.0.1", 0) for _ in range(3)]
    for sock in sockets:
        sock.close()
    capped = [e for e in logs if e["event"] == "rtp_receive_buffer_capped"]
    assert len(capped) == 1
    assert capped[0]["wanted"] == 2 * rmem_max and capped[0]["granted"] <= rmem_max
    assert capped[0]["fix"] == "raise net.core.rmem_max"
    monkeypatch.setattr(ports, "RECV_BUFFER", 64 * 1024)  # within rmem_max: granted
    monkeypatch.setattr(ports._BufferCheck, "done", False)
    with structlog.testing.capture_logs() as logs:
        ports.open_rtp_socket("127.0.0.1", 0).close()
    assert [e for e in logs if e["event"] == "rtp_receive_buffer_capped"] == []
