// The account page: own password and API tokens, through /api/account (JSON only).
"use strict";
(function () {
  const {when, request: api} = window.callrec;

  const pwForm = document.getElementById("password-form");
  const pwMessage = document.getElementById("pw-message");
  pwForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const current = document.getElementById("pw-current").value;
    const next = document.getElementById("pw-new").value;
    if (next !== document.getElementById("pw-again").value) {
      pwMessage.className = "error";
      pwMessage.textContent = "The two new passwords differ.";
      return;
    }
    const result = await api("PUT", "/api/account/password",
      { current_password: current, new_password: next });
    pwMessage.className = result.ok ? "ok" : "error";
    pwMessage.textContent = result.ok ? "Password changed."
      : (result.data && result.data.detail) || ("Failed (" + result.status + ").");
    if (result.ok) pwForm.reset();
  });

  const body = document.getElementById("tokens-body");
  const tokenMessage = document.getElementById("token-message");

  async function loadTokens() {
    const result = await api("GET", "/api/account/tokens");
    body.replaceChildren();
    if (!result.ok) {
      tokenMessage.className = "error";
      tokenMessage.textContent = "Could not load tokens (" + result.status + ").";
      return;
    }
    for (const token of result.data.items) {
      const row = document.createElement("tr");
      row.dataset.testid = "token-row";
      row.dataset.tokenId = token.token_id;
      for (const text of [token.name, when(token.created_at), when(token.expires_at)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      const cell = document.createElement("td");
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.className = "danger";
      revoke.textContent = "Revoke";
      revoke.dataset.testid = "token-revoke";
      revoke.addEventListener("click", async () => {
        const done = await api("DELETE", "/api/account/tokens/" + encodeURIComponent(token.token_id));
        tokenMessage.className = done.ok ? "ok" : "error";
        tokenMessage.textContent = done.ok ? "Token revoked." : "Revoking failed (" + done.status + ").";
        await loadTokens();
      });
      cell.appendChild(revoke);
      row.appendChild(cell);
      body.appendChild(row);
    }
  }

  document.getElementById("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const expiry = document.getElementById("token-expiry").value;
    const result = await api("POST", "/api/account/tokens", {
      name: document.getElementById("token-name").value,
      expires_in_days: expiry ? Number(expiry) : null,
    });
    if (result.ok) {
      document.getElementById("token-value").textContent = result.data.token;
      document.getElementById("token-new").hidden = false;
      tokenMessage.textContent = "";
      event.target.reset();
    } else {
      tokenMessage.className = "error";
      tokenMessage.textContent = (result.data && result.data.detail) || ("Failed (" + result.status + ").");
    }
    await loadTokens();
  });

  loadTokens();
})();
