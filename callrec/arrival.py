"""When a datagram reached this host: the kernel's receive timestamp (SO_TIMESTAMPNS).

A datagram can wait in a socket's receive buffer while its reader is busy or gone (a
restarting capture, a set-up burst in signaling). The time of reading then says when
the process got to it, not when it arrived: the kernel's stamp says when it arrived,
so RTP lands where it was heard and an INVITE's wait in the queue can be measured.
"""

from __future__ import annotations

import platform
import socket
import struct
import sys
import time

import structlog

log = structlog.get_logger()

# SO_TIMESTAMPNS (asm-generic value; Python does not name it). Architectures with
# other numbers (sparc, parisc, alpha, mips) fall back to the time of reading.
SO_TIMESTAMPNS = 35
_GENERIC_SOCKOPT_MACHINES = ("x86_64", "amd64", "aarch64", "arm64", "i386", "i686",
                             "armv7l", "armv6l", "riscv64", "ppc64le", "ppc64", "s390x")
KERNEL_TIMESTAMPS = sys.platform == "linux" and platform.machine() in _GENERIC_SOCKOPT_MACHINES

# Room for one struct timespec (SCM_TIMESTAMPNS) in recvmsg's ancillary data.
_TIMESPEC = struct.Struct("@ll")
ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


def stamp_arrivals(sock: socket.socket) -> None:
    """Ask the kernel to stamp every datagram this socket receives (where it can)."""
    if KERNEL_TIMESTAMPS:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def open_stamped_udp(family: socket.AddressFamily, address: tuple[str, int],
                     receive_buffer: int) -> socket.socket:
    """A bound, non-blocking UDP socket whose datagrams carry their arrival time, with
    `receive_buffer` bytes of buffer asked for (the kernel caps it at net.core.rmem_max):
    what queues while its reader is busy or gone keeps the time it came."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        stamp_arrivals(sock)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def granted_receive_buffer(sock: socket.socket) -> int:
    """The receive buffer the kernel granted (Linux reports twice the usable size, its
    bookkeeping included, and caps what was asked at rmem_max)."""
    reported: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return reported // 2 if sys.platform == "linux" else reported


def warn_if_buffer_capped(sock: socket.socket, wanted: int, event: str) -> int:
    """Log `event` (a warning naming the fix) when the kernel granted less receive
    buffer than `wanted`; the granted size. A capped buffer holds a shorter stall."""
    granted = granted_receive_buffer(sock)
    if granted < wanted:
        log.warning(event, wanted=wanted, granted=granted, fix="raise net.core.rmem_max")
    return granted


def arrival_time(ancdata: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time (wall clock) from recvmsg's ancillary data; now if it
    has none."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds: int
            nanoseconds: int
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return seconds + nanoseconds / 1e9
    return time.time()
