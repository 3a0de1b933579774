"""bus.scatter_gather against a real nats-server: a scrape of the node's metrics waits
for a service that answers late (capture at its capacity) but no longer than its
window, and returns as soon as every service has answered."""

from __future__ import annotations

import asyncio
import time

import nats
from nats.aio.msg import Msg

from callrec import bus
from tests.support.natsfixture import NatsServer

SUBJECT = "test.scatter"


async def _responders(url: str, delays: list[float]) -> list[nats.NATS]:
    clients = []
    for i, delay in enumerate(delays):
        nc = await nats.connect(url)

        async def answer(msg: Msg, i: int = i, delay: float = delay) -> None:
            await asyncio.sleep(delay)
            await msg.respond(f"service {i}".encode())

        await nc.subscribe(SUBJECT, cb=answer)
        await nc.flush()
        clients.append(nc)
    return clients


async def test_a_late_service_is_waited_for_and_all_answered_ends_the_wait(
        server: NatsServer) -> None:
    responders = await _responders(server.url, [0.0, 0.0, 0.6])
    nc = await nats.connect(server.url)
    try:
        started = time.monotonic()
        replies = await bus.scatter_gather(nc, SUBJECT, expected=3, window=5.0)
        took = time.monotonic() - started
        assert sorted(replies) == [b"service 0", b"service 1", b"service 2"]
        assert 0.6 <= took < 4.0  # the late one waited for; not the whole window
        started = time.monotonic()
        replies = await bus.scatter_gather(nc, SUBJECT, expected=4, window=1.0)
        assert len(replies) == 3  # one service missing: what came, at the window's end
        assert time.monotonic() - started >= 1.0
    finally:
        await nc.close()
        for client in responders:
            await client.close()
