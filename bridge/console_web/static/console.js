// Palaver console: live overview (server-sent events) and confirmations.
// Everything works without this file; it only saves reloads and asks before acting.
"use strict";

document.addEventListener("DOMContentLoaded", function () {
  var live = document.querySelector("[data-live]");
  var state = document.getElementById("live-state");
  if (live && window.EventSource) {
    var source = new EventSource(live.getAttribute("data-live"));
    source.addEventListener("overview", function (event) {
      // The fragment is rendered (and escaped) by the server's template.
      live.innerHTML = event.data;
      if (state) { state.textContent = "Live: updated " + new Date().toLocaleTimeString() + "."; }
    });
    source.addEventListener("error", function () {
      if (state) { state.textContent = "Live updates paused; reconnecting…"; }
    });
  }
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
});
