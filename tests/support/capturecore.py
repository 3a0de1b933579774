"""A capture service object with no bus and no workers, for tests of its own logic
(journal, file thread, finalize scheduling) that call its handlers directly; or with
real encoder workers and a FileStore, the bus still stubs that record what is sent."""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any, cast

from callrec.config import NodeConfig
from callrec.metrics import Registry
from callrec.service import ServiceContext
from callrec.store import FileStore
from services.capture.service import Capture


def bare_capture(data_dir: Path, ports: tuple[int, int] = (41000, 41999)) -> Capture:
    config = NodeConfig(node_id="n1", data_dir=data_dir, rtp_port_min=ports[0],
                        rtp_port_max=ports[1])
    ctx = ServiceContext("capture", config, cast(Any, None), cast(Any, None),
                         Registry("capture", "n1"), asyncio.Event())
    return Capture(ctx, cast(Any, None), [], cast(Any, lambda: None))


def worker_capture(data_dir: Path, nc: object, js: object) -> tuple[Capture, FileStore]:
    """A capture over `data_dir` with one real encoder worker (forkserver, replaced when
    it dies) and a FileStore under data/objects; `nc` and `js` stand in for the bus."""
    context = multiprocessing.get_context("forkserver")

    def new_worker() -> Executor:
        return ProcessPoolExecutor(max_workers=1, mp_context=context)

    config = NodeConfig(node_id="n1", data_dir=data_dir, rtp_port_min=43000,
                        rtp_port_max=43999)
    ctx = ServiceContext("capture", config, cast(Any, nc), cast(Any, js),
                         Registry("capture", "n1"), asyncio.Event())
    store = FileStore(data_dir / "objects")
    return Capture(ctx, store, [new_worker()], new_worker), store


async def stop_worker_capture(capture: Capture, finalizing: asyncio.Task[Any]) -> None:
    """Cancel the finalize loop, then close the workers, the journal and the threads."""
    finalizing.cancel()
    await asyncio.gather(finalizing, return_exceptions=True)
    for worker in capture.workers:
        worker.shutdown(wait=True)
    capture.journal.close()
    capture.files.close()
    capture.finalize_files.shutdown()
