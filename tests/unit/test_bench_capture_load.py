"""The bench node's RTP range holds the calls of a level beside signaling's port reserve.

Why: bench.capacity at 400 calls stopped with PortsExhausted once signaling's reserve
grew to 512 ports, and only the full run (not the smoke) could see it."""

import pytest

from bench.capture_load import WARM_UP_CALLS, node_rtp_width
from bench.loadgen import BENCH_RTP_PORTS
from contracts.v1.rpc import MAX_RESERVE


@pytest.mark.parametrize("calls", [1, 3, 50, 400, 1500])
def test_the_range_holds_every_stream_after_a_full_reserve(calls: int) -> None:
    even_ports = node_rtp_width(calls) // 2
    assert even_ports - MAX_RESERVE >= 2 * (calls + WARM_UP_CALLS)


def test_the_largest_level_and_its_peer_fit_the_bench_band() -> None:
    low, top = BENCH_RTP_PORTS
    assert node_rtp_width(1500) + 100 <= top + 1 - low
