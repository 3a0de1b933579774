"""The cluster overview: this node's sync status, scheduler roles and service health
merged into one view (pure functions over the replies).

An outage is exactly when an operator looks at this page, so whatever did not answer
is named as unavailable and the rest is still shown. A node whose heartbeats stopped
is shown plainly as down: since when (its last heartbeat, by this node's clock) and
what it held (its recordings, the maintenance role if it was the holder).
Plain users see only which nodes are up (`public_cluster`): priorities, lag, counts
and service health are operators' business.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from contracts.v1.rpc import NodeStatus, PeerLag, RolesStatus, SyncStatus

UNAVAILABLE = "unavailable"
NodeState = Literal["up", "down", "unknown"]


def _current_role(node_id: str, status: NodeStatus | None, roles: RolesStatus | None) -> Any:
    if roles is not None:
        return "active" if roles.holder == node_id else "standby"
    return status.current_role if status is not None else None


def _lag_view(entries: list[PeerLag]) -> dict[str, dict[str, Any]]:
    return {
        peer.node_id: {
            "events": peer.events_lag,
            "events_last_contact_s": peer.events_last_contact_s,
            "objects": peer.objects_pending,
        }
        for peer in entries
    }


def node_state(status: NodeStatus | None) -> NodeState:
    if status is None:
        return "unknown"
    return "up" if status.alive else "down"


def dead_node_view(
    status: NodeStatus, roles: RolesStatus | None, now: datetime
) -> dict[str, Any] | None:
    """What to say of a node whose heartbeats stopped: since when it has been silent and
    what it held then; None for a live node."""
    if status.alive:
        return None
    age = status.last_heartbeat_age_s
    since = (now - timedelta(seconds=age)).isoformat() if age is not None else None
    held_role = roles is not None and roles.previous == status.node_id \
        and roles.holder != status.node_id
    return {
        "since": since,
        "silent_s": age,
        "recordings": status.recordings,
        "held_maintenance_role": held_role,
        "role_moved_to": roles.holder if held_role and roles is not None else None,
        "role_moved_at": roles.since.isoformat() if held_role and roles is not None
        and roles.since else None,
    }


def services_view(
    sync: SyncStatus | None, roles: RolesStatus | None, health: dict[str, str] | None
) -> dict[str, str]:
    """Each service of the answering node that we asked: "ok" or why not."""
    services = {"sync": "ok" if sync is not None else UNAVAILABLE,
                "scheduler": "ok" if roles is not None else UNAVAILABLE}
    for name, value in (health or {}).items():
        services[name] = value if value == "ok" else (value or UNAVAILABLE)
    return services


def cluster_view(
    node_id: str, sync: SyncStatus | None, roles: RolesStatus | None,
    health: dict[str, str] | None = None, now: datetime | None = None,
) -> dict[str, Any]:
    """JSON of `GET /api/cluster` for an admin; each node's `lag` is its lag behind each of
    its peers (the answering node's measured now, the others' from their last heartbeat)."""
    now = now or datetime.now(UTC)
    nodes: list[dict[str, Any]] = []
    lag = _lag_view(sync.lag if sync is not None else [])
    known: list[NodeStatus] = list(sync.nodes) if sync is not None else []
    ids = [status.node_id for status in known]
    for extra in (node_id, roles.holder if roles is not None else None):
        if extra is not None and extra not in ids:
            ids.append(extra)
    by_id = {status.node_id: status for status in known}
    for nid in ids:
        status = by_id.get(nid)
        entry: dict[str, Any] = {
            "node_id": nid,
            "state": node_state(status),
            "configured_role": status.configured_role if status else None,
            "current_role": _current_role(nid, status, roles),
            "priority": status.priority if status else None,
            "alive": status.alive if status else None,
            "last_heartbeat_age_s": status.last_heartbeat_age_s if status else None,
            "recordings": status.recordings if status else None,
            "lag": lag if nid == node_id else _lag_view(status.lag if status else []),
            "down": dead_node_view(status, roles, now) if status else None,
        }
        if nid == node_id and sync is not None and entry["recordings"] is None:
            entry["recordings"] = sync.recordings_held
        nodes.append(entry)
    nodes.sort(key=lambda e: (e["configured_role"] != "primary", e["priority"] or 0,
                              e["node_id"]))
    services = services_view(sync, roles, health)
    return {
        "node_id": node_id,
        "holder": roles.holder if roles is not None else None,
        "epoch": roles.epoch if roles is not None else None,
        "since": roles.since.isoformat() if roles is not None and roles.since else None,
        "sync": services["sync"],
        "scheduler": services["scheduler"],
        "services": services,
        "unavailable": sorted(name for name, value in services.items() if value != "ok"),
        "down": [node["node_id"] for node in nodes if node["state"] == "down"],
        "nodes": nodes,
        "internals": True,
    }


def public_cluster(view: dict[str, Any]) -> dict[str, Any]:
    """What a plain user sees: the nodes, whether each is up (down since when) and which
    holds the maintenance role; no priorities, counts, lag, epochs or service health."""
    return {
        "node_id": view["node_id"],
        "holder": view["holder"],
        "degraded": bool(view["unavailable"]),
        "down": view["down"],
        "nodes": [
            {"node_id": node["node_id"], "state": node["state"],
             "current_role": node["current_role"],
             "down": {"since": node["down"]["since"]} if node["down"] else None}
            for node in view["nodes"]
        ],
        "internals": False,
    }
