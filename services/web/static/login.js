// The login form: posts JSON (the CSRF rules refuse form posts), then follows `next`,
// which the server reduced to a local path.
"use strict";
(function () {
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");
  const submit = document.getElementById("login-submit");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    submit.disabled = true;
    try {
      const response = await fetch("/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({
          username: document.getElementById("login-username").value,
          password: document.getElementById("login-password").value,
          next: form.dataset.next || "/",
        }),
      });
      if (response.ok) {
        const body = await response.json();
        window.location.assign(body.next || "/");
        return;
      }
      if (response.status === 429) {
        const wait = response.headers.get("Retry-After");
        error.textContent = "Too many failed logins from this address; try again in " +
          (wait || "a few") + " seconds.";
      } else if (response.status === 401) {
        error.textContent = "Wrong user name or password.";
      } else {
        error.textContent = "Login failed (" + response.status + ").";
      }
    } catch (e) {
      error.textContent = "The node did not answer: " + e;
    } finally {
      submit.disabled = false;
    }
  });
})();
