"""services.signaling.gcpolicy: the collector's thresholds and the frozen start-up heap."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.signaling.gcpolicy import OLDER_THRESHOLDS, YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_young_collections_rarer(restore_gc: None) -> None:
    kept = [object() for _ in range(10)], {"made": "before"}
    tune_gc()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    assert gc.get_freeze_count() > 0
    assert kept  # still referenced: frozen, not collected
