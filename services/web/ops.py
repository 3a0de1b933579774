"""Operations: health, Prometheus metrics, and the cluster as this node sees it."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get

from .auth import Principal
from .cluster import cluster_view, public_cluster
from .prom import CONTENT_TYPE as PROM_CONTENT_TYPE
from .prom import merge_texts
from .security import PUBLIC
from .state import WebState, web_state


@get("/healthz", opt={PUBLIC: True})
async def healthz(request: Request[Any, Any, Any]) -> Response[Any]:
    checks = await web_state(request).backend.health()
    healthy = all(value == "ok" for value in checks.values())
    return Response(
        content={"status": "ok" if healthy else "unavailable", "checks": checks},
        status_code=200 if healthy else 503,
        headers={"Cache-Control": "no-store"},
    )


async def cluster_data(web: WebState, principal: Principal) -> dict[str, Any]:
    """The cluster as this node sees it; a plain user gets `public_cluster`'s part."""
    sync, roles, health = await asyncio.gather(
        web.backend.sync_status(), web.backend.roles_status(), web.backend.health())
    view = cluster_view(web.backend.node_id, sync, roles, health)
    return view if principal.admin else public_cluster(view)


@get("/api/cluster")
async def cluster(request: Request[Any, Any, Any]) -> Response[Any]:
    """Nodes (a dead one marked down, since when, what it held), roles, replication lag
    and this node's services as it sees them; 200 even when partial."""
    web = web_state(request)
    principal = await web.require(request)
    return Response(content=await cluster_data(web, principal),
                    headers={"Cache-Control": "no-store"})


@get("/metrics", opt={PUBLIC: True})
async def metrics(request: Request[Any, Any, Any]) -> Response[Any]:
    texts = await web_state(request).backend.metrics_texts()
    return Response(
        content=merge_texts(texts).encode(),
        media_type=PROM_CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


OPS = [healthz, metrics, cluster]
