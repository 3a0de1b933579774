"""Following the cluster's events on a real nats-server (callrec.bus): every message
once, in stream order, in batches no larger than asked, also when the projection is
slower than the stream (the follower's queue is bounded: the rest waits on the
server's flow control) and when it keeps up with events published one by one."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.aio.msg import Msg

from callrec import bus
from contracts import subjects
from contracts.v1.events import RecordingWaveformComputed, WaveformPeaks
from tests.support.natsfixture import NatsServer, node_streams

NODE = "n-1"


def waveform(i: int) -> RecordingWaveformComputed:
    return RecordingWaveformComputed(
        node_id=NODE, recording_id=f"r{i}", duration_ms=1000,
        peaks=WaveformPeaks(bucket_ms=20, buckets=0, channels=[]))


async def _until(condition: Any, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


def test_a_slow_projection_gets_every_event_once_in_order(server: NatsServer) -> None:
    async def run() -> None:
        async with node_streams(server, NODE) as js:
            count = 3000
            for i in range(count):
                await bus.publish_event(js, waveform(i))
            everything = subjects.events_of_type(">")
            while await bus.last_sequence_of(js, everything) < count:
                await asyncio.sleep(0.05)
            batches: list[list[int]] = []

            async def apply(messages: list[Msg]) -> None:
                batches.append([m.metadata.sequence.stream for m in messages])
                await asyncio.sleep(0.005)  # slower than the server sends

            follower = asyncio.create_task(
                bus.follow_message_batches(js, everything, 1, apply, max_batch=50))
            one_by_one: list[int] = []

            async def apply_one(event: Any, sequence: int) -> None:
                one_by_one.append(sequence)

            single = asyncio.create_task(
                bus.follow_events(js, NODE, everything, 1, apply_one))
            try:
                await _until(lambda: sum(map(len, batches)) >= count
                             and len(one_by_one) >= count)
                # Then events that come one at a time, as a burst of endings brings them.
                for i in range(count, count + 20):
                    await bus.publish_event(js, waveform(i))
                    await asyncio.sleep(0.01)
                await _until(lambda: sum(map(len, batches)) >= count + 20
                             and len(one_by_one) >= count + 20)
                await asyncio.sleep(0.3)  # nothing more comes
            finally:
                for task in (follower, single):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            assert max(map(len, batches)) <= 50
            assert [seq for batch in batches for seq in batch] == list(range(1, count + 21))
            assert one_by_one == list(range(1, count + 21))

    asyncio.run(run())
