"""How signaling's process uses Python's cycle collector.

Why: a CUCM leg allocates a few hundred container objects (parsed headers, the
transaction, the dialog, pydantic models, asyncio handles), so with the stock
thresholds (700, 10, 10) the collector ran a young collection every couple of legs and,
as the heap of live transactions grew, full collections that walk every object the
process has, including the tens of thousands made at import. Measured in process
(bench/signaling_cpu.py) that was about a third of a leg's CPU. Freezing what exists
after start-up takes it out of every later collection; a larger young generation
makes collections rarer while keeping each one short (a few ms, not a latency spike).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
OLDER_THRESHOLDS = (10, 10)


def tune_gc() -> None:
    """Call once start-up is done: what exists now lives as long as the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
