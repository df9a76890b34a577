// histimport pages: live progress of running imports, and the upload page.
// Plain JavaScript, no build step, nothing from the internet (the policy is 'self').
(function () {
  "use strict";

  var POLL_MS = 1500;

  function getJSON(url) {
    return fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    }).then(function (response) {
      if (!response.ok) {
        return response.json().then(
          function (body) { throw new Error(body.detail || response.statusText); },
          function () { throw new Error(response.status + " " + response.statusText); }
        );
      }
      return response.json();
    });
  }

  function showProgress(holder, status) {
    var bar = holder.querySelector("progress");
    var text = holder.querySelector(".live-text");
    if (bar && status.progress_percent !== null && status.progress_percent !== undefined) {
      bar.value = status.progress_percent;
    }
    if (text) {
      var parts = [];
      if (status.rows_done !== null && status.rows_done !== undefined) {
        parts.push(status.rows_done.toLocaleString() + " rows");
      }
      if (status.phase) { parts.push(status.phase); }
      text.textContent = parts.join(", ");
    }
  }

  // A running import's row (or summary) carries data-poll: its status URL. Poll it until the
  // import has finished, then reload the page to show the final counts.
  function follow(holder) {
    var url = holder.getAttribute("data-poll");
    function tick() {
      getJSON(url).then(function (status) {
        showProgress(holder, status);
        if (status.finished) {
          window.location.reload();
        } else {
          window.setTimeout(tick, POLL_MS);
        }
      }, function () {
        window.setTimeout(tick, POLL_MS * 4);
      });
    }
    window.setTimeout(tick, POLL_MS);
  }

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function setupUpload(form) {
    var card = document.getElementById("upload-card");
    var bar = document.getElementById("upload-progress");
    var status = document.getElementById("upload-status");
    var link = document.getElementById("upload-link");
    var button = document.getElementById("u-send");

    function say(text) { status.textContent = text; }
    function fail(text) {
      say(text);
      status.className = "error";
      button.disabled = false;
    }

    function followImport(importId) {
      var page = "/imports/" + importId;
      link.textContent = "";
      var a = document.createElement("a");
      a.href = page;
      a.id = "upload-import-link";
      a.textContent = "Import " + importId;
      link.appendChild(a);
      function tick() {
        getJSON("/api/imports/" + importId + "/status").then(function (s) {
          if (s.progress_percent !== null && s.progress_percent !== undefined) {
            bar.value = s.progress_percent;
          }
          var rows = s.rows_done !== null && s.rows_done !== undefined
            ? ", " + s.rows_done.toLocaleString() + " rows" : "";
          if (s.finished) {
            bar.value = 100;
            say("Import " + importId + " finished: " + s.status + rows + ".");
            status.setAttribute("data-finished", s.status);
            button.disabled = false;
          } else {
            say("Importing (import " + importId + ", " + s.status +
                (s.phase ? ", " + s.phase : "") + rows + ")...");
            window.setTimeout(tick, POLL_MS);
          }
        }, function (error) { fail("Cannot follow import " + importId + ": " + error.message); });
      }
      tick();
    }

    function followUpload(statusUrl) {
      function tick() {
        getJSON(statusUrl).then(function (s) {
          if (s.import_id) {
            followImport(s.import_id);
          } else {
            say("Uploaded; waiting for the import to start...");
            window.setTimeout(tick, POLL_MS);
          }
        }, function (error) { fail("Cannot follow the upload: " + error.message); });
      }
      tick();
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var file = form.querySelector('input[type="file"]').files[0];
      if (!file) { fail("Choose a file first."); return; }
      var data = new FormData();
      // The dataset comes before the file: the service reads the form as it arrives.
      data.append("dataset", form.querySelector("select").value);
      data.append("file", file, file.name);
      card.hidden = false;
      status.className = "";
      status.removeAttribute("data-finished");
      link.textContent = "";
      bar.value = 0;
      button.disabled = true;
      say("Sending " + file.name + "...");
      var xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/uploads");
      xhr.setRequestHeader("X-CSRF-Token", csrfToken());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable) {
          bar.value = Math.round((100 * e.loaded) / e.total);
          say("Sending " + file.name + ": " + e.loaded.toLocaleString() + " of " +
              e.total.toLocaleString() + " bytes");
        }
      });
      xhr.addEventListener("load", function () {
        var body = {};
        try { body = JSON.parse(xhr.responseText); } catch (ignored) { body = {}; }
        if (xhr.status !== 202) {
          fail("The upload was refused (" + xhr.status + "): " + (body.detail || xhr.statusText));
          return;
        }
        bar.value = 0;
        say("Uploaded " + body.file_name + " (" + body.size.toLocaleString() + " bytes); " +
            (body.mode === "direct" ? "importing..." : "waiting for the inbox sensor..."));
        followUpload(body.status_url);
      });
      xhr.addEventListener("error", function () { fail("The upload did not reach the service."); });
      xhr.send(data);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("[data-poll]"), follow);
    var form = document.getElementById("upload-form");
    if (form) { setupUpload(form); }
  });
})();
