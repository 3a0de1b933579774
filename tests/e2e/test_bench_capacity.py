"""bench/capacity.py in its smoke mode, so it cannot rot: a real node (and rtpengine when
it can be installed) under 3 calls for 2 s. Only the table's shape and the sign of its
figures are checked: the figures themselves are noise at this size."""

from __future__ import annotations

import re

import pytest

from bench import capacity

pytestmark = pytest.mark.e2e


def test_smoke_prints_every_row() -> None:
    table = capacity.main(["--smoke"])
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| 3 \| ([^|]+?) \|.*$", table, re.M)}
    assert "bare drain (asyncio)" in rows and "callrec" in rows
    floor = [name for name in rows if name.startswith("floor")]
    assert len(floor) == 1
    if "rtpengine skipped" not in table:
        assert "rtpengine (pcap)" in rows and floor[0].startswith("floor (rtpengine")
    for name in ("callrec", "bare drain (asyncio)", floor[0]):
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        # A 2 s level of 3 calls can stay below /proc's 10 ms tick for a bare receiver.
        rx, all_in = float(cells[4]), float(cells[7])
        assert rx >= 0 and all_in >= rx, rows[name]
        if name != "bare drain (asyncio)":
            assert all_in > 0 and float(cells[8]) > 0, rows[name]  # encoding costs ticks
    callrec = [c.strip() for c in rows["callrec"].strip("|").split("|")]
    assert float(callrec[6]) > 0 and float(callrec[10]) > 0  # finalize CPU, MB per call-hour
    assert float(callrec[11]) > 0 and float(callrec[12]) >= float(callrec[11])  # p50 <= p99
    assert callrec[13].startswith("3/3 duration+2ch, 1/1 tones, 0 not completed"), callrec[13]
