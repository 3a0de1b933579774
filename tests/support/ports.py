"""Loopback ports for tests, all below the kernel's ephemeral range (32768+).

A port picked from the ephemeral range can be taken, between the pick and its use
(or across a node restart on the same ports), as the source port of any outgoing
connection; below that range only explicit binds compete. Separate bands keep node
ports, RTP ranges and SIPp ports apart, and no port is handed out twice here.
"""

from __future__ import annotations

import random
import socket
import threading

NODE_PORTS = (10000, 20000)
RTP_PORTS = (20000, 28000)
SIPP_PORTS = (28000, 32700)

_lock = threading.Lock()
_handed_out: set[int] = set()


def _free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block(
    count: int = 1,
    *,
    band: tuple[int, int] = NODE_PORTS,
    tcp: bool = True,
    udp: bool = True,
    even: bool = False,
) -> int:
    """First of `count` consecutive ports free on 127.0.0.1 in `band`."""
    low, high = band
    with _lock:
        if sum(1 for p in _handed_out if low <= p < high) + count > (high - low) // 2:
            # A long run has handed out half the band: forget the oldest hand-outs
            # (their nodes have stopped); the bind checks below still apply.
            _handed_out.difference_update({p for p in _handed_out if low <= p < high})
        for _ in range(5000):
            base = random.randrange(low, high - count)
            if even:
                base &= ~1
            block = range(base, base + count)
            if any(p in _handed_out for p in block):
                continue
            if all((not udp or _free(p, socket.SOCK_DGRAM))
                   and (not tcp or _free(p, socket.SOCK_STREAM)) for p in block):
                _handed_out.update(block)
                return base
    raise RuntimeError(f"no {count} free ports in {low}-{high}")


def free_port() -> int:
    return free_block(1)


def rtp_range(size: int = 100) -> tuple[int, int]:
    base = free_block(size, band=RTP_PORTS, tcp=False, even=True)
    return base, base + size - 1
