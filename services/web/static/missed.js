// The missed-calls page (missed.html): reads /api/missed, renders with textContent only.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const body = $("missed-body");
  let nextBefore = null;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function pad(n) { return String(n).padStart(2, "0"); }
  function day(d) { return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()); }
  function clock(d, seconds) {
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + (seconds ? ":" + pad(d.getSeconds()) : "");
  }
  // For <input type="datetime-local">: the browser's local time, to the minute.
  function localInput(d) { return day(d) + "T" + clock(d, false); }

  function whenCell(item) {
    const td = el("td", "when");
    const at = new Date(item.at);
    if (!item.aggregated || !item.until) {
      td.append(el("span", null, day(at) + " " + clock(at, true)));
      return td;
    }
    const until = new Date(item.until);
    td.append(el("span", "count", "×" + item.count));
    const sameDay = day(at) === day(until);
    // Minutes are enough across minutes; within one, the seconds say how fast it came.
    const seconds = sameDay && clock(at, false) === clock(until, false);
    td.append(el("span", null, "between " + day(at) + " " + clock(at, seconds) + " and " +
      (sameDay ? "" : day(until) + " ") + clock(until, seconds)));
    td.dataset.testid = "missed-count";
    return td;
  }

  function party(number, name) {
    const td = el("td", "party");
    td.append(el("span", null, number || "–"));
    if (name) td.append(el("span", "sub", name));
    return td;
  }

  function row(item) {
    const tr = el("tr", item.aggregated ? "aggregated" : null);
    tr.dataset.testid = "missed-row";
    tr.dataset.status = item.status === null ? "none" : String(item.status);
    tr.dataset.reason = item.reason;
    tr.append(whenCell(item));
    const source = el("td", null, item.source === "*" ? "many sources" : item.source);
    if (item.transport) source.append(el("span", "sub", item.transport));
    tr.append(source);
    const answer = el("td", "answer");
    answer.dataset.testid = "missed-answer";
    answer.append(el("span", "status", item.status === null ? "no answer" : item.status));
    answer.append(el("span", null, item.reason_text));
    if (item.detail) answer.append(el("span", "detail", item.detail));
    tr.append(answer);
    tr.append(party(item.from_number, item.from_name));
    const to = party(item.to_number, item.to_name);
    if (item.numbers && item.numbers.length) {
      to.append(el("span", "sub", "looked up: " + item.numbers.join(", ")));
    }
    tr.append(to);
    const call = el("td", "call");
    call.append(el("span", null, item.kind || "–"));
    if (item.call_id) call.append(el("span", "sub", item.call_id));
    if (item.user_agent) call.append(el("span", "sub", item.user_agent));
    tr.append(call);
    return tr;
  }

  function query(before) {
    const params = new URLSearchParams();
    const since = $("f-since").value, until = $("f-until").value;
    if (since) params.set("since", new Date(since).toISOString());
    if (until) params.set("until", new Date(until).toISOString());
    for (const [name, id] of [["reason", "f-reason"], ["status", "f-status"],
                              ["number", "f-number"], ["source", "f-source"]]) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    if (before) params.set("before", String(before));
    return params;
  }

  async function load(append) {
    $("missed-error").textContent = "";
    const params = query(append ? nextBefore : null);
    let data;
    try {
      const response = await fetch("/api/missed?" + params.toString(),
                                   {credentials: "same-origin", cache: "no-store"});
      data = await response.json().catch(() => null);
      if (!response.ok) {
        throw new Error((data && data.detail) || (response.status + " " + response.statusText));
      }
    } catch (error) {
      $("missed-error").textContent = "Could not load missed calls: " + error.message;
      $("missed-status").textContent = "";
      return;
    }
    if (!append) body.replaceChildren();
    for (const item of data.items) body.append(row(item));
    nextBefore = data.next_before;
    $("missed-more").hidden = nextBefore === null;
    $("missed-none").hidden = body.children.length > 0;
    $("missed-status").textContent = body.children.length + " row(s) shown" +
      (data.truncated ? "; the search stopped early, press Older to go on" : "") +
      (nextBefore !== null ? "; older ones exist" : "");
  }

  function setRange(range) {
    const now = new Date();
    const start = new Date(now.getFullYear(), now.getMonth(), now.getDate());
    let since = null, until = null;
    if (range === "hour") since = new Date(now.getTime() - 3600 * 1000);
    else if (range === "today") since = start;
    else if (range === "yesterday") {
      since = new Date(start.getFullYear(), start.getMonth(), start.getDate() - 1);
      until = start;
    } else if (range === "week") {
      since = new Date(start.getFullYear(), start.getMonth(), start.getDate() - 6);
    }
    $("f-since").value = since ? localInput(since) : "";
    $("f-until").value = until ? localInput(until) : "";
    load(false);
  }

  $("missed-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    load(false);
  });
  $("f-clear").addEventListener("click", () => {
    $("missed-filters").reset();
    load(false);
  });
  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => setRange(button.dataset.range));
  }
  $("missed-more").addEventListener("click", () => load(true));
  load(false);
})();
