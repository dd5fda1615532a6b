// herald admin console: polls /admin/live.json every few seconds and redraws the counters and charts.
// No framework, no build step; served from the package under a CSP that allows only 'self' scripts.
"use strict";
(function () {
  var SVG = "http://www.w3.org/2000/svg";
  var root = document.getElementById("live");
  if (!root) return;
  var url = root.getAttribute("data-src");
  var every = parseInt(root.getAttribute("data-every"), 10) || 5000;
  var history = []; // queue depth and oldest age since the page opened, one point per poll (an hour's worth)

  function el(name, attrs, text) {
    var node = document.createElementNS(SVG, name);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(key, value) {
    var nodes = document.querySelectorAll('[data-live="' + key + '"]');
    for (var i = 0; i < nodes.length; i++) nodes[i].textContent = value;
  }

  function frame(svg, w, h, title) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.appendChild(el("rect", { x: 0, y: 0, width: w, height: h, fill: "#fff", stroke: "#d0d7de" }));
    svg.appendChild(el("text", { x: 8, y: 16, "font-size": 12, fill: "#57606a" }, title));
  }

  function line(svg, values, w, h, top, color) {
    var most = Math.max.apply(null, values.concat([0]));
    if (!values.length) return most;
    var step = values.length > 1 ? (w - 20) / (values.length - 1) : 0;
    var points = values.map(function (v, i) {
      var y = h - 18 - (most ? (v / most) * (h - top - 24) : 0);
      return (10 + i * step).toFixed(1) + "," + y.toFixed(1);
    });
    svg.appendChild(el("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
    return most;
  }

  function hourChart(minutes) {
    var svg = document.getElementById("chart-hour");
    var w = 960, h = 200, top = 24;
    frame(svg, w, h, "Mails sent per minute (bars) and their average enqueue \u2192 sent latency (red), last hour");
    var sent = minutes.map(function (m) { return m.sent; });
    var peak = Math.max.apply(null, sent.concat([0]));
    var most = Math.max(peak, 1);
    var bw = (w - 20) / Math.max(minutes.length, 1);
    minutes.forEach(function (m, i) {
      var bh = (m.sent / most) * (h - top - 24);
      var bar = el("rect", { x: (10 + i * bw).toFixed(1), y: (h - 18 - bh).toFixed(1), width: Math.max(bw - 2, 1).toFixed(1), height: bh.toFixed(1), fill: "#54aeff" });
      bar.appendChild(el("title", {}, m.t + " UTC: " + m.sent + " sent, latency avg " + m.latency_avg + " s, max " + m.latency_max + " s"));
      svg.appendChild(bar);
    });
    // Latency only where mail went out: a minute without mail has no latency, not a latency of 0.
    var lat = Math.max.apply(null, minutes.map(function (m) { return m.sent ? m.latency_avg : 0; }).concat([0]));
    var points = [];
    minutes.forEach(function (m, i) {
      if (!m.sent) return;
      var x = 10 + i * bw + Math.max(bw - 2, 1) / 2;
      var y = h - 18 - (lat ? (m.latency_avg / lat) * (h - top - 24) : 0);
      points.push(x.toFixed(1) + "," + y.toFixed(1));
      svg.appendChild(el("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 3, fill: "#cf222e" }));
    });
    if (points.length > 1) {
      svg.appendChild(el("polyline", { points: points.join(" "), fill: "none", stroke: "#cf222e", "stroke-width": 1.5 }));
    }
    svg.appendChild(el("text", { x: w - 8, y: 16, "font-size": 12, "text-anchor": "end", fill: "#57606a" },
      "max " + peak + "/min \u00b7 latency up to " + lat.toFixed(2) + " s (minute average)"));
    if (minutes.length) {
      svg.appendChild(el("text", { x: 10, y: h - 4, "font-size": 11, fill: "#57606a" }, minutes[0].t + " UTC"));
      svg.appendChild(el("text", { x: w - 10, y: h - 4, "font-size": 11, "text-anchor": "end", fill: "#57606a" }, minutes[minutes.length - 1].t + " UTC"));
    }
  }

  function queueChart() {
    var svg = document.getElementById("chart-queue");
    var w = 960, h = 120, top = 24;
    frame(svg, w, h, "Queue depth (blue) and oldest job age (red) since this page opened");
    var d = line(svg, history.map(function (p) { return p.depth; }), w, h, top, "#0969da");
    var a = line(svg, history.map(function (p) { return p.age; }), w, h, top, "#cf222e");
    svg.appendChild(el("text", { x: w - 8, y: 16, "font-size": 12, "text-anchor": "end", fill: "#57606a" },
      "max depth " + d + " \u00b7 max age " + a.toFixed(1) + " s"));
  }

  function render(data) {
    var q = data.queue || {};
    if (q.error) {
      setText("queue-error", q.error);
    } else {
      setText("queue-error", "");
      ["depth", "in_flight", "delayed", "dead", "oldest_age"].forEach(function (k) { setText("queue-" + k, q[k]); });
      history.push({ depth: q.depth, age: q.oldest_age_seconds });
      if (history.length > 720) history.shift();
    }
    var o = data.outbox || {};
    setText("outbox-unfinished", o.unfinished);
    setText("outbox-oldest", o.oldest_unfinished_age);
    setText("sent-hour", data.sent_last_hour);
    setText("updated", data.at);
    hourChart(data.minutes || []);
    queueChart();
    root.setAttribute("data-polls", String((parseInt(root.getAttribute("data-polls"), 10) || 0) + 1));
  }

  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { setText("updated", "signed out: reload to sign in"); return null; }
        return r.json();
      })
      .then(function (data) { if (data) render(data); })
      .catch(function () { setText("updated", "cannot reach herald; retrying"); })
      .then(function () { window.setTimeout(poll, every); });
  }
  poll();
})();
