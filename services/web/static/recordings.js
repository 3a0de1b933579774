// The recordings list: filters in the page's URL (a search can be bookmarked), the rows
// from /api/recordings, times in the browser's time zone. User data only via textContent.
"use strict";
(function () {
  const FILTERS = ["number_or_name", "user", "group", "direction", "min_duration_s", "tag",
                   "note_text", "node", "interrupted"];
  // Kept from the URL as they are (the API's names); `range` is a quick pick.
  const PASSED = ["from", "to", "number", ...FILTERS, "sort", "order", "limit", "offset"];
  const form = document.getElementById("filters");
  const fromInput = document.getElementById("f-from");
  const toInput = document.getElementById("f-to");
  const rows = document.getElementById("rows");
  const count = document.getElementById("count");
  const error = document.getElementById("error");
  const prev = document.getElementById("prev");
  const next = document.getElementById("next");
  const pageLabel = document.getElementById("page");
  const params = new URLSearchParams(window.location.search);

  // ---- times: the browser's zone both ways ----
  function startOfDay(date) {
    return new Date(date.getFullYear(), date.getMonth(), date.getDate());
  }
  function addDays(date, days) {
    return new Date(date.getFullYear(), date.getMonth(), date.getDate() + days);
  }
  // A quick pick as [from, to) local instants; null for an unknown name.
  function quickRange(name, now) {
    const today = startOfDay(now);
    if (name === "today") return [today, addDays(today, 1)];
    if (name === "yesterday") return [addDays(today, -1), today];
    if (name === "7d") return [addDays(today, -6), addDays(today, 1)];
    return null;
  }
  function pad(n) { return String(n).padStart(2, "0"); }
  // Value of a datetime-local input for an instant (local wall time).
  function localInput(date) {
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
      `T${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }
  function parseInstant(text) {
    if (!text) return null;
    const date = new Date(text);
    return Number.isNaN(date.getTime()) ? null : date;
  }
  const dayFormat = new Intl.DateTimeFormat(undefined, {
    weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
    hourCycle: "h23",
  });
  const yearFormat = new Intl.DateTimeFormat(undefined, {
    weekday: "short", day: "numeric", month: "short", year: "numeric", hour: "2-digit",
    minute: "2-digit", hourCycle: "h23",
  });
  const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });
  // "Mon 30 Nov 14:03" (with the year when it is not this year's).
  function readableTime(date) {
    const format = date.getFullYear() === new Date().getFullYear() ? dayFormat : yearFormat;
    return format.format(date).replace(/,/g, "");
  }
  // 83500 ms -> "1:23"; an hour or more -> "1:02:03".
  function duration(ms) {
    const total = Math.round(ms / 1000);
    const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    return h ? `${h}:${pad(m)}:${pad(s)}` : `${m}:${pad(s)}`;
  }

  // ---- the form mirrors the URL ----
  const range = params.get("range");
  const picked = range ? quickRange(range, new Date()) : null;
  // The quick pick stays in the URL (a bookmark of "yesterday" means yesterday when it
  // is opened) until a date is changed by hand.
  let activeRange = picked ? range : null;
  const from = picked ? picked[0] : parseInstant(params.get("from"));
  const to = picked ? picked[1] : parseInstant(params.get("to"));
  if (from) fromInput.value = localInput(from);
  if (to) toInput.value = localInput(to);
  for (const name of FILTERS) {
    const field = form.elements.namedItem(name);
    if (field && params.has(name)) field.value = params.get(name);
  }
  for (const button of form.querySelectorAll("button[data-range]")) {
    button.setAttribute("aria-pressed", String(button.dataset.range === range));
    button.addEventListener("click", () => go(formParams({ range: button.dataset.range })));
  }

  // The URL for the form's filters; `extra` overrides (a quick pick, sort, paging).
  function formParams(extra) {
    const out = new URLSearchParams();
    const pick = extra.range || activeRange;
    if (pick) {
      out.set("range", pick);
    } else {
      const start = fromInput.value ? new Date(fromInput.value) : null;
      const end = toInput.value ? new Date(toInput.value) : null;
      if (start && !Number.isNaN(start.getTime())) out.set("from", start.toISOString());
      if (end && !Number.isNaN(end.getTime())) out.set("to", end.toISOString());
    }
    for (const name of FILTERS) {
      const field = form.elements.namedItem(name);
      const value = field ? field.value.trim() : "";
      if (value) out.set(name, value);
    }
    for (const name of ["sort", "order", "limit"]) {
      const value = extra[name] !== undefined ? extra[name] : params.get(name);
      if (value) out.set(name, value);
    }
    if (extra.offset) out.set("offset", String(extra.offset));
    return out;
  }
  function go(query) {
    window.location.assign(`/?${query.toString()}`);
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go(formParams({}));
  });
  // Changing a date by hand ends a quick pick.
  for (const input of [fromInput, toInput]) {
    input.addEventListener("change", () => {
      activeRange = null;
      for (const b of form.querySelectorAll("button[data-range]")) b.setAttribute("aria-pressed", "false");
    });
  }

  // ---- sorting and paging keep the filters as they are in the URL ----
  const sort = params.get("sort") || "started";
  const order = params.get("order") || "desc";
  const limit = Math.min(Math.max(parseInt(params.get("limit") || "50", 10) || 50, 1), 1000);
  const offset = Math.max(parseInt(params.get("offset") || "0", 10) || 0, 0);
  function withParams(changes) {
    const out = new URLSearchParams(params);
    for (const [key, value] of Object.entries(changes)) {
      if (value === null || value === "" || value === 0) out.delete(key);
      else out.set(key, String(value));
    }
    return out;
  }
  for (const button of document.querySelectorAll("button.sort")) {
    const column = button.dataset.sort;
    if (column === sort) button.dataset.active = order;
    button.addEventListener("click", () => {
      const nextOrder = column === sort && order === "desc" ? "asc" : "desc";
      go(withParams({ sort: column, order: nextOrder, offset: 0 }));
    });
  }
  prev.addEventListener("click", () => go(withParams({ offset: Math.max(0, offset - limit) })));
  next.addEventListener("click", () => go(withParams({ offset: offset + limit })));

  // ---- the rows ----
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }
  function party(p) {
    const span = el("span", null, "party");
    if (!p) { span.textContent = "?"; return span; }
    if (p.name) span.append(el("span", p.name, "name"));
    if (p.number) span.append(el("span", p.number, p.name ? "number" : "name"));
    if (!p.name && !p.number) span.textContent = p.host || "?";
    return span;
  }
  function row(item) {
    const tr = el("tr");
    const href = `/recordings/${encodeURIComponent(item.recording_id)}`;
    tr.dataset.recordingId = item.recording_id;
    tr.setAttribute("data-testid", "recording-row");
    const started = new Date(item.started_at);
    const when = el("td");
    const link = el("a", null, "open");
    link.href = href;
    link.setAttribute("data-testid", "recording-link");
    const time = el("time", readableTime(started));
    time.dateTime = item.started_at;
    time.title = fullFormat.format(started);
    link.append(time);
    when.append(link);
    const parts = (item.metadata && item.metadata.participants) || [];
    const near = parts.find((p) => p.role === "near" || p.role === "caller") || parts[0];
    const far = parts.find((p) => p !== near);
    const who = el("td", null, "parties");
    who.append(party(near), el("span", "→", "arrow"), party(far));
    const tags = el("td");
    for (const tag of item.tags || []) tags.append(el("span", tag, "tag"));
    if (item.interrupted) tags.append(el("span", "interrupted", "badge warn"));
    if (item.legal_hold) tags.append(el("span", "legal hold", "badge"));
    tr.append(when, el("td", (item.metadata && item.metadata.direction) || ""), who,
              el("td", duration(item.duration_ms), "duration"), tags, el("td", item.node_id));
    tr.addEventListener("click", (event) => {
      if (event.target.closest("a")) return;
      window.location.assign(href);
    });
    return tr;
  }

  async function load() {
    const api = new URLSearchParams();
    for (const name of PASSED) {
      const value = params.get(name);
      if (value) api.set(name, value);
    }
    if (picked) {
      api.set("from", picked[0].toISOString());
      api.set("to", picked[1].toISOString());
    }
    try {
      const response = await fetch(`/api/recordings?${api.toString()}`, {
        credentials: "same-origin", headers: { Accept: "application/json" },
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
      rows.replaceChildren(...body.items.map(row));
      const first = body.total ? offset + 1 : 0;
      const last = offset + body.items.length;
      count.textContent = body.total === 1 ? "1 recording" :
        `${body.total.toLocaleString()} recordings`;
      pageLabel.textContent = body.total ? `${first}–${last} of ${body.total.toLocaleString()}` : "";
      prev.disabled = offset === 0;
      next.disabled = last >= body.total;
    } catch (exc) {
      count.textContent = "";
      error.hidden = false;
      error.textContent = `Could not load recordings: ${exc.message}`;
      prev.disabled = next.disabled = true;
    }
  }
  load();
})();
