// Users and groups (admin): list, create, edit, disable, reset password, remove, all
// through /api/users (JSON only). User data is rendered with textContent.
"use strict";
(function () {
  const {request: api} = window.callrec;
  const errorLine = document.getElementById("users-error");
  const messageLine = document.getElementById("users-message");
  const section = document.getElementById("user-form-section");
  const form = document.getElementById("user-form");
  const field = (id) => document.getElementById(id);
  let users = [];

  function say(ok, text) {
    errorLine.textContent = ok ? "" : text;
    messageLine.textContent = ok ? text : "";
  }

  function list(text) {
    return text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  }

  function cell(row, text, testid) {
    const td = document.createElement("td");
    td.textContent = text;
    if (testid) td.dataset.testid = testid;
    row.appendChild(td);
    return td;
  }

  function button(label, testid, onClick, cls) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.dataset.testid = testid;
    if (cls) b.className = cls;
    b.addEventListener("click", onClick);
    return b;
  }

  function body(user, changes) {
    return Object.assign({
      username: user.username, display_name: user.display_name, role: user.role,
      extensions: user.extensions, groups: user.groups, supervises: user.supervises,
      record: user.record, disabled: user.disabled,
    }, changes);
  }

  async function save(payload, done) {
    const result = await api("POST", "/api/users", payload);
    if (!result.ok) {
      say(false, (result.data && result.data.detail) || ("Saving failed (" + result.status + ")."));
      return false;
    }
    say(true, done);
    await load();
    return true;
  }

  function edit(user) {
    field("user-form-title").textContent = user ? "Edit " + user.username : "New user";
    field("u-username").value = user ? user.username : "";
    field("u-username").readOnly = Boolean(user);
    field("u-display").value = user && user.display_name ? user.display_name : "";
    field("u-role").value = user ? user.role : "user";
    field("u-extensions").value = user ? user.extensions.join(", ") : "";
    field("u-groups").value = user ? user.groups.join(", ") : "";
    field("u-supervises").value = user ? user.supervises.join(", ") : "";
    field("u-password").value = "";
    field("u-record").checked = user ? user.record : true;
    field("u-disabled").checked = user ? user.disabled : false;
    section.hidden = false;
    field(user ? "u-display" : "u-username").focus();
  }

  function render() {
    const tbody = field("users-body");
    tbody.replaceChildren();
    for (const user of users) {
      const row = document.createElement("tr");
      row.dataset.testid = "user-row";
      row.dataset.username = user.username;
      if (user.disabled) row.className = "disabled";
      cell(row, user.username, "user-name");
      cell(row, user.display_name || "", "user-display");
      cell(row, user.role, "user-role");
      cell(row, user.extensions.join(", "), "user-extensions");
      cell(row, user.groups.join(", "), "user-groups");
      cell(row, user.supervises.join(", "), "user-supervises");
      cell(row, user.record ? "yes" : "no", "user-record");
      cell(row, user.disabled ? "disabled" : (user.has_password ? "can log in" : "no password"),
        "user-status");
      const actions = cell(row, "", null);
      actions.className = "actions";
      actions.appendChild(button("Edit", "user-edit", () => edit(user)));
      actions.appendChild(button(user.disabled ? "Enable" : "Disable", "user-toggle", () =>
        save(body(user, { disabled: !user.disabled }),
          user.username + (user.disabled ? " enabled." : " disabled."))));
      actions.appendChild(button("Reset password", "user-reset", async () => {
        const password = window.prompt("New password for " + user.username + " (at least 8 characters):");
        if (password) await save(body(user, { password }), "Password of " + user.username + " reset.");
      }));
      actions.appendChild(button("Remove", "user-remove", async () => {
        if (!window.confirm("Remove " + user.username + "?")) return;
        const result = await api("DELETE", "/api/users/" + encodeURIComponent(user.username));
        say(result.ok, result.ok ? user.username + " removed."
          : (result.data && result.data.detail) || ("Removing failed (" + result.status + ")."));
        await load();
      }, "danger"));
      tbody.appendChild(row);
    }
  }

  function renderGroups(groups) {
    const tbody = field("groups-body");
    tbody.replaceChildren();
    for (const group of groups) {
      const row = document.createElement("tr");
      row.dataset.testid = "group-row";
      row.dataset.group = group.name;
      cell(row, group.name, "group-name");
      cell(row, group.members.join(", "), "group-members");
      cell(row, group.supervisors.join(", "), "group-supervisors");
      tbody.appendChild(row);
    }
  }

  async function load() {
    const [u, g] = await Promise.all([api("GET", "/api/users"), api("GET", "/api/groups")]);
    if (!u.ok || !g.ok) {
      say(false, "Could not load users (" + (u.ok ? g.status : u.status) + ").");
      return;
    }
    users = u.data.items;
    render();
    renderGroups(g.data.items);
  }

  field("new-user").addEventListener("click", () => edit(null));
  field("u-cancel").addEventListener("click", () => { section.hidden = true; });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const payload = {
      username: field("u-username").value.trim(),
      display_name: field("u-display").value.trim() || null,
      role: field("u-role").value,
      extensions: list(field("u-extensions").value),
      groups: list(field("u-groups").value),
      supervises: list(field("u-supervises").value),
      record: field("u-record").checked,
      disabled: field("u-disabled").checked,
    };
    if (field("u-password").value) payload.password = field("u-password").value;
    if (await save(payload, payload.username + " saved.")) section.hidden = true;
  });
  load();
})();
