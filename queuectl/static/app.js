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
  function fillBody(table, rows, columns, emptyText, classes, key) {
    var tbody = table.tBodies[0];
    var fresh = document.createElement("tbody");
    rows.forEach(function (r) {
      var tr = el("tr");
      if (key) tr.setAttribute(key[0], r[key[1]]);
      columns(r).forEach(function (c, i) {
        var td = el("td");
        if (classes && classes[i]) td.className = classes[i];
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
  var ACTIONS_FOR = {pending: ["hold", "cancel"], failed: ["hold", "cancel"], held: ["release", "cancel"],
                     processing: ["kill"], completed: ["requeue", "delete"], dead: ["requeue", "delete"],
                     cancelled: ["requeue", "delete"]};
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.getAttribute("content") : "";
  function here() { return location.pathname + location.search; }
  function actionForm(action, url, label, confirmText) {
    var f = el("form", null, {method: "post", "class": "inline", action: url});
    if (confirmText) f.setAttribute("data-confirm", confirmText);
    f.appendChild(el("input", null, {type: "hidden", name: "csrf_token", value: csrf}));
    f.appendChild(el("input", null, {type: "hidden", name: "next", value: here()}));
    f.appendChild(el("button", label || action, {"class": "btn btn-" + action, "data-action": action}));
    return f;
  }
  function jobButtons(j) {
    var span = el("span", null, {"class": "actions"});
    (ACTIONS_FOR[j.state] || []).forEach(function (a) {
      span.appendChild(actionForm(a, "/api/job/" + encodeURIComponent(j.id) + "/" + a, a,
                                  a === "delete" || a === "kill" ? a + " job " + j.id + "?" : null));
    });
    return span;
  }
  function statusCell(j) {
    var d = el("div");
    if (j.note) d.appendChild(el("div", j.note, {"class": "note"}));
    if (j.last_error && ["failed", "dead", "cancelled"].indexOf(j.state) >= 0) d.appendChild(el("div", j.last_error, {"class": "error"}));
    if (j.output) d.appendChild(el("pre", j.output, {"class": "tail"}));
    return d;
  }
  function hm(epoch) { return new Date(epoch * 1000).toISOString().slice(11, 16); }
  function chart(svg, tp) {
    var NS = "http://www.w3.org/2000/svg";
    function node(tag, attrs, text) {
      var e = document.createElementNS(NS, tag);
      for (var k in attrs) e.setAttribute(k, attrs[k]);
      if (text !== undefined) e.textContent = String(text);
      return e;
    }
    var peak = Math.max(1, Math.max.apply(null, tp.finished));
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    tp.finished.forEach(function (n, i) {
      var c = tp.completed[i], d = tp.dead[i];
      var hc = Math.round(c / peak * 1100) / 10, hd = Math.round(d / peak * 1100) / 10;
      var g = node("g", {"class": "bar"});
      g.appendChild(node("title", {}, hm(tp.since + i * 60) + ": " + c + " completed, " + d + " dead"));
      g.appendChild(node("rect", {"class": "completed", x: 40 + i * 10, width: 8, y: 115 - hc, height: hc}));
      g.appendChild(node("rect", {"class": "dead", x: 40 + i * 10, width: 8, y: 115 - hc - hd, height: hd}));
      svg.appendChild(g);
    });
    var axis = node("g", {"class": "axis"});
    axis.appendChild(node("line", {x1: 40, y1: 115.5, x2: 640, y2: 115.5}));
    axis.appendChild(node("text", {x: 36, y: 10, "text-anchor": "end", id: "chart-peak"}, peak));
    axis.appendChild(node("text", {x: 36, y: 115, "text-anchor": "end"}, 0));
    for (var k = 0; k <= 60; k += 15) {
      axis.appendChild(node("text", {x: 40 + k * 10, y: 132,
        "text-anchor": k === 0 ? "start" : (k === 60 ? "end" : "middle")}, hm(tp.since + k * 60)));
    }
    svg.appendChild(axis);
  }

  var render = {
    overview: function (d) {
      fillFields(d);
      chart(document.getElementById("chart"), d.throughput);
      var o = document.getElementById("oldest");
      while (o.firstChild) o.removeChild(o.firstChild);
      if (d.oldest_pending) {
        o.appendChild(jobLink(d.oldest_pending.id));
        o.appendChild(document.createTextNode(", waiting " + age(d.oldest_pending.age_seconds)));
      } else o.textContent = "none";
      var actions = !!document.querySelector("#queues th.act");
      fillBody(document.getElementById("queues"), d.queues, function (q) {
        var name = link("/jobs/all?queue=" + encodeURIComponent(q.name), q.name);
        var cells = [name, q.counts.pending, q.running, q.limit === null ? "\u2014" : q.limit, q.counts.failed,
                     q.counts.held, q.scheduled, q.blocked, q.counts.completed, q.counts.dead,
                     q.oldest_due_age ? age(q.oldest_due_age) : "\u2014",
                     q.paused ? el("span", "paused", {"class": "badge state-held"}) : "active"];
        if (actions) {
          var a = q.paused ? "resume" : "pause";
          cells.push(actionForm(a, "/api/queue/" + encodeURIComponent(q.name) + "/" + a));
        }
        return cells;
      }, "no queues", ["", "num", "num", "num", "num", "num", "num", "num", "num", "num", "", "", "act"],
         ["data-queue", "name"]);
      document.getElementById("worker-count").textContent = String(d.workers.length);
      fillBody(document.getElementById("workers"), d.workers, function (w) {
        return [w.node, w.id, w.pid, w.job ? jobLink(w.job) : "idle", age(w.heartbeat_age) + " ago"];
      }, "no live workers");
    },
    list: function (d) {
      fillFields(d);
      var actions = !!document.querySelector("#jobs th.act");
      fillBody(document.getElementById("jobs"), d.jobs, function (j) {
        var queue = el("span", j.queue);
        if (j.labels.length) {
          var ls = el("span", null, {"class": "labels"});
          j.labels.forEach(function (l) { ls.appendChild(document.createTextNode(" ")); ls.appendChild(el("span", l, {"class": "label"})); });
          queue.appendChild(ls);
        }
        var cells = [jobLink(j.id), el("span", j.state, {"class": "badge state-" + j.state}), queue, j.priority,
                     j.attempts + "/" + (j.max_retries + 1), when(j.created), el("code", j.command), statusCell(j)];
        if (actions) cells.push(jobButtons(j));
        return cells;
      }, "no jobs", ["id", "", "", "num", "num", "when", "", "status", "act"], ["data-id", "id"]);
    },
    rejected: function (d) {
      fillFields(d);
      fillBody(document.getElementById("rejected"), d.files, function (f) {
        return [el("code", f.name), f.size, when(f.mtime), f.reason];
      }, "nothing rejected");
    },
    job: function (d) {
      fillFields(d);
      fillBody(document.getElementById("history"), d.history_rows, function (h) {
        return [h.attempt, h.event, h.worker, h.node, h.started, h.finished, h.exit, h.error];
      }, "not run yet");
      document.getElementById("record").textContent = JSON.stringify(d.job, null, 2);
      // The buttons depend on the state: a job that moved on gets the page drawn again.
      var st = document.getElementById("job-state");
      if (document.getElementById("job-actions") && body.dataset.state && body.dataset.state !== d.state) location.reload();
      body.dataset.state = d.state;
      if (st) st.className = "badge state-" + d.state;
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
        var empty = !pre.textContent;
        pre.hidden = empty;
        document.getElementById("log-empty").hidden = !empty;
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

  // Irreversible actions ask first (a form with data-confirm); the bulk ones have their own page.
  document.addEventListener("submit", function (e) {
    var text = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (text && !window.confirm(text)) e.preventDefault();
  });
  document.addEventListener("DOMContentLoaded", function () {
    var st = document.getElementById("job-state");
    if (st) body.dataset.state = st.textContent.trim();
    setTimeout(refresh, REFRESH_MS);
  });
})();
