"""RTP port allocation: even ports of the configured range, in an unpredictable order.

Ports are drawn with the OS's CSPRNG (`secrets.SystemRandom`), so the port of the
next call cannot be guessed from the last one; a stranger has to hit one port among
all the free ones. A port just given back rests in a short cool-down queue before
it can be drawn again, so late packets of an ended call rarely meet a new stream
(and latching drops them if they do).
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterator

_random = secrets.SystemRandom()


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
        ports come last, when nothing else is free."""
        for group in (list(self._free), list(self._cooling)):
            while group:
                i = _random.randrange(len(group))
                group[i], group[-1] = group[-1], group[i]
                port = group.pop()
                if port not in self._used:
                    yield port

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
