"""The jobs and cluster pages on two real nodes in headless Debian chromium: an export
job saved through the form of the node that does NOT hold the maintenance role gets
the holder's check of its target (missing, then ok once created); a SIGKILLed node is
shown DOWN on the survivor's cluster page, and the survivor, now holding the role,
checks the target again itself. Screenshots of both pages via tests.support.screens.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_jobs_engine import cluster_events
from tests.support import browser, screens
from tests.support.cluster import ROLE_TIMEOUT, eventually, holder
from tests.support.node import ADMIN_PASSWORD, Node
from tests.support.weblogin import basic_headers

if browser.missing():
    pytest.skip(str(browser.missing()), allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.e2e


def target_checks(node: Node) -> list[tuple[str, bool]]:
    """(checking node, ok) of every job.target_checked fact on `node`, read in a thread
    (Playwright's sync API keeps an event loop running in this one)."""
    with ThreadPoolExecutor(1) as pool:
        events = pool.submit(cluster_events, node, "job.target_checked").result()
    return [(event.node_id, event.ok) for event in events]


def job_of(node: Node, name: str) -> dict[str, Any] | None:
    with node.client() as client:
        response = client.get("/api/jobs")
    if response.status_code != 200:
        return None
    return next((j for j in response.json()["jobs"] if j["name"] == name), None)


def test_target_checked_by_the_holder_and_a_killed_node_shown_down(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = pair
    eventually(lambda: holder(a) == "a" and holder(b) == "a", 20, "a holds the role")
    share = tmp_path / "share"  # absent: the holder must say so
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM,
                                              args=browser.CHROMIUM_ARGS)
        try:
            context = chromium.new_context(
                extra_http_headers=basic_headers("admin", ADMIN_PASSWORD),
                viewport={"width": 1400, "height": 1000},
            )
            page = context.new_page()
            page.set_default_timeout(30_000)
            # The form on b, the node without the role.
            page.goto(f"{b.base_url}/jobs")
            page.get_by_test_id("new-job").click()
            page.get_by_test_id("f-name").fill("archive")
            page.get_by_test_id("f-kind").select_option("export")
            page.get_by_test_id("f-target").fill(str(share))
            page.get_by_test_id("f-format").select_option("wav")
            page.get_by_test_id("f-template").fill("{near}/{id}.{ext}")
            sync_api.expect(page.get_by_test_id("f-example")).to_have_text(
                f"{share}/1001/0123456789abcdef0123456789abcdef.wav")
            page.get_by_test_id("f-sched-type").select_option("interval")
            page.get_by_test_id("f-interval").fill("6")
            page.get_by_test_id("f-interval-unit").select_option("h")
            sync_api.expect(page.get_by_test_id("f-next-runs")).to_contain_text("Next runs")

            # A field error is shown at its field, and nothing is saved.
            page.get_by_test_id("f-template").fill("../{id}")
            page.get_by_test_id("f-save").click()
            error = page.locator('[data-error-for="export.path_template"]')
            sync_api.expect(error).to_contain_text("inside target_dir")
            assert job_of(b, "archive") is None
            page.get_by_test_id("f-template").fill("{near}/{id}.{ext}")

            page.get_by_test_id("f-save").click()
            check = page.get_by_test_id("f-target-check")
            sync_api.expect(check).to_have_attribute("data-state", "failed")
            sync_api.expect(check).to_contain_text("a (maintenance role holder)")
            sync_api.expect(check).to_contain_text("does not exist")
            screens.shot(page, "jobs-form-target-missing")
            assert not share.exists()  # the check never creates the mount point

            share.mkdir()
            page.get_by_test_id("f-save").click()  # the form now edits the saved job
            sync_api.expect(page.get_by_test_id("action-message")).to_contain_text(
                "target checked on a")
            row = page.locator('[data-testid="job-row"][data-job-name="archive"]')
            sync_api.expect(row.get_by_test_id("job-target-check")).to_have_attribute(
                "data-state", "ok")
            sync_api.expect(row.get_by_test_id("job-schedule")).to_have_text("every 6h")
            screens.shot(page, "jobs")
            job = job_of(b, "archive")
            assert job is not None and job["definition"]["schedule"] == {"interval": "6h"}
            assert len([j for j in (job_of(a, "archive"),) if j]) == 1  # one job, both nodes
            assert target_checks(b) == [("a", False), ("a", True)]
            with b.client() as client:  # the same save through the API, timed
                started = time.monotonic()
                saved = client.put(f"/api/jobs/{job['job_id']}", json=job["definition"])
                answered_in = time.monotonic() - started
            assert saved.status_code == 200, saved.text
            assert saved.json()["target_check"]["state"] == "ok"
            assert saved.json()["target_check"]["node_id"] == "a"
            print(f"save on b answered with a's target check in {answered_in:.2f} s")

            # The holder dies: b shows it DOWN, takes the role and checks the target itself.
            page.goto(f"{b.base_url}/cluster")
            sync_api.expect(page.locator('[data-testid="node-row"][data-node-id="a"]')
                            ).to_have_attribute("data-state", "up")
            a.kill()
            killed = time.monotonic()
            row_a = page.locator('[data-testid="node-row"][data-node-id="a"]')
            sync_api.expect(row_a).to_have_attribute("data-state", "down",
                                                     timeout=(ROLE_TIMEOUT + 20) * 1000)
            shown_after = time.monotonic() - killed
            sync_api.expect(row_a.get_by_test_id("down-badge")).to_have_text("DOWN")
            alert = page.locator('[data-testid="down-node"][data-node-id="a"]')
            sync_api.expect(alert).to_contain_text("has been silent since")
            sync_api.expect(alert).to_contain_text("it held the maintenance role, now on b",
                                                   timeout=(ROLE_TIMEOUT + 20) * 1000)
            sync_api.expect(page.get_by_test_id("holder")).to_have_text("b")
            screens.shot(page, "cluster")
            print(f"node a shown DOWN on b's cluster page {shown_after:.1f} s after SIGKILL")

            eventually(lambda: (j := job_of(b, "archive")) and j["target_check"]
                       and j["target_check"]["node_id"] == "b", 20, "b checks the target")
            assert target_checks(b)[-1] == ("b", True)
        finally:
            chromium.close()

    # The CLI speaks the same unit and goes through the same rules.
    assert json.loads(b.cli("jobs", "show", "archive"))["schedule"] == {"interval": "6h"}
    listing = b.cli("jobs", "list")
    assert f"to {share} as wav" in listing and "every 6h" in listing, listing
    b.cli("jobs", "add", json.dumps({"name": "retention", "kind": "purge",
                                     "schedule": {"cron": "0 2 * * *"},
                                     "purge": {"retention": 365, "user_retention": {
                                         "alice": "2w"}}}))
    purge = eventually(lambda: job_of(b, "retention"), 10, "the purge job")
    assert purge["definition"]["purge"] == {"retention": "365d",
                                            "user_retention": {"alice": "14d"},
                                            "group_retention": {}}
    assert purge["params"]["retention_s"] == 365 * 86400
    b.cli("jobs", "remove", "archive")
    eventually(lambda: job_of(b, "archive") is None, 10, "archive removed")
