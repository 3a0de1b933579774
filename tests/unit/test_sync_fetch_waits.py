"""A completion whose live copy is still in a pull request waits for that pull: its
fetch then starts from the copy (only the rest crosses the link), instead of pulling
the whole object beside it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from callrec.config import NodeConfig
from callrec.metrics import Registry
from callrec.service import ServiceContext
from callrec.store import FileStore
from contracts.v1.events import RecordingCompleted, RecordingMetadata, RecordingStarted
from services.sync.service import Sync
from services.sync.state import live_path, part_path

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
META = RecordingMetadata(source="sip", session_key="r1")
# r1 completed by its origin a: 120 bytes.
COMPLETED = RecordingCompleted(
    node_id="a", recording_id="r1", started_at=T0, ended_at=T0, duration_ms=1000,
    object_key="recordings/r1.opus", size_bytes=120, sha256="0" * 64, channels=[],
    metadata=META)


def _sync(tmp_path: Path) -> Sync:
    config = NodeConfig(node_id="b", data_dir=tmp_path, rtp_port_min=44000,
                        rtp_port_max=44999)
    ctx = ServiceContext("sync", config, cast(Any, None), cast(Any, None),
                         Registry("sync", "b"), asyncio.Event())
    return Sync(ctx, FileStore(tmp_path / "objects"))


async def _following_with_a_copy(tmp_path: Path
                                 ) -> tuple[Sync, list[tuple[str, int]], Path]:
    """Node b following r1 from a, 100 bytes copied; its fetches are recorded (with
    the size of the part each began from), not made."""
    sync = _sync(tmp_path)
    fetched: list[tuple[str, int]] = []

    async def fake_fetch(recording_id: str) -> bool:
        part = part_path(sync.root, recording_id)
        fetched.append((recording_id, part.stat().st_size if part.exists() else -1))
        return True

    sync._fetch = fake_fetch  # type: ignore[method-assign]
    await sync._apply(RecordingStarted(node_id="a", recording_id="r1", started_at=T0,
                                       metadata=META), 1)
    copy = live_path(sync.root, "r1")
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(b"x" * 100)
    return sync, fetched, copy


async def _until_fetched(fetched: list[tuple[str, int]]) -> None:
    for _ in range(100):
        if fetched:
            return
        await asyncio.sleep(0.01)


async def test_a_fetch_waits_for_the_live_pull_in_flight(tmp_path: Path) -> None:
    sync, fetched, copy = await _following_with_a_copy(tmp_path)
    sync.pulling.add("r1")  # a live pull request for it is out
    worker = asyncio.create_task(sync._fetch_worker())
    try:
        await sync._apply(COMPLETED, 2)
        await asyncio.sleep(0.05)
        assert fetched == []  # not beside the pull

        copy.write_bytes(b"x" * 120)  # the pull brought the rest
        sync.pulling.discard("r1")
        sync._close_live_copy("r1")  # as _pull_live does when its request ends
        await _until_fetched(fetched)
        assert fetched == [("r1", 120)]  # from the copy, once
        assert not copy.exists()
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_without_a_pull_in_flight_the_fetch_starts_from_the_copy_at_once(
        tmp_path: Path) -> None:
    sync, fetched, _ = await _following_with_a_copy(tmp_path)
    worker = asyncio.create_task(sync._fetch_worker())
    try:
        await sync._apply(COMPLETED, 2)
        await _until_fetched(fetched)
        assert fetched == [("r1", 100)]
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
