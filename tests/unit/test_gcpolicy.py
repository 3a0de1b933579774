"""callrec.gcpolicy: the collector's thresholds, the frozen start-up heap, full collections
on a clock rather than on allocations, and the collector's metrics."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from callrec.gcpolicy import (
    AUTOMATIC_FULL_OFF,
    MIDDLE_THRESHOLD,
    YOUNG_THRESHOLD,
    CollectorWatch,
    collect_periodically,
    tune_gc,
)
from callrec.metrics import Registry


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    """A cycle: only the cycle collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_start_up_objects_are_frozen_and_young_collections_rarer(restore_gc: None) -> None:
    kept = [object() for _ in range(10)], {"made": "before"}
    tune_gc()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, AUTOMATIC_FULL_OFF)
    assert gc.get_freeze_count() > 0
    assert kept  # still referenced: frozen, not collected


def test_allocations_never_start_a_full_collection(restore_gc: None) -> None:
    tune_gc()
    fulls = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            fulls.append(info)

    gc.callbacks.append(count)
    try:
        # Many middle collections' worth of long-lived objects (as calls piling up in a
        # burst): with the stock policy the heap's growth sets off full collections.
        held = [[{"leg": i}] for i in range(YOUNG_THRESHOLD * MIDDLE_THRESHOLD * 12)]
    finally:
        gc.callbacks.remove(count)
    assert held
    assert fulls == []


def test_a_cycle_that_outlived_the_young_generations_is_freed_by_the_clock(
        restore_gc: None) -> None:
    tune_gc()
    cycle = Node()
    gone = weakref.ref(cycle)
    gc.collect(1)  # survives two young collections: now in the full generation
    del cycle
    gc.collect(1)
    assert gone() is not None  # young collections do not reach it

    async def run() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(collect_periodically(stopping, interval=0.01))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if gone() is None:
                break
        stopping.set()
        await asyncio.wait_for(task, timeout=1.0)

    asyncio.run(run())
    assert gone() is None


def test_collect_periodically_returns_at_once_when_stopping() -> None:
    async def run() -> None:
        stopping = asyncio.Event()
        task = asyncio.create_task(collect_periodically(stopping, interval=3600.0))
        await asyncio.sleep(0)
        stopping.set()
        await asyncio.wait_for(task, timeout=1.0)

    asyncio.run(run())


def test_collector_watch_counts_collections_and_pauses() -> None:
    registry = Registry("test", "n1")
    watch = CollectorWatch(registry)
    watch.install()
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        watch.uninstall()
    assert watch.collections.get(generation="0") >= 1
    assert watch.collections.get(generation="2") >= 1
    assert watch.seconds.get(generation="2") > 0
    assert watch.longest.values[()] > 0
    text = registry.render()
    assert 'callrec_gc_collections_total{node="n1",service="test",generation="2"}' in text
    assert "callrec_gc_pause_longest_seconds" in text
    before = watch.collections.get(generation="0")
    gc.collect(0)  # uninstalled: no longer counted
    assert watch.collections.get(generation="0") == before
