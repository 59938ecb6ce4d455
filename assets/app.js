// retrylog's dashboard script (no inline scripts: the Content-Security-Policy forbids them).
// 1. Live: the element with data-live is fetched again every second, with the page's own
//    query (its filters), unless paused or while the user is typing in it.
// 2. Filters: a form with data-autosubmit reloads the page with its values in the URL, so a
//    view can be bookmarked and survives a reload.
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  var pause = document.getElementById("pause");
  var paused = false;
  if (pause) {
    pause.addEventListener("click", function () {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      pause.setAttribute("aria-pressed", String(paused));
    });
  }
  function busy() {
    return live.contains(document.activeElement) || live.querySelector("details[open]") !== null;
  }
  function refresh() {
    if (paused || busy()) return;
    fetch(live.dataset.live + window.location.search, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html !== null && !busy()) {
          live.innerHTML = html;
          live.dataset.refreshed = String(Date.now());
        }
      })
      .catch(function () { /* the next tick tries again */ });
  }
  if (live) window.setInterval(refresh, 1000);
  document.querySelectorAll("form[data-autosubmit]").forEach(function (form) {
    form.addEventListener("change", function () { form.submit(); });
  });
})();
