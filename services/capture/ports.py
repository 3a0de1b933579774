"""RTP port allocation: even ports of the configured range, in an unpredictable order.

Ports are drawn with the OS's CSPRNG (`secrets.SystemRandom`), so the port of the
next call cannot be guessed from the last one; a stranger has to hit one port among
all the free ones. A port just given back rests in a short cool-down queue before
it can be drawn again, so late packets of an ended call rarely meet a new stream
(and latching drops them if they do).

The sockets themselves are opened here too: a receive buffer large enough to hold
several seconds of a stream while capture restarts (the socket keeper holds them
meanwhile, see callrec/sockets.py), and kernel arrival timestamps, so packets
queued while nobody read them keep the time they arrived.
"""

from __future__ import annotations

import functools
import ipaddress
import secrets
import socket
from collections import deque
from collections.abc import Iterator

from callrec.arrival import open_stamped_udp, warn_if_buffer_capped

_random = secrets.SystemRandom()

# 1 MiB asked; the kernel caps it at net.core.rmem_max (often 208 KiB, then doubled):
# at about 830 bytes of buffer per 172-byte G.711 packet, >= 10 s of one stream.
RECV_BUFFER = 1 << 20


@functools.lru_cache(maxsize=8)
def _family(bind: str) -> socket.AddressFamily:
    """The bind address's family: one configured address, parsed once, not per stream."""
    return socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET


class _BufferCheck:
    done = False


def open_rtp_socket(bind: str, port: int) -> socket.socket:
    """A bound, non-blocking UDP socket for one RTP stream (OSError if the port is taken).
    The first one of the process says so in the log if the kernel capped its buffer
    (every stream's is capped alike)."""
    sock = open_stamped_udp(_family(bind), (bind, port), RECV_BUFFER)
    if not _BufferCheck.done:
        _BufferCheck.done = True
        warn_if_buffer_capped(sock, RECV_BUFFER, "rtp_receive_buffer_capped")
    return sock


# Draws straight from the free list before `candidates` falls back to a shuffled copy.
QUICK_DRAWS = 8


class PortsExhausted(RuntimeError):
    pass


class PortPool:
    def __init__(self, low: int, high: int) -> None:
        first = low if low % 2 == 0 else low + 1
        self._ports = frozenset(range(first, high + 1, 2))
        if not self._ports:
            raise ValueError(f"no even port in range {low}-{high}")
        self._free: list[int] = sorted(self._ports)
        self._index: dict[int, int] = {port: i for i, port in enumerate(self._free)}
        self._used: set[int] = set()
        self._cooling: deque[int] = deque()
        self._cooling_max = min(64, len(self._ports) // 4)

    @property
    def free(self) -> int:
        return len(self._free) + len(self._cooling)

    def candidates(self) -> Iterator[int]:
        """Free ports in a random order (callers try to bind each in turn); cooling
        ports come last, when nothing else is free.

        The first few draws are made straight from the free list, without copying it
        (a copy costs O(free ports) per call set-up, and the first draw nearly always
        binds); only when they all fail (another process holds those ports) does it
        shuffle a copy of what is left, so every free port is still tried once."""
        tried: set[int] = set()
        for _ in range(min(QUICK_DRAWS, len(self._free))):
            port = self._free[_random.randrange(len(self._free))]
            if port not in tried and port not in self._used:
                tried.add(port)
                yield port
        for group in (list(self._free), list(self._cooling)):
            while group:
                i = _random.randrange(len(group))
                group[i], group[-1] = group[-1], group[i]
                port = group.pop()
                if port not in self._used and port not in tried:
                    yield port

    def available(self, port: int) -> bool:
        """`port` is one of the range's and no stream or reservation holds it."""
        return port in self._ports and port not in self._used

    def take(self, port: int) -> None:
        self._used.add(port)
        self._remove_free(port)
        if port in self._cooling:
            self._cooling.remove(port)

    def give_back(self, port: int) -> None:
        if port not in self._used:
            return
        self._used.discard(port)
        if port not in self._ports:
            return
        self._cooling.append(port)
        while len(self._cooling) > self._cooling_max:
            self._add_free(self._cooling.popleft())

    def _remove_free(self, port: int) -> None:
        i = self._index.pop(port, None)
        if i is None:
            return
        last = self._free.pop()
        if last != port:
            self._free[i] = last
            self._index[last] = i

    def _add_free(self, port: int) -> None:
        if port not in self._index and port not in self._used:
            self._index[port] = len(self._free)
            self._free.append(port)


class ReservedPorts:
    """Ports bound ahead of the INVITEs that will use them (signaling's reserve): each
    socket is held unread, so what reaches it before its allocate waits in the kernel
    with its arrival time, and is closed when its lease runs out unused."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[socket.socket, float]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, port: int) -> bool:
        return port in self._held

    def hold(self, port: int, sock: socket.socket, until: float) -> None:
        self._held[port] = (sock, until)

    def take(self, port: int) -> socket.socket | None:
        """The reserved socket of `port`, no longer reserved (None if not held)."""
        held = self._held.pop(port, None)
        return None if held is None else held[0]

    def expire(self, now: float) -> list[tuple[int, socket.socket]]:
        """Leases that ran out at `now` (monotonic), removed: the caller closes them."""
        gone = [port for port, (_, until) in self._held.items() if until <= now]
        return [(port, self._held.pop(port)[0]) for port in gone]

    def release_all(self) -> list[tuple[int, socket.socket]]:
        held = [(port, sock) for port, (sock, _) in self._held.items()]
        self._held.clear()
        return held
