// Shared by every page (loaded before each page's own script): small DOM and API
// helpers and the one way times are shown, as `window.callrec`; and logging out.
"use strict";
(function () {
  function $(id) { return document.getElementById(id); }

  // An element with attributes ("text" sets textContent, "onclick" adds a listener)
  // and children; user data only ever lands in text nodes.
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

  class ApiError extends Error {
    constructor(message, status, fields) {
      super(message); this.status = status; this.fields = fields || {};
    }
  }

  // A same-origin JSON request (the CSRF rules need JSON for every change):
  // {ok, status, data}, whatever the status.
  async function request(method, path, body) {
    const init = {method, credentials: "same-origin", cache: "no-store", headers: {}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return {ok: response.ok, status: response.status, data};
  }

  // The same, throwing an ApiError (the server's detail and field errors) unless 2xx.
  async function api(method, path, body) {
    const {ok, status, data} = await request(method, path, body);
    if (!ok) {
      const fields = data && data.extra && data.extra.fields;
      throw new ApiError((data && data.detail) || String(status), status, fields);
    }
    return data;
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  // A time in the browser's zone, readable: "today 14:03:05", else "Sun 29 Nov 2026 14:03:05".
  function when(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    const time = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
    if (d.toDateString() === new Date().toDateString()) return "today " + time;
    return d.toLocaleDateString(undefined, {weekday: "short", day: "numeric", month: "short",
                                           year: "numeric"}) + " " + time;
  }

  window.callrec = {$, el, api, request, ApiError, pad, when};

  const logout = $("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try {
        await request("POST", "/logout", {});
      } finally {
        window.location.assign("/login");
      }
    });
  }
})();
