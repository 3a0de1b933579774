"""Logging in and out, the users admin and one's own account, in a real (headless,
Debian) Chromium against a real node: a page without a session leads to the login
and back; an admin creates and disables a user on /users; a user changes their
password on /account, which ends their session in another browser; logout ends it.

Screenshots: login, users, account (tests.support.screens).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import browser, screens
from tests.support.node import ADMIN_PASSWORD, Node

if browser.missing():
    pytest.skip(str(browser.missing()), allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = pytest.mark.e2e


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path / "node").start()
    n.cli("users", "add", "alice", "--extension", "1001", "--group", "sales",
          "--password", "alice-secret")
    yield n
    n.stop()


def log_in(page: object, username: str, password: str) -> None:
    page.get_by_test_id("login-username").fill(username)  # type: ignore[attr-defined]
    page.get_by_test_id("login-password").fill(password)  # type: ignore[attr-defined]
    page.get_by_test_id("login-submit").click()  # type: ignore[attr-defined]


def test_login_users_account_logout(node: Node) -> None:
    base = node.base_url
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser.CHROMIUM,
                                              args=browser.CHROMIUM_ARGS)
        try:
            admin = chromium.new_context(viewport={"width": 1400, "height": 900})
            page = admin.new_page()
            page.set_default_timeout(20_000)

            # A page without a session goes to the login (no Basic dialog), then back.
            page.goto(f"{base}/users")
            expect(page).to_have_url(re.compile(r"/login\?next=/users$"))
            screens.shot(page, "login")
            log_in(page, "admin", "wrong-password")
            expect(page.get_by_test_id("login-error")).to_contain_text("Wrong user name")
            log_in(page, "admin", ADMIN_PASSWORD)
            expect(page).to_have_url(f"{base}/users")
            cookie = next(c for c in admin.cookies() if c["name"] == "callrec_session")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and not cookie["secure"]

            alice = page.locator('[data-testid="user-row"][data-username="alice"]')
            expect(alice.get_by_test_id("user-role")).to_have_text("user")
            expect(alice.get_by_test_id("user-groups")).to_have_text("sales")

            # Create a supervisor of sales from the form.
            page.get_by_test_id("new-user").click()
            page.get_by_test_id("u-username").fill("lead")
            page.get_by_test_id("u-display").fill("Team <b>Lead</b>")
            page.get_by_test_id("u-role").select_option("supervisor")
            page.get_by_test_id("u-extensions").fill("1500")
            page.get_by_test_id("u-supervises").fill("sales")
            page.get_by_test_id("u-password").fill("lead-secret")
            page.get_by_test_id("u-save").click()
            lead = page.locator('[data-testid="user-row"][data-username="lead"]')
            expect(lead.get_by_test_id("user-role")).to_have_text("supervisor")
            expect(lead.get_by_test_id("user-display")).to_have_text("Team <b>Lead</b>")
            sales = page.locator('[data-testid="group-row"][data-group="sales"]')
            expect(sales.get_by_test_id("group-members")).to_have_text("alice")
            expect(sales.get_by_test_id("group-supervisors")).to_have_text("lead")
            # A rule refused by the server shows its reason.
            page.get_by_test_id("new-user").click()
            page.get_by_test_id("u-username").fill("mallory")
            page.get_by_test_id("u-extensions").fill("1001")
            page.get_by_test_id("u-save").click()
            expect(page.get_by_test_id("users-error")).to_contain_text("belongs to alice")
            page.get_by_test_id("u-cancel").click()
            # Disable and enable again.
            lead.get_by_test_id("user-toggle").click()
            expect(lead.get_by_test_id("user-status")).to_have_text("disabled")
            with httpx.Client(base_url=base, timeout=10) as api:
                assert api.get("/api/account", auth=("lead", "lead-secret")).status_code == 401
            lead.get_by_test_id("user-toggle").click()
            expect(lead.get_by_test_id("user-status")).to_have_text("can log in")
            screens.shot(page, "users")

            # Log out: the session is gone, pages lead to the login again.
            page.get_by_test_id("logout").click()
            expect(page).to_have_url(re.compile(r"/login"))
            page.goto(f"{base}/users")
            expect(page).to_have_url(re.compile(r"/login\?next=/users$"))

            # alice in two browsers; she changes her password in the first.
            other = chromium.new_context()
            other_page = other.new_page()
            other_page.goto(f"{base}/account")
            log_in(other_page, "alice", "alice-secret")
            expect(other_page).to_have_url(f"{base}/account")

            mine = chromium.new_context(viewport={"width": 1200, "height": 900})
            page = mine.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{base}/account")
            log_in(page, "alice", "alice-secret")
            expect(page.get_by_test_id("account-username")).to_have_text("alice")
            expect(page.get_by_test_id("account-role")).to_have_text("user")
            expect(page.get_by_test_id("nav")).not_to_contain_text("Users")
            page.get_by_test_id("pw-current").fill("alice-secret")
            page.get_by_test_id("pw-new").fill("alice-new-secret")
            page.get_by_test_id("pw-again").fill("alice-new-secret")
            page.get_by_test_id("pw-submit").click()
            expect(page.get_by_test_id("pw-message")).to_have_text("Password changed.")

            # An API token, shown once, works with Bearer until revoked.
            page.get_by_test_id("token-name").fill("crm integration")
            page.get_by_test_id("token-create").click()
            token = page.get_by_test_id("token-value")
            expect(token).to_have_text(re.compile(r"^crt_"))
            bearer = {"Authorization": f"Bearer {token.text_content()}"}
            with httpx.Client(base_url=base, timeout=10) as api:
                assert api.get("/api/recordings", headers=bearer).status_code == 200
            expect(page.get_by_test_id("token-row")).to_have_count(1)
            screens.shot(page, "account")
            page.get_by_test_id("token-revoke").click()
            expect(page.get_by_test_id("token-row")).to_have_count(0)
            with httpx.Client(base_url=base, timeout=10) as api:
                assert api.get("/api/recordings", headers=bearer).status_code == 401

            # The first browser goes on; the other one's session ended.
            page.reload()
            expect(page.get_by_test_id("account-username")).to_have_text("alice")
            other_page.goto(f"{base}/account")
            expect(other_page).to_have_url(re.compile(r"/login\?next=/account$"))
            log_in(other_page, "alice", "alice-secret")
            expect(other_page.get_by_test_id("login-error")).to_contain_text("Wrong")
            log_in(other_page, "alice", "alice-new-secret")
            expect(other_page).to_have_url(f"{base}/account")

            page.get_by_test_id("logout").click()
            expect(page).to_have_url(re.compile(r"/login"))
            page.goto(f"{base}/")
            expect(page).to_have_url(re.compile(r"/login\?next=/$"))
        finally:
            chromium.close()
