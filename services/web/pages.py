"""HTML pages: each renders a Jinja2 template (autoescaped) over `base.html`.

Pages hold no logic of their own: they ask the same backend as the JSON API and leave
the rest to static scripts that call the API (so the API's checks are the only ones).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Template

from .auth import Principal
from .ops import cluster_data
from .state import web_state

NO_STORE = {"Cache-Control": "no-store"}


def page(name: str, request: Request[Any, Any, Any], principal: Principal,
         **context: Any) -> Template:
    """A page for one signed-in user: the layout needs who they are and which node answers."""
    web = web_state(request)
    return Template(
        template_name=f"{name}.html",
        context={"page": name, "principal": principal, "node_id": web.backend.node_id,
                 **context},
        headers=NO_STORE,
    )


@get("/", include_in_schema=False)
async def recordings_page(request: Request[Any, Any, Any]) -> Template:
    """The recordings list: its script (/static/recordings.js) reads the filters from
    the URL and asks `/api/recordings`. Admins get the user and group names to pick
    from; everyone may type them (a filter only narrows what they may see)."""
    web = web_state(request)
    principal = await web.require(request)
    users = web.backend.users.users.values() if principal.admin else ()
    return page("recordings", request, principal,
                users=sorted(u.username for u in users),
                groups=sorted({g for u in users for g in u.groups}),
                nodes=[web.backend.node_id])


@get("/jobs", include_in_schema=False)
async def jobs_page(request: Request[Any, Any, Any]) -> Template:
    """The jobs dashboard: its script (/static/jobs.js) polls `/api/jobs`."""
    web = web_state(request)
    return page("jobs", request, await web.require(request))


@get("/cluster", include_in_schema=False)
async def cluster_page(request: Request[Any, Any, Any]) -> Template:
    web = web_state(request)
    principal = await web.require(request)
    return page("cluster", request, principal, view=await cluster_data(web, principal))


PAGES = [recordings_page, jobs_page, cluster_page]
