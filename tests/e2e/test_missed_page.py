"""Missed calls on a real node: a refused INVITE (404, unknown extension) shows in
`/api/missed` and on the `/missed` page (headless Debian chromium); a stranger's
flood of 1000 INVITEs is a bounded number of records whose counts add up to what was
refused (retransmissions once); only admins see them; the stream that keeps them is
bounded by age and size, and no other service can write into it.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from contracts import subjects
from contracts.v1.missed import MissedCall
from tests.support import browser
from tests.support.cluster import eventually
from tests.support.node import ADMIN_PASSWORD, Node
from tests.support.screens import shot
from tests.support.weblogin import basic_headers

pytestmark = pytest.mark.e2e

PBX, STRANGER = "127.0.0.1", "127.0.0.3"
WINDOW_S = 3.0
RETENTION_DAYS = 7.0
_calls = itertools.count(1)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("missed"), extra_args=[
        "--sip-allow", f"{PBX}/32", "--missed-window", str(WINDOW_S),
        "--missed-retention", str(RETENTION_DAYS),
    ]).start()
    yield n
    n.stop()


class Udp:
    """A PBX or a stranger sending raw SIP over UDP from a chosen loopback address."""

    def __init__(self, source: str, node: Node) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((source, 0))
        self.sock.settimeout(0.2)
        self.source, self.port = self.sock.getsockname()
        self.target = ("127.0.0.1", node.sip_port)

    def close(self) -> None:
        self.sock.close()

    def invite_text(self, near: str, name: str = "Alice Caller") -> str:
        """A CUCM built-in-bridge leg INVITE (delayed offer) recording extension `near`."""
        n = next(_calls)
        call_id = f"missed-{n}-{time.monotonic_ns()}@{self.source}"
        params = (f"x-nearend;x-refci={9000 + n};x-nearendclusterid=StandAloneCluster;"
                  f"x-nearenddevice=SEP1;x-nearendaddr={near};x-farendrefci={9000 + n}9;"
                  "x-farendclusterid=StandAloneCluster;x-farenddevice=SEP2;x-farendaddr=5550100")
        return (
            f"INVITE sip:9999@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.source}:{self.port};branch=z9hG4bK{n}m;rport\r\n"
            f'From: "{name}" <sip:{near}@{self.source};{params}>;tag=t{n}\r\n'
            "To: <sip:9999@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 101 INVITE\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:{near}@{self.source}:{self.port}>\r\n"
            "User-Agent: Cisco-CUCM14.0\r\nContent-Length: 0\r\n\r\n")

    def send(self, text: str) -> None:
        self.sock.sendto(text.encode(), self.target)

    def final_status(self, call_id: str, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(65535).decode(errors="replace")
            except TimeoutError:
                continue
            start = data.split("\r\n", 1)[0].split()
            if (start[0] == "SIP/2.0" and int(start[1]) >= 200
                    and f"Call-ID: {call_id}" in data):
                return int(start[1])
        raise AssertionError(f"no final response to {call_id}")


def call_id_of(text: str) -> str:
    found = re.search(r"Call-ID: (\S+)", text)
    assert found is not None
    return found.group(1)


def missed(node: Node, query: str = "", auth: tuple[str, str] = ("admin", ADMIN_PASSWORD)
           ) -> httpx.Response:
    return httpx.get(f"{node.base_url}/api/missed?{query}", auth=auth, timeout=10.0)


def all_missed(node: Node, query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    before = ""
    while True:
        body = missed(node, f"{query}&limit=200{before}").json()
        items += body["items"]
        if body["next_before"] is None:
            return items
        before = f"&before={body['next_before']}"


def refused(node: Node) -> float:
    text = httpx.get(f"{node.base_url}/metrics", timeout=5.0).text
    return sum(float(m.group(1)) for m in re.finditer(
        r'callrec_signaling_sip_refused_total\{[^}]*reason="not_allowed(?:_drop)?"[^}]*\} (\S+)',
        text))


def test_an_unknown_extension_gets_404_and_shows_on_the_missed_calls_page(
        node: Node) -> None:
    pbx = Udp(PBX, node)
    try:
        text = pbx.invite_text("2999", name="Dana <script>x</script>")
        pbx.send(text)
        assert pbx.final_status(call_id_of(text)) == 404
    finally:
        pbx.close()

    def found() -> dict[str, Any] | None:
        items = missed(node, "status=404&number=2999").json()["items"]
        return items[0] if items else None

    eventually(found, 15, "the 404 listed in /api/missed")
    record = found()
    assert record is not None
    assert record["reason"] == "unknown_user" and record["source"] == PBX
    assert record["numbers"] == ["2999"] and record["kind"] == "cucm"
    assert record["call_id"] == call_id_of(text) and record["user_agent"] == "Cisco-CUCM14.0"
    assert record["description"] == "404 unknown user: no recording user for 2999"
    assert record["count"] == 1 and not record["aggregated"]

    def look(page: Any) -> None:
        row = page.locator('[data-testid="missed-row"][data-status="404"]').first
        row.wait_for(timeout=15_000)
        answer = row.locator('[data-testid="missed-answer"]').inner_text()
        assert "404" in answer and "unknown user" in answer and "2999" in answer
        assert "2999" in row.inner_text() and "Dana <script>x</script>" in row.inner_text()
        # Filter by number: the row stays; by another, it goes.
        page.fill('[data-testid="f-number"]', "2999")
        page.click('[data-testid="f-apply"]')
        page.locator('[data-testid="missed-row"]').first.wait_for(timeout=10_000)
        shot(page, "missed")
        page.fill('[data-testid="f-number"]', "7777777")
        page.click('[data-testid="f-apply"]')
        page.locator('[data-testid="missed-none"]').wait_for(state="visible", timeout=10_000)

    in_browser(node, look)


def in_browser(node: Node, look: Any) -> None:
    """Open /missed as the admin in headless Debian chromium and hand the page over."""
    if browser.missing():
        pytest.skip(str(browser.missing()))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM,
                                              args=browser.CHROMIUM_ARGS)
        try:
            context = chromium.new_context(
                extra_http_headers=basic_headers("admin", ADMIN_PASSWORD))
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{node.base_url}/missed")
            look(page)
            assert errors == []
        finally:
            chromium.close()


def test_a_strangers_flood_is_a_few_records_whose_counts_add_up(node: Node) -> None:
    before = refused(node)
    stranger = Udp(STRANGER, node)
    sent: list[str] = []
    try:
        for i in range(1000):
            text = stranger.invite_text(f"{3000 + i}", name="scanner")
            stranger.send(text)
            sent.append(text)
            if i % 50 == 49:
                time.sleep(0.01)
        for text in sent[:20]:  # retransmissions: the same INVITEs again
            stranger.send(text)
    finally:
        stranger.close()
    eventually(lambda: refused(node) - before >= 1020, 20, "every INVITE refused")
    assert refused(node) - before == 1020

    def total() -> int:
        return sum(i["count"] for i in all_missed(node, f"source={STRANGER}"))

    # The aggregates are written when their window (WINDOW_S here) closes.
    eventually(lambda: total() >= 1000, 30, "the flood's counts in /api/missed")
    time.sleep(WINDOW_S + 1.0)
    records = all_missed(node, f"source={STRANGER}")
    assert sum(r["count"] for r in records) == 1000  # retransmissions counted once
    # Per window: 5 single records and one aggregate for each of the two reasons
    # (403 answered, then silence); a flood of a few seconds spans a few windows.
    windows = {int(datetime.fromisoformat(r["at"]).timestamp() // WINDOW_S) for r in records}
    assert len(records) <= 12 * len(windows), records
    assert len(records) <= 60, len(records)
    assert {r["reason"] for r in records} == {"not_allowed", "not_allowed_drop"}
    assert all(r["status"] == 403 for r in records if r["reason"] == "not_allowed")
    assert any(r["aggregated"] and r["count"] > 100 for r in records)
    print(f"\nflood of 1000 INVITEs (+20 retransmissions) from {STRANGER}: "
          f"{len(records)} records over {len(windows)} window(s) of {WINDOW_S} s")

    def look(page: Any) -> None:
        page.fill('[data-testid="f-source"]', STRANGER)
        page.click('[data-testid="f-apply"]')
        count = page.locator('[data-testid="missed-count"]').first
        count.wait_for(timeout=10_000)
        assert re.fullmatch(r"×\d+between .+ and .+", count.inner_text().replace("\n", ""))
        shot(page, "missed-flood")

    in_browser(node, look)


def test_only_admins_may_see_missed_calls(node: Node) -> None:
    with node.client() as admin:
        response = admin.post("/api/users", json={
            "username": "agent", "password": "agent-secret-1", "extensions": ["1001"]})
        assert response.status_code in (200, 201), response.text
    eventually(lambda: missed(node, auth=("agent", "agent-secret-1")).status_code == 403, 10,
               "the agent refused")
    page = httpx.get(f"{node.base_url}/missed", auth=("agent", "agent-secret-1"),
                     timeout=10.0)
    assert page.status_code == 403
    assert missed(node, auth=("agent", "wrong")).status_code == 401


def test_the_stream_is_bounded_and_only_signaling_writes_it(node: Node) -> None:
    async def check() -> list[str]:
        nc = await node.bus("node")
        try:
            info = await nc.jetstream().stream_info(subjects.missed_stream(node.node_id))
        finally:
            await nc.close()
        config = info.config
        assert config.max_age == pytest.approx(RETENTION_DAYS * 86400)
        assert config.max_bytes == 64 * 1024 * 1024
        assert str(config.discard).lower().endswith("old")
        refusals: list[str] = []

        async def on_error(exc: Exception) -> None:
            refusals.append(str(exc))

        import nats

        forged = MissedCall(node_id=node.node_id, at=info.created, source="10.9.9.9",
                            reason="unknown_user", status=404, detail="forged")
        for identity in ("web", "capture", "catalog"):
            client = await nats.connect(
                f"nats://127.0.0.1:{node.nats_port}", user=identity,
                password=node.bus_password(identity), inbox_prefix=f"_INBOX_{identity}",
                error_cb=on_error, allow_reconnect=False)
            try:
                with pytest.raises(Exception):  # noqa: B017 - no ack: the server dropped it
                    await client.jetstream().publish(
                        subjects.missed(node.node_id), forged.model_dump_json().encode(),
                        timeout=2)
            finally:
                await client.close()
        return refusals

    refusals = asyncio.run(check())
    assert "permissions violation" in " ".join(refusals).lower()
    assert missed(node, "source=10.9.9.9").json()["items"] == []
