"""The jobs dashboard in a real (headless, Debian) Chromium against a real node: an
export job created through the API shows up, "Run now" runs it, and the page follows
the run live until it shows the outcome with the count of exported recordings. The CLI
then sees the same jobs and runs.

Playwright drives /usr/bin/chromium (installed by scripts/test); no browser is ever
downloaded, and nothing but loopback is reached.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import browser, sipp
from tests.support.cluster import eventually
from tests.support.node import ADMIN_PASSWORD, Node
from tests.support.weblogin import basic_headers

if browser.missing():
    pytest.skip(str(browser.missing()), allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMIUM_ARGS = browser.CHROMIUM, browser.CHROMIUM_ARGS


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "node", extra_args=["--record-all"]).start()
    yield n
    n.stop()


def jobs_status(node: Node) -> dict[str, Any] | None:
    with node.client() as client:
        response = client.get("/api/jobs")
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def test_export_job_run_from_the_dashboard(node: Node, tmp_path: Path) -> None:
    for refci in ("5000001", "5000002"):
        result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                    refci=refci, seconds=1.0)
        assert result.ok, result.describe()
    recordings = node.wait_recordings(2)
    eventually(lambda: (s := jobs_status(node)) and s["holder"] == node.node_id, 20,
               "the scheduler answers and holds the maintenance role")

    target = tmp_path / "export"
    target.mkdir()
    with node.client() as client:
        response = client.post("/api/jobs", json={
            "name": "nightly export", "kind": "export",
            "schedule": {"cron": "0 3 * * *"},
            "export": {"target_dir": str(target), "format": "opus", "sidecar": True},
        })
        assert response.status_code == 201, response.text
        job_id = response.json()["job_id"]
        # The change is visible at once (the API waits for the local scheduler).
        listed = {job["job_id"]: job for job in client.get("/api/jobs").json()["jobs"]}
        assert listed[job_id]["runs_on"] == node.node_id
        assert listed[job_id]["next_run"] is not None

    screenshot = tmp_path / "jobs-dashboard.png"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                # Basic on every request: a page load without credentials goes to /login.
                extra_http_headers=basic_headers("admin", ADMIN_PASSWORD),
                viewport={"width": 1400, "height": 900},
            )
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{node.base_url}/jobs")
            row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
            row.wait_for()
            sync_api.expect(row.get_by_test_id("job-name")).to_have_text("nightly export")
            sync_api.expect(row.get_by_test_id("job-kind")).to_have_text("export")
            sync_api.expect(row.get_by_test_id("job-schedule")).to_have_text("cron 0 3 * * *")
            sync_api.expect(row.get_by_test_id("job-runs-on")).to_have_text(node.node_id)
            sync_api.expect(row.get_by_test_id("job-last-run")).to_have_text("never")

            row.get_by_test_id("run-now").click()
            run = page.locator(f'[data-testid="run-row"][data-job-id="{job_id}"]').first
            sync_api.expect(run).to_have_attribute("data-state", "finished", timeout=60_000)
            sync_api.expect(run.get_by_test_id("run-outcome")).to_contain_text(
                f"{len(recordings)} exported")
            sync_api.expect(run.get_by_test_id("run-node")).to_have_text(node.node_id)
            sync_api.expect(row.get_by_test_id("job-last-run")).to_contain_text(
                f"finished: {len(recordings)} exported")
            assert page.get_by_test_id("load-error").text_content() == ""

            # Pause from the page: the schedule stops (no next run) until resumed.
            row.get_by_test_id("pause-resume").click()
            sync_api.expect(row.get_by_test_id("job-paused")).to_have_text("yes")
            sync_api.expect(row.get_by_test_id("pause-resume")).to_have_text("Resume")
            row.get_by_test_id("pause-resume").click()
            sync_api.expect(row.get_by_test_id("job-paused")).to_have_text("no")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    artifacts = os.environ.get("CALLREC_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)

    exported = sorted(p for p in target.rglob("*.opus"))
    assert len(exported) == len(recordings), list(target.rglob("*"))
    ids = {item["recording_id"] for item in recordings}
    assert all(any(rid in p.name for rid in ids) for p in exported)

    # The CLI sees the same job and its run, and can run it again and wait for it:
    # everything is exported already, so the second run writes nothing new.
    listing = node.cli("jobs", "list")
    assert job_id in listing and "nightly export" in listing and "finished" in listing
    rerun = node.cli("jobs", "run", "nightly export", "--wait", "--timeout", "60")
    assert "finished" in rerun, rerun
    history = node.cli("jobs", "history", job_id).strip().splitlines()
    assert len(history) == 2 and all("finished" in line for line in history), history
    assert len(list(target.rglob("*.opus"))) == len(recordings)

    # Jobs are configured from the CLI too (the API's JSON body), paused and resumed.
    purge_id = node.cli("jobs", "add", json.dumps({
        "name": "yearly purge", "kind": "purge", "schedule": {"cron": "0 2 * * *"},
        "purge": {"retention_days": 365}})).strip()
    with node.client() as client:
        def purge_job() -> dict[str, Any] | None:
            jobs = client.get("/api/jobs").json()["jobs"]
            return next((j for j in jobs if j["job_id"] == purge_id), None)

        deadline = time.monotonic() + 10
        while purge_job() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert purge_job() is not None and purge_job()["kind"] == "purge"
        node.cli("jobs", "pause", "yearly purge")
        deadline = time.monotonic() + 10
        while not (purge_job() or {}).get("paused") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert purge_job()["paused"] is True
    with pytest.raises(RuntimeError, match="cron"):
        node.cli("jobs", "add", '{"name": "bad", "kind": "purge", '
                 '"schedule": {"cron": "61 * * * *"}, "purge": {"retention_days": 1}}')

    # Legal hold is an admin fact on a known recording.
    rid = recordings[0]["recording_id"]
    with node.client() as client:
        held = client.put(f"/api/recordings/{rid}/hold", json={"reason": "case 7"})
        assert held.status_code == 200 and held.json()["legal_hold"] is True, held.text
        eventually(lambda: client.get(f"/api/recordings/{rid}").json()["legal_hold"], 5,
                   "hold shown in the recording's metadata")
        assert client.delete(f"/api/recordings/{rid}/hold").status_code == 200
        eventually(lambda: client.get(f"/api/recordings/{rid}").json()["legal_hold"] is False,
                   5, "hold released in the recording's metadata")
        assert client.put("/api/recordings/unknown/hold").status_code == 404
