"""Users: list, create or change, remove (administrators only)."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Controller, Request, Response, delete, get, post
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody

from contracts.v1.events import UserRemoved, UserUpserted

from .security import ADMIN_ONLY
from .state import WebState, web_state
from .validation import UserInput, valid_username

log = structlog.get_logger(component="web")


def _user_json(web: WebState, username: str) -> dict[str, Any]:
    user = web.backend.users.users[username]
    return {
        "username": user.username,
        "display_name": user.display_name,
        "admin": user.admin,
        "extensions": list(user.extensions),
        "record": user.record,
        "groups": list(user.groups),
        "has_password": bool(user.password_hash),
    }


def _other_admins(web: WebState, username: str) -> bool:
    return any(
        u.admin and u.password_hash and u.username != username
        for u in web.backend.users.users.values()
    )


class UsersController(Controller):
    path = "/api/users"

    @get("/", opt=ADMIN_ONLY)
    async def list_users(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        web = web_state(request)
        await web.require_admin(request)
        names = sorted(web.backend.users.users)
        return {"items": [_user_json(web, name) for name in names]}

    @post("/", opt=ADMIN_ONLY)
    async def upsert_user(
        self, request: Request[Any, Any, Any], data: JSONBody[UserInput]
    ) -> Response[Any]:
        web = web_state(request)
        principal = await web.require_admin(request)
        users = web.backend.users
        existing = users.users.get(data.username)
        for ext in data.extensions:
            owner = users.by_extension.get(ext)
            if owner is not None and owner != data.username:
                raise HTTPException(status_code=409, detail=f"extension {ext} belongs to {owner}")
        demoting = existing is not None and existing.admin and not data.admin
        if demoting and not _other_admins(web, data.username):
            raise HTTPException(status_code=409, detail="cannot demote the last administrator")
        if data.password is not None:
            password_hash: str | None = await web.auth.hash_password(data.password)
        else:
            password_hash = existing.password_hash if existing else None
        event = UserUpserted(
            node_id=web.backend.node_id,
            username=data.username,
            display_name=data.display_name,
            password_hash=password_hash,
            admin=data.admin,
            extensions=data.extensions,
            record=data.record,
            groups=data.groups,
        )
        await web.backend.publish_user_event(event)
        log.info("user_upserted", username=data.username, by=principal.username, admin=data.admin)
        body = (
            _user_json(web, data.username)
            if data.username in users.users
            else {"username": data.username, "pending": True}
        )
        return Response(content=body, status_code=200 if existing else 201)

    @delete("/{username:str}", status_code=204, opt=ADMIN_ONLY)
    async def remove_user(self, request: Request[Any, Any, Any], username: FromPath[str]) -> None:
        web = web_state(request)
        principal = await web.require_admin(request)
        if not valid_username(username):
            raise ValidationException(detail="invalid username")
        existing = web.backend.users.users.get(username)
        if existing is None:
            raise NotFoundException(detail="unknown user")
        if existing.admin and existing.password_hash and not _other_admins(web, username):
            raise HTTPException(status_code=409, detail="cannot remove the last administrator")
        await web.backend.publish_user_event(
            UserRemoved(node_id=web.backend.node_id, username=username)
        )
        log.info("user_removed", username=username, by=principal.username)
