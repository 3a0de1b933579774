"""Following a few event types on a real nats-server (callrec.bus with several subject
filters): only those types are sent, in stream order, and the head a projection waits
for is the newest of them, not the stream's. The scheduler follows this way
(services/scheduler/jobs.py APPLIED): a burst of endings brings a waveform and copies
per recording that its job book never uses."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from callrec import bus
from contracts import subjects
from contracts.v1.events import (
    RecordingWaveformComputed,
    UserRemoved,
    UserUpserted,
    WaveformPeaks,
    type_of,
)
from services.scheduler.jobs import APPLIED, APPLIED_TYPES, JobBook
from tests.support.natsfixture import NatsServer, node_streams

NODE = "n-1"


def waveform(i: int) -> RecordingWaveformComputed:
    return RecordingWaveformComputed(
        node_id=NODE, recording_id=f"r{i}", duration_ms=1000,
        peaks=WaveformPeaks(bucket_ms=20, buckets=0, channels=[]))


def test_only_the_filtered_types_are_sent_and_their_head_is_theirs(server: NatsServer) -> None:
    async def run() -> None:
        async with node_streams(server, NODE) as js:
            await bus.publish_event(js, UserUpserted(node_id=NODE, username="ann",
                                                     extensions=["100"]))
            for i in range(3):
                await bus.publish_event(js, waveform(i))
            await bus.publish_event(js, UserRemoved(node_id=NODE, username="ann"))
            await bus.publish_event(js, waveform(3))  # the stream's newest
            types = [type_of(UserUpserted), type_of(UserRemoved)]
            wanted = [subjects.events_of_type(t) for t in types]
            deadline = asyncio.get_running_loop().time() + 10
            while await bus.last_sequence_of(js, subjects.events_of_type(">")) < 6:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)  # the aggregate sources the node's stream
            assert await bus.last_sequence_of(js, wanted) == 5
            got: list[tuple[Any, int]] = []

            async def apply(batch: list[tuple[Any, int]]) -> None:
                got.extend(batch)

            follower = asyncio.create_task(bus.follow_event_batches(js, NODE, wanted, 1, apply))
            try:
                while len(got) < 2:
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.3)  # nothing else comes
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            assert [(type(e), seq) for e, seq in got] == [(UserUpserted, 1), (UserRemoved, 5)]

    asyncio.run(run())


def test_the_job_book_uses_only_what_the_scheduler_is_sent() -> None:
    """APPLIED is the one list: an event outside it changes nothing, not even the ids
    seen, so a case added to JobBook.apply without it fails its own test."""
    book = JobBook()
    assert book.apply(waveform(1)) is False and not book.seen
    assert book.apply(UserUpserted(node_id=NODE, username="bo", extensions=[])) is True
    assert "bo" in book.users
    assert len(set(APPLIED_TYPES)) == len(APPLIED) and "recording.completed" in APPLIED_TYPES
