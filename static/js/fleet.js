// Refresh the fleet table in place: fetch the HTML fragment every few seconds (same filters
// as the page) and swap it in; pause while the tab is hidden.
(function () {
  "use strict";
  var box = document.getElementById("fleet-state");
  if (!box) { return; }
  var url = box.getAttribute("data-refresh-url");
  var every = parseInt(box.getAttribute("data-refresh-s") || "5", 10) * 1000;
  var status = document.getElementById("fleet-refresh-status");
  function refresh() {
    if (document.hidden) { return; }
    fetch(url + window.location.search, { headers: { "X-Requested-With": "fetch" }, credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (html) {
        box.innerHTML = html;
        box.setAttribute("data-refreshed", String(Date.now()));
        if (status) { status.textContent = "updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function (err) { if (status) { status.textContent = "refresh failed (" + err.message + "), retrying"; } });
  }
  setInterval(refresh, every);
})();
