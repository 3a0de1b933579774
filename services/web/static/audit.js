// The audit page: entries from /api/audit with the form's filters, paging, the CSV link
// with the same filters, and each node's chain verification. User data only as text.
"use strict";
(function () {
  const {when} = window.callrec;
  const PAGE = 50;
  const form = document.getElementById("filters");
  const body = document.getElementById("audit-body");
  const count = document.getElementById("count");
  const error = document.getElementById("load-error");
  const prev = document.getElementById("prev");
  const next = document.getElementById("next");
  const csv = document.getElementById("csv");
  let offset = 0;

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function filters() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (!value) continue;
      if (name === "from" || name === "to") {
        const d = new Date(value);  // the browser's time zone, sent as UTC
        if (!isNaN(d)) params.set(name, d.toISOString());
      } else {
        params.set(name, value);
      }
    }
    return params;
  }

  async function load() {
    const params = filters();
    csv.href = "/api/audit.csv" + (params.toString() ? "?" + params : "");
    params.set("limit", PAGE);
    params.set("offset", offset);
    error.textContent = "";
    let data;
    try {
      const response = await fetch("/api/audit?" + params, { credentials: "same-origin" });
      data = await response.json();
      if (!response.ok) throw new Error(data.detail || response.statusText);
    } catch (e) {
      error.textContent = "Could not load the audit trail: " + e.message;
      return;
    }
    body.replaceChildren();
    for (const item of data.items) {
      const row = document.createElement("tr");
      row.className = "outcome-" + item.outcome;
      row.dataset.testid = "audit-row";
      row.dataset.action = item.action;
      row.dataset.node = item.node;
      cell(row, when(item.at)).title = item.at;
      cell(row, item.claimed_node ? item.node + " (claims " + item.claimed_node + ")" : item.node);
      cell(row, item.seq);
      cell(row, item.actor);
      cell(row, item.action);
      cell(row, item.target);
      cell(row, item.source_address);
      cell(row, item.outcome);
      const detail = Object.entries(item.detail).map(([k, v]) => k + "=" + v).join("; ");
      cell(row, detail, "detail");
      body.appendChild(row);
    }
    const last = Math.min(offset + data.items.length, data.total);
    count.textContent = data.total === 0 ? "No entries match." :
      `${offset + 1}–${last} of ${data.total} entries, newest first`;
    prev.disabled = offset === 0;
    next.disabled = last >= data.total;
  }

  const LABELS = {
    verified: ["verified", "ok"], unconfirmed: ["links hold; no head announced", "warn"],
    behind: ["copy behind the announced head", "warn"], head_mismatch: ["HEAD MISMATCH", "bad"],
    broken: ["BROKEN", "bad"], empty: ["no entries", ""],
  };

  async function verify() {
    const line = document.getElementById("verify-line");
    const target = document.getElementById("verify-body");
    line.textContent = "Verifying…";
    let data;
    try {
      const response = await fetch("/api/audit/verify", { credentials: "same-origin" });
      data = await response.json();
      if (!response.ok) throw new Error(data.detail || response.statusText);
    } catch (e) {
      line.textContent = "Verification failed to run: " + e.message;
      return;
    }
    target.replaceChildren();
    for (const chain of data.chains) {
      const row = document.createElement("tr");
      row.dataset.testid = "verify-row";
      row.dataset.node = chain.node_id;
      row.dataset.status = chain.status;
      cell(row, chain.node_id);
      const [label, cls] = LABELS[chain.status] || [chain.status, ""];
      const result = cell(row, "");
      const badge = document.createElement("span");
      badge.className = "badge " + cls;
      badge.textContent = chain.status === "broken" ? label + " at seq " + chain.broken_seq : label;
      result.appendChild(badge);
      cell(row, chain.entries);
      cell(row, chain.verified_seq);
      const head = chain.announced;
      cell(row, head ? "seq " + head.seq + " · " + head.hash.slice(0, 12) : null, "hash");
      cell(row, chain.problems.join(" · ") || "", "problems");
      target.appendChild(row);
    }
    line.textContent = `Checked by node ${data.node_id} at ${when(data.checked_at)} in ${data.took_ms} ms`;
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); offset = 0; load(); });
  document.getElementById("f-reset").addEventListener("click", () => {
    form.reset(); offset = 0; load();
  });
  prev.addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
  next.addEventListener("click", () => { offset += PAGE; load(); });
  document.getElementById("verify-run").addEventListener("click", verify);
  load();
  verify();
})();
