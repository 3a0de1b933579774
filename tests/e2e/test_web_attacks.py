"""The web's defences on a real node, attacked from a real (headless, Debian) Chromium.

The browser holds the admin's Basic credentials for the node (sent on every request to
it, as a browser does once the user has signed in); a page served by "the stranger" on
127.0.0.2 then makes that browser submit forms and `no-cors` fetches to the node. None
of them may create a user or a job, while the node's own page, in the same browser,
still changes things. Also: security headers on every page, and a DELETE of a held
recording refused until its hold is released.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.support import browser, sipp
from tests.support.cluster import eventually
from tests.support.node import ADMIN_PASSWORD, Node
from tests.support.weblogin import log_in

if browser.missing():
    pytest.skip(str(browser.missing()), allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.e2e

STRANGER = "127.0.0.2"
EVIL_USER = "mallory"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("websec") / "node", extra_args=["--record-all"]).start()
    yield n
    n.stop()


def metric_sum(node: Node, name: str) -> float:
    """All series of a counter summed (the refusals are labelled by reason)."""
    text = httpx.get(f"{node.base_url}/metrics", timeout=5.0).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{"))


def text_plain_form(action: str, fields: dict[str, Any], pad_field: str) -> str:
    """A form whose text/plain body (`name=value`) is the JSON of `fields`: the input's
    name carries the JSON up to the opening quote of `pad_field`, its value closes it."""
    body = json.dumps({**fields, pad_field: "PAD"})
    cut = body.index('"PAD"') + 1
    name, value = body[:cut] + str(fields.get(pad_field, "")), body[cut + 3:]
    return (f'<form method="POST" action="{action}" enctype="text/plain">'
            f'<input name="{html.escape(name)}" value="{html.escape(value)}"></form>'
            "<script>document.forms[0].submit()</script>")


def attack_pages(target: str) -> dict[str, str]:
    """The stranger's pages: each attacks as soon as it loads. On the node before this
    issue, the text/plain ones created an admin and a purge job with 1 s retention."""
    purge = {"kind": "purge", "schedule": {"interval_s": 60}, "purge": {"retention_s": 1}}
    fetch_body = json.dumps({"name": "evil-fetch", **purge})

    def page(body: str) -> str:
        return f"<!doctype html><html><body>{body}</body></html>"

    return {
        "/users": page(text_plain_form(
            f"{target}/api/users",
            {"username": EVIL_USER, "password": "mallory-pw-123", "admin": True,
             "display_name": "x"}, "display_name")),
        "/jobs-text": page(text_plain_form(
            f"{target}/api/jobs", {**purge, "name": "evil-text"}, "name")),
        "/jobs-form": page(
            f'<form method="POST" action="{target}/api/jobs">'
            '<input name="name" value="evil-form"><input name="kind" value="purge">'
            '<input name="schedule" value=\'{"interval_s": 60}\'></form>'
            "<script>document.forms[0].submit()</script>"),
        "/fetch": page(
            "<script>"
            f"const body = {json.dumps(fetch_body)};"
            "Promise.allSettled(["
            f'fetch("{target}/api/jobs", {{method: "POST", mode: "no-cors", '
            'credentials: "include", headers: {"Content-Type": "text/plain"}, body}),'
            f'fetch("{target}/api/recordings/any", {{method: "DELETE", mode: "no-cors", '
            'credentials: "include"})'
            "]).then(() => { document.title = 'done'; });"
            "</script>"),
    }


class EvilServer:
    """A tiny http.server on the stranger's address serving the attack pages."""

    def __init__(self, pages: dict[str, str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path, "not found").encode()
                self.send_response(200 if self.path in pages else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((STRANGER, 0), Handler)
        self.url = f"http://{STRANGER}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EvilServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cross_site_requests_from_a_signed_in_browser_change_nothing(node: Node) -> None:
    refused_before = metric_sum(node, "callrec_web_csrf_refused_total")
    csp_violations: list[str] = []
    with EvilServer(attack_pages(node.base_url)) as evil, \
            sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM,
                                              args=browser.CHROMIUM_ARGS)
        try:
            context = chromium.new_context(http_credentials={
                "username": "admin", "password": ADMIN_PASSWORD,
                "origin": node.base_url, "send": "always"})
            page = context.new_page()
            page.set_default_timeout(30_000)
            page.on("console", lambda m: csp_violations.append(m.text)
                    if "Content Security Policy" in m.text else None)
            # Signed in through the login page (a session cookie, as a person would).
            log_in(page, node.base_url, "admin", ADMIN_PASSWORD)
            assert page.goto(f"{node.base_url}/").status == 200

            for path in ("/users", "/jobs-text", "/jobs-form"):
                with page.expect_response(
                    lambda r: r.url.startswith(node.base_url) and r.request.method == "POST"
                ) as answer:
                    page.goto(f"{evil.url}{path}")
                response = answer.value
                assert response.status == 403, (path, response.status, response.text())
                assert "cross-" in response.json()["detail"]
            page.goto(f"{evil.url}/fetch")
            page.wait_for_function("document.title === 'done'")

            # The node's own page, same browser, same credentials: changes still work.
            page.goto(f"{node.base_url}/jobs")
            sync_api.expect(page.get_by_test_id("status-line")).to_contain_text(
                "Answered by node")
            created = page.evaluate(
                """async () => {
                    const r = await fetch("/api/jobs", {method: "POST",
                        headers: {"Content-Type": "application/json"},
                        body: JSON.stringify({name: "legit", kind: "export",
                            schedule: {cron: "0 3 * * *"},
                            export: {target_dir: "/srv/callrec-export"}})});
                    return [r.status, await r.text()];
                }""")
            assert created[0] == 201, created
            sync_api.expect(page.locator('[data-job-name="legit"]')).to_be_visible()
        finally:
            chromium.close()
    assert csp_violations == []
    with node.client() as admin:
        users = [u["username"] for u in admin.get("/api/users").json()["items"]]
        assert EVIL_USER not in users, users
        names = [j["name"] for j in admin.get("/api/jobs").json()["jobs"]]
        assert names == ["legit"], names
    # Three forms and the no-cors POST (the no-cors DELETE is stopped by the browser's
    # preflight rules or by the node, whichever comes first).
    assert metric_sum(node, "callrec_web_csrf_refused_total") - refused_before >= 4


@pytest.mark.parametrize("path", ["/", "/cluster", "/jobs", "/api/recordings", "/api/jobs",
                                  "/api/cluster", "/api/users", "/healthz", "/metrics",
                                  "/static/jobs.js", "/nope"])
def test_security_headers_on_the_real_node(node: Node, path: str) -> None:
    response = httpx.get(f"{node.base_url}{path}", auth=("admin", ADMIN_PASSWORD), timeout=10)
    assert response.status_code in (200, 404), (path, response.text)
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "server" not in headers
    if path.startswith("/api/") or path in ("/", "/cluster", "/jobs"):
        assert headers["cache-control"] == "no-store"


def test_held_recording_is_not_deleted(node: Node) -> None:
    result = sipp.run_cucm_call("127.0.0.1", node.sip_port, near="1001", far="2002",
                                refci="5000101", seconds=1.0)
    assert result.ok, result.describe()
    rid = node.wait_recordings(1)[0]["recording_id"]
    with node.client() as admin:
        assert admin.put(f"/api/recordings/{rid}/hold",
                         json={"reason": "case 7"}).status_code == 200
        response = admin.delete(f"/api/recordings/{rid}")
        assert response.status_code == 409, response.text
        audio = admin.get(f"/api/recordings/{rid}/audio")
        assert audio.status_code == 200 and audio.headers["cache-control"] == "no-store"
        assert admin.get(f"/api/recordings/{rid}").json()["legal_hold"] is True
        assert admin.delete(f"/api/recordings/{rid}/hold").status_code == 200
        assert admin.delete(f"/api/recordings/{rid}").status_code == 202
        eventually(lambda: admin.get(f"/api/recordings/{rid}").status_code == 404, 10,
                   "the released recording purged")
