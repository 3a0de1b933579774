"""Users and groups (administrators only): list, create or change, disable, reset a
password, remove; groups as the users state them. The rules are `callrec.usercommands`',
the same the CLI applies; this module only translates HTTP to them and back."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import Template
from litestar.types import ControllerRouterHandler

from callrec.usercommands import (
    SaveUser,
    UserRuleError,
    check_password,
    remove_user,
    save_user,
)
from callrec.users import User, UsersProjection

from .account import rule_error
from .audit_http import AUDIT
from .audit_log import AuditDraft
from .pages import page
from .security import ADMIN, authenticate
from .state import web_state
from .validation import UserInput

log = structlog.get_logger(component="web")


def user_json(user: User) -> dict[str, Any]:
    return {
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "admin": user.admin,
        "extensions": list(user.extensions),
        "record": user.record,
        "groups": list(user.groups),
        "supervises": list(user.supervises),
        "disabled": user.disabled,
        "has_password": bool(user.password_hash),
    }


def groups_json(users: UsersProjection) -> list[dict[str, Any]]:
    return [{"name": g.name, "members": list(g.members), "supervisors": list(g.supervisors)}
            for g in users.groups().values()]


class UsersController(Controller):
    path = "/api"
    guards = (ADMIN,)

    @get("/users")
    async def list_users(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        users = web_state(request).backend.users
        return {"items": [user_json(users.users[name]) for name in sorted(users.users)]}

    @get("/groups")
    async def list_groups(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        return {"items": groups_json(web_state(request).backend.users)}

    @post("/users", opt={AUDIT: "user_change"})
    async def upsert_user(
        self, request: Request[Any, Any, Any], data: JSONBody[UserInput]
    ) -> Response[Any]:
        """The user's whole new state; without `password` the current one is kept.
        `role` wins over the older `admin` flag (`admin: true` alone means role admin)."""
        web = web_state(request)
        principal = await authenticate(request)
        users = web.backend.users
        existing = users.users.get(data.username)
        role = data.role or ("admin" if data.admin else "user")
        try:
            password_hash = (await web.auth.hash_password(check_password(data.password))
                             if data.password is not None else None)
        except UserRuleError as exc:
            raise rule_error(exc) from None
        command = SaveUser(
            username=data.username, role=role, display_name=data.display_name,
            extensions=tuple(data.extensions), record=data.record, groups=tuple(data.groups),
            supervises=tuple(data.supervises), disabled=data.disabled,
            password_hash=password_hash)
        try:
            event = save_user(users, command, web.backend.node_id)
        except UserRuleError as exc:
            raise rule_error(exc) from None
        await web.backend.publish_user_event(event)
        rights = ("role", "extensions", "groups", "supervises", "disabled")
        before = user_json(existing) if existing else {}
        changed = [k for k in rights if before.get(k) != getattr(event, k)]
        if changed:  # what the user may see or do: its own entry, beyond "user_change"
            await web.auth.audit_event(AuditDraft(
                action="permission_change", actor=principal.username, target=data.username,
                source_address=request.client.host if request.client else None,
                detail={k: str(getattr(event, k))[:200] for k in changed}))
        if password_hash is not None or data.disabled:
            # Their sessions end anyway (stamp or disabled); drop them here at once.
            web.auth.sessions.end_user(data.username)
        log.info("user_upserted", username=data.username, by=principal.username, role=role,
                 disabled=data.disabled, password_reset=password_hash is not None)
        saved = users.users.get(data.username)
        body = user_json(saved) if saved else {"username": data.username, "pending": True}
        return Response(content=body, status_code=200 if existing else 201)

    @delete("/users/{username:str}", status_code=204, opt={AUDIT: "user_change"})
    async def remove_user(self, request: Request[Any, Any, Any], username: FromPath[str]) -> None:
        web = web_state(request)
        principal = await authenticate(request)
        try:
            event = remove_user(web.backend.users, username, web.backend.node_id)
        except UserRuleError as exc:
            raise rule_error(exc) from None
        await web.backend.publish_user_event(event)
        web.auth.sessions.end_user(username)
        log.info("user_removed", username=username, by=principal.username)


@get("/users", guards=[ADMIN], include_in_schema=False)
async def users_page(request: Request[Any, Any, Any]) -> Template:
    """Users and groups; the script (/static/users.js) uses the API above."""
    return page("users", request, await authenticate(request))


USERS: list[ControllerRouterHandler] = [UsersController, users_page]
