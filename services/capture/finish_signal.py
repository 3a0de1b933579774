"""Whether a finish waits behind an encoder worker's round trip of live steps.

A worker runs what capture sends in order, one round trip at a time. Once the live
encoding is behind (400 calls on 2 cores, calls ending one by one), each step catches
up seconds of its call, a round trip of a few dozen steps lasts a second and more, and
a finish sent meanwhile waited for all of it (bench/churn.py: BYE->playable p99 2.6 to
7.2 s at 400 calls). With this, the worker looks between two steps whether a finish
was sent that it has not begun, and if so hands back the steps it did not take.

A wall-time budget per round trip (348fc52, reverted) also cut the round trips of a
worker the scheduler starved during a burst of set-ups, where no finish waited, and
capture paid a re-send for each cut. Here a round trip is cut only for a finish.

Capture numbers the finish round trips it sends to each worker; the worker keeps the
number of the last one it began. Each side writes only its own counter, in shared
memory, so there is no lock; a round trip sent again to a replacement worker (the
first one died) carries the same number.
"""

from __future__ import annotations

import ctypes
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["FinishTickets", "finish_started", "finish_waiting", "install"]


class FinishTickets:
    """The two counters of each encoder worker: finish round trips sent, and begun."""

    def __init__(self, workers: int, context: BaseContext | None = None) -> None:
        """With ``context`` in memory shared with the workers that context starts
        (handed to them at start, as an initializer's argument); without it, plain
        memory for workers in this process (threads, tests)."""
        self._sent: Any
        self._begun: Any
        if context is None:
            self._sent = (ctypes.c_uint64 * workers)()
            self._begun = (ctypes.c_uint64 * workers)()
        else:
            self._sent = context.RawArray(ctypes.c_uint64, workers)
            self._begun = context.RawArray(ctypes.c_uint64, workers)

    def send(self, worker: int) -> int:
        """Capture's side: the number of a finish round trip about to go to ``worker``."""
        self._sent[worker] += 1
        return int(self._sent[worker])

    def begun(self, worker: int, ticket: int) -> None:
        """The worker's side: the finish round trip numbered ``ticket`` has begun."""
        if ticket > self._begun[worker]:
            self._begun[worker] = ticket

    def waiting(self, worker: int) -> bool:
        """A finish round trip was sent to ``worker`` that it has not begun."""
        return bool(self._sent[worker] > self._begun[worker])


_installed: tuple[FinishTickets, int] | None = None
"""This process's tickets and its worker index, in an encoder worker process."""


def install(tickets: FinishTickets, worker: int) -> None:
    """Called once in an encoder worker process, at its start."""
    global _installed
    _installed = (tickets, worker)


def finish_waiting() -> bool:
    """In a worker: whether a finish waits behind what it is doing (False where
    nothing was installed: a worker in capture's own process never cuts)."""
    if _installed is None:
        return False
    tickets, worker = _installed
    return tickets.waiting(worker)


def finish_started(ticket: int | None) -> None:
    """In a worker: the finish round trip numbered ``ticket`` (if numbered) begins."""
    if _installed is not None and ticket is not None:
        tickets, worker = _installed
        tickets.begun(worker, ticket)
