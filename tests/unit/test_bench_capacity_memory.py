"""The capacity bench's memory, level and BYE->playable logic, without a node: /proc
texts from fixtures, the clean/broken rule, the climb of levels, the playable check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import capacity, loadgen

STATUS = """Name:\tpython
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  412340 kB
VmSize:\t  398212 kB
VmHWM:\t   91236 kB
VmRSS:\t   88104 kB
RssAnon:\t   52000 kB
Threads:\t3
"""

# Fields out of the kernel's order, so a parser that matches a prefix ("Pss_Dirty") fails.
SMAPS_ROLLUP = """55d0c0a00000-7ffd1e5f2000 ---p 00000000 00:00 0                          [rollup]
Pss_Dirty:         50211 kB
Rss:               88104 kB
Pss:               61377 kB
Pss_Anon:          50002 kB
Shared_Clean:      30120 kB
Private_Dirty:     50100 kB
"""


def test_parsers_read_the_right_field() -> None:
    assert loadgen.parse_vmrss(STATUS) == 88104  # not VmHWM, not RssAnon
    assert loadgen.parse_pss(SMAPS_ROLLUP) == 61377  # not Pss_Dirty / Pss_Anon
    assert loadgen.parse_vmrss("Name:\tkworker/0:1\nState:\tI (idle)\n") is None  # kernel thread
    with pytest.raises(ValueError):
        loadgen.parse_pss("Pss:  12 MB\n")


def test_memory_prefers_pss_and_falls_back_to_rss() -> None:
    assert loadgen.Memory(rss_kb=100, pss_kb=40).kb == 40
    assert loadgen.Memory(rss_kb=100, pss_kb=None).kb == 100


def test_read_memory_of_this_process() -> None:
    memory = loadgen.read_memory(os.getpid())
    assert memory is not None and memory.rss_kb > 1000
    assert memory.pss_kb is None or 0 < memory.pss_kb <= memory.rss_kb
    assert loadgen.read_memory(2**22 + 12345) is None  # above pid_max: never a process


def test_process_labels() -> None:
    py = "/work/main/.venv/bin/python"
    fork = f"{py} -c from multiprocessing.forkserver import main; main(9, 10, ['x'])"
    assert loadgen.process_label(f"{py} -m services.capture --node-id a", f"{py} -m callrec up") \
        == "capture"
    assert loadgen.process_label("/usr/bin/nats-server -c /tmp/x.conf", "") == "nats-server"
    assert loadgen.process_label(fork, f"{py} -m services.capture") == "forkserver"
    assert loadgen.process_label(fork, fork) == "encoder worker"
    assert loadgen.process_label(f"{py} -m callrec up --node-id a", "bash") == "supervisor"
    tracker = f"{py} -c from multiprocessing.resource_tracker import main;main(5)"
    assert loadgen.process_label(tracker, f"{py} -m services.capture") == "resource tracker"


def test_group_memory_sums_by_label() -> None:
    sample = loadgen.group_memory(os.getpgid(os.getpid()))
    assert sample and loadgen.total_kb(sample) > 1000
    assert all(count >= 1 and kb >= 0 for kb, count in sample.values())


def test_per_call_memory_and_table_columns() -> None:
    line = capacity.Line(system="callrec", calls=400, idle_mb=300.0, peak_mb=360.0,
                         playable_p50=0.4, playable_p99=1.5, peer_p50=0.5, peer_p99=1.9)
    assert line.kb_per_call == pytest.approx(150.0)  # 60 MB over 400 calls
    table = capacity.render_table([line], "### h", [])
    head = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    row = dict(zip(head, [c.strip() for c in table.splitlines()[4].strip("|").split("|")],
                   strict=True))
    assert (row["idle MB"], row["peak MB"], row["KB/call"]) == ("300.0", "360.0", "150")
    assert row["BYE->playable p50 s"] == "0.400" and row["on peer p50 s"] == "0.500"
    assert capacity.Line(system="x", calls=0).kb_per_call != capacity.Line(
        system="x", calls=0).kb_per_call  # NaN, not a division by zero


def test_level_problems() -> None:
    ok = capacity.Line(system="callrec", calls=100, loss_pct=0.05)
    assert capacity.level_problems(ok, 20) == []
    assert "loss" in capacity.level_problems(
        capacity.Line(system="callrec", calls=100, loss_pct=0.2), 20)[0]
    assert capacity.level_problems(capacity.Line(system="callrec", calls=100), 20)  # NaN loss
    assert "wrong" in capacity.level_problems(
        capacity.Line(system="callrec", calls=100, loss_pct=0.0, wrong=1), 20)[0]
    late = capacity.Line(system="callrec", calls=100, loss_pct=0.0, late_s=0.9)
    assert "sender" in capacity.level_problems(late, 20)[0]
    assert capacity.level_problems(late, 60) == []  # 2 % of a minute is 1.2 s
    short = capacity.Line(system="callrec", calls=100, loss_pct=0.0, sent_pct=99.5)
    assert "sender" in capacity.level_problems(short, 20)[0]


def test_next_level_runs_the_plan_then_climbs() -> None:
    plan = [50, 100, 200, 400]
    assert capacity.next_level([], plan, 1500) == 50
    assert capacity.next_level([50, 100], plan, 1500) == 200
    assert capacity.next_level(plan, plan, 1500) == 600
    assert capacity.next_level([*plan, 600, 900], plan, 1500) == 1350
    assert capacity.next_level([*plan, 600, 900, 1350], plan, 1500) == 1500
    assert capacity.next_level([*plan, 600, 900, 1350, 1500], plan, 1500) is None
    assert capacity.next_level(plan, plan, 400) is None  # no climbing
    assert capacity.next_level([3], [3], 3) is None
    assert capacity.next_level([5], [5], 100) == 15  # small levels still grow


def test_playable_needs_the_listing_and_the_whole_file(tmp_path: Path) -> None:
    (tmp_path / "recordings").mkdir()
    (tmp_path / "recordings" / "a.opus").write_bytes(b"x" * 100)
    (tmp_path / "recordings" / "b.opus").write_bytes(b"x" * 60)  # still arriving
    items = [{"recording_id": rid, "object_key": f"recordings/{rid}.opus", "size_bytes": 100}
             for rid in ("a", "b", "c", "other")]
    assert capacity.playable_now(items, {"a", "b", "c", "d"}, tmp_path) == ["a"]


def test_memory_slopes_between_levels() -> None:
    lines = [capacity.Line(system="callrec", calls=100, peak_mb=500.0),
             capacity.Line(system="rtpengine (pcap)", calls=100, peak_mb=40.0),
             capacity.Line(system="callrec", calls=400, peak_mb=560.0)]
    assert capacity.memory_slopes(lines) == "100->400 calls 200"
    assert capacity.memory_slopes(lines[:1]) == ""


def test_spread_samples_the_whole_level() -> None:
    ids = [f"bench-300-x-{i:05d}" for i in range(300)][::-1]  # the catalog lists newest first
    picked = capacity.spread(ids, 5)
    assert picked[0].endswith("00000") and picked[-1].endswith("00299") and len(set(picked)) == 5
    assert capacity.spread(ids[:3], 5) == sorted(ids[:3])
    assert capacity.spread(ids, 1) == ["bench-300-x-00299"] and capacity.spread([], 3) == []
