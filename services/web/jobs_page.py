"""The jobs dashboard: one HTML page plus static/jobs.js and static/jobs.css (no build
step, nothing external, nothing inline, so the CSP can say `script-src 'self'`).

The page is static; its script polls `GET /api/jobs` every second and renders with
`textContent` only (job names and errors are user input), so the server-side part is
just the signed-in user and whether they are an admin (`data-admin`). Element ids and
`data-testid`s are stable: the end-to-end test drives the page through them.
"""

from __future__ import annotations

import html
import json

_PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>callrec jobs</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/jobs.css">
</head>
<body data-admin="__ADMIN__">
<nav><a href="/">Recordings</a><a href="/cluster">Cluster</a><a href="/jobs">Jobs</a></nav>
<h1>Maintenance jobs</h1>
<p id="status-line" data-testid="status-line" class="muted">Loading…</p>
<p id="load-error" data-testid="load-error" class="error" role="alert"></p>
<p id="action-message" data-testid="action-message" role="status"></p>
<button id="new-job" data-testid="new-job" type="button" __ADMIN_ONLY__>New job</button>
<table id="jobs" data-testid="jobs-table">
<thead><tr><th>Name</th><th>Kind</th><th>Schedule</th><th>Next run</th><th>Runs on</th>
<th>Paused</th><th>Last run</th><th></th></tr></thead>
<tbody id="jobs-body"></tbody></table>
<p id="no-jobs" class="muted" hidden>No jobs yet.</p>

<section id="job-form-section" hidden>
<h2 id="form-title">New job</h2>
<form id="job-form" data-testid="job-form">
<input type="hidden" id="f-job-id">
<label>Name <input id="f-name" data-testid="f-name" required maxlength="100"></label>
<label>Kind <select id="f-kind" data-testid="f-kind">
<option value="export">export (copy to a folder)</option>
<option value="purge">purge (delete past retention)</option></select></label>
<label>Schedule <select id="f-sched-type" data-testid="f-sched-type">
<option value="cron">cron (min hour day month weekday, node's local time)</option>
<option value="interval">every N seconds</option></select>
<input id="f-sched" data-testid="f-sched" value="0 2 * * *" size="20"></label>
<label><input type="checkbox" id="f-paused" data-testid="f-paused"> paused</label>
<label>Parameters (JSON)
<textarea id="f-params" data-testid="f-params" rows="8"></textarea></label>
<p class="muted" id="f-help"></p>
<button type="submit" id="f-save" data-testid="f-save">Save</button>
<button type="button" id="f-cancel">Cancel</button>
<p id="form-error" data-testid="form-error" class="error" role="alert"></p>
</form></section>

<h2>Last runs</h2>
<table id="runs" data-testid="runs-table">
<thead><tr><th>Job</th><th>Started</th><th>Node</th><th>Trigger</th><th>Outcome</th>
<th>Progress</th><th>Bytes</th><th>Error</th></tr></thead>
<tbody id="runs-body"></tbody></table>
<p class="muted">Signed in as <span id="user">__USER__</span>.</p>

<script src="/static/jobs.js" defer></script>
</body></html>
"""


def jobs_page(username: str, admin: bool) -> str:
    """The page for one user: admins get the buttons (the API enforces it anyway)."""
    return (
        _PAGE.replace("__USER__", html.escape(username))
        .replace("__ADMIN_ONLY__", "" if admin else "hidden")
        .replace("__ADMIN__", json.dumps(bool(admin)))
    )
