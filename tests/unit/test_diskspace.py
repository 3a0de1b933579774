"""Disk pressure rules (callrec.diskspace) and the pieces that must not fail on a
full disk: the log writer, a segment writer, the nats-server log watch."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from callrec import diskspace, natsserver
from callrec.config import NodeConfig
from callrec.diskspace import GIB, MIB, Reserve, ReserveGate, parse_reserve
from callrec.logs import LineWriter
from callrec.supervisor import JetStreamRecovery
from services.capture.segments import SegmentWriter, read_records

DEV_FULL = Path("/dev/full")  # every write fails with ENOSPC


@pytest.mark.parametrize(("text", "expected"), [
    ("auto", Reserve("auto")),
    ("", Reserve("auto")),
    ("0", Reserve("bytes", 0)),
    ("500M", Reserve("bytes", 500 * MIB)),
    ("2G", Reserve("bytes", 2 * GIB)),
    ("2GiB", Reserve("bytes", 2 * GIB)),
    ("1.5g", Reserve("bytes", int(1.5 * GIB))),
    ("1048576", Reserve("bytes", 1048576)),
    ("5%", Reserve("percent", 5.0)),
])
def test_reserve_parses_sizes_and_shares(text: str, expected: Reserve) -> None:
    assert parse_reserve(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1G", "5 parsecs", "100%", "2X"])
def test_reserve_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_reserve(text)
    with pytest.raises(ValueError):
        NodeConfig(disk_reserve=text)


def test_auto_reserve_is_1_gib_or_5_percent_capped_at_a_quarter() -> None:
    auto = Reserve("auto")
    assert auto.bytes_for(100 * GIB) == 5 * GIB       # 5 % beats 1 GiB
    assert auto.bytes_for(10 * GIB) == 1 * GIB        # 1 GiB beats 5 %
    assert auto.bytes_for(2 * GIB) == 512 * MIB       # capped: a quarter of a small disk
    assert Reserve("percent", 10).bytes_for(50 * GIB) == 5 * GIB
    assert NodeConfig().reserve == auto
    assert NodeConfig(disk_reserve="40M").reserve.bytes_for(200 * MIB) == 40 * MIB


def test_reserve_gate_refuses_below_and_accepts_again_only_above_the_margin() -> None:
    gate = ReserveGate(Reserve("bytes", 100 * MIB))
    total = 10 * GIB
    assert gate.update(101 * MIB, total) == "ok"
    assert gate.update(99 * MIB, total) == "low"
    assert gate.update(105 * MIB, total) == "low"   # inside the margin: no flapping
    assert gate.update(110 * MIB, total) == "ok"    # reserve + 10 %
    assert gate.update(100 * MIB, total) == "ok"
    assert "99 MiB free" in gate.reason(99 * MIB, total)
    off = ReserveGate(Reserve("bytes", 0))
    assert off.update(0, total) == "ok"


def test_jetstream_budget_and_refusal_threshold() -> None:
    assert diskspace.jetstream_budget(100 * GIB) == 25 * GIB
    assert diskspace.jetstream_budget(10 * MIB) == 16 * MIB
    budget = diskspace.jetstream_budget(200 * MIB)
    assert not diskspace.jetstream_nearly_full(int(budget * 0.89), budget)
    assert diskspace.jetstream_nearly_full(int(budget * 0.9), budget)
    reserve = Reserve("bytes", 100 * MIB)
    assert not diskspace.jetstream_can_resume(10 * MIB, GIB, reserve)
    assert diskspace.jetstream_can_resume(50 * MIB, GIB, reserve)


def test_retry_back_off_doubles_up_to_30_s() -> None:
    assert [diskspace.retry_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_out_of_space_is_found_in_an_exception_chain() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("finalize failed") from exc
    except RuntimeError as wrapped:
        assert diskspace.is_out_of_space(wrapped)
    assert not diskspace.is_out_of_space(OSError(errno.EIO, "I/O error"))
    assert not diskspace.is_out_of_space(ValueError("no"))


def test_nats_store_failure_lines() -> None:
    assert diskspace.is_store_failure_line(
        "[1] [ERR] JetStream stream '$G > S' critical write error: write x: "
        "no space left on device")
    assert diskspace.is_store_failure_line("[1] [ERR] JetStream out of space, will be DISABLED")
    assert not diskspace.is_store_failure_line(
        "[1] [ERR] JetStream file resource limits exceeded for server")  # a clean refusal


# ---- the log never blocks and never raises ------------------------------------------


def test_log_writer_on_a_full_disk_drops_and_counts_and_never_raises() -> None:
    fd = os.open(DEV_FULL, os.O_WRONLY)
    try:
        writer = LineWriter(fd)
        for n in range(50):
            writer.write(f'{{"event": "line {n}"}}\n')
        writer.flush()
        time.sleep(0.2)
        assert writer.dropped == 50
    finally:
        os.close(fd)


def test_log_writer_never_waits_on_a_blocked_stderr() -> None:
    read_end, write_end = os.pipe()  # nobody reads: the pipe fills, writes would block
    try:
        writer = LineWriter(write_end, max_lines=100)
        line = "x" * 1000 + "\n"
        started = time.monotonic()
        for _ in range(5000):  # 5 MB: far beyond the pipe's 64 KiB
            writer.write(line)
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, elapsed
        assert writer.dropped > 4000
    finally:
        os.close(read_end)  # the writer thread's blocked write now fails: it recovers
        time.sleep(0.1)
        os.close(write_end)


def test_log_writer_reports_what_it_dropped_once_writing_works(tmp_path: Path) -> None:
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        writer = LineWriter(fd)
        writer.dropped = writer._unreported = 7  # as after a full-disk episode
        writer.write('{"event": "back"}\n')
        writer.flush()
        time.sleep(0.2)
    finally:
        os.close(fd)
    lines = path.read_text().splitlines()
    assert '"log_lines_dropped", "count": 7' in lines[0]
    assert lines[1] == '{"event": "back"}'


# ---- a full disk keeps a stream's packets in memory, in order -------------------------


def test_segment_writer_keeps_unwritten_packets_on_a_full_disk(tmp_path: Path) -> None:
    writer = SegmentWriter(DEV_FULL)
    writer.append(20, b"a" * 172)
    writer.append(40, b"b" * 172)
    with pytest.raises(OSError) as raised:
        writer.flush()
    assert raised.value.errno == errno.ENOSPC
    writer.append(60, b"c" * 172)  # the call goes on
    kept = bytes(writer.buffer)
    # Space returns: the same buffered bytes go to a real file, nothing lost or reordered.
    os.close(writer._fd)
    writer._fd = os.open(tmp_path / "s.seg", os.O_WRONLY | os.O_CREAT)
    assert writer.flush() == len(kept)
    writer.close()
    records = list(read_records(tmp_path / "s.seg"))
    assert [(ms, data[:1]) for ms, data in records] == [(20, b"a"), (40, b"b"), (60, b"c")]


def test_segment_writer_keeps_the_unwritten_rest_of_a_partial_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disk fills in the middle of a flush: what reached the file is not written
    twice, the rest stays buffered ahead of what arrives meanwhile."""
    writer = SegmentWriter(tmp_path / "s.seg")
    writer.append(20, b"a" * 172)
    writer.append(40, b"b" * 172)
    real_write = os.write
    calls = 0

    def write_then_fail(fd: int, data: bytes) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data)[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("services.capture.segments.os.write", write_then_fail)
    with pytest.raises(OSError):
        writer.flush()
    writer.append(60, b"c" * 172)
    monkeypatch.setattr("services.capture.segments.os.write", real_write)
    writer.close()
    records = list(read_records(tmp_path / "s.seg"))
    assert [(ms, data[:1]) for ms, data in records] == [(20, b"a"), (40, b"b"), (60, b"c")]


# ---- nats-server's log is watched through a pipe ---------------------------------------


def test_store_watch_sees_a_store_failure_even_when_its_log_file_cannot_be_written(
    tmp_path: Path,
) -> None:
    fake = subprocess.Popen(
        ["sh", "-c", "echo '[1] [INF] Server is ready'; "
                     "echo \"[1] [ERR] JetStream stream 'x > E' critical write error: "
                     "no space left on device\""],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watch = natsserver.StoreWatch(fake, DEV_FULL)  # the log's disk is full
    fake.wait(timeout=5)
    assert watch.failed.wait(timeout=5)
    assert "critical write error" in watch.last_failure


def test_recovery_restarts_once_there_is_room_and_not_in_a_loop(tmp_path: Path) -> None:
    fake = subprocess.Popen(["sh", "-c", "echo 'JetStream out of space, will be DISABLED'"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watch = natsserver.StoreWatch(fake, tmp_path / "nats.log")
    fake.wait(timeout=5)
    assert watch.failed.wait(timeout=5)
    roomy = JetStreamRecovery(NodeConfig(data_dir=tmp_path, disk_reserve="1M"))
    assert roomy.should_restart(watch)
    assert not roomy.should_restart(watch)  # not again within the interval
    cramped = JetStreamRecovery(NodeConfig(data_dir=tmp_path, disk_reserve="1000T"))
    assert not cramped.should_restart(watch)  # waits for room
    quiet = natsserver.StoreWatch(
        subprocess.Popen(["true"], stdout=subprocess.PIPE), tmp_path / "other.log")
    assert not roomy.should_restart(quiet)


def test_finalize_retries_transient_failures_forever_and_gives_up_only_on_bugs(
    tmp_path: Path,
) -> None:
    import nats.errors

    from callrec import bus
    from services.capture.service import _is_transient

    there, gone = tmp_path, tmp_path / "gone"
    assert _is_transient(OSError(errno.ENOSPC, "No space left on device"), there)
    assert _is_transient(OSError(errno.EIO, "I/O error"), there)
    assert not _is_transient(OSError(errno.ENOENT, "gone"), gone)  # nothing left to retry
    assert _is_transient(TimeoutError(), there)
    assert _is_transient(nats.errors.TimeoutError(), there)
    assert _is_transient(bus.RpcError("no responders"), there)
    assert not _is_transient(ValueError("corrupt manifest"), there)


def test_missed_calls_fit_a_small_disks_jetstream_budget() -> None:
    from callrec.diskspace import MIB, missed_calls_budget

    assert missed_calls_budget(100 * 1024 * MIB) == 64 * MIB  # a real disk: the cap
    assert missed_calls_budget(16 * MIB) == 2 * MIB  # a small one: an eighth of the budget
    assert missed_calls_budget(0) == 1 * MIB
