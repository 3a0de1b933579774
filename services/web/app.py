"""`create_app()`: the node's web app, assembled from one controller per resource.

Cross-site refusals, authentication (before any body is read), throttling and the
security headers live in `security.py` as app-level guards and a before_send hook;
what the handlers share lives in `state.py`; pages are Jinja2 templates (autoescaped)
with their scripts and styles as static files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from callrec.metrics import Registry
from callrec.store import ObjectStore
from contracts.v1.numbers import NumberPlan

from .account import ACCOUNT
from .audit import AUDIT_ROUTES
from .audit_http import APP_STATE_KEY, AuditService, audit_middleware, memory_audit
from .auth import Authenticator
from .jobs import JobsController
from .media import MediaCache
from .missed import MISSED
from .ops import OPS
from .pages import PAGES
from .recording_page import RECORDING_PAGE
from .recordings import RecordingsController
from .security import (
    MAX_BODY_BYTES,
    PUBLIC,
    LoginRequired,
    add_security_headers,
    login_guard,
    login_url,
    same_origin_guard,
)
from .sessions import SessionStore
from .state import Backend, BackendUnavailable, WebState
from .users import USERS

__all__ = ["Backend", "BackendUnavailable", "create_app"]

# A lazy proxy: binding now would freeze the pre-`setup_logging` (non-JSON) config.
log = structlog.get_logger(component="web")

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"


def _unavailable(request: Request[Any, Any, Any], exc: BackendUnavailable) -> Response[Any]:
    log.warning("backend_unavailable", path=request.url.path, error=str(exc))
    return Response(
        content={"status_code": 503, "detail": "service temporarily unavailable"},
        status_code=503,
        headers={"Retry-After": "2"},
    )


def _login_required(request: Request[Any, Any, Any], exc: LoginRequired) -> Response[Any]:
    return Redirect(path=login_url(exc.next_path), status_code=303,
                    headers={"Cache-Control": "no-store"})


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Litestar's own logging is off (it would reconfigure the root logger, non-JSON).
    log.error("http_internal_error", path=request.url.path, error=repr(exc), exc_info=exc)
    return Response(
        content={"status_code": 500, "detail": "internal server error"}, status_code=500
    )


def templates() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja2 with autoescaping on for every template, whatever its file name."""
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def openapi() -> OpenAPIConfig:
    """The OpenAPI document at /schema (and /schema/openapi.json), JSON only (a viewer
    would load scripts from elsewhere, which the CSP forbids); like every non-public
    route it needs a login."""
    return OpenAPIConfig(
        title="callrec", version="1",
        description="Call recordings, users, jobs and the cluster of one callrec node. "
                    "Authenticate with HTTP Basic, an API token (Authorization: Bearer) "
                    "or the session cookie of the login page.",
        path="/schema",
        render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"])],
    )


def create_app(
    backend: Backend, store: ObjectStore, data_dir: Path, registry: Registry | None = None,
    audit: AuditService | None = None,
    numbers: NumberPlan | None = None,
) -> Litestar:
    """The app for one node; `data_dir` holds the transcode and waveform cache,
    `registry` gets the security counters (the service's; a private one in tests), `audit`
    the node's audit trail (the service's, on the bus; without it one kept in this process),
    `numbers` the node's number plan."""
    registry = registry if registry is not None else Registry("web", backend.node_id)
    audit = audit if audit is not None else memory_audit(backend, data_dir, registry)
    sessions = SessionStore(data_dir / "web" / "sessions.sqlite")
    registry.gauge("web_sessions", "Login sessions open on this node", sessions.count)
    state = WebState(
        backend=backend,
        store=store,
        media=MediaCache(store, data_dir / "cache"),
        auth=Authenticator(backend.users, metrics=registry, audit=audit.auditor.record,
                           sessions=sessions),
        csrf_refused=registry.counter(
            "web_csrf_refused_total",
            "State-changing requests refused: cross-site, cross-origin or not JSON"),
        numbers=numbers if numbers is not None else NumberPlan(),
    )
    static = create_static_files_router(
        path="/static", directories=[STATIC_DIR], opt={PUBLIC: True},
        include_in_schema=False, name="static",
    )
    return Litestar(
        route_handlers=[
            RecordingsController,
            *RECORDING_PAGE,
            *USERS,
            *ACCOUNT,
            JobsController,
            *OPS,
            *PAGES,
            *AUDIT_ROUTES,
            *MISSED,
            static,
        ],
        # Order matters: a cross-site request is refused before its credentials are
        # checked, and both happen before any handler reads (or validates) a body.
        guards=[same_origin_guard, login_guard],
        before_send=[add_security_headers],
        middleware=[audit_middleware],
        request_max_body_size=MAX_BODY_BYTES,
        state=State({"web": state, APP_STATE_KEY: audit}),
        template_config=templates(),
        exception_handlers={BackendUnavailable: _unavailable, LoginRequired: _login_required,
                            500: _internal_error},
        openapi_config=openapi(),
        logging_config=None,
    )
