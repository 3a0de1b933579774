"""The web's defences over a fake backend: cross-site state changes, authentication
before any body, body limits, security headers, login throttling and the legal-hold
refusal. Each attack is tried and must fail while the legitimate request still works."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from callrec.metrics import Registry
from callrec.store import open_store
from callrec.users import UsersProjection
from contracts.v1.events import (
    EventBase,
    LegalHoldChanged,
    RecordingPurged,
    UserRemoved,
    UserUpserted,
)
from services.web.app import create_app
from services.web.auth import Authenticator, LoginThrottled
from services.web.security import CSP, check_state_change, normalized_origin
from services.web.throttle import BURST, LoginThrottle, address_key
from tests.unit.test_web_jobs_api import ADMIN, ALICE, EXPORT, FakeBackend

OWN = "http://testserver.local"  # the TestClient's base URL: Host is testserver.local
EVIL = "http://evil.example"
NEW_ADMIN = {"username": "mallory", "password": "mallory-pw-1", "admin": True}


class Backend(FakeBackend):
    """The fake plus user changes, purges and holds, all recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.user_events: list[UserUpserted | UserRemoved] = []
        self.purges: list[RecordingPurged] = []

    async def publish_user_event(self, event: UserUpserted | UserRemoved) -> None:
        self.user_events.append(event)
        self.users.apply(event, len(self.user_events) + 10)

    async def purge_recording(self, event: RecordingPurged) -> bool:
        self.purges.append(event)
        self.recordings.pop(event.recording_id, None)
        return True

    async def publish_event(self, event: EventBase) -> None:
        await super().publish_event(event)
        if isinstance(event, LegalHoldChanged):
            (self.held.add if event.hold else self.held.discard)(event.recording_id)


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def registry() -> Registry:
    return Registry("web", "n1")


@pytest.fixture
def client(backend: Backend, registry: Registry, tmp_path: Path) -> Iterator[TestClient[Any]]:
    app = create_app(backend, open_store(tmp_path), tmp_path, registry)
    app.state["web"].job_apply_wait_s = 0.2
    with TestClient(app=app) as test_client:
        yield test_client


def metric(registry: Registry, name: str, **labels: str) -> float:
    for line in registry.render().splitlines():
        if line.startswith(f"callrec_{name}{{") and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def nothing_changed(backend: Backend) -> bool:
    return not backend.user_events and not backend.published and not backend.purges


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(("scheme", "authority", "expected"), [
    ("http", "node:8080", "http://node:8080"),
    ("http", "NODE:80", "http://node"),
    ("https", "node:443", "https://node"),
    ("http", "[::1]:8080", "http://[::1]:8080"),
    ("http", "node:99999", None),
    ("http", "user@node", None),
    ("http", "node/path", None),
    ("ftp", "node", None),
    ("http", "", None),
])
def test_origins_are_normalised(scheme: str, authority: str, expected: str | None) -> None:
    assert normalized_origin(scheme, authority) == expected


@pytest.mark.parametrize(("headers", "reason"), [
    ({"origin": EVIL, "content-type": "text/plain"}, "cross_origin"),
    ({"origin": "http://node:8081", "content-type": "application/json"}, "cross_origin"),
    ({"origin": "https://node:8080", "content-type": "application/json"}, "cross_origin"),
    ({"origin": "null", "content-type": "application/json"}, "cross_origin"),
    ({"sec-fetch-site": "cross-site", "content-type": "application/json"}, "cross_site"),
    ({"sec-fetch-site": "same-site", "content-type": "application/json"}, "cross_site"),
    ({"content-type": "text/plain", "content-length": "5"}, "content_type"),
    ({"content-type": "application/x-www-form-urlencoded"}, "content_type"),
    ({"content-type": "multipart/form-data; boundary=x"}, "content_type"),
    ({"content-length": "12"}, "content_type"),
    ({"transfer-encoding": "chunked"}, "content_type"),
    ({"content-type": "application/jsonx"}, "content_type"),
])
def test_cross_site_or_non_json_state_changes_are_refused(
    headers: dict[str, str], reason: str
) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        refusal = check_state_change(method, {"host": "node:8080", **headers}, "http")
        assert refusal is not None and refusal.reason == reason, (method, headers)
        assert refusal.status == (415 if reason == "content_type" else 403)


@pytest.mark.parametrize("headers", [
    {},  # curl / httpx / the CLI without a body
    {"content-type": "application/json", "content-length": "2"},  # an API client
    {"content-type": "Application/JSON; charset=utf-8", "content-length": "2"},
    {"origin": "http://node:8080", "content-type": "application/json"},
    {"origin": "http://NODE:8080", "sec-fetch-site": "same-origin",
     "content-type": "application/json"},
    {"sec-fetch-site": "none"},
    {"content-length": "0"},
])
def test_same_origin_json_state_changes_pass(headers: dict[str, str]) -> None:
    assert check_state_change("POST", {"host": "node:8080", **headers}, "http") is None


def test_safe_methods_are_never_refused() -> None:
    for method in ("GET", "HEAD", "OPTIONS"):
        assert check_state_change(method, {"host": "n", "origin": EVIL,
                                           "sec-fetch-site": "cross-site",
                                           "content-type": "text/plain"}, "http") is None


# --------------------------------------------------------------------------- CSRF over HTTP


def test_cross_origin_text_plain_post_creates_no_admin(
    client: TestClient[Any], backend: Backend, registry: Registry
) -> None:
    """The classic attack: a form with enctype=text/plain whose body is JSON, sent by a
    browser that holds the admin's Basic credentials."""
    body = '{"username": "mallory", "password": "mallory-pw-1", "admin": true, "x": "="}'
    for extra in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"},
                  {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}):
        response = client.post("/api/users", content=body, auth=ADMIN,
                               headers={"Content-Type": "text/plain", **extra})
        assert response.status_code == 403, response.text
        assert "cross-" in response.json()["detail"]
    assert nothing_changed(backend) and "mallory" not in backend.users.users
    assert metric(registry, "web_csrf_refused_total", reason="cross_origin") == 1
    assert metric(registry, "web_csrf_refused_total", reason="cross_site") == 2


def test_cross_origin_form_post_creates_no_purge_job(
    client: TestClient[Any], backend: Backend
) -> None:
    form = {"name": "evil", "kind": "purge", "schedule": '{"interval_s": 1}'}
    for extra in ({"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
        response = client.post("/api/jobs", data=form, auth=ADMIN, headers=extra)
        assert response.status_code == 403, response.text
    # Same-site is not same-origin: another port on the node's host is a stranger too.
    response = client.post("/api/jobs", json=EXPORT, auth=ADMIN,
                           headers={"Origin": "http://testserver.local:8081",
                                    "Sec-Fetch-Site": "same-site"})
    assert response.status_code == 403
    for path, method in (("/api/recordings/rec1", "DELETE"), ("/api/users/alice", "DELETE"),
                         ("/api/recordings/rec1/hold", "PUT")):
        response = client.request(method, path, auth=ADMIN, headers={"Origin": EVIL})
        assert response.status_code == 403, (path, response.text)
    assert nothing_changed(backend) and backend.jobs == {}
    assert "rec1" in backend.recordings and "alice" in backend.users.users


def test_non_json_bodies_are_refused_even_without_an_origin(
    client: TestClient[Any], backend: Backend, registry: Registry
) -> None:
    response = client.post("/api/users", content=b'{"username": "x"}', auth=ADMIN,
                           headers={"Content-Type": "text/plain"})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    assert client.post("/api/jobs", data={"name": "x"}, auth=ADMIN).status_code == 415
    assert nothing_changed(backend)
    assert metric(registry, "web_csrf_refused_total", reason="content_type") == 2


def test_legitimate_clients_still_change_things(
    client: TestClient[Any], backend: Backend
) -> None:
    """curl-like JSON with Basic auth, and the dashboard's same-origin fetch."""
    assert client.post("/api/users", json=NEW_ADMIN, auth=ADMIN).status_code == 201
    response = client.post("/api/jobs", json=EXPORT, auth=ADMIN,
                           headers={"Origin": OWN, "Sec-Fetch-Site": "same-origin"})
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    # Bodiless state changes (what the dashboard's pause and delete buttons send).
    for path in (f"/api/jobs/{job_id}/pause", f"/api/jobs/{job_id}/resume"):
        assert client.post(path, auth=ADMIN, headers={"Origin": OWN}).status_code == 200
    assert client.put("/api/recordings/rec1/hold", auth=ADMIN).status_code == 200
    assert client.delete(f"/api/jobs/{job_id}", auth=ADMIN,
                         headers={"Origin": OWN}).status_code == 200
    assert "mallory" in backend.users.users


# --------------------------------------------------------------------------- auth before body


def asgi_post(app: Any, path: str, headers: list[tuple[bytes, bytes]],
              body: bytes) -> tuple[int, int]:
    """(status, how many times the app asked for the body) for one raw ASGI request."""
    reads = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.9", 5000),
             "server": ("127.0.0.1", 8080),
             "headers": [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), *headers]}

    async def run() -> None:
        async with app.lifespan():  # type: ignore[attr-defined]
            await app(scope, receive, send)

    asyncio.run(run())
    return status, reads


def test_unauthenticated_bodies_are_never_read(backend: Backend, tmp_path: Path) -> None:
    app = create_app(backend, open_store(tmp_path), tmp_path)
    body = b'{"username": "mallory", "password": "mallory-pw-1", "admin": true}'
    for path in ("/api/users", "/api/jobs"):
        assert asgi_post(app, path, [], body) == (401, 0), path
        wrong = b"Basic " + base64.b64encode(b"admin:wrong")
        assert asgi_post(app, path, [(b"authorization", wrong)], body) == (401, 0), path
    # Authenticated but not an admin: refused before the body too.
    alice = b"Basic " + base64.b64encode(b"alice:alice-pw")
    assert asgi_post(app, "/api/users", [(b"authorization", alice)], body) == (403, 0)
    admin = b"Basic " + base64.b64encode(b"admin:admin-pw")
    status, reads = asgi_post(app, "/api/users", [(b"authorization", admin)], body)
    assert status == 201 and reads >= 1
    assert [e.username for e in backend.user_events] == ["mallory"]


def test_unauthenticated_garbage_is_401_not_a_validation_error(
    client: TestClient[Any],
) -> None:
    for body in (b"not json", b"{", b'{"username": 5}', b"x" * 200_000):
        response = client.post("/api/users", content=body,
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 401, (body[:10], response.text)
        assert response.headers["www-authenticate"].startswith('Basic realm="callrec"')


def test_bodies_are_limited(client: TestClient[Any], backend: Backend) -> None:
    big = {**NEW_ADMIN, "display_name": "x" * 70_000}
    assert client.post("/api/users", json=big, auth=ADMIN).status_code == 413
    assert client.post("/api/jobs", json={**EXPORT, "name": "x" * 70_000},
                       auth=ADMIN).status_code == 413
    assert client.put("/api/recordings/rec1/hold", json={"reason": "x" * 70_000},
                      auth=ADMIN).status_code == 413
    assert nothing_changed(backend)


# --------------------------------------------------------------------------- headers


def test_security_headers_on_every_page_api_and_error(
    client: TestClient[Any], tmp_path: Path
) -> None:
    source = tmp_path / "audio.ogg"
    source.write_bytes(b"OggS" + b"\0" * 100)
    open_store(tmp_path).put_file("rec1.opus", source)
    requests = [
        ("/", ADMIN), ("/cluster", ADMIN), ("/jobs", ADMIN), ("/jobs", ALICE),
        ("/api/recordings", ADMIN), ("/api/recordings/rec1", ADMIN),
        ("/api/recordings/rec1/audio", ADMIN), ("/api/jobs", ADMIN), ("/api/cluster", ADMIN),
        ("/api/users", ADMIN), ("/healthz", None), ("/metrics", None),
        ("/static/jobs.js", None), ("/static/jobs.css", None),
        ("/api/recordings", None),  # 401
        ("/api/users", ALICE),  # 403
        ("/no/such/page", ADMIN),  # 404
    ]
    for path, auth in requests:
        response = client.get(path, auth=auth)
        assert response.status_code < 500, (path, response.status_code)
        headers = response.headers
        assert headers["content-security-policy"] == CSP, path
        assert "frame-ancestors 'none'" in CSP and "default-src 'none'" in CSP
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer", path
        assert headers["cross-origin-resource-policy"] == "same-origin", path
        if path.startswith("/api/") or path in ("/", "/cluster", "/jobs"):
            assert headers["cache-control"] == "no-store", (path, headers["cache-control"])
    audio = client.get("/api/recordings/rec1/audio", auth=ADMIN)
    assert audio.status_code == 200 and audio.content.startswith(b"OggS")
    assert audio.headers["cache-control"] == "no-store"


def test_pages_have_no_inline_script_or_style(client: TestClient[Any]) -> None:
    for path in ("/", "/cluster", "/jobs"):
        page = client.get(path, auth=ADMIN).text
        assert "<script>" not in page and "<style" not in page and " style=" not in page, path


# --------------------------------------------------------------------------- legal hold


def test_delete_of_a_held_recording_is_409_until_released(
    client: TestClient[Any], backend: Backend
) -> None:
    assert client.put("/api/recordings/rec1/hold", json={"reason": "case 7"},
                      auth=ADMIN).status_code == 200
    assert client.get("/api/recordings/rec1", auth=ADMIN).json()["legal_hold"] is True
    response = client.delete("/api/recordings/rec1", auth=ADMIN)
    assert response.status_code == 409 and "legal hold" in response.json()["detail"]
    assert backend.purges == [] and "rec1" in backend.recordings
    assert client.delete("/api/recordings/rec1/hold", auth=ADMIN).status_code == 200
    response = client.delete("/api/recordings/rec1", auth=ADMIN)
    assert response.status_code == 202, response.text
    assert [p.recording_id for p in backend.purges] == ["rec1"]


# --------------------------------------------------------------------------- throttling


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_per_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(burst=3, refill_per_s=0.5, clock=clock)
    for _ in range(3):
        assert throttle.try_acquire("a") is None
    wait = throttle.try_acquire("a")
    assert wait is not None and wait == pytest.approx(2.0)
    assert throttle.try_acquire("b") is None  # another address is untouched
    clock.now += 2.0
    assert throttle.try_acquire("a") is None and throttle.try_acquire("a") is not None
    throttle.give_back("a")  # a success costs nothing
    assert throttle.try_acquire("a") is None


def test_throttle_memory_is_bounded() -> None:
    clock = Clock()
    throttle = LoginThrottle(burst=2, refill_per_s=1.0, clock=clock, max_addresses=100)
    for i in range(1000):
        throttle.try_acquire(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) <= 100


@pytest.mark.parametrize(("host", "key"), [
    ("127.0.0.2", "127.0.0.2"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:db8::ffff:1", "2001:db8::/64"),
    ("::ffff:10.1.2.3", "10.1.2.3"),
    (None, "unknown"),
    ("testclient", "testclient"),
])
def test_address_keys(host: str | None, key: str) -> None:
    assert address_key(host) == key


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class CountingUsers(UsersProjection):
    """The users projection, counting (and optionally slowing) password checks."""

    def __init__(self, source: UsersProjection, delay_s: float = 0.0) -> None:
        super().__init__()
        self.users = source.users
        self.by_extension = source.by_extension
        self.delay_s = delay_s
        self.checks = 0
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def authenticate(self, username: str, password: str) -> Any:
        with self._lock:
            self.checks += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(self.delay_s)
            return super().authenticate(username, password)
        finally:
            with self._lock:
                self.running -= 1


def test_failed_logins_throttle_the_address_before_any_hash() -> None:
    users = CountingUsers(FakeBackend().users)
    registry = Registry("web", "n1")
    auth = Authenticator(users, metrics=registry)

    async def scenario() -> None:
        for _ in range(BURST):
            assert await auth.authenticate(basic("admin", "guess"), "127.0.0.2") is None
        assert users.checks == BURST
        for password in ("guess", "admin-pw"):  # even the right password: no oracle
            with pytest.raises(LoginThrottled) as refused:
                await auth.authenticate(basic("admin", password), "127.0.0.2")
            assert 1 <= refused.value.retry_after_s <= 60 / BURST + 0.1
        assert users.checks == BURST  # no hash computed for refused attempts
        # The real admin at another address is neither refused nor locked out.
        principal = await auth.authenticate(basic("admin", "admin-pw"), "127.0.0.1")
        assert principal is not None and principal.admin
        # Cached credentials do not bypass the throttle of the flooding address either.
        with pytest.raises(LoginThrottled):
            await auth.authenticate(basic("admin", "admin-pw"), "127.0.0.2")
        # Successes give their token back: a user never throttles themself by logging in.
        for _ in range(3 * BURST):
            auth._cache.clear()
            assert await auth.authenticate(basic("alice", "alice-pw"), "127.0.0.3") is not None

    asyncio.run(scenario())
    assert metric(registry, "web_logins_failed_total") == BURST
    assert metric(registry, "web_logins_throttled_total") == 3


def test_password_checks_run_in_threads_at_most_four_at_once() -> None:
    users = CountingUsers(FakeBackend().users, delay_s=0.05)
    auth = Authenticator(users)

    async def scenario() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(*(
            auth.authenticate(basic("admin", f"bad{i}"), f"10.0.0.{i}") for i in range(16)))
        tick.cancel()
        assert results == [None] * 16
        assert ticks >= 5  # the event loop kept running while the checks ran

    asyncio.run(scenario())
    assert users.checks == 16 and users.max_running == 4


def test_login_flood_gets_429_with_retry_after(
    client: TestClient[Any], registry: Registry
) -> None:
    for _ in range(BURST):
        assert client.get("/api/recordings", auth=("admin", "nope")).status_code == 401
    response = client.get("/api/recordings", auth=("admin", "nope"))
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= 60
    # Requests without credentials just get the challenge (nothing computed, not counted).
    assert client.get("/api/recordings").status_code == 401
    assert metric(registry, "web_logins_failed_total") == BURST
    assert metric(registry, "web_logins_throttled_total") == 1
