"""The cluster overview: this node's sync status and scheduler roles merged into one view.

Pure functions over the two RPC replies, so the page stays useful when one of them
is missing (an outage is exactly when an operator looks at it): whatever did not
answer is marked "unavailable" and the rest is shown.
"""

from __future__ import annotations

import html
from typing import Any

from contracts.v1.rpc import NodeStatus, PeerLag, RolesStatus, SyncStatus

UNAVAILABLE = "unavailable"


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


def cluster_view(
    node_id: str, sync: SyncStatus | None, roles: RolesStatus | None
) -> dict[str, Any]:
    """JSON of `GET /api/cluster`; each node's `lag` is its lag behind each of its peers
    (the answering node's measured now, the others' from their last heartbeat)."""
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
            "configured_role": status.configured_role if status else None,
            "current_role": _current_role(nid, status, roles),
            "priority": status.priority if status else None,
            "alive": status.alive if status else None,
            "last_heartbeat_age_s": status.last_heartbeat_age_s if status else None,
            "recordings": status.recordings if status else None,
            "lag": lag if nid == node_id else _lag_view(status.lag if status else []),
        }
        if nid == node_id and sync is not None and entry["recordings"] is None:
            entry["recordings"] = sync.recordings_held
        nodes.append(entry)
    nodes.sort(key=lambda e: (e["configured_role"] != "primary", e["priority"] or 0,
                              e["node_id"]))
    return {
        "node_id": node_id,
        "holder": roles.holder if roles is not None else None,
        "epoch": roles.epoch if roles is not None else None,
        "since": roles.since.isoformat() if roles is not None and roles.since else None,
        "sync": "ok" if sync is not None else UNAVAILABLE,
        "scheduler": "ok" if roles is not None else UNAVAILABLE,
        "nodes": nodes,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}"
    return html.escape(str(value))


def cluster_page(view: dict[str, Any]) -> str:
    """A minimal HTML rendering of `cluster_view` for operators without tooling."""
    rows = []
    for node in view["nodes"]:
        lag = "; ".join(
            f"{html.escape(peer)}: {_cell(v['events'])} events "
            f"(contact {_cell(v['events_last_contact_s'])} s), {_cell(v['objects'])} objects"
            for peer, v in node["lag"].items()
        )
        rows.append(
            "<tr>" + "".join(
                f"<td>{_cell(node[key])}</td>"
                for key in ("node_id", "configured_role", "current_role", "priority", "alive",
                            "last_heartbeat_age_s", "recordings")
            ) + f"<td>{lag or '–'}</td></tr>"
        )
    notes = " ".join(
        f"<p><strong>{name} status unavailable</strong></p>"
        for name in ("sync", "scheduler") if view[name] != "ok"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>callrec cluster</title>"
        "<meta http-equiv='refresh' content='5'></head><body>"
        "<nav><a href='/'>Recordings</a> · <a href='/jobs'>Jobs</a></nav><h1>Cluster</h1>"
        f"<p>Answered by {_cell(view['node_id'])}; maintenance role: "
        f"{_cell(view['holder'])} (epoch {_cell(view['epoch'])})</p>{notes}"
        "<table><tr><th>Node</th><th>Configured</th><th>Current</th><th>Priority</th>"
        "<th>Alive</th><th>Heartbeat age (s)</th><th>Recordings</th><th>Lag here</th></tr>"
        f"{''.join(rows)}</table></body></html>"
    )
