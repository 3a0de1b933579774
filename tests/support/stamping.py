"""Wait for the kernel to stamp datagrams when they arrive.

Linux turns receive timestamping on for the whole host lazily (deferred work) when the
first socket asks for it, and off again when the last one closes; a datagram that
arrives before that is stamped when it is read. On a node, capture's sockets keep it
on. A test that checks arrival times calls this while its own stamped sockets are
open, so the probe's closing does not turn it off again.
"""

from __future__ import annotations

import asyncio
import socket
import time

from callrec.arrival import ANCILLARY_SPACE, arrival_time, open_stamped_udp

PROBE_DELAY_S = 0.02


async def kernel_stamps_arrivals(timeout: float = 5.0) -> None:
    """Return once a probe datagram read `PROBE_DELAY_S` after it arrived carries its
    arrival time, not the time it was read; AssertionError after `timeout`."""
    probe = open_stamped_udp(socket.AF_INET, ("127.0.0.1", 0), 65536)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            while True:
                sent = time.time()
                sender.sendto(b"probe", probe.getsockname())
                await asyncio.sleep(PROBE_DELAY_S)
                _, ancdata, _, _ = probe.recvmsg(64, ANCILLARY_SPACE)
                if arrival_time(ancdata) - sent < PROBE_DELAY_S / 2:
                    return
                assert time.monotonic() < deadline, "the kernel never stamped arrivals"
    finally:
        probe.close()
