"""Sockets that outlive the process using them: a keeper holds a copy of each one.

Capture binds one UDP socket per RTP stream. When the capture process dies, its
sockets would close with it: until a new capture binds the ports again, the
kernel answers every datagram with "port unreachable" and the audio is gone. So
capture hands a duplicate of each socket (SCM_RIGHTS over a Unix socket) to a
keeper living in the supervisor, which outlives it. While capture is down the
socket stays open, the kernel keeps queueing the stream's datagrams in its receive
buffer (stamped with their arrival time), and the restarted capture takes the same
sockets back and drains what arrived meanwhile.

The keeper never reads a datagram: both processes hold one open file description,
with one queue, that only capture reads.

Protocol (SOCK_SEQPACKET, one JSON object per message):

* ``{"op": "hold"}`` with one descriptor: keep it (keyed by the port it is bound to);
* ``{"op": "drop", "port": P}``: close the copy of port P (the stream ended);
* ``{"op": "take"}``: the reply is ``{"ports": [...], "more": bool}`` messages
  carrying a duplicate of every socket held, in the order of ``ports``.

Only the node's OS user may connect (the socket file is 0600 in the 0700 run dir,
and the peer's credentials are checked with SO_PEERCRED), and only the process the
supervisor names (the capture process it spawned): another service of the node,
even compromised, cannot take the RTP sockets.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import selectors
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from .logs import get_logger

# Where the keeper listens, under the data dir.
KEEPER_PATH = Path("run") / "rtp-sockets.sock"
# File descriptors per reply message (the kernel allows 253 per SCM_RIGHTS).
FDS_PER_MESSAGE = 200
MAX_MESSAGE = 64 * 1024
# A keeper holds at most this many sockets (one per RTP port, whatever the range).
MAX_HELD = 32768
CLIENT_TIMEOUT = 2.0

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

Refusal = Literal["other_user", "other_process"]

log = get_logger()


def keeper_path(data_dir: Path) -> Path:
    return data_dir / KEEPER_PATH


# sun_path holds 108 bytes: a deep data dir is reached through its directory's fd.
_SUN_PATH_MAX = 100


@contextlib.contextmanager
def _addressable(path: Path) -> Iterator[str]:
    """A name for `path` short enough for bind/connect (Linux: /proc/self/fd/N/name)."""
    if len(os.fsencode(str(path))) < _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def check_peer(pid: int, uid: int, allowed_pid: int | None) -> Refusal | None:
    """Who may use the keeper: our own OS user, and the named process if one is named."""
    if uid != os.getuid():
        return "other_user"
    if allowed_pid is not None and pid != allowed_pid:
        return "other_process"
    return None


def udp_port_of(fd: int) -> int | None:
    """The local port of a bound UDP socket, else None (anything else is refused)."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            return None
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with sock:
        if sock.type != socket.SOCK_DGRAM or sock.family not in (
            socket.AF_INET, socket.AF_INET6
        ):
            return None
        port = int(sock.getsockname()[1])
    return port if port > 0 else None


class SocketKeeper:
    """The keeper side: a thread serving the Unix socket, holding one fd per port.

    A thread rather than the supervisor's event loop: handing sockets back must not
    wait behind whatever the supervisor is doing when capture restarts."""

    def __init__(self, path: Path, allowed_pid: Callable[[], int | None] | None = None,
                 max_held: int = MAX_HELD) -> None:
        self.path = path
        self._allowed_pid = allowed_pid or (lambda: None)
        self._max_held = max_held
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.refused: dict[Refusal, int] = {"other_user": 0, "other_process": 0}
        self.rejected_fds = 0

    # ---- life cycle ----------------------------------------------------------------

    def start(self) -> SocketKeeper:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.parent.chmod(0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a node that was killed
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old = os.umask(0o177)
        try:
            with _addressable(self.path) as address:
                listener.bind(address)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        listener.listen(8)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        # Run in a copy of our context: the thread logs with the service and node ids.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._serve,),
                                        name="socket-keeper", daemon=True)
        self._thread.start()
        log.info("socket_keeper_started", path=str(self.path))
        return self

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for fd in self._held.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._held.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def ports(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    # ---- the thread ----------------------------------------------------------------

    def _serve(self) -> None:
        assert self._listener is not None
        try:
            while not self._closing:
                for key, _ in self._selector.select():
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj == self._wake_r:
                        continue
                    else:
                        conn = key.fileobj
                        assert isinstance(conn, socket.socket)
                        self._serve_one(conn)
        finally:
            for key in list(self._selector.get_map().values()):
                if isinstance(key.fileobj, socket.socket):
                    key.fileobj.close()
            self._selector.close()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        pid, uid, _gid = peer_credentials(conn)
        refusal = check_peer(pid, uid, self._allowed_pid())
        if refusal is not None:
            self.refused[refusal] += 1
            log.warning("socket_keeper_refused", peer_pid=pid, peer_uid=uid, reason=refusal)
            conn.close()
            return
        conn.setblocking(True)
        conn.settimeout(CLIENT_TIMEOUT)
        self._selector.register(conn, selectors.EVENT_READ, None)
        log.info("socket_keeper_client", peer_pid=pid, held=len(self._held))

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            data, fds, _flags, _ = socket.recv_fds(conn, MAX_MESSAGE, 1)
        except OSError as exc:
            log.warning("socket_keeper_read_failed", error=str(exc))
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            self._selector.unregister(conn)
            conn.close()
            return
        try:
            request = json.loads(data)
            op = request["op"] if isinstance(request, dict) else None
            if op == "hold":
                fds = self._hold(fds)
            elif op == "drop":
                self._drop(int(request["port"]))
            elif op == "take":
                self._take(conn)
            else:
                log.warning("socket_keeper_bad_request", op=str(op)[:32])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("socket_keeper_bad_request", error=str(exc)[:200])
        except OSError as exc:
            log.warning("socket_keeper_reply_failed", error=str(exc))
            self._selector.unregister(conn)
            conn.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _hold(self, fds: list[int]) -> list[int]:
        """Keep the one fd sent, if it is a bound UDP socket; returns those to close."""
        if len(fds) != 1:
            self.rejected_fds += len(fds)
            return fds
        fd = fds[0]
        port = udp_port_of(fd)
        with self._lock:
            if port is None or (port not in self._held and len(self._held) >= self._max_held):
                self.rejected_fds += 1
                log.warning("socket_keeper_fd_rejected", port=port, held=len(self._held))
                return fds
            previous = self._held.get(port)
            self._held[port] = fd
        if previous is not None:
            with contextlib.suppress(OSError):
                os.close(previous)
        return []

    def _drop(self, port: int) -> None:
        with self._lock:
            fd = self._held.pop(port, None)
        if fd is not None:
            os.close(fd)

    def _take(self, conn: socket.socket) -> None:
        with self._lock:
            held = sorted(self._held.items())
        if not held:
            conn.sendmsg([json.dumps({"ports": [], "more": False}).encode()])
            return
        for start in range(0, len(held), FDS_PER_MESSAGE):
            batch = held[start:start + FDS_PER_MESSAGE]
            body = {"ports": [port for port, _ in batch],
                    "more": start + FDS_PER_MESSAGE < len(held)}
            socket.send_fds(conn, [json.dumps(body).encode()], [fd for _, fd in batch])
        log.info("socket_keeper_handed_back", sockets=len(held))


class KeeperClient:
    """The capture side: blocking and tiny (a send per stream opened or closed)."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn: socket.socket | None = conn

    @classmethod
    def connect(cls, path: Path) -> KeeperClient | None:
        """None when no keeper listens (capture run alone, or an older supervisor)."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.settimeout(CLIENT_TIMEOUT)
        try:
            with _addressable(path) as address:
                conn.connect(address)
        except OSError as exc:
            conn.close()
            log.warning("socket_keeper_unavailable", path=str(path), error=str(exc),
                        effect="a capture restart loses what arrives while it is down")
            return None
        return cls(conn)

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def take(self) -> dict[int, socket.socket]:
        """Every socket the keeper holds (a duplicate each), by local port."""
        conn = self._conn
        if conn is None:
            return {}
        taken: dict[int, socket.socket] = {}
        try:
            conn.sendmsg([b'{"op": "take"}'])
            more = True
            while more:
                data, fds, _flags, _ = socket.recv_fds(conn, MAX_MESSAGE, FDS_PER_MESSAGE)
                if not data:
                    raise ConnectionError("the keeper closed the connection")
                reply = json.loads(data)
                ports = [int(p) for p in reply["ports"]]
                for port, fd in zip(ports, fds, strict=False):
                    taken[port] = socket.socket(fileno=fd)
                for fd in fds[len(ports):]:
                    os.close(fd)
                more = bool(reply["more"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._lost(exc)
        return taken

    def hold(self, sock: socket.socket) -> None:
        """Give the keeper a copy of this socket (it stays ours too)."""
        if self._conn is not None:
            try:
                socket.send_fds(self._conn, [b'{"op": "hold"}'], [sock.fileno()])
            except OSError as exc:
                self._lost(exc)

    def drop(self, port: int) -> None:
        """The stream on this port ended: the keeper closes its copy."""
        if self._conn is not None:
            try:
                self._conn.sendmsg([json.dumps({"op": "drop", "port": port}).encode()])
            except OSError as exc:
                self._lost(exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _lost(self, exc: Exception) -> None:
        log.error("socket_keeper_lost", error=str(exc),
                  effect="a capture restart loses what arrives while it is down")
        self.close()
