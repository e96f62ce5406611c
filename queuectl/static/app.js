// queuectl dashboard: refresh the page's view from its /api JSON every few
// seconds, without reloading. Everything is built with DOM calls and
// textContent, never innerHTML, so job data can never become markup.
"use strict";
(function () {
  var REFRESH_MS = 3000;
  var body = document.body;
  var view = body.dataset.view;
  var api = body.dataset.api;
  var live = document.getElementById("live");

  function el(tag, text, attrs) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (attrs) for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function link(href, text) { return el("a", text, {href: href}); }
  function jobLink(id) { return link("/job/" + encodeURIComponent(id), id); }
  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, obj);
  }
  function age(s) {
    if (s === null || s === undefined) return "?";
    s = Math.round(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }
  function when(epoch) {
    return epoch ? new Date(epoch * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "";
  }
  function fillFields(data) {
    document.querySelectorAll("[data-field]").forEach(function (e) {
      var v = get(data, e.dataset.field);
      if (v !== undefined) e.textContent = v === null ? "…" : String(v);
    });
  }
  function fillBody(table, rows, columns, emptyText) {
    var tbody = table.tBodies[0];
    var fresh = document.createElement("tbody");
    rows.forEach(function (r) {
      var tr = el("tr");
      columns(r).forEach(function (c) {
        var td = el("td");
        if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "" : String(c);
        tr.appendChild(td);
      });
      fresh.appendChild(tr);
    });
    if (!rows.length) {
      var tr = el("tr", null, {"class": "empty"});
      tr.appendChild(el("td", emptyText, {colspan: table.tHead.rows[0].cells.length}));
      fresh.appendChild(tr);
    }
    table.replaceChild(fresh, tbody);
  }
  function chart(svg, values) {
    var NS = "http://www.w3.org/2000/svg";
    var peak = Math.max(1, Math.max.apply(null, values));
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    values.forEach(function (n, i) {
      var h = Math.round(n / peak * 1100) / 10;
      var r = document.createElementNS(NS, "rect");
      r.setAttribute("x", i * 10 + 1); r.setAttribute("width", 8);
      r.setAttribute("y", 120 - h); r.setAttribute("height", h);
      var t = document.createElementNS(NS, "title"); t.textContent = String(n);
      r.appendChild(t); svg.appendChild(r);
    });
    var p = document.getElementById("tp-peak");
    if (p) p.textContent = String(Math.max.apply(null, values));
  }

  var render = {
    overview: function (d) {
      fillFields(d);
      chart(document.getElementById("chart"), d.throughput.finished);
      var o = document.getElementById("oldest");
      while (o.firstChild) o.removeChild(o.firstChild);
      if (d.oldest_pending) {
        o.appendChild(jobLink(d.oldest_pending.id));
        o.appendChild(document.createTextNode(", waiting " + age(d.oldest_pending.age_seconds)));
      } else o.textContent = "none";
      document.getElementById("worker-count").textContent = String(d.workers.length);
      fillBody(document.getElementById("workers"), d.workers, function (w) {
        return [w.host, w.id, w.pid, w.job ? jobLink(w.job) : "idle", age(w.heartbeat_age) + " ago"];
      }, "no live workers");
    },
    list: function (d) {
      fillFields(d);
      // The queue/labels column is there only if the page was drawn with it.
      var tagged = !!document.querySelector("#jobs th.tags");
      fillBody(document.getElementById("jobs"), d.jobs, function (j) {
        var cells = [jobLink(j.id), j.state, j.attempts + "/" + (j.max_retries + 1), when(j.created),
                     el("code", j.command), j.last_error || ""];
        if (tagged) cells.push((j.queue ? [j.queue] : []).concat(j.labels.length ? [j.labels.join(", ")] : []).join(" · "));
        return cells;
      }, "no jobs");
    },
    rejected: function (d) {
      fillFields(d);
      fillBody(document.getElementById("rejected"), d.files, function (f) {
        return [el("code", f.name), f.size, when(f.mtime), f.reason];
      }, "nothing rejected");
    },
    job: function (d) {
      fillFields(d);
      fillBody(document.getElementById("history"), d.history.filter(function (h) {
        return h && typeof h === "object";
      }), function (h) {
        return ["attempt" in h ? h.attempt : h.event, h.worker, h.host, h.started_at || h.at,
                h.finished_at, h.exit_code, h.error];
      }, "not run yet");
      document.getElementById("record").textContent = JSON.stringify(d.job, null, 2);
      followLog(d.state);
    }
  };
  render.dlq = render.list;

  // The log grows while the job runs: ask only for the bytes after what is shown.
  function followLog(state) {
    var pre = document.getElementById("log");
    var url = api + "/log?offset=" + (pre.dataset.offset || 0);
    return fetch(url, {credentials: "same-origin"}).then(function (r) { return r.json(); })
      .then(function (d) {
        if (d.start < Number(pre.dataset.offset || 0)) pre.textContent = "";  // log was replaced
        if (d.text) pre.appendChild(document.createTextNode(d.text));
        pre.dataset.offset = d.offset;
      });
  }

  function refresh() {
    if (!api || !render[view]) return;
    fetch(api, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
      .then(function (d) {
        render[view](d);
        body.dataset.refreshed = String(Date.now());
        if (live) { live.classList.remove("stale"); live.textContent = "live"; }
      })
      .catch(function () { if (live) { live.classList.add("stale"); live.textContent = "offline"; } })
      .then(function () { setTimeout(refresh, REFRESH_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () { setTimeout(refresh, REFRESH_MS); });
})();
