"""Reading a real MISSED stream newest first (services/web/missed_stream.py): pages in
chunks across chunk borders, stops at `since` by the stored time, bounds a scan and
says where to go on, skips an undecodable message, and an age limit really drops."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import nats
import pytest

from callrec import bus
from contracts import subjects
from contracts.v1.missed import MissedCall
from services.web.missed import MissedQuery
from services.web.missed_stream import read_missed
from tests.support.natsfixture import NatsServer

NODE = "n-1"


def record(i: int, at: datetime) -> MissedCall:
    return MissedCall(node_id=NODE, at=at, source=f"10.0.0.{i % 7}", status=404,
                      reason="unknown_user", detail=f"no recording user for {i}",
                      to_number=str(i), numbers=[str(i)])


async def fill(js: nats.js.JetStreamContext, count: int, at: datetime) -> None:
    for i in range(1, count + 1):
        await js.publish(subjects.missed(NODE), record(i, at).model_dump_json().encode())


def test_pages_newest_first_across_chunks(server: NatsServer) -> None:
    async def run() -> None:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        try:
            await bus.ensure_missed_stream(js, NODE, 30.0)
            now = datetime.now(UTC)
            await fill(js, 120, now)
            await js.publish(subjects.missed(NODE), b"{not json")  # seq 121
            seen: list[int] = []
            before = None
            while True:
                page = await read_missed(js, NODE, MissedQuery(limit=25, before=before),
                                         chunk=16)
                seen += [int(r.to_number or 0) for _, r in page.items]
                if page.next_before is None:
                    break
                before = page.next_before
            assert seen == list(range(120, 0, -1))
            # A filter over the whole stream; the scan bound stops it and says where.
            page = await read_missed(js, NODE, MissedQuery(source="10.0.0.3", limit=200),
                                     chunk=16, scan_max=40)
            assert page.truncated and page.next_before is not None and page.scanned >= 40
            rest = await read_missed(js, NODE, MissedQuery(source="10.0.0.3", limit=200,
                                                           before=page.next_before))
            numbers = [int(r.to_number or 0) for _, r in page.items + rest.items]
            assert numbers == [i for i in range(120, 0, -1) if i % 7 == 3]
            # `since` after everything was stored: nothing, and the scan stops at once.
            later = await read_missed(js, NODE, MissedQuery(
                since=datetime.now(UTC) + timedelta(seconds=1)), chunk=16)
            assert later.items == [] and later.scanned <= 16
        finally:
            await nc.close()

    asyncio.run(run())


def test_the_age_limit_drops_old_records_and_a_changed_retention_is_applied(
        server: NatsServer) -> None:
    async def run() -> None:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        try:
            await bus.ensure_missed_stream(js, NODE, 30.0)
            await bus.ensure_missed_stream(js, NODE, 2.0 / 86400)  # 2 s
            info = await js.stream_info(subjects.missed_stream(NODE))
            assert info.config.max_age == pytest.approx(2.0)
            await fill(js, 10, datetime.now(UTC))
            assert len((await read_missed(js, NODE, MissedQuery())).items) == 10
            deadline = asyncio.get_running_loop().time() + 20
            while (await js.stream_info(subjects.missed_stream(NODE))).state.messages:
                assert asyncio.get_running_loop().time() < deadline, "never aged out"
                await asyncio.sleep(0.5)
            assert (await read_missed(js, NODE, MissedQuery())).items == []
        finally:
            await nc.close()

    asyncio.run(run())
