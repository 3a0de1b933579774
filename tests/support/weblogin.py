"""Signing a Playwright browser in to a node's web app.

Pages without a session redirect to /login (no Basic dialog), and Playwright's
`http_credentials` only answers a 401 challenge, so a browser test either logs in
through the form (`log_in`) or sends Basic on every request (`basic_headers()` as the
context's `extra_http_headers`).
"""

from __future__ import annotations

import base64
from typing import Any


def basic_headers(username: str, password: str) -> dict[str, str]:
    """For `browser.new_context(extra_http_headers=...)`: Basic on every request."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def log_in(page: Any, base_url: str, username: str, password: str, next_path: str = "/") -> None:
    """Log in through the login page (a Playwright sync Page) and wait for `next_path`."""
    page.goto(f"{base_url}/login?next={next_path}")
    page.get_by_test_id("login-username").fill(username)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    page.wait_for_url(f"{base_url}{next_path}")
