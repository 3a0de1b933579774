"""RTP port allocation: even ports from the configured range, round-robin.

Round-robin (rather than lowest-free) keeps a port that just closed from being
handed to the next call while late packets of the old call may still arrive.
"""

from __future__ import annotations

from collections.abc import Iterator


class PortsExhausted(RuntimeError):
    pass


class PortPool:
    def __init__(self, low: int, high: int) -> None:
        first = low if low % 2 == 0 else low + 1
        self._ports = list(range(first, high + 1, 2))
        if not self._ports:
            raise ValueError(f"no even port in range {low}-{high}")
        self._used: set[int] = set()
        self._cursor = 0

    @property
    def free(self) -> int:
        return len(self._ports) - len(self._used)

    def candidates(self) -> Iterator[int]:
        """Free ports in the order to try them (callers try to bind each in turn)."""
        count = len(self._ports)
        for i in range(count):
            port = self._ports[(self._cursor + i) % count]
            if port not in self._used:
                yield port

    def take(self, port: int) -> None:
        self._used.add(port)
        if port in self._ports:
            self._cursor = (self._ports.index(port) + 1) % len(self._ports)

    def give_back(self, port: int) -> None:
        self._used.discard(port)
