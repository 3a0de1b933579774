"""Logins, sessions, API tokens, roles and the users admin over a fake backend: each
security property is attacked (fixation, login CSRF, open redirect, guessing, a
disabled user's old session, a stolen token after revocation) and must hold while the
legitimate way still works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from callrec.metrics import Registry
from callrec.store import open_store
from callrec.users import hash_password
from contracts.v1.events import UserUpserted
from contracts.v1.rpc import SearchRequest, SearchResult
from services.web.app import create_app
from services.web.audit_log import AuditDraft
from services.web.auth import principal_of
from services.web.security import SESSION_COOKIE, safe_next
from services.web.throttle import BURST
from tests.unit.test_web_jobs_api import ADMIN, ALICE, recording
from tests.unit.test_web_security import Backend

OWN = "http://testserver.local"
EVIL = "http://evil.example"
SUP = ("sup", "sup-password")
BOB = ("bob", "bob-password")
PAGE = {"Accept": "text/html,application/xhtml+xml", "Sec-Fetch-Dest": "document"}


class Users(Backend):
    """The security tests' fake, plus a supervisor, bob, and a search that filters."""

    def __init__(self) -> None:
        super().__init__()
        for event in (
            UserUpserted(node_id="n1", username="bob", password_hash=hash_password(BOB[1]),
                         extensions=["1002"], groups=["support"], role="user"),
            UserUpserted(node_id="n1", username="sup", password_hash=hash_password(SUP[1]),
                         extensions=["1500"], role="supervisor", supervises=["support"]),
        ):
            self.users.apply(event)
        self.recordings["rec3"] = recording("rec3", "1002")
        self.searches: list[list[str] | None] = []

    async def search(self, request: SearchRequest,
                     visible_numbers: list[str] | None) -> SearchResult:
        self.searches.append(visible_numbers)
        items = [r for r in self.recordings.values()
                 if visible_numbers is None
                 or any(n in visible_numbers for n in r.metadata.numbers())]
        return SearchResult(total=len(items), items=items)


@pytest.fixture
def backend() -> Users:
    return Users()


@pytest.fixture
def audit() -> list[AuditDraft]:
    return []


def _client(backend: Users, tmp_path: Path, audit: list[AuditDraft],
            base_url: str = OWN) -> TestClient[Any]:
    app = create_app(backend, open_store(tmp_path), tmp_path, Registry("web", "n1"))

    auth = app.state["web"].auth
    record = auth.audit

    async def hook(draft: AuditDraft) -> object:
        """What the session layer hands the audit trail, on its way there."""
        audit.append(draft)
        return await record(draft) if record is not None else None

    auth.audit = hook
    return TestClient(app=app, base_url=base_url)


@pytest.fixture
def client(backend: Users, tmp_path: Path, audit: list[AuditDraft]) -> Iterator[TestClient[Any]]:
    with _client(backend, tmp_path, audit) as test_client:
        yield test_client


def login(client: TestClient[Any], who: tuple[str, str], next_path: str | None = None,
          **headers: str) -> Any:
    body: dict[str, Any] = {"username": who[0], "password": who[1]}
    if next_path is not None:
        body["next"] = next_path
    return client.post("/login", json=body, headers={"Origin": OWN, **headers})


def set_cookie(response: Any) -> str:
    values = [v for k, v in response.headers.multi_items() if k.lower() == "set-cookie"]
    assert len(values) == 1, values
    return str(values[0])


# --------------------------------------------------------------------------- sessions


def test_login_sets_an_httponly_samesite_cookie_and_the_session_works(
    client: TestClient[Any], audit: list[AuditDraft]
) -> None:
    response = login(client, ALICE)
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "alice" and response.json()["role"] == "user"
    cookie = set_cookie(response)
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert "Secure" not in cookie  # plain HTTP on a LAN: a Secure cookie would be dropped
    me = client.get("/api/account")
    assert me.status_code == 200 and me.json()["via"] == "session"
    assert client.get("/").status_code == 200
    assert [a.action for a in audit] == ["login"]


def test_over_https_the_cookie_is_secure(backend: Users, tmp_path: Path) -> None:
    with _client(backend, tmp_path, [], base_url="https://testserver.local") as client:
        response = login(client, ALICE, Origin="https://testserver.local")
        assert response.status_code == 200, response.text
        assert "Secure" in set_cookie(response)


def test_login_issues_a_new_session_id_and_ends_the_old_one(client: TestClient[Any]) -> None:
    """Session fixation: an id planted in the browser is never promoted."""
    client.cookies.set(SESSION_COOKIE, "attacker-chosen-id")
    first = login(client, ALICE)
    first_id = first.cookies[SESSION_COOKIE]
    assert first_id != "attacker-chosen-id" and len(first_id) >= 43
    second = login(client, ALICE)
    second_id = second.cookies[SESSION_COOKIE]
    assert second_id != first_id
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, first_id)
    assert client.get("/api/account").status_code == 401  # the old one ended
    client.cookies.set(SESSION_COOKIE, second_id)
    assert client.get("/api/account").status_code == 200


def test_wrong_passwords_and_unknown_users_get_401_without_a_session(
    client: TestClient[Any], audit: list[AuditDraft]
) -> None:
    for who in (("alice", "wrong-password"), ("ghost", "whatever-pw")):
        response = login(client, who)
        assert response.status_code == 401 and SESSION_COOKIE not in response.cookies
        assert "www-authenticate" not in response.headers
    assert [a.action for a in audit] == ["login_failed", "login_failed"]


def test_login_csrf_from_a_foreign_origin_is_refused(
    client: TestClient[Any], backend: Users
) -> None:
    """A foreign page cannot sign the browser in (as the attacker) by any means."""
    body = {"username": "alice", "password": ALICE[1]}
    for headers in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": "null"}, {"Origin": OWN, "Sec-Fetch-Site": "same-site"}):
        response = client.post("/login", json=body, headers=headers)
        assert response.status_code == 403, (headers, response.text)
        assert SESSION_COOKIE not in response.cookies
    form = client.post("/login", data=body, headers={"Origin": OWN})
    assert form.status_code == 415 and SESSION_COOKIE not in form.cookies
    plain = client.post("/login", content=b'{"username": "alice", "password": "alice-pw"}',
                        headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    # Logging a browser out from a foreign page is refused as well.
    assert login(client, ALICE).status_code == 200
    assert client.post("/logout", json={}, headers={"Origin": EVIL}).status_code == 403
    assert client.get("/api/account").status_code == 200


@pytest.mark.parametrize(("wanted", "safe"), [
    ("/jobs", "/jobs"),
    ("/recordings/abc?x=1&y=2", "/recordings/abc?x=1&y=2"),
    ("//evil.example/", "/"),
    ("/\\evil.example", "/"),
    ("https://evil.example/", "/"),
    ("http:/evil.example", "/"),
    ("evil.example", "/"),
    ("/%0d%0aSet-Cookie:x", "/%0d%0aSet-Cookie:x"),  # stays a (harmless) local path
    ("/\r\nSet-Cookie: x=1", "/"),
    ("/login?next=//evil", "/"),
    ("", "/"),
    (None, "/"),
    ("/" + "a" * 3000, "/"),
])
def test_next_is_a_local_path_only(wanted: str | None, safe: str) -> None:
    assert safe_next(wanted) == safe


def test_no_open_redirect_through_the_login(client: TestClient[Any]) -> None:
    page = client.get("/login", params={"next": "//evil.example/x"})
    assert page.status_code == 200 and 'data-next="/"' in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "evil" not in page.text
    for target in ("https://evil.example/", "//evil.example", "/\\evil.example"):
        response = login(client, ALICE, target)
        assert response.json()["next"] == "/", target
    assert login(client, ALICE, "/jobs?x=1").json()["next"] == "/jobs?x=1"
    # With a live session, /login forwards, to a local path only.
    forwarded = client.get("/login", params={"next": "//evil.example"}, follow_redirects=False)
    assert forwarded.status_code == 303 and forwarded.headers["location"] == "/"


def test_pages_without_a_session_go_to_the_login_and_the_api_answers_401(
    client: TestClient[Any]
) -> None:
    page = client.get("/jobs", params={"a": "1"}, headers=PAGE, follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=/jobs%3Fa%3D1"
    api = client.get("/api/recordings", headers=PAGE)
    assert api.status_code == 401 and api.headers["www-authenticate"].startswith("Basic")
    # A browser whose session ended gets no Basic dialog.
    client.cookies.set(SESSION_COOKIE, "ended-session")
    stale = client.get("/api/recordings")
    assert stale.status_code == 401 and "www-authenticate" not in stale.headers
    assert client.get("/login").status_code == 200  # public
    # curl without credentials still gets the challenge (no cookie, not a page load).
    client.cookies.clear()
    assert client.get("/jobs").headers["www-authenticate"].startswith("Basic")


def test_session_logins_share_the_address_throttle_with_basic(
    client: TestClient[Any], audit: list[AuditDraft]
) -> None:
    for _ in range(BURST):
        assert login(client, ("alice", "guess")).status_code == 401
    throttled = login(client, ALICE)  # even the right password: nothing is computed
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
    assert client.get("/api/recordings", auth=ADMIN).status_code == 429
    assert audit[-1].action == "login_failed" and audit[-1].outcome == "denied"


def test_logout_ends_the_session_and_clears_the_cookie(
    client: TestClient[Any], audit: list[AuditDraft]
) -> None:
    session_id = login(client, ALICE).cookies[SESSION_COOKIE]
    response = client.post("/logout", json={}, headers={"Origin": OWN})
    assert response.status_code == 200 and response.json()["logged_out"] is True
    assert 'Max-Age=0' in set_cookie(response) or "max-age=0" in set_cookie(response).lower()
    client.cookies.set(SESSION_COOKIE, session_id)  # replayed after logout
    assert client.get("/api/account").status_code == 401
    assert audit[-1].action == "logout" and audit[-1].actor == "alice"


def test_idle_sessions_expire(client: TestClient[Any]) -> None:
    store = client.app.state["web"].auth.sessions
    now = [1_000_000.0]
    store.clock = lambda: now[0]
    login(client, ALICE)
    now[0] += store.idle_s - 10
    assert client.get("/api/account").status_code == 200
    now[0] += store.idle_s - 10  # active in between: still alive
    assert client.get("/api/account").status_code == 200
    now[0] += store.idle_s + 1
    assert client.get("/api/account").status_code == 401


def test_a_disabled_user_loses_sessions_basic_and_tokens(client: TestClient[Any]) -> None:
    login(client, ALICE)
    token = client.post("/api/account/tokens", json={"name": "ci"},
                        headers={"Origin": OWN}).json()["token"]
    assert client.get("/api/account", headers={"Authorization": f"Bearer {token}"}
                      ).status_code == 200
    alice_cookie = client.cookies[SESSION_COOKIE]
    client.cookies.clear()
    response = client.post("/api/users", auth=ADMIN, json={
        "username": "alice", "extensions": ["1001"], "disabled": True})
    assert response.status_code == 200 and response.json()["disabled"] is True
    client.cookies.set(SESSION_COOKIE, alice_cookie)
    assert client.get("/api/account").status_code == 401
    client.cookies.clear()
    assert client.get("/api/account", auth=ALICE).status_code == 401
    assert client.get("/api/account", headers={"Authorization": f"Bearer {token}"}
                      ).status_code == 401
    assert login(client, ALICE).status_code == 401


def test_password_change_needs_the_current_one_and_ends_the_other_sessions(
    client: TestClient[Any], backend: Users, audit: list[AuditDraft]
) -> None:
    other = login(client, ALICE).cookies[SESSION_COOKIE]  # another browser
    client.cookies.clear()
    mine = login(client, ALICE).cookies[SESSION_COOKIE]
    wrong = client.put("/api/account/password", headers={"Origin": OWN},
                       json={"current_password": "nope-nope", "new_password": "new-alice-pw"})
    assert wrong.status_code == 403
    short = client.put("/api/account/password", headers={"Origin": OWN},
                       json={"current_password": ALICE[1], "new_password": "short"})
    assert short.status_code == 400
    changed = client.put("/api/account/password", headers={"Origin": OWN},
                         json={"current_password": ALICE[1], "new_password": "new-alice-pw"})
    assert changed.status_code == 200, changed.text
    renewed = changed.cookies[SESSION_COOKIE]
    assert renewed not in (mine, other)
    assert client.get("/api/account").status_code == 200  # this browser goes on
    for old in (mine, other):
        client.cookies.clear()
        client.cookies.set(SESSION_COOKIE, old)
        assert client.get("/api/account").status_code == 401
    client.cookies.clear()
    assert client.get("/api/account", auth=ALICE).status_code == 401
    assert client.get("/api/account", auth=("alice", "new-alice-pw")).status_code == 200
    assert "password_change" in [a.action for a in audit]
    published = backend.user_events[-1]
    assert published.username == "alice" and published.extensions == ["1001"]


def test_api_tokens_work_on_the_api_until_revoked(
    client: TestClient[Any], backend: Users, audit: list[AuditDraft]
) -> None:
    created = client.post("/api/account/tokens", auth=ALICE,
                          json={"name": "integration", "expires_in_days": 30})
    assert created.status_code == 201, created.text
    token, token_id = created.json()["token"], created.json()["token_id"]
    assert token not in str([e.model_dump_json() for e in backend.user_events])
    bearer = {"Authorization": f"Bearer {token}"}
    listed = client.get("/api/recordings", headers=bearer)
    assert listed.status_code == 200
    assert [i["recording_id"] for i in listed.json()["items"]] == ["rec1"]
    assert client.get("/api/recordings/rec3", headers=bearer).status_code == 404
    tokens = client.get("/api/account/tokens", headers=bearer).json()["items"]
    assert [t["token_id"] for t in tokens] == [token_id] and "token" not in tokens[0]
    # A token cannot mint tokens or change the password.
    assert client.post("/api/account/tokens", headers=bearer,
                       json={"name": "more"}).status_code == 403
    assert client.put("/api/account/password", headers=bearer, json={
        "current_password": ALICE[1], "new_password": "x" * 12}).status_code == 403
    # Nobody else can revoke it (their id space does not contain it).
    assert client.delete(f"/api/account/tokens/{token_id}", auth=BOB).status_code == 404
    bad = client.get("/api/recordings", headers={"Authorization": f"Bearer {token}x"})
    assert bad.status_code == 401
    assert client.delete(f"/api/account/tokens/{token_id}", auth=ALICE).status_code == 204
    assert client.get("/api/recordings", headers=bearer).status_code == 401
    trail = [(a.action, a.actor, a.target) for a in audit if a.action.startswith("token")]
    assert trail == [("token_created", "alice", token_id), ("token_revoked", "alice", token_id)]


# --------------------------------------------------------------------------- roles


def test_visibility_by_role(client: TestClient[Any], backend: Users) -> None:
    def ids(who: tuple[str, str]) -> set[str]:
        response = client.get("/api/recordings", auth=who)
        assert response.status_code == 200
        return {i["recording_id"] for i in response.json()["items"]}

    assert ids(ALICE) == {"rec1"}
    assert ids(SUP) == {"rec3"}  # bob's (group support), not alice's
    assert ids(ADMIN) == {"rec1", "rec2", "rec3"}
    assert client.get("/api/recordings/rec3", auth=SUP).status_code == 200
    assert client.get("/api/recordings/rec1", auth=SUP).status_code == 404


def test_principals_by_role(backend: Users) -> None:
    users = backend.users
    alice, sup, admin = (principal_of(users.users[n], users) for n in ("alice", "sup", "admin"))
    assert alice.visible_numbers() == ["1001"] and alice.may_see(["1001", "9"])
    assert not alice.may_annotate()  # a plain user reads, never annotates
    assert sup.visible_numbers() == ["1500", "1002"]
    assert sup.may_annotate() and sup.may_see(["1002"]) and not sup.may_see(["1001"])
    assert not sup.may_see(["1001"]) and sup.at_least("supervisor") and not sup.admin
    assert admin.visible_numbers() is None and admin.may_annotate()


def test_role_guards_refuse_before_the_body(client: TestClient[Any]) -> None:
    for who in (ALICE, SUP):
        assert client.get("/api/users", auth=who).status_code == 403
        assert client.get("/api/groups", auth=who).status_code == 403
        assert client.get("/users", auth=who).status_code == 403
        response = client.post("/api/users", auth=who, content=b"{not json",
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 403  # not 400: the body was never read
    assert client.get("/users", auth=ADMIN).status_code == 200
    assert client.get("/account", auth=ALICE).status_code == 200


def test_the_web_applies_the_shared_user_rules(client: TestClient[Any]) -> None:
    conflict = client.post("/api/users", auth=ADMIN,
                           json={"username": "carol", "extensions": ["1001"]})
    assert conflict.status_code == 409 and "belongs to alice" in conflict.json()["detail"]
    demote = client.post("/api/users", auth=ADMIN, json={"username": "admin", "role": "user"})
    assert demote.status_code == 409 and "last administrator" in demote.json()["detail"]
    disable = client.post("/api/users", auth=ADMIN,
                          json={"username": "admin", "role": "admin", "disabled": True})
    assert disable.status_code == 409
    unknown = client.post("/api/users", auth=ADMIN, json={
        "username": "lead", "role": "supervisor", "supervises": ["nobody"]})
    assert unknown.status_code == 400 and "unknown group" in unknown.json()["detail"]
    assert client.delete("/api/users/admin", auth=ADMIN).status_code == 409
    assert client.delete("/api/users/ghost", auth=ADMIN).status_code == 404
    made = client.post("/api/users", auth=ADMIN, json={
        "username": "lead", "role": "supervisor", "supervises": ["support"],
        "password": "lead-password"})
    assert made.status_code == 201, made.text
    assert made.json()["role"] == "supervisor" and made.json()["admin"] is False
    groups = {g["name"]: g for g in client.get("/api/groups", auth=ADMIN).json()["items"]}
    assert groups["support"] == {"name": "support", "members": ["bob"],
                                 "supervisors": ["lead", "sup"]}
    legacy = client.post("/api/users", auth=ADMIN, json={
        "username": "ops", "admin": True, "password": "ops-password"})
    assert legacy.status_code == 201 and legacy.json()["role"] == "admin"


def test_the_openapi_document_needs_a_login(client: TestClient[Any]) -> None:
    assert client.get("/schema").status_code == 401
    schema = client.get("/schema", auth=ALICE)
    assert schema.status_code == 200, schema.text
    paths = schema.json()["paths"]
    assert "/api/recordings" in paths and "/api/account/tokens" in paths
    assert client.get("/schema/openapi.json", auth=ALICE).json()["paths"] == paths
