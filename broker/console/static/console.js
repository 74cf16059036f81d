// gradebroker console: live updates (server-sent events), the pause
// toggle, and confirmations. Everything the server sends is HTML it
// rendered and escaped itself; this file only puts it in place.
"use strict";

(function () {
  // Confirm before forms that change something.
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) {
      e.preventDefault();
    }
  });

  var region = document.getElementById("live");
  var pause = document.getElementById("pause");
  var state = document.getElementById("livestate");
  if (!region || !region.getAttribute("data-live")) {
    return;
  }
  var url = region.getAttribute("data-live");
  var source = null;
  var pending = null;

  function say(text) {
    if (state) {
      state.textContent = text;
    }
  }

  // An update never replaces what the keyboard is on: it waits until the
  // focus leaves the region.
  function apply(html) {
    if (region.contains(document.activeElement) && document.activeElement !== region) {
      pending = html;
      return;
    }
    pending = null;
    region.innerHTML = html;
    say("Live, updated " + new Date().toLocaleTimeString());
  }
  region.addEventListener("focusout", function () {
    window.setTimeout(function () {
      if (pending !== null && !region.contains(document.activeElement)) {
        apply(pending);
      }
    }, 0);
  });

  function start() {
    source = new EventSource(url);
    source.addEventListener("update", function (e) { apply(e.data); });
    source.addEventListener("ended", function (e) {
      stop();
      say("Stopped: " + e.data + " Reload the page to log in again.");
    });
    source.addEventListener("failed", function (e) {
      stop();
      say("Stopped: " + e.data);
    });
    source.onerror = function () {
      // The browser retries a broken stream by itself; a refused one (the
      // session ended) it gives up.
      if (source && source.readyState === EventSource.CLOSED) {
        stop();
        say("Stopped: reload the page.");
      } else {
        say("Reconnecting…");
      }
    };
    say("Live");
  }
  function stop() {
    if (source) {
      source.close();
      source = null;
    }
  }
  if (pause) {
    pause.addEventListener("click", function () {
      var paused = pause.getAttribute("aria-pressed") === "true";
      if (paused) {
        pause.setAttribute("aria-pressed", "false");
        pause.textContent = "Pause live updates";
        start();
      } else {
        stop();
        pause.setAttribute("aria-pressed", "true");
        pause.textContent = "Resume live updates";
        say("Paused");
      }
    });
  }
  start();
})();
