"""The socket keeper (callrec.sockets): RTP sockets outlive the capture process.

Real sockets and real processes: a process that handed its socket over is SIGKILLed,
datagrams sent meanwhile wait in the kernel, and whoever takes the socket back reads
them with the time they arrived. Attacks: another process of the same user, another
user, and descriptors that are not UDP sockets are all refused.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from callrec import supervisor
from callrec.arrival import ANCILLARY_SPACE, KERNEL_TIMESTAMPS, arrival_time
from callrec.sockets import KeeperClient, SocketKeeper, check_peer, udp_port_of
from services.capture.ports import open_rtp_socket
from services.capture.receiver import StreamReceiver
from services.capture.segments import SegmentWriter, read_records
from tests.support.stamping import kernel_stamps_arrivals

REPO = Path(__file__).resolve().parents[2]

# A stand-in for capture: hands one RTP socket to the keeper, says its port, waits.
HOLDER = """
import sys, time
from pathlib import Path
from callrec.sockets import KeeperClient
from services.capture.ports import open_rtp_socket
sys.stdin.readline()  # the test names our pid as the allowed one first
client = KeeperClient.connect(Path(sys.argv[1]))
assert client is not None
sock = open_rtp_socket("127.0.0.1", 0)
client.hold(sock)
print(sock.getsockname()[1], flush=True)
time.sleep(60)
"""

# Another process of the node's user (say a compromised web service): tries to take.
TAKER = """
import sys
from pathlib import Path
from callrec.sockets import KeeperClient
client = KeeperClient.connect(Path(sys.argv[1]))
print(-1 if client is None else len(client.take()), flush=True)
"""

# Another OS user: plain sockets only (it cannot read our code), prints what it got.
RAW_TAKER = """
import socket, sys
conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.settimeout(3)
try:
    conn.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit()
try:
    conn.sendmsg([b'{"op": "take"}'])
    msg, fds, flags, addr = socket.recv_fds(conn, 65536, 200)
except OSError:  # reset: the keeper closed on us
    msg, fds = b"", []
print("got", len(fds) if msg else "closed")
"""


class Allowed:
    """The pid the keeper lets in (the supervisor names capture's)."""

    def __init__(self) -> None:
        self.pid: int | None = os.getpid()

    def __call__(self) -> int | None:
        return self.pid


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[tuple[SocketKeeper, Allowed]]:
    allowed = Allowed()
    k = SocketKeeper(tmp_path / "run" / "rtp-sockets.sock", allowed_pid=allowed).start()
    try:
        yield k, allowed
    finally:
        k.close()


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def _rtp(seq: int) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + bytes(8) + b"\xd5" * 160


def test_a_socket_outlives_a_sigkilled_holder_and_keeps_what_arrived(
    keeper: tuple[SocketKeeper, Allowed],
) -> None:
    k, allowed = keeper
    holder = _python(HOLDER, str(k.path))
    try:
        allowed.pid = holder.pid
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        port = int(holder.stdout.readline())
        _wait_for(lambda: port in k.ports)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # The holder is dead; its stream goes on. Nothing is bound by us: were the socket
    # closed, these datagrams would be refused by the kernel and lost.
    sent_at = time.time()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx:
        for seq in range(25):
            pbx.sendto(_rtp(seq), ("127.0.0.1", port))
    time.sleep(0.5)  # the restart
    allowed.pid = os.getpid()
    client = KeeperClient.connect(k.path)
    assert client is not None
    taken = client.take()
    assert list(taken) == [port]
    sock = taken[port]
    sock.setblocking(False)
    got = []
    while True:
        try:
            data, ancdata, _, _ = sock.recvmsg(2048, ANCILLARY_SPACE)
        except BlockingIOError:
            break
        got.append((int.from_bytes(data[2:4], "big"), arrival_time(ancdata)))
    read_at = time.time()
    assert [seq for seq, _ in got] == list(range(25))
    if KERNEL_TIMESTAMPS:  # stamped when they arrived, not when read 0.5 s later
        assert all(abs(at - sent_at) < 0.2 for _, at in got), (got[0], sent_at, read_at)
    # The stream ended: the keeper's copy goes, and the port is free again.
    client.drop(port)
    sock.close()
    _wait_for(lambda: port not in k.ports)
    client.close()
    open_rtp_socket("127.0.0.1", port).close()


def test_another_process_of_the_same_user_cannot_take_the_sockets(
    keeper: tuple[SocketKeeper, Allowed],
) -> None:
    k, allowed = keeper
    mine = open_rtp_socket("127.0.0.1", 0)
    client = KeeperClient.connect(k.path)
    assert client is not None
    client.hold(mine)
    _wait_for(lambda: len(k.ports) == 1)
    # A stranger process (not the capture the supervisor spawned) is refused...
    taker = _python(TAKER, str(k.path))
    out, _ = taker.communicate(timeout=20)
    assert out.splitlines()[-1] == "0"  # (its log lines come first)
    assert k.refused["other_process"] == 1
    # ...while the named process still gets them back.
    allowed.pid = os.getpid()
    again = KeeperClient.connect(k.path)
    assert again is not None
    assert list(again.take()) == [mine.getsockname()[1]]
    # And once the supervisor names nobody (capture is down), nobody gets them.
    allowed.pid = 0
    late = KeeperClient.connect(k.path)
    assert late is not None
    assert late.take() == {}
    assert k.refused["other_process"] == 2
    for c in (client, again, late):
        c.close()
    mine.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_another_user_is_refused_even_when_the_file_modes_would_let_it_in() -> None:
    base = Path(tempfile.mkdtemp(prefix="keeper-", dir="/tmp"))
    k = SocketKeeper(base / "run" / "rtp-sockets.sock", allowed_pid=None).start()
    held = open_rtp_socket("127.0.0.1", 0)
    try:
        client = KeeperClient.connect(k.path)
        assert client is not None
        client.hold(held)
        _wait_for(lambda: len(k.ports) == 1)

        def as_nobody() -> str:
            result = subprocess.run(["/usr/bin/python3", "-c", RAW_TAKER, str(k.path)],
                                    user=65534, group=65534, capture_output=True, text=True,
                                    timeout=20, cwd="/")
            return result.stdout.strip()

        base.chmod(0o711)
        assert as_nobody() == "EACCES"  # the run dir (0700) keeps it out
        k.path.parent.chmod(0o711)
        assert as_nobody() == "EACCES"  # so does the socket's own mode (0600)
        k.path.chmod(0o666)
        assert as_nobody() == "got closed"  # past the file system: SO_PEERCRED says no
        assert k.refused["other_user"] == 1
        client.close()
    finally:
        held.close()
        k.close()
        for path in sorted(base.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        base.rmdir()


def test_the_keeper_socket_is_private(keeper: tuple[SocketKeeper, Allowed]) -> None:
    k, _ = keeper
    assert stat.S_IMODE(k.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(k.path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(k.path.stat().st_mode)


def test_a_data_dir_deeper_than_a_unix_socket_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    k = SocketKeeper(deep / "run" / "rtp-sockets.sock", allowed_pid=None).start()
    try:
        client = KeeperClient.connect(k.path)
        assert client is not None
        with open_rtp_socket("127.0.0.1", 0) as sock:
            client.hold(sock)
            _wait_for(lambda: k.ports == [sock.getsockname()[1]])
        assert list(client.take()) == k.ports
        client.close()
    finally:
        k.close()


def test_only_bound_udp_sockets_are_held(keeper: tuple[SocketKeeper, Allowed]) -> None:
    k, _ = keeper
    client = KeeperClient.connect(k.path)
    assert client is not None
    read_end, write_end = os.pipe()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    unbound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with open(read_end, "rb") as pipe:
        client.hold(pipe)  # type: ignore[arg-type]
        client.hold(tcp)
        client.hold(unbound)
        _wait_for(lambda: k.rejected_fds == 3)
    assert k.ports == []
    os.close(write_end)
    tcp.close()
    unbound.close()
    client.close()
    assert check_peer(123, os.getuid(), None) is None
    assert check_peer(123, os.getuid() + 1, None) == "other_user"
    assert check_peer(123, os.getuid(), 456) == "other_process"


def test_port_of_a_kept_socket_is_read_from_the_socket_itself() -> None:
    with open_rtp_socket("127.0.0.1", 0) as sock:
        assert udp_port_of(sock.fileno()) == sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unbound:
        assert udp_port_of(unbound.fileno()) is None


async def test_backlog_drained_after_a_restart_lands_where_it_was_heard(tmp_path: Path) -> None:
    """Packets queued while nobody read the socket keep their arrival time."""
    if not KERNEL_TIMESTAMPS:
        pytest.skip("no kernel receive timestamps on this platform")
    sock = open_rtp_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    await kernel_stamps_arrivals()
    started = time.time()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx:
        for seq in range(10):
            pbx.sendto(_rtp(seq), ("127.0.0.1", port))
        await asyncio.sleep(0.6)  # capture restarting
        writer = SegmentWriter(tmp_path / "s.seg")
        receiver = StreamReceiver(writer, started)
        assert receiver.drain(sock) == 10
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: receiver, sock=sock)
        for seq in range(10, 15):  # heard after the restart
            pbx.sendto(_rtp(seq), ("127.0.0.1", port))
        for _ in range(200):
            if receiver.packets >= 15:
                break
            await asyncio.sleep(0.01)
    receiver.close()
    writer.close(sync=False)
    records = list(read_records(tmp_path / "s.seg"))
    assert [int.from_bytes(d[2:4], "big") for _, d in records] == list(range(15))
    backlog = [ms for ms, _ in records[:10]]
    fresh = [ms for ms, _ in records[10:]]
    assert max(backlog) < 300, backlog  # not stamped 0.6 s late, at the time of reading
    assert min(fresh) >= 550, fresh


def test_capture_restarts_at_once_then_backs_off() -> None:
    assert supervisor.first_backoff("capture") == 0.0
    assert supervisor.first_backoff("web") == 0.5
    delays = [supervisor.first_backoff("capture")]
    for _ in range(6):
        delays.append(supervisor.next_backoff(delays[-1]))
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
