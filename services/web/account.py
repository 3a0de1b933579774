"""Signing in and out, and one's own account: password and API tokens.

The login page posts JSON (`POST /login`), so the cross-site rules of `security.py`
cover it like any state change: a foreign page can neither sign a browser in nor out.
A login always opens a new session (a session id a browser brought is never promoted:
no fixation) and ends the one it had. The cookie is HttpOnly and SameSite=Lax, and
Secure when the request came over HTTPS; over plain HTTP (a site's LAN until HTTPS
comes) it is sent without Secure, or no browser would keep it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import structlog
from litestar import Controller, MediaType, Request, Response, delete, get, post, put
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template
from litestar.types import ControllerRouterHandler
from pydantic import BaseModel, ConfigDict, Field

from callrec.usercommands import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    UserRuleError,
    issue_token,
    revoke_token,
    set_password,
)
from callrec.users import User

from .audit_log import AuditDraft
from .auth import LoginThrottled, Principal
from .pages import NO_STORE, page
from .security import PUBLIC, SESSION_COOKIE, authenticate, safe_next, throttled
from .sessions import ABSOLUTE_S
from .state import WebState, read_body, web_state
from .throttle import address_key

log = structlog.get_logger(component="web")



class LoginInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)
    next: str | None = Field(default=None, max_length=2000)


class PasswordInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD)
    new_password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)


class TokenInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


def rule_error(exc: UserRuleError) -> HTTPException:
    status = {"invalid": 400, "conflict": 409, "not_found": 404}[exc.kind]
    return HTTPException(status_code=status, detail=str(exc))


def session_cookie(request: Request[Any, Any, Any], session_id: str) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=session_id, path="/", httponly=True,
                  samesite="lax", secure=request.url.scheme == "https",
                  max_age=int(ABSOLUTE_S))


def cleared_cookie(request: Request[Any, Any, Any]) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value="", path="/", httponly=True, samesite="lax",
                  secure=request.url.scheme == "https", max_age=0)


def _source(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


def _login_answer(request: Request[Any, Any, Any], web: WebState, user: User,
                  body: dict[str, Any], password_hash: str | None = None) -> Response[Any]:
    """End the session the browser brought (if any), open a new one, set its cookie.
    `password_hash`: the one just stored (the projection may not show it yet)."""
    web.auth.sessions.end(request.cookies.get(SESSION_COOKIE))
    session_id = web.auth.open_session(user, password_hash)
    return Response(content=body, headers=NO_STORE,
                    cookies=[session_cookie(request, session_id)])


@get("/login", opt={PUBLIC: True}, include_in_schema=False, media_type=MediaType.HTML)
async def login_page(
    request: Request[Any, Any, Any],
    next: Annotated[str | None, QueryParameter(max_length=2000)] = None,
) -> Any:
    """The login form; a browser with a live session goes straight on."""
    web = web_state(request)
    target = safe_next(next)
    if web.auth.session(request.cookies.get(SESSION_COOKIE)) is not None:
        return Redirect(path=target, status_code=303)
    return Template(template_name="login.html",
                    context={"page": "login", "principal": None,
                             "node_id": web.backend.node_id, "next": target},
                    headers=NO_STORE)


@post("/login", opt={PUBLIC: True}, status_code=200)
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    """`{"username", "password", "next"}` -> a session cookie, or 401 (429 when the
    address has used up its password checks, the same budget as Basic)."""
    web = web_state(request)
    data = await read_body(request, LoginInput)
    try:
        user = await web.auth.check_password(data.username, data.password, _source(request),
                                             via="session")
    except LoginThrottled as exc:
        raise throttled(exc) from None
    if user is None:
        raise NotAuthorizedException(detail="wrong username or password")
    log.info("login", username=user.username, source=address_key(_source(request)))
    return _login_answer(request, web, user, {"username": user.username, "role": user.role,
                                              "next": safe_next(data.next)})


@post("/logout", opt={PUBLIC: True}, status_code=200)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    """End this browser's session (if any) and clear its cookie."""
    web = web_state(request)
    principal = web.auth.session(request.cookies.get(SESSION_COOKIE))
    web.auth.sessions.end(request.cookies.get(SESSION_COOKIE))
    if principal is not None:
        await web.auth.audit_event(AuditDraft(action="logout", actor=principal.username,
                                              source_address=_source(request),
                                              detail={"method": "session"}))
        log.info("logout", username=principal.username)
    return Response(content={"logged_out": principal is not None}, headers=NO_STORE,
                    cookies=[cleared_cookie(request)])


@get("/account", include_in_schema=False)
async def account_page(request: Request[Any, Any, Any]) -> Template:
    return page("account", request, await authenticate(request))


def _token_json(token: Any) -> dict[str, Any]:
    return {"token_id": token.token_id, "name": token.name,
            "created_at": token.created_at.isoformat(),
            "expires_at": token.expires_at.isoformat() if token.expires_at else None}


def _no_token(principal: Principal, what: str) -> None:
    """An API token cannot mint more tokens or change the password: a leaked token
    must stay revocable and must not lock its owner out."""
    if principal.via == "token":
        raise PermissionDeniedException(detail=f"{what} needs a password login, not a token")


class AccountController(Controller):
    """Everyone's own account (any role)."""

    path = "/api/account"

    @get("/")
    async def me(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        web = web_state(request)
        principal = await authenticate(request)
        user = web.backend.users.users[principal.username]
        return {"username": user.username, "display_name": user.display_name,
                "role": user.role, "extensions": user.extensions, "groups": user.groups,
                "supervises": user.supervises, "via": principal.via}

    @put("/password", status_code=200)
    async def change_password(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """Needs the current password (throttled like a login). Every session of the
        user ends, on every node (their stamp no longer matches); this browser gets a
        new one."""
        web = web_state(request)
        principal = await authenticate(request)
        _no_token(principal, "changing the password")
        data = await read_body(request, PasswordInput)
        try:
            user = await web.auth.check_password(principal.username, data.current_password,
                                                 _source(request), via=principal.via,
                                                 audit_success=False)
        except LoginThrottled as exc:
            raise throttled(exc) from None
        if user is None:
            raise PermissionDeniedException(detail="the current password is wrong")
        new_hash = await web.auth.hash_password(data.new_password)
        try:
            event = set_password(web.backend.users, principal.username, new_hash,
                                 web.backend.node_id)
        except UserRuleError as exc:
            raise rule_error(exc) from None
        await web.backend.publish_user_event(event)
        ended = web.auth.sessions.end_user(principal.username)
        await web.auth.audit_event(AuditDraft(
            action="password_change", actor=principal.username, target=principal.username,
            source_address=_source(request),
            detail={"method": principal.via, "sessions_ended": ended}))
        log.info("password_changed", username=principal.username, sessions_ended=ended)
        if principal.via == "session":
            return _login_answer(request, web, user, {"changed": True}, new_hash)
        return Response(content={"changed": True}, headers=NO_STORE)

    @get("/tokens")
    async def list_tokens(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        web = web_state(request)
        principal = await authenticate(request)
        tokens = web.backend.users.tokens_of(principal.username)
        return {"items": [_token_json(t) for t in tokens]}

    @post("/tokens", status_code=201)
    async def create_token(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """The token is in this answer only; the node keeps its sha256."""
        web = web_state(request)
        principal = await authenticate(request)
        _no_token(principal, "creating a token")
        data = await read_body(request, TokenInput)
        expires = (datetime.now(UTC) + timedelta(days=data.expires_in_days)
                   if data.expires_in_days else None)
        try:
            token, event = issue_token(web.backend.users, principal.username, data.name,
                                       web.backend.node_id, expires)
        except UserRuleError as exc:
            raise rule_error(exc) from None
        await web.backend.publish_user_event(event)
        await web.auth.audit_event(AuditDraft(
            action="token_created", actor=principal.username, target=event.token_id,
            source_address=_source(request), detail={"name": event.name}))
        log.info("token_issued", username=principal.username, token_id=event.token_id)
        return Response(content={"token": token, "token_id": event.token_id,
                                 "name": event.name,
                                 "expires_at": expires.isoformat() if expires else None},
                        status_code=201, headers=NO_STORE)

    @delete("/tokens/{token_id:str}", status_code=204)
    async def delete_token(self, request: Request[Any, Any, Any],
                           token_id: FromPath[str]) -> None:
        web = web_state(request)
        principal = await authenticate(request)
        if len(token_id) > 64:
            raise HTTPException(status_code=404, detail="unknown token")
        try:
            event = revoke_token(web.backend.users, principal.username, token_id,
                                 principal.username, web.backend.node_id)
        except UserRuleError as exc:
            raise rule_error(exc) from None
        await web.backend.publish_user_event(event)
        await web.auth.audit_event(AuditDraft(
            action="token_revoked", actor=principal.username, target=token_id,
            source_address=_source(request), detail={"method": principal.via}))
        log.info("token_revoked", username=principal.username, token_id=token_id)


ACCOUNT: list[ControllerRouterHandler] = [
    login_page, login, logout, account_page, AccountController]
