// The jobs dashboard (served by services/web/jobs_page.py); no inline script: CSP.
"use strict";
const ADMIN = document.body.dataset.admin === "true";
const DEFAULTS = {
  export: {target_dir: "/srv/callrec-export",
           path_template: "{date:%Y/%m/%d}/{start:%H%M%S}_{near}_{far}_{id}.{ext}",
           format: "opus", sidecar: true},
  purge: {retention_days: 365, user_retention_s: {}, group_retention_s: {}},
};
const HELP = {
  export: "target_dir: absolute path of the mounted folder; path_template fields: " +
          "{date} {start} {near} {far} {id} {ext} {node} {duration}; format: opus, wav or mp3.",
  purge: "retention_days (or retention_s); user_retention_s / group_retention_s: " +
         "{\"name\": seconds}, the most specific wins. Recordings on legal hold are kept.",
};
let lastText = "";
let jobs = [];

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

async function api(method, path, body) {
  const init = {method, credentials: "same-origin", cache: "no-store", headers: {}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    throw new Error((data && data.detail) || (response.status + " " + response.statusText));
  }
  return data;
}

function pad(n) { return String(n).padStart(2, "0"); }
function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
         pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
}
function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0; let v = n;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return (i ? v.toFixed(1) : v) + " " + units[i];
}
function duration(s) {
  if (s % 86400 === 0) return (s / 86400) + " d";
  if (s % 3600 === 0) return (s / 3600) + " h";
  if (s % 60 === 0) return (s / 60) + " min";
  return s + " s";
}
function scheduleText(schedule) {
  if (schedule && schedule.cron) return "cron " + schedule.cron;
  if (schedule && schedule.interval_s) return "every " + duration(schedule.interval_s);
  return "–";
}
function paramsOf(job) {
  const nested = job.params && job.params[job.kind];
  return (nested && typeof nested === "object") ? nested : (job.params || {});
}
function outcome(job, run) {
  const verb = job && job.kind === "purge" ? (run.dry_run ? "would purge" : "purged")
                                           : "exported";
  const dry = run.dry_run ? " (dry run)" : "";
  if (run.state === "running") return "running" + dry;
  if (run.state === "finished") {
    const count = run.dry_run && job && job.kind === "purge" ? run.would_purge.length
                                                             : run.processed;
    return "finished" + dry + ": " + count + " " + verb + ", " + run.skipped + " skipped";
  }
  if (run.state === "failed") return "failed" + dry + " after " + run.processed + " " + verb;
  return run.state + dry;
}
function progressCell(run) {
  if (run.state !== "running") {
    return run.total ? run.done + "/" + run.total : "";
  }
  const bar = el("progress", {"data-testid": "run-progress", max: Math.max(run.total, 1),
                              value: run.done});
  return el("span", {}, bar, " " + run.done + "/" + (run.total || "?"));
}

function jobRow(job) {
  const runs = job.last_runs || [];
  const last = runs.length ? runs[0] : null;
  const lastCell = last
    ? el("span", {class: "state-" + last.state, "data-testid": "job-last-run",
                  "data-state": last.state}, outcome(job, last),
         last.state === "running" ? el("span", {}, " ", progressCell(last)) : null)
    : el("span", {class: "muted", "data-testid": "job-last-run"}, "never");
  const actions = el("td", {class: "actions"});
  if (ADMIN) {
    actions.append(
      el("button", {type: "button", "data-testid": "run-now",
                    onclick: () => act("POST", "/api/jobs/" + job.job_id + "/run", {},
                                       "Run of " + job.name + " requested")}, "Run now"),
      el("button", {type: "button", "data-testid": "dry-run",
                    onclick: () => act("POST", "/api/jobs/" + job.job_id + "/run",
                                       {dry_run: true}, "Dry run of " + job.name + " requested")},
         "Dry run"),
      el("button", {type: "button", "data-testid": "pause-resume",
                    onclick: () => act("POST", "/api/jobs/" + job.job_id +
                                       (job.paused ? "/resume" : "/pause"), undefined,
                                       job.name + (job.paused ? " resumed" : " paused"))},
         job.paused ? "Resume" : "Pause"),
      el("button", {type: "button", "data-testid": "edit", onclick: () => openForm(job)},
         "Edit"),
      el("button", {type: "button", "data-testid": "delete",
                    onclick: () => {
                      if (confirm("Delete job " + job.name + "?")) {
                        act("DELETE", "/api/jobs/" + job.job_id, undefined,
                            job.name + " deleted");
                      }
                    }}, "Delete"));
  }
  const exported = job.exported !== null && job.exported !== undefined
    ? el("div", {class: "muted"}, job.exported + " exported in total") : null;
  return el("tr", {id: "job-" + job.job_id, "data-testid": "job-row", "data-job-id": job.job_id,
                   "data-job-name": job.name},
    el("td", {"data-testid": "job-name"}, job.name),
    el("td", {"data-testid": "job-kind"}, job.kind),
    el("td", {"data-testid": "job-schedule"}, scheduleText(job.schedule)),
    el("td", {"data-testid": "job-next-run"}, job.paused ? "–" : when(job.next_run)),
    el("td", {"data-testid": "job-runs-on"}, job.runs_on || "nobody"),
    el("td", {"data-testid": "job-paused"}, job.paused ? "yes" : "no"),
    el("td", {}, lastCell, exported),
    actions);
}

function runRow(job, run) {
  return el("tr", {"data-testid": "run-row", "data-run-id": run.run_id, "data-job-id": run.job_id,
                   "data-state": run.state},
    el("td", {}, job ? job.name : run.job_id),
    el("td", {}, when(run.started_at)),
    el("td", {"data-testid": "run-node"}, run.node_id),
    el("td", {}, run.trigger),
    el("td", {"data-testid": "run-outcome", class: "state-" + run.state}, outcome(job, run)),
    el("td", {}, progressCell(run)),
    el("td", {"data-testid": "run-bytes"}, bytes(run.bytes)),
    el("td", {"data-testid": "run-error", class: "error"}, run.error || ""));
}

function render(status) {
  jobs = status.jobs || [];
  $("status-line").textContent = "Answered by node " + status.node_id +
    "; maintenance role held by " + (status.holder || "nobody (no node can see a holder)") +
    ". Updated " + when(new Date().toISOString()) + ".";
  $("jobs-body").replaceChildren(...jobs.map(jobRow));
  $("no-jobs").hidden = jobs.length > 0;
  const runs = [];
  for (const job of jobs) for (const run of job.last_runs || []) runs.push([job, run]);
  runs.sort((a, b) => String(b[1].started_at).localeCompare(String(a[1].started_at)));
  $("runs-body").replaceChildren(...runs.slice(0, 50).map(([job, run]) => runRow(job, run)));
}

async function refresh() {
  try {
    const status = await api("GET", "/api/jobs");
    $("load-error").textContent = "";
    const text = JSON.stringify(status);
    if (text !== lastText) { lastText = text; render(status); }
    else { $("status-line").textContent = $("status-line").textContent
             .replace(/Updated .*$/, "Updated " + when(new Date().toISOString()) + "."); }
  } catch (err) {
    $("load-error").textContent = "Jobs unavailable: " + err.message;
  }
}

async function act(method, path, body, done) {
  $("action-message").textContent = "";
  try {
    await api(method, path, body);
    $("action-message").textContent = done;
    lastText = "";
    await refresh();
  } catch (err) {
    $("action-message").textContent = "Failed: " + err.message;
  }
}

function setDefaults(kind) {
  $("f-params").value = JSON.stringify(DEFAULTS[kind], null, 2);
  $("f-help").textContent = HELP[kind];
}

function openForm(job) {
  $("form-error").textContent = "";
  $("f-job-id").value = job ? job.job_id : "";
  $("form-title").textContent = job ? "Edit " + job.name : "New job";
  $("f-name").value = job ? job.name : "";
  $("f-kind").value = job ? job.kind : "export";
  const schedule = job ? job.schedule : {cron: "0 2 * * *"};
  $("f-sched-type").value = schedule.cron ? "cron" : "interval";
  $("f-sched").value = schedule.cron || schedule.interval_s || "";
  $("f-paused").checked = job ? job.paused : false;
  if (job) {
    const params = Object.assign({}, paramsOf(job));
    $("f-params").value = JSON.stringify(params, null, 2);
    $("f-help").textContent = HELP[job.kind] || "";
  } else {
    setDefaults("export");
  }
  $("job-form-section").hidden = false;
  $("f-name").focus();
}

async function submitForm(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  let params;
  try { params = JSON.parse($("f-params").value || "{}"); }
  catch (err) { $("form-error").textContent = "Parameters: not valid JSON (" + err.message + ")";
                return; }
  const kind = $("f-kind").value;
  const raw = $("f-sched").value.trim();
  const schedule = $("f-sched-type").value === "cron" ? {cron: raw}
                                                      : {interval_s: Number(raw)};
  const body = {name: $("f-name").value, kind, schedule, paused: $("f-paused").checked};
  body[kind] = params;
  const id = $("f-job-id").value;
  try {
    await api(id ? "PUT" : "POST", id ? "/api/jobs/" + id : "/api/jobs", body);
    $("job-form-section").hidden = true;
    $("action-message").textContent = (id ? "Saved " : "Created ") + body.name;
    lastText = "";
    await refresh();
  } catch (err) {
    $("form-error").textContent = err.message;
  }
}

$("new-job").addEventListener("click", () => openForm(null));
$("f-cancel").addEventListener("click", () => { $("job-form-section").hidden = true; });
$("f-kind").addEventListener("change", () => {
  if (!$("f-job-id").value) setDefaults($("f-kind").value);
});
$("job-form").addEventListener("submit", submitForm);
refresh();
setInterval(refresh, 1000);
