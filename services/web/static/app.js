// Shared by every page: logging out (a same-origin JSON POST, as the CSRF rules require).
"use strict";
(function () {
  const button = document.getElementById("logout");
  if (!button) return;
  button.addEventListener("click", async () => {
    try {
      await fetch("/logout", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
        credentials: "same-origin",
      });
    } finally {
      window.location.assign("/login");
    }
  });
})();
