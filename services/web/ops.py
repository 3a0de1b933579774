"""Operations: health, Prometheus metrics, and the cluster as this node sees it."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get

from .cluster import cluster_view
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


async def cluster_data(web: WebState) -> dict[str, Any]:
    sync, roles = await asyncio.gather(web.backend.sync_status(), web.backend.roles_status())
    return cluster_view(web.backend.node_id, sync, roles)


@get("/api/cluster")
async def cluster(request: Request[Any, Any, Any]) -> Response[Any]:
    """Nodes, roles and replication lag as this node sees them; 200 even when partial."""
    web = web_state(request)
    await web.require(request)
    return Response(content=await cluster_data(web), headers={"Cache-Control": "no-store"})


@get("/metrics", opt={PUBLIC: True})
async def metrics(request: Request[Any, Any, Any]) -> Response[Any]:
    texts = await web_state(request).backend.metrics_texts()
    return Response(
        content=merge_texts(texts).encode(),
        media_type=PROM_CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )


OPS = [healthz, metrics, cluster]
