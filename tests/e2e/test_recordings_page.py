"""The recordings page in a real (headless, Debian) Chromium against a real node, with
real recordings from the past: a browser in Berlin picks "Yesterday", types part of a
customer's number and finds exactly yesterday afternoon's call with that customer,
shown in its local time; the search is in the URL (a bookmark gives it back), columns
sort, and each row leads to the recording's page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse
from zoneinfo import ZoneInfo

import pytest

from contracts.v1.events import RecordingCompleted
from tests.support import browser, sipp
from tests.support.history import PastCall, add_past_calls
from tests.support.node import ADMIN_PASSWORD, Node
from tests.support.screens import shot
from tests.support.weblogin import log_in

if browser.missing():
    pytest.skip(str(browser.missing()), allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.e2e

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "node", extra_args=["--record-all"]).start()
    yield n
    n.stop()


def test_yesterday_and_a_number(node: Node) -> None:
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="7000001", seconds=1.0)
    assert result.ok, result.describe()
    template = RecordingCompleted.model_validate(node.wait_recordings(1)[0])

    today = datetime.now(BERLIN).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)

    def at(day: datetime, hour: int, minute: int) -> datetime:
        # Wall time in Berlin (a DST change yesterday moves nothing: replace, not add).
        return day.replace(hour=hour, minute=minute).astimezone(UTC)

    calls = [
        PastCall(at(yesterday, 14, 3), "1001", "+4930555111", "Agent One", "Frau Müller"),
        PastCall(at(yesterday, 15, 20), "1001", "+4930555222", "Agent One", "Herr Weber",
                 direction="outbound"),
        PastCall(at(yesterday, 0, 10), "1002", "+4930555111", None, "Frau Müller"),
        PastCall(at(today - timedelta(days=3), 14, 3), "1001", "+4930555111"),
        PastCall(at(yesterday - timedelta(days=30), 9, 0), "1001", "+4930555111"),
    ]
    published = asyncio.run(add_past_calls(node, template, calls))
    node.wait_recordings(1 + len(calls))
    wanted = published[0]

    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM,
                                              args=browser.CHROMIUM_ARGS)
        try:
            context = chromium.new_context(
                viewport={"width": 1400, "height": 900}, timezone_id="Europe/Berlin",
                locale="en-GB")
            page = context.new_page()
            page.set_default_timeout(30_000)
            log_in(page, node.base_url, "admin", ADMIN_PASSWORD)
            count = page.get_by_test_id("result-count")
            sync_api.expect(count).to_have_text("6 recordings")
            rows = page.get_by_test_id("recording-row")
            sync_api.expect(rows).to_have_count(6)

            page.get_by_test_id("quick-yesterday").click()
            page.wait_for_url("**/?range=yesterday*")
            sync_api.expect(count).to_have_text("3 recordings")
            # The form shows the picked day in local time.
            assert page.get_by_test_id("filter-from").input_value() == (
                f"{yesterday:%Y-%m-%d}T00:00")
            assert page.get_by_test_id("filter-to").input_value() == f"{today:%Y-%m-%d}T00:00"

            page.get_by_test_id("filter-number").fill("555111")
            page.get_by_test_id("search").click()
            page.wait_for_url("**number_or_name=555111*")
            sync_api.expect(count).to_have_text("2 recordings")
            first = rows.first
            sync_api.expect(first).to_have_attribute("data-recording-id", wanted.recording_id)
            when = first.locator("time")
            # "Sun 29 Nov 14:03": the browser's zone, no seconds, no UTC offset.
            sync_api.expect(when).to_have_text(
                f"{yesterday:%a} {yesterday.day} {yesterday:%b} 14:03")
            minutes, seconds = divmod(round(template.duration_ms / 1000), 60)
            sync_api.expect(first.locator("td.duration")).to_have_text(
                f"{minutes}:{seconds:02d}")
            sync_api.expect(first).to_contain_text("Frau Müller")
            link = first.get_by_test_id("recording-link")
            assert link.get_attribute("href") == f"/recordings/{wanted.recording_id}"
            shot(page, "recordings")

            # A bookmark of this URL gives the same search back.
            url = page.url
            query = parse_qs(urlparse(url).query)
            assert query["range"] == ["yesterday"] and query["number_or_name"] == ["555111"]
            page.goto(url)
            sync_api.expect(count).to_have_text("2 recordings")
            sync_api.expect(page.get_by_test_id("filter-number")).to_have_value("555111")

            # Sorting by start time, oldest first: the night call comes first.
            page.get_by_test_id("sort-started").click()
            page.wait_for_url("**order=asc*")
            sync_api.expect(rows.first).not_to_have_attribute(
                "data-recording-id", wanted.recording_id)
            sync_api.expect(rows.nth(1)).to_have_attribute(
                "data-recording-id", wanted.recording_id)

            # Paging: one per page.
            page.goto(f"{url}&limit=1&offset=1")
            sync_api.expect(rows).to_have_count(1)
            sync_api.expect(page.get_by_test_id("page-label")).to_have_text("2–2 of 2")
            sync_api.expect(page.get_by_test_id("page-next")).to_be_disabled()

            # A row leads to the recording's page.
            page.goto(url)
            rows.first.get_by_test_id("recording-link").click()
            page.wait_for_url(f"**/recordings/{wanted.recording_id}")
        finally:
            chromium.close()
