"""A supervisor's day in the web app, end to end, in headless Debian chromium against a
real two-node cluster with real recordings.

"Find a customer's call from yesterday afternoon and play it": log in through the login
page, filter by yesterday (in the browser's own time zone) and the customer's number,
open the call, play it (the audio element progresses), seek by clicking the waveform,
see both speakers' waveforms, download it as Opus, WAV and MP3 (each decodes to the
call's length), add a note and a tag, see them on the second node, find all of it in
the audit trail (whose chains verify), and log out. Every page is screenshotted.

The recorded call is real (SIPp, a tone per speaker); the calls of the past are copies
of its audio stated as facts with other start times and parties (tests/support/history.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import av
import pytest

from contracts.v1.events import RecordingCompleted
from tests.support import browser, sipp
from tests.support.cluster import eventually, recordings, start_pair
from tests.support.history import PastCall, add_past_calls
from tests.support.node import ADMIN_PASSWORD, Node
from tests.support.screens import shot
from tests.support.weblogin import log_in

if browser.missing():
    pytest.skip(str(browser.missing()), allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.e2e

ZONE = "Europe/Berlin"
CUSTOMER = "+4930555123"
SECONDS = 4.0
# Non-blank pixels of each waveform lane.
INKED = """() => Array.from(document.querySelectorAll('canvas[data-testid^="waveform-"]'))
  .map((canvas) => { const d = canvas.getContext('2d')
      .getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })"""


def _local(day: datetime, hour: int, minute: int) -> datetime:
    return day.replace(hour=hour, minute=minute, second=0, microsecond=0)


def past_calls(now: datetime) -> list[PastCall]:
    """Yesterday afternoon's two calls with the customer, and decoys around them."""
    yesterday = now - timedelta(days=1)
    return [
        PastCall(_local(yesterday, 14, 5), "2001", CUSTOMER, "Anna Agent", "Carla Customer"),
        PastCall(_local(yesterday, 15, 40), "2002", CUSTOMER, "Bert Agent", "Carla Customer",
                 direction="outbound"),
        PastCall(_local(yesterday, 10, 0), "2001", "+4930777000", "Anna Agent", "Other Caller"),
        PastCall(_local(now - timedelta(days=3), 11, 0), "2001", CUSTOMER, "Anna Agent"),
        PastCall(_local(now, 0, 30) if now.hour else now - timedelta(minutes=1), "2003",
                 CUSTOMER, "Dora Agent"),
    ]


def duration_s(path: Path) -> float:
    """Decoded length of an audio file (every frame decoded, not the header's claim)."""
    samples, rate = 0, 0
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            samples += frame.samples
            rate = frame.sample_rate
    return samples / rate


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    a, b, _ = start_pair(tmp_path_factory.mktemp("journey"))
    try:
        result = sipp.run_cucm_call("127.0.0.1", a.sip_port, near="1001", far="2002",
                                    refci="7100001", near_tone_hz=440, far_tone_hz=1004,
                                    seconds=SECONDS)
        assert result.ok, result.describe()
        recorded = eventually(lambda: next(iter(recordings(a).values()), None), 30,
                              "the real recording")
        template = RecordingCompleted.model_validate(recorded)
        now = datetime.now(ZoneInfo(ZONE))
        calls = past_calls(now)
        seeded = asyncio.run(add_past_calls(a, template, calls))
        eventually(lambda: len(recordings(b)) >= 1 + len(seeded) or None, 60,
                   "every recording listed on b")
        yield {"a": a, "b": b, "seeded": seeded, "template": template}
    finally:
        b.stop()
        a.stop()


def test_find_play_download_annotate_audit(cluster: dict[str, Any], tmp_path: Path) -> None:
    a: Node = cluster["a"]
    b: Node = cluster["b"]
    seeded: list[RecordingCompleted] = cluster["seeded"]
    wanted = {seeded[0].recording_id, seeded[1].recording_id}  # yesterday, the customer
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM,
                                              args=browser.CHROMIUM_ARGS)
        try:
            context = chromium.new_context(timezone_id=ZONE, accept_downloads=True,
                                           viewport={"width": 1400, "height": 900})
            page = context.new_page()
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text)
                    if "Content Security Policy" in m.text else None)

            # Log in: a page without a session sends the browser to the login page.
            page.goto(f"{a.base_url}/")
            page.wait_for_url(f"{a.base_url}/login**")
            shot(page, "login")
            page.get_by_test_id("login-username").fill("admin")
            page.get_by_test_id("login-password").fill(ADMIN_PASSWORD)
            page.get_by_test_id("login-submit").click()
            page.wait_for_url(f"{a.base_url}/")
            sync_api.expect(page.get_by_test_id("signed-in-as")).to_have_text("admin")

            # Yesterday (in Berlin, the browser's zone) and the customer's number.
            page.get_by_test_id("quick-yesterday").click()
            page.get_by_test_id("filter-number").fill("555123")
            page.get_by_test_id("search").click()
            rows = page.locator("[data-testid=recordings-rows] tr[data-recording-id]")
            sync_api.expect(rows).to_have_count(2, timeout=15000)
            shown = {rows.nth(i).get_attribute("data-recording-id") for i in range(2)}
            assert shown == wanted
            sync_api.expect(page.get_by_test_id("result-count")).to_contain_text("2")
            shot(page, "recordings-yesterday-customer")

            # Open yesterday afternoon's first call.
            target = seeded[0].recording_id
            page.locator(f"tr[data-recording-id='{target}'] a").first.click()
            page.wait_for_url(f"{a.base_url}/recordings/{target}")
            sync_api.expect(page.get_by_test_id("parties")).to_contain_text("Carla Customer")

            # Both speakers' waveforms are drawn.
            eventually(lambda: all(n > 50 for n in page.evaluate(INKED)) or None, 20,
                       "both waveform lanes drawn")
            assert len(page.evaluate(INKED)) == 2

            # Play: the audio element progresses.
            page.evaluate("() => { const p = document.getElementById('player');"
                          " p.muted = true; return p.play(); }")
            eventually(lambda: page.evaluate(
                "() => document.getElementById('player').currentTime") > 0.5 or None, 20,
                "the player progressing")
            page.evaluate("() => document.getElementById('player').pause()")

            # Seek: a click at three quarters of a lane moves the play-head there.
            lane = page.locator("canvas[data-testid='waveform-0']")
            box = lane.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
            length = seeded[0].duration_ms / 1000

            def seeked() -> float | None:
                at = float(page.evaluate("() => document.getElementById('player').currentTime"))
                return at if abs(at - 0.75 * length) < 0.6 else None

            position = eventually(seeked, 10, "the seek")
            assert abs(position - 0.75 * length) < 0.6
            shot(page, "recording")

            # Downloads: each format decodes to the call's length.
            for fmt in ("opus", "wav", "mp3"):
                with page.expect_download() as info:
                    page.get_by_test_id(f"download-{fmt}").click()
                saved = tmp_path / f"call.{fmt}"
                info.value.save_as(saved)
                assert abs(duration_s(saved) - length) < 0.15, (fmt, duration_s(saved), length)

            # A note and a tag, on node a.
            note = f"customer asked for a callback {int(time.time())}"
            page.get_by_test_id("note-text").fill(note)
            page.get_by_test_id("note-add").click()
            sync_api.expect(page.get_by_test_id("notes")).to_contain_text(note, timeout=10000)
            page.get_by_test_id("tag-input").fill("callback")
            page.get_by_test_id("tag-add").click()
            sync_api.expect(page.locator("[data-testid=tag][data-tag=callback]")).to_be_visible(
                timeout=10000)
            shot(page, "recording-annotated")

            # ... seen on node b, by the same person logged in there (its own browser
            # context: cookies do not tell ports apart, and both nodes are on 127.0.0.1).
            context_b = chromium.new_context(timezone_id=ZONE)
            page_b = context_b.new_page()
            log_in(page_b, b.base_url, "admin", ADMIN_PASSWORD)

            def annotated_on_b() -> bool | None:
                page_b.goto(f"{b.base_url}/recordings/{target}")
                page_b.wait_for_load_state("networkidle")
                tags = page_b.locator("[data-testid=tag][data-tag=callback]").count()
                notes = page_b.get_by_test_id("notes").inner_text()
                return (tags == 1 and note in notes) or None

            eventually(annotated_on_b, 30, "the note and the tag on node b")
            shot(page_b, "recording-on-b")

            # The other pages, in the same look.
            for path, name in (("/cluster", "cluster"), ("/jobs", "jobs"),
                               ("/missed", "missed"), ("/users", "users"),
                               ("/account", "account")):
                page.goto(f"{a.base_url}{path}")
                page.wait_for_load_state("networkidle")
                sync_api.expect(page.get_by_test_id("nav")).to_be_visible()
                shot(page, name)

            # The audit on node a has all of it, and every chain verifies.
            def audited() -> set[str] | None:
                response = page.request.get(f"{a.base_url}/api/audit?actor=admin&limit=500")
                actions = {item["action"] for item in response.json()["items"]}
                need = {"login", "search", "view", "play", "download", "note", "tag"}
                return actions if need <= actions else None

            actions = eventually(audited, 30, "the journey in the audit")
            assert {"login", "search", "play", "download", "note", "tag"} <= actions
            page.goto(f"{a.base_url}/audit")
            sync_api.expect(page.get_by_test_id("audit-table")).to_be_visible()
            page.get_by_test_id("verify-run").click()
            verdicts = page.locator("[data-testid=verify-row]")
            sync_api.expect(verdicts.first).to_be_visible(timeout=15000)

            def all_verified() -> bool | None:
                page.get_by_test_id("verify-run").click()
                page.wait_for_timeout(500)
                states = [verdicts.nth(i).get_attribute("data-status")
                          for i in range(verdicts.count())]
                return (bool(states) and all(s == "verified" for s in states)) or None

            eventually(all_verified, 30, "every chain verified")
            nodes = {verdicts.nth(i).get_attribute("data-node") for i in range(verdicts.count())}
            assert {"a", "b"} <= nodes
            shot(page, "audit")

            # The audit on node b shows node a's plays too (replicated).
            page_b.goto(f"{b.base_url}/api/audit?node=a&action=download&limit=50")
            assert '"download"' in page_b.content()

            # Log out: the session is gone, pages send the browser back to the login.
            page.goto(f"{a.base_url}/")
            page.get_by_test_id("logout").click()
            page.wait_for_url(f"{a.base_url}/login**")
            page.goto(f"{a.base_url}/recordings/{target}")
            page.wait_for_url(f"{a.base_url}/login**")
            assert violations == [], violations
        finally:
            chromium.close()
