// The jobs page (templates/jobs.html): polls GET /api/jobs every second; admins get a
// form per job kind. Job names, paths and errors are data: rendered with textContent
// only (no inline script: CSP). The server checks everything again (the form's
// validation errors come back by field and are shown there).
"use strict";
const {$, el, api, ApiError, pad, when} = window.callrec;
const ADMIN = document.body.dataset.admin === "true";
const DEFAULT_TEMPLATE = "{date:%Y/%m/%d}/{start:%H%M%S}_{near}_{far}_{id}.{ext}";
let lastText = "";
let jobs = [];
let previewTimer = null;




function readable(iso) {
  // "today 02:00", "tomorrow 02:00", "Wed 3 Dec 02:00" in the browser's time zone.
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  const day = new Date(d); day.setHours(0, 0, 0, 0);
  const today = new Date(); today.setHours(0, 0, 0, 0);
  const diff = Math.round((day - today) / 86400000);
  const time = pad(d.getHours()) + ":" + pad(d.getMinutes());
  if (diff === 0) return "today " + time;
  if (diff === 1) return "tomorrow " + time;
  return d.toLocaleDateString(undefined, {weekday: "short", day: "numeric", month: "short"}) +
         " " + time;
}
function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0; let v = n;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return (i ? v.toFixed(1) : v) + " " + units[i];
}
function duration(s) {
  // The server's format_duration: whole days in days, else the largest unit that divides.
  if (s % 86400 === 0) return (s / 86400) + "d";
  if (s % 3600 === 0) return (s / 3600) + "h";
  if (s % 60 === 0) return (s / 60) + "min";
  return s + "s";
}
function scheduleText(schedule) {
  if (schedule && schedule.cron) return "cron " + schedule.cron;
  if (schedule && schedule.interval_s) return "every " + duration(schedule.interval_s);
  return "–";
}
function outcome(job, run) {
  const verb = job && job.kind === "purge" ? (run.dry_run ? "would purge" : "purged")
                                           : "exported";
  const dry = run.dry_run ? " (dry run)" : "";
  if (run.state === "running") return "running" + dry;
  if (run.state === "finished") {
    const count = run.dry_run && job && job.kind === "purge" && ADMIN ? run.would_purge.length
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

function targetLine(job) {
  // Admins: where an export job writes and what the role holder last said about it.
  if (!ADMIN || job.kind !== "export" || !job.definition) return null;
  const target = job.definition.export.target_dir;
  const check = job.target_check;
  const line = el("div", {class: "job-target muted"}, "to ",
                  el("span", {class: "target-path"}, target), " ");
  if (!check) {
    line.append(el("span", {class: "badge", "data-testid": "job-target-check",
                            "data-state": "unchecked"}, "not checked yet"));
  } else {
    const state = check.ok ? "ok" : "failed";
    const badge = el("span", {class: "badge " + (check.ok ? "ok" : "bad"),
                              "data-testid": "job-target-check", "data-state": state,
                              title: check.detail},
                     (check.ok ? "target ok" : "target missing or unwritable") +
                     " on " + check.node_id + (check.current ? "" : " (earlier check)"));
    line.append(badge);
    if (!check.ok) line.append(el("div", {class: "error"}, check.detail));
  }
  return line;
}

function retentionLine(job) {
  if (!ADMIN || job.kind !== "purge" || !job.definition) return null;
  const p = job.definition.purge;
  const overrides = Object.keys(p.user_retention).length + Object.keys(p.group_retention).length;
  return el("div", {class: "job-target muted"}, "keep " + p.retention +
            (overrides ? " (" + overrides + " overrides)" : ""));
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
      el("button", {type: "button", "data-testid": "delete", class: "danger",
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
    el("td", {}, el("span", {"data-testid": "job-name"}, job.name), targetLine(job),
       retentionLine(job)),
    el("td", {"data-testid": "job-kind"}, job.kind),
    el("td", {"data-testid": "job-schedule"}, scheduleText(job.schedule)),
    el("td", {"data-testid": "job-next-run", title: job.next_run || ""},
       job.paused ? "–" : (job.next_run ? readable(job.next_run) : "–")),
    el("td", {"data-testid": "job-runs-on"}, ADMIN ? (job.runs_on || "nobody") : "–"),
    el("td", {"data-testid": "job-paused"}, job.paused ? "yes" : "no"),
    el("td", {}, lastCell, exported),
    actions);
}

function runRow(job, run) {
  return el("tr", {"data-testid": "run-row", "data-run-id": run.run_id, "data-job-id": run.job_id,
                   "data-state": run.state},
    el("td", {}, job ? job.name : run.job_id),
    el("td", {}, when(run.started_at)),
    el("td", {"data-testid": "run-node"}, run.node_id || "–"),
    el("td", {}, run.trigger),
    el("td", {"data-testid": "run-outcome", class: "state-" + run.state}, outcome(job, run)),
    el("td", {}, progressCell(run)),
    el("td", {"data-testid": "run-bytes"}, bytes(run.bytes)),
    el("td", {"data-testid": "run-error", class: "error"}, run.error || ""));
}

function render(status) {
  jobs = status.jobs || [];
  $("status-line").textContent = (ADMIN
    ? "Answered by node " + status.node_id + "; maintenance role held by " +
      (status.holder || "nobody (no node can see a holder)") + ". "
    : "") + "Updated " + when(new Date().toISOString()) + ".";
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

// ---- the form (admins) -------------------------------------------------------------

function clearErrors() {
  $("form-error").textContent = "";
  for (const p of document.querySelectorAll("#job-form .field-error")) p.textContent = "";
  for (const input of document.querySelectorAll("#job-form .invalid")) {
    input.classList.remove("invalid");
  }
}

const FIELD_INPUTS = {
  "name": "f-name", "kind": "f-kind", "schedule": "f-sched", "purge.retention": "f-retention",
  "export.target_dir": "f-target", "export.format": "f-format",
  "export.path_template": "f-template",
};

function errorSlot(key) {
  // The field's own slot, else the nearest enclosing one ("schedule.interval" ->
  // "schedule"), else the form's.
  let current = key;
  while (current) {
    const slot = document.querySelector('#job-form [data-error-for="' + CSS.escape(current) + '"]');
    if (slot) return [slot, current];
    current = current.includes(".") ? current.slice(0, current.lastIndexOf(".")) : "";
  }
  return [$("form-error"), ""];
}

function showErrors(fields, fallback) {
  let shown = false;
  for (const [key, message] of Object.entries(fields || {})) {
    const [slot, matched] = errorSlot(key);
    slot.textContent = slot.textContent ? slot.textContent + "; " + message : message;
    const input = FIELD_INPUTS[matched] && $(FIELD_INPUTS[matched]);
    if (input) input.classList.add("invalid");
    shown = true;
  }
  if (!shown && fallback) $("form-error").textContent = fallback;
}

function overrideRow(container, name, value) {
  const row = el("div", {class: "override", "data-testid": "override"},
    el("input", {class: "o-name", "data-testid": "o-name", placeholder: "name",
                 "aria-label": "name", maxlength: 64, value: name || ""}),
    el("input", {class: "o-value", "data-testid": "o-value", placeholder: "days",
                 "aria-label": "retention", value: value || ""}),
    el("span", {class: "muted"}, "days"),
    el("button", {type: "button", "data-testid": "o-remove",
                  onclick: () => row.remove()}, "Remove"));
  container.append(row);
}

function overrides(container) {
  const out = {};
  for (const row of container.querySelectorAll(".override")) {
    const name = row.querySelector(".o-name").value.trim();
    const value = row.querySelector(".o-value").value.trim();
    if (!name && !value) continue;
    if (name in out) throw new ApiError("duplicate " + name, 400,
                                        {[container.dataset.field]: name + " is listed twice"});
    out[name] = value;
  }
  return out;
}

function daysText(text) {
  // The server's definition speaks days ("365d"); the form's unit is days too.
  return /^\d+(\.\d+)?d$/.test(text) ? text.slice(0, -1) : text;
}

function showKind() {
  const kind = $("f-kind").value;
  $("f-purge").hidden = kind !== "purge";
  $("f-export").hidden = kind !== "export";
}

function showScheduleType() {
  const interval = $("f-sched-type").value === "interval";
  $("f-cron-part").hidden = interval;
  $("f-interval-part").hidden = !interval;
}

function scheduleBody() {
  if ($("f-sched-type").value === "cron") return {cron: $("f-sched").value.trim()};
  return {interval: $("f-interval").value.trim() + $("f-interval-unit").value};
}

function formBody() {
  const kind = $("f-kind").value;
  const body = {name: $("f-name").value, kind, schedule: scheduleBody(),
                paused: $("f-paused").checked};
  if (kind === "purge") {
    body.purge = {retention: $("f-retention").value.trim(),
                  user_retention: overrides($("f-user-overrides")),
                  group_retention: overrides($("f-group-overrides"))};
  } else {
    body.export = {target_dir: $("f-target").value.trim(), format: $("f-format").value,
                   path_template: $("f-template").value, sidecar: $("f-sidecar").checked};
  }
  return body;
}

function showTargetCheck(check) {
  const slot = $("f-target-check");
  if (!check || check.state === "none") {
    slot.textContent = ""; slot.removeAttribute("data-state"); return;
  }
  slot.dataset.state = check.state;
  const who = check.node_id ? check.node_id + " (maintenance role holder)" : "";
  slot.textContent = check.state === "ok" ? "Checked on " + who + ": " + check.detail
    : check.state === "failed" ? "Saved, but on " + who + ": " + check.detail
    : "Saved; target not checked yet: " + check.detail;
}

async function updatePreview() {
  const body = {schedule: scheduleBody()};
  if ($("f-kind").value === "export") {
    body.path_template = $("f-template").value;
    body.format = $("f-format").value;
  }
  try {
    const result = await api("POST", "/api/jobs/preview", body);
    const errors = result.errors || {};
    const schedError = Object.entries(errors).find(([key]) => key.startsWith("schedule"));
    $("f-next-runs").textContent = schedError ? "" : (result.next_runs || []).length
      ? "Next runs (your time): " + result.next_runs.map(readable).join(", ") : "";
    const target = $("f-target").value.trim().replace(/\/+$/, "");
    $("f-example").textContent = errors["export.path_template"]
      ? "–" : (target ? target + "/" : "") + (result.example_path || "");
    // Hints only: the save reports errors at their fields.
    for (const key of ["schedule", "export.path_template"]) errorSlot(key)[0].textContent = "";
    showErrors(errors, null);
  } catch (err) {
    $("f-next-runs").textContent = "";
  }
}

function schedulePreview() {
  clearTimeout(previewTimer);
  previewTimer = setTimeout(updatePreview, 250);
}

function openForm(job) {
  clearErrors();
  showTargetCheck(null);
  const def = job ? job.definition : null;
  if (job && !def) {
    $("form-error").textContent = "This job's definition cannot be read here; " +
                                  "saving replaces it.";
  }
  $("f-job-id").value = job ? job.job_id : "";
  $("form-title").textContent = job ? "Edit " + job.name : "New job";
  $("f-name").value = job ? job.name : "";
  $("f-kind").value = job ? job.kind : "export";
  const schedule = def ? def.schedule : {cron: "0 2 * * *"};
  $("f-sched-type").value = schedule.interval ? "interval" : "cron";
  $("f-sched").value = schedule.cron || "0 2 * * *";
  const interval = /^(\d+(?:\.\d+)?)(s|min|h|d)$/.exec(schedule.interval || "");
  $("f-interval").value = interval ? interval[1] : "6";
  $("f-interval-unit").value = interval ? interval[2] : "h";
  $("f-paused").checked = job ? job.paused : false;
  const purge = def && def.purge ? def.purge : {retention: "365d", user_retention: {},
                                                  group_retention: {}};
  $("f-retention").value = daysText(purge.retention);
  $("f-user-overrides").replaceChildren();
  $("f-group-overrides").replaceChildren();
  for (const [name, value] of Object.entries(purge.user_retention)) {
    overrideRow($("f-user-overrides"), name, daysText(value));
  }
  for (const [name, value] of Object.entries(purge.group_retention)) {
    overrideRow($("f-group-overrides"), name, daysText(value));
  }
  const exp = def && def.export ? def.export : {target_dir: "", format: "opus",
                                                path_template: DEFAULT_TEMPLATE, sidecar: true};
  $("f-target").value = exp.target_dir;
  $("f-format").value = exp.format;
  $("f-template").value = exp.path_template;
  $("f-sidecar").checked = exp.sidecar;
  if (job && job.target_check) {
    showTargetCheck({state: job.target_check.ok ? "ok" : "failed",
                     detail: job.target_check.detail, node_id: job.target_check.node_id});
  }
  showKind();
  showScheduleType();
  $("job-form-section").hidden = false;
  schedulePreview();
  $("f-name").focus();
}

async function submitForm(event) {
  event.preventDefault();
  clearErrors();
  showTargetCheck(null);
  const id = $("f-job-id").value;
  let body;
  try { body = formBody(); }
  catch (err) { showErrors(err.fields, err.message); return; }
  $("f-save").disabled = true;
  try {
    const result = await api(id ? "PUT" : "POST", id ? "/api/jobs/" + id : "/api/jobs", body);
    $("f-job-id").value = result.job_id;  // saving again edits this job
    $("form-title").textContent = "Edit " + body.name;
    const check = result.target_check || {state: "none"};
    showTargetCheck(check);
    const verb = id ? "Saved " : "Created ";
    if (check.state === "none" || check.state === "ok") {
      $("job-form-section").hidden = true;
      $("action-message").textContent = verb + body.name +
        (check.state === "ok" ? "; target checked on " + check.node_id + ": " + check.detail : "");
    } else {
      $("action-message").textContent = verb + body.name + "; see the target check below.";
    }
    lastText = "";
    await refresh();
  } catch (err) {
    showErrors(err.fields, err.message);
  } finally {
    $("f-save").disabled = false;
  }
}

if (ADMIN && $("job-form")) {
  $("f-user-overrides").dataset.field = "purge.user_retention";
  $("f-group-overrides").dataset.field = "purge.group_retention";
  $("new-job").addEventListener("click", () => openForm(null));
  $("f-cancel").addEventListener("click", () => { $("job-form-section").hidden = true; });
  $("f-kind").addEventListener("change", () => { showKind(); schedulePreview(); });
  $("f-sched-type").addEventListener("change", () => { showScheduleType(); schedulePreview(); });
  for (const id of ["f-sched", "f-interval", "f-interval-unit", "f-template", "f-format",
                    "f-target"]) {
    $(id).addEventListener("input", schedulePreview);
  }
  $("f-add-user").addEventListener("click", () => overrideRow($("f-user-overrides")));
  $("f-add-group").addEventListener("click", () => overrideRow($("f-group-overrides")));
  $("job-form").addEventListener("submit", submitForm);
}
refresh();
setInterval(refresh, 1000);
