"""This process's limit on open files, raised to what it needs.

A service manager often starts processes with a soft limit of 1,024 and a far higher
hard limit. Capture holds a socket and a segment file per stream and signaling's
port reserve on top (about 1,700 descriptors at 400 calls); signaling holds its SIP TCP
connections. Raising the soft limit up to the hard one needs no privilege.
"""

from __future__ import annotations

import contextlib
import resource

# Linux's default fs.nr_open: no process may open more, whatever its hard limit says.
LINUX_NR_OPEN = 1 << 20


def raise_open_files(wanted: int | None = None) -> int:
    """Raise the soft RLIMIT_NOFILE to `wanted` (None: as high as the hard limit allows),
    never lower it; the soft limit afterwards (RLIM_INFINITY stays as it is)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    ceiling = hard if hard != resource.RLIM_INFINITY else LINUX_NR_OPEN
    target = ceiling if wanted is None else min(wanted, ceiling)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
