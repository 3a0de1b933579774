"""Accounts across a cluster: an API token made on one node works on the other and,
revoked there, stops on both; a password changed on one node ends the sessions opened
on the other (sessions are per node, the password is a replicated fact); a user
disabled on one node cannot log in on the other."""

from __future__ import annotations

import httpx
import pytest

from tests.support.cluster import eventually
from tests.support.node import Node

pytestmark = pytest.mark.e2e


def status(node: Node, path: str, **kwargs: object) -> int:
    with httpx.Client(base_url=node.base_url, timeout=10.0) as client:
        return client.get(path, **kwargs).status_code  # type: ignore[arg-type]


def test_tokens_passwords_and_disabling_hold_on_every_node(pair: tuple[Node, Node]) -> None:
    a, b = pair
    with a.client() as admin:
        made = admin.post("/api/users", json={"username": "alice", "extensions": ["1001"],
                                               "password": "alice-secret"})
        assert made.status_code == 201, made.text
    eventually(lambda: status(b, "/api/account", auth=("alice", "alice-secret")) == 200, 30,
               "alice known on b")

    # A token made on a works on b; revoked on b, it stops on both.
    with httpx.Client(base_url=a.base_url, auth=("alice", "alice-secret"),
                      timeout=10.0) as on_a:
        created = on_a.post("/api/account/tokens", json={"name": "crm"})
        assert created.status_code == 201, created.text
    token, token_id = created.json()["token"], created.json()["token_id"]
    bearer = {"Authorization": f"Bearer {token}"}
    eventually(lambda: status(b, "/api/recordings", headers=bearer) == 200, 30,
               "the token works on b")
    with httpx.Client(base_url=b.base_url, headers=bearer, timeout=10.0) as on_b:
        assert on_b.delete(f"/api/account/tokens/{token_id}").status_code == 204
    assert status(b, "/api/recordings", headers=bearer) == 401
    eventually(lambda: status(a, "/api/recordings", headers=bearer) == 401, 30,
               "the revocation reaches a")

    # A session on b ends when alice changes her password on a.
    with httpx.Client(base_url=b.base_url, timeout=10.0) as browser_b, \
            httpx.Client(base_url=a.base_url, timeout=10.0) as browser_a:
        for client, node in ((browser_b, b), (browser_a, a)):
            login = client.post("/login", json={"username": "alice",
                                                "password": "alice-secret"},
                                headers={"Origin": node.base_url})
            assert login.status_code == 200, login.text
        assert browser_b.get("/api/account").status_code == 200
        changed = browser_a.put("/api/account/password", headers={"Origin": a.base_url},
                                json={"current_password": "alice-secret",
                                      "new_password": "alice-new-secret"})
        assert changed.status_code == 200, changed.text
        assert browser_a.get("/api/account").status_code == 200
        eventually(lambda: browser_b.get("/api/account").status_code == 401, 30,
                   "the session on b ends")
    assert status(b, "/api/account", auth=("alice", "alice-new-secret")) == 200

    # Disabled on b: no login on a.
    with b.client() as admin_b:
        disabled = admin_b.post("/api/users", json={"username": "alice",
                                                     "extensions": ["1001"],
                                                     "disabled": True})
        assert disabled.status_code == 200, disabled.text
    eventually(lambda: status(a, "/api/account", auth=("alice", "alice-new-secret")) == 401,
               30, "alice disabled on a")
