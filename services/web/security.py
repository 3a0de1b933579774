"""What keeps a browser from being turned against the node: same-origin and JSON-only
state changes, authentication before any body is read, and security headers.

A browser holding cached Basic credentials sends them with any request a foreign page
makes it send (a form POST, an `<img>`, a `fetch` with `mode: "no-cors"`). Such a
request always carries `Origin` or `Sec-Fetch-Site` (every current browser sends one
on a cross-site POST), and it can only have a CORS-"simple" content type (form or
text/plain) unless the node agreed to a preflight, which it never does. So a
state-changing request is accepted only if both hold:

- the body, if any, is `application/json` (415 otherwise);
- `Sec-Fetch-Site`, if present, is `same-origin` or `none` (a user's own navigation),
  and `Origin`, if present, is exactly the node's own origin: scheme (the one the
  request arrived on), host and port from the `Host` header (403 otherwise).

API clients (curl, httpx, the CLI) send neither header and keep working with Basic
auth or an API token. The rules are pure functions over headers; the guards are thin
adapters. The same rules cover the login itself (login CSRF: a foreign page cannot
sign a browser in as the attacker) since the login page posts JSON.

Who may call what is decided here too, before any body is read: `login_guard` (every
non-public route) finds the caller (Basic, Bearer token or session cookie), and
`role_at_least(role)` on a controller or route refuses lesser roles with 403. A browser
navigating to a page without a session is sent to `/login?next=...`; an API call gets
401, with the Basic challenge only when it brought no session cookie (so a browser
whose session ended does not pop up a password dialog).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import structlog
from litestar.connection import ASGIConnection
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard, Message, Scope

from callrec.jobspec import MAX_BODY
from callrec.metrics import Counter
from contracts.v1.events import Role

from .auth import REALM, Authenticator, LoginThrottled, Principal

log = structlog.get_logger(component="web")

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})
JSON_MEDIA_TYPE = "application/json"
DEFAULT_PORTS = {"http": 80, "https": 443}
PUBLIC = "public"  # handler opt: served without authentication (health, metrics, static)
SESSION_COOKIE = "callrec_session"
MAX_NEXT_LEN = 2000
PRINCIPAL = "principal"  # where the login guard leaves who is calling (request state)
MAX_BODY_BYTES = MAX_BODY  # JSON API bodies; larger ones are 413 while streaming in

# Every page is same-origin only: scripts and styles from /static, audio from the API,
# no inline script or style, no framing, forms only to ourselves.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Audio and JSON cannot be embedded by another site's <audio>/<img>/<script>.
    "Cross-Origin-Resource-Policy": "same-origin",
}
# Recordings and API answers never land in a browser's or proxy's cache.
DEFAULT_CACHE_CONTROL = "no-store"

RefusalReason = Literal["cross_site", "cross_origin", "content_type"]


@dataclass(frozen=True)
class Refusal:
    status: Literal[403, 415]
    reason: RefusalReason
    detail: str


def normalized_origin(scheme: str, authority: str) -> str | None:
    """`scheme://host[:port]`, lowercase, default port dropped; None if malformed."""
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS or not authority or "@" in authority:
        return None
    try:
        parts = urlsplit(f"{scheme}://{authority}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.path or parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_header(value: str) -> str | None:
    """The `Origin` header normalised like our own origin; None for `null` or junk."""
    scheme, sep, rest = value.strip().partition("://")
    if not sep:
        return None
    return normalized_origin(scheme, rest)


def check_state_change(method: str, headers: Mapping[str, str], scheme: str) -> Refusal | None:
    """Why this request may not change anything (None: it may). Headers are lowercase."""
    if method.upper() not in UNSAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ALLOWED_FETCH_SITES:
        return Refusal(403, "cross_site",
                       f"cross-site request refused (Sec-Fetch-Site: {site.strip()[:32]})")
    origin = headers.get("origin")
    if origin is not None:
        own = normalized_origin(scheme, headers.get("host", ""))
        theirs = origin_header(origin)
        if own is None or theirs != own:
            return Refusal(403, "cross_origin",
                           f"cross-origin request refused (Origin: {origin.strip()[:100]})")
    content_type = headers.get("content-type")
    has_body = headers.get("content-length", "0").strip() not in ("", "0") or (
        "transfer-encoding" in headers)
    if content_type is not None or has_body:
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        if media_type != JSON_MEDIA_TYPE:
            return Refusal(415, "content_type",
                           "state-changing requests take a JSON body "
                           "(Content-Type: application/json) or none")
    return None


class _HasSecurity(Protocol):
    auth: Authenticator
    csrf_refused: Counter


def _web(connection: ASGIConnection[Any, Any, Any, Any]) -> _HasSecurity:
    web: _HasSecurity = connection.app.state["web"]
    return web


def _client_host(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    return connection.client.host if connection.client else None


async def same_origin_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Refuse cross-site state changes before authentication and before any body."""
    scope = connection.scope
    refusal = check_state_change(str(scope.get("method", "GET")), connection.headers,
                                 str(scope.get("scheme", "http")))
    if refusal is None:
        return
    _web(connection).csrf_refused.inc(reason=refusal.reason)
    log.warning("state_change_refused", reason=refusal.reason, path=connection.url.path,
                source=_client_host(connection), origin=connection.headers.get("origin"),
                fetch_site=connection.headers.get("sec-fetch-site"))
    raise HTTPException(status_code=refusal.status, detail=refusal.detail)


def challenge() -> NotAuthorizedException:
    return NotAuthorizedException(
        detail="authentication required",
        headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
    )


async def login_guard(connection: ASGIConnection[Any, Any, Any, Any],
                      handler: BaseRouteHandler) -> None:
    """Authenticate every non-public route (and check the admin role where the route
    needs it) before its body is read or validated."""
    if handler.opt.get(PUBLIC):
        return
    await authenticate(connection)


def role_at_least(role: Role) -> Guard:
    """A guard for a controller or route: callers below `role` get 403 (after the
    login guard found who they are, before any body is read)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = await authenticate(connection)
        if not principal.at_least(role):
            raise PermissionDeniedException(detail=f"{role} role required")

    guard.__name__ = f"role_at_least_{role}"
    return guard


ADMIN = role_at_least("admin")
"""The guard of everything only an administrator may do (delete, hold, users, jobs,
audit, missed calls); like the login guard, it refuses before any body is read."""
SUPERVISOR = role_at_least("supervisor")


class LoginRequired(Exception):
    """A browser asked for a page without a session: send it to the login page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def safe_next(value: str | None) -> str:
    """Where to go after the login: a local path only (no scheme, no host, no `//`,
    no backslash or control character, which browsers read as another host)."""
    if not value or len(value) > MAX_NEXT_LEN or not value.startswith("/"):
        return "/"
    if value.startswith(("//", "/\\")) or "\\" in value:
        return "/"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or parts.path.startswith(("/login", "/logout")):
        return "/"
    return value


def login_url(next_path: str) -> str:
    return "/login?next=" + quote(safe_next(next_path), safe="/")


def _is_navigation(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """A browser loading a page (not a script's fetch, not an API client)."""
    if str(connection.scope.get("method", "GET")) not in ("GET", "HEAD"):
        return False
    if connection.url.path.startswith("/api/"):
        return False
    dest = connection.headers.get("sec-fetch-dest")
    if dest is not None:
        return dest == "document"
    return "text/html" in connection.headers.get("accept", "")


def _unauthenticated(connection: ASGIConnection[Any, Any, Any, Any]) -> Exception:
    if _is_navigation(connection):
        query = connection.url.query
        return LoginRequired(connection.url.path + (f"?{query}" if query else ""))
    if SESSION_COOKIE in connection.cookies:
        return NotAuthorizedException(detail="session expired or ended: log in again")
    return challenge()


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The caller, from the request state if a guard already checked; else from the
    Authorization header (Basic or Bearer) or the session cookie; 401/429 if none."""
    known = connection.state.get(PRINCIPAL)
    if isinstance(known, Principal):
        return known
    auth = _web(connection).auth
    header = connection.headers.get("authorization")
    principal: Principal | None
    try:
        if header is not None and header.strip().lower().startswith("bearer "):
            principal = await auth.bearer(header, _client_host(connection))
        elif header is not None:
            principal = await auth.authenticate(header, _client_host(connection))
        else:
            principal = auth.session(connection.cookies.get(SESSION_COOKIE))
    except LoginThrottled as exc:
        raise throttled(exc) from None
    if principal is None:
        if header is not None:
            raise challenge()
        raise _unauthenticated(connection)
    connection.state[PRINCIPAL] = principal
    return principal


def throttled(exc: LoginThrottled) -> HTTPException:
    return HTTPException(
        status_code=429,
        detail="too many failed logins from your address; retry later",
        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
    )


async def add_security_headers(message: Message, scope: Scope) -> None:
    """before_send hook: the headers above on every response, pages, API and errors."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in SECURITY_HEADERS.items():
        headers[name] = value
    if headers.get("cache-control") is None:
        headers["Cache-Control"] = DEFAULT_CACHE_CONTROL
