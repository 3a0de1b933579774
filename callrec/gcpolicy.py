"""How a service process uses Python's cycle collector.

Why: a CUCM leg allocates a few hundred container objects (parsed headers, the
transaction, the dialog, pydantic models, asyncio handles). With the stock thresholds
(700, 10, 10) the collector ran a young collection every couple of legs, and full
collections that walk every object the process has, including the tens of thousands
made at import: about a third of a signaling leg's CPU (bench/signaling_cpu.py).

Full collections were also the set-up latency's tail. While calls pile up (a burst of
new calls), the heap grows by a quarter again and again, and each growth set off a full
collection walking every live call's objects: 20-50 ms pauses of capture's and
signaling's event loops in bench/setup_rate.py's burst (timed with gc.callbacks), each
a late 200 OK for every leg that arrived meanwhile. None of them found anything to free
(call state goes by reference counting when the call ends).

So, in every service:
- what exists when the service's main starts (the imports, the bus connection) is
  frozen, out of every later collection;
- young collections stay frequent and small (cycles die young): at most
  ``YOUNG_THRESHOLD`` new objects, and ``MIDDLE_THRESHOLD`` of those batches;
- full collections no longer follow the allocations: they run on a clock, every
  ``FULL_COLLECTION_S``, so their pause comes once a minute whatever the call rate,
  and a cycle that outlived the young generations is freed within a minute.

The thresholds are those of CPython's generational collector (3.11 to 3.13; the node
runs 3.11). 3.14's incremental collector reads the second as the old generation's
scan rate and ignores the third, and its increments are short by design: revisit the
figures there, with bench/setup_rate.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import Any

from .logs import get_logger
from .metrics import Registry

YOUNG_THRESHOLD = 5_000
MIDDLE_THRESHOLD = 4
"""Smaller than signaling's earlier (10_000, 10): a middle collection walks at most
about 20,000 survivors (a few ms) instead of 100,000 (up to 35 ms in the burst), for
the same work per object (each is walked about once per generation it passes)."""

AUTOMATIC_FULL_OFF = 1 << 30
"""The full generation's threshold: middle collections it would have to count first,
so the allocation counter never starts a full collection (``collect_periodically``
does)."""

FULL_COLLECTION_S = 60.0


def tune_gc() -> None:
    """Call once the imports and connections are made: what exists then lives as long
    as the process (``callrec.service`` calls it before the service's main)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, AUTOMATIC_FULL_OFF)


async def collect_periodically(stopping: asyncio.Event,
                               interval: float = FULL_COLLECTION_S) -> None:
    """The full collections, one every ``interval`` until ``stopping`` is set."""
    log = get_logger()
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=interval)
            return
        started = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - started
        if found or took > 0.02:  # worth a line: garbage in cycles, or a long pause
            log.info("gc_full_collection", collected=found, took_ms=round(took * 1000, 1))


class CollectorWatch:
    """Prometheus figures of the collector: collections and seconds paused per generation,
    and the longest pause, from ``gc.callbacks`` (two clock reads a collection)."""

    def __init__(self, metrics: Registry) -> None:
        self.collections = metrics.counter(
            "gc_collections_total", "cycle collections by generation (2: full)")
        self.seconds = metrics.counter(
            "gc_pause_seconds_total", "seconds the process was paused in cycle collections")
        self.longest = metrics.gauge(
            "gc_pause_longest_seconds", "the longest cycle-collection pause since start")
        self.longest.set(0.0)
        self._started = 0.0

    def install(self) -> None:
        gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = str(info["generation"])
        self.collections.inc(generation=generation)
        self.seconds.inc(took, generation=generation)
        if took > self.longest.values[()]:
            self.longest.set(took)
