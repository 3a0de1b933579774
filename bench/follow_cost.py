"""The CPU of following the cluster's events: callrec.bus's follower against a follower
that awaits each message from the subscription, on the same real nats-server.

Why: every service follows events, and a burst of 400 endings brings about 1,200 of
them to each node (a waveform, a completion and a copy per recording), each to the
catalog, sync and the scheduler. Awaiting each message (`next_msg` with a timeout, or
the subscription's iterator) makes a task or a timer per message; `callrec.bus` queues
them from a callback instead. Both followers here read the same stream from its start
(catch-up) and then events published one at a time (a burst's pace), and the figure
is the follower's process CPU per message, as a ratio to the awaiting follower
measured in the same run. Run from the repository root:

    .venv/bin/python -m bench.follow_cost --events 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import nats  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402
from nats.js.api import ConsumerConfig, DeliverPolicy  # noqa: E402

from callrec import bus  # noqa: E402
from contracts import subjects  # noqa: E402
from contracts.v1.events import RecordingWaveformComputed, WaveformPeaks  # noqa: E402
from tests.support.natsfixture import start_nats  # noqa: E402

NODE = "bench"
Follower = Callable[[JetStreamContext, int, Callable[[list[Msg]], Awaitable[None]]],
                    Awaitable[None]]


def _event(i: int) -> RecordingWaveformComputed:
    return RecordingWaveformComputed(
        node_id=NODE, recording_id=f"r{i}", duration_ms=1000,
        peaks=WaveformPeaks(bucket_ms=20, buckets=0, channels=[]))


async def awaiting_follower(js: JetStreamContext, start: int,
                            apply: Callable[[list[Msg]], Awaitable[None]]) -> None:
    """The baseline: callrec.bus's follower before 2026-12-05, a `next_msg` per message."""
    sub = await js.subscribe(
        subjects.events_of_type(">"), stream=subjects.CLUSTER_STREAM, ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                              opt_start_seq=start))
    try:
        while True:
            try:
                first = await sub.next_msg(timeout=60)
            except TimeoutError:
                continue
            messages = [first]
            while len(messages) < 500 and sub.pending_msgs > 0:
                messages.append(await sub.next_msg(timeout=1))
            await apply(messages)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def callrec_follower(js: JetStreamContext, start: int,
                           apply: Callable[[list[Msg]], Awaitable[None]]) -> None:
    await bus.follow_message_batches(js, subjects.events_of_type(">"), start, apply)


async def no_follower(js: JetStreamContext, start: int,
                      apply: Callable[[list[Msg]], Awaitable[None]]) -> None:
    """Only the publishing of the one-at-a-time phase, to subtract from the others."""
    await asyncio.Event().wait()


async def measure(js: JetStreamContext, follower: Follower, start: int, backlog: int,
                  trickle: int) -> tuple[float, float]:
    """CPU-ms per 1,000 messages: reading `backlog` stored events, then `trickle` events
    published one at a time while it follows (the publishing included)."""
    got = 0

    async def apply(messages: list[Msg]) -> None:
        nonlocal got
        got += len(messages)

    async def until(count: int) -> None:
        while got < count and follower is not no_follower:
            await asyncio.sleep(0.001)

    task = asyncio.create_task(follower(js, start, apply))
    try:
        began = time.process_time()
        await until(backlog)
        caught_up = time.process_time() - began
        # The publishes cost CPU in this process too: the same for both followers.
        began = time.process_time()
        for i in range(trickle):
            await bus.publish_event(js, _event(10_000_000 + start + i))
            await asyncio.sleep(0.002)
        await until(backlog + trickle)
        followed = time.process_time() - began
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return 1e6 * caught_up / backlog, 1e6 * followed / trickle


async def run(events: int, rounds: int, trickle: int) -> str:
    with tempfile.TemporaryDirectory(prefix="follow-cost-") as tmp:
        server = start_nats(Path(tmp))
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        try:
            await bus.ensure_streams(js, NODE)
            for i in range(events):
                await bus.publish_event(js, _event(i))
            while await bus.last_sequence_of(js, subjects.events_of_type(">")) < events:
                await asyncio.sleep(0.05)
            stored = events
            rows: dict[str, list[tuple[float, float]]] = {
                "awaiting": [], "callrec": [], "none": []}
            for _ in range(rounds):
                for name, follower in (("awaiting", awaiting_follower),
                                       ("callrec", callrec_follower), ("none", no_follower)):
                    # Each reads the same number of stored events, then its own trickle.
                    start = stored - events + 1
                    rows[name].append(await measure(js, follower, start, events, trickle))
                    stored += trickle
        finally:
            await nc.close()
            server.stop()
    lines = ["| follower | catch-up CPU-ms / 1000 msgs | one at a time CPU-ms / 1000 msgs |",
             "|---|---:|---:|"]
    publishing = statistics.median(r[1] for r in rows.pop("none"))
    medians = {name: (statistics.median(r[0] for r in runs),
                      statistics.median(r[1] for r in runs) - publishing)
               for name, runs in rows.items()}
    for name, (catch_up, trickled) in medians.items():
        lines.append(f"| {name} | {catch_up:.1f} | {trickled:.1f} |")
    base, new = medians["awaiting"], medians["callrec"]
    lines.append(f"\ncallrec / awaiting: catch-up {new[0] / base[0]:.2f}, one at a time "
                 f"{new[1] / base[1]:.2f} (medians of {rounds} rounds; one at a time: less "
                 f"the publishing alone, {publishing:.1f} CPU-ms / 1000 msgs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="stored events to read")
    parser.add_argument("--trickle", type=int, default=300,
                        help="events then published one at a time while following")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    text = asyncio.run(run(args.events, args.rounds, args.trickle))
    print(text)
    return text


if __name__ == "__main__":
    main()
