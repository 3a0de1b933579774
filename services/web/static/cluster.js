// The cluster page (templates/cluster.html): re-renders from GET /api/cluster every 2 s.
// Node ids and errors are data: rendered with textContent only (no inline script: CSP).
"use strict";
(function () {
  const {$, el, when} = window.callrec;
  const INTERVAL_MS = 2000;
  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 90) return seconds.toFixed(1) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " days ago";
  }
  function cell(value) { return value === null || value === undefined ? "–" : String(value); }

  function stateCell(node) {
    if (node.state === "down") {
      return el("td", {"data-testid": "node-state"},
        el("span", {class: "badge bad", "data-testid": "down-badge"}, "DOWN"),
        " since ", when(node.down && node.down.since));
    }
    if (node.state === "up") return el("td", {"data-testid": "node-state"},
                                       el("span", {class: "badge ok"}, "up"));
    return el("td", {"data-testid": "node-state"}, el("span", {class: "badge"}, "unknown"));
  }

  function lagText(lag) {
    const parts = Object.entries(lag || {}).map(([peer, v]) =>
      "behind " + peer + ": " + cell(v.events) + " events, " + cell(v.objects) + " files");
    return parts.length ? parts.join("; ") : "–";
  }

  function row(view, node) {
    const name = el("td", {"data-testid": "node-id"}, node.node_id);
    if (node.node_id === view.node_id) name.append(" ", el("span", {class: "muted"}, "(this node)"));
    const cells = [name, stateCell(node),
      el("td", {"data-testid": "node-role"},
         node.state === "down" ? "–"
           : node.current_role === "active" ? "holder" : cell(node.current_role))];
    if (view.internals) {
      cells.push(el("td", {}, cell(node.configured_role)), el("td", {}, cell(node.priority)),
                 el("td", {}, ago(node.last_heartbeat_age_s)),
                 el("td", {"data-testid": "node-recordings"}, cell(node.recordings)),
                 el("td", {}, lagText(node.lag)));
    }
    return el("tr", {"data-testid": "node-row", "data-node-id": node.node_id,
                     "data-state": node.state, class: "state-" + node.state}, ...cells);
  }

  function downAlert(view, node) {
    const p = el("p", {class: "card alert", "data-testid": "down-node",
                       "data-node-id": node.node_id},
      el("span", {class: "badge bad"}, "DOWN"), " Node ", el("strong", {}, node.node_id),
      " has been silent since " + when(node.down && node.down.since));
    const down = node.down || {};
    if (view.internals) {
      if (down.recordings !== null && down.recordings !== undefined) {
        p.append("; it held " + down.recordings + " recordings");
      }
      if (down.held_maintenance_role) {
        p.append("; it held the maintenance role, now on " + (down.role_moved_to || "nobody"));
      }
    }
    p.append(".");
    return p;
  }

  function render(view) {
    const summary = $("cluster-summary");
    summary.replaceChildren("Answered by node ", el("strong", {}, view.node_id),
      "; maintenance role held by ",
      el("strong", {"data-testid": "holder"}, view.holder || "nobody"),
      view.internals ? " (epoch " + cell(view.epoch) +
        (view.since ? ", since " + when(view.since) : "") + ")" : "", ".");
    const alerts = [];
    if (view.internals && view.unavailable && view.unavailable.length) {
      alerts.push(el("p", {class: "card alert", "data-testid": "unavailable"},
                     "Not answering on this node: " + view.unavailable.join(", ")));
    } else if (!view.internals && view.degraded) {
      alerts.push(el("p", {class: "card alert", "data-testid": "unavailable"},
                     "Some services of this node are not answering."));
    }
    for (const node of view.nodes) if (node.state === "down") alerts.push(downAlert(view, node));
    $("alerts").replaceChildren(...alerts);
    $("cluster-body").replaceChildren(...view.nodes.map((node) => row(view, node)));
    $("updated").textContent = "Updated " + when(new Date().toISOString()) +
      "; refreshes every 2 s.";
  }

  async function refresh() {
    try {
      const response = await fetch("/api/cluster", {credentials: "same-origin",
                                                     cache: "no-store"});
      if (!response.ok) throw new Error(response.status + " " + response.statusText);
      render(await response.json());
      $("load-error").textContent = "";
    } catch (err) {
      $("load-error").textContent = "Cluster status unavailable: " + err.message;
    }
  }
  refresh();
  setInterval(refresh, INTERVAL_MS);
})();
