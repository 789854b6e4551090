/* The streamkit run page: a live dashboard (data-mode="live") or a static report.
 *
 * Live, it reads the run's server-sent events: an "init" snapshot of the view,
 * then one "patch" per update, then "end" with the final snapshot. A report embeds the final snapshot.
 * Every string from the run (stage names, state values, error messages) is put
 * in the page as text (textContent), never parsed as HTML.
 */
(function () {
  "use strict";

  var COLORS = ["#1f6feb", "#cf222e", "#1a7f37", "#bf8700", "#8250df", "#0a7ea4", "#d4622a",
    "#57606a", "#bc4c9b", "#2f9e8f"];
  var STATUS_COLORS = {
    pending: "#8a93a6", running: "#1f6feb", executing: "#1f6feb", retrying: "#bf8700",
    paused: "#8250df", succeeded: "#1a7f37", failed: "#cf222e", cancelled: "#57606a"
  };
  var SERIES = ["rate", "p50", "p95", "errors", "retries"];
  var HISTORY_SHOWN = 10;
  var RECENT_CHARS = 40;

  var body = document.body;
  var live = body.dataset.mode === "live";
  var model = null;
  var state = new Map();
  var cards = [];
  var charts = {};
  var updates = 0;

  function byId(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function clear(node) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
  }

  function color(index) { return COLORS[index % COLORS.length]; }

  function count(value) {
    return typeof value === "number" ? value.toLocaleString("en-US") : "-";
  }

  function duration(seconds) {
    if (typeof seconds !== "number") { return "-"; }
    if (seconds < 1e-3) { return (seconds * 1e6).toFixed(1) + " µs"; }
    if (seconds < 1) { return (seconds * 1e3).toFixed(1) + " ms"; }
    return seconds.toFixed(2) + " s";
  }

  // A log axis has a tick at every 1..9 times a power of ten: label the powers only.
  function decade(seconds) {
    if (typeof seconds !== "number" || !(seconds > 0)) { return ""; }
    var power = Math.log10(seconds);
    return Math.abs(power - Math.round(power)) < 1e-6 ? duration(seconds) : "";
  }

  var COMPACT = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

  function compact(value) { return value === null ? "" : COMPACT.format(value); }

  function perSecond(value) {
    if (typeof value !== "number") { return "-"; }
    return value >= 100 ? Math.round(value).toLocaleString("en-US") : value.toFixed(1);
  }

  function shown(value) { return typeof value === "string" ? value : JSON.stringify(value); }

  function field(key, name) { return model.fields["stages." + key + "." + name]; }

  function runStatus() {
    var status = model.fields["run.status"] || "pending";
    if (status === "running") {
      for (var i = 0; i < model.stages.length; i++) {
        if (field(model.stages[i].key, "status") === "retrying") { return "retrying"; }
      }
    }
    return status;
  }

  function lastPoint(name, index) {
    var values = model.series[name];
    if (!values.length) { return null; }
    return values[values.length - 1][index];
  }

  // ------------------------------------------------------------------ stage graph

  var METRICS = [
    ["items_in", "in", count], ["items_out", "out", count], ["rate", "items/s now", perSecond],
    ["throughput", "items/s avg", perSecond], ["in_flight", "in flight", count],
    ["time_p50", "p50", duration], ["time_p95", "p95", duration], ["errors", "errors", count],
    ["retries", "retries", count], ["dead_lettered", "dead letters", count],
    ["filtered", "filtered", count], ["abandoned", "abandoned", count]
  ];

  function buildGraph() {
    var graph = byId("graph");
    clear(graph);
    graph.appendChild(el("li", "source", "source"));
    cards = model.stages.map(function (stage, index) {
      graph.appendChild(el("li", "arrow"));
      var root = el("li", "stage");
      root.dataset.stage = String(index);
      var head = el("div", "stage-head");
      var swatch = el("span", "swatch");
      swatch.style.background = color(index);
      var badge = el("span", "badge");
      head.append(swatch, el("span", "stage-index", index), el("span", "stage-label", stage.key),
        el("span", "stage-kind", stage.kind), badge);
      root.appendChild(head);
      var metrics = el("dl", "metrics");
      var values = {};
      METRICS.forEach(function (metric) {
        var item = el("div");
        var value = el("dd");
        value.dataset.field = metric[0];
        item.append(el("dt", null, metric[1]), value);
        metrics.appendChild(item);
        values[metric[0]] = value;
      });
      root.appendChild(metrics);
      if (stage.lanes) {
        var lanes = el("div", "lanes");
        stage.lanes.forEach(function (lane) {
          var box = el("div", "lane");
          box.appendChild(el("div", "lane-name", stage.label.indexOf("fork(") === 0
            ? "branch " + lane.name : lane.name));
          var steps = el("ol");
          lane.stages.forEach(function (label) { steps.appendChild(el("li", null, label)); });
          box.appendChild(steps);
          lanes.appendChild(box);
        });
        root.appendChild(lanes);
      }
      var error = el("p", "stage-error");
      root.appendChild(error);
      graph.appendChild(root);
      return { root: root, badge: badge, values: values, error: error };
    });
    graph.appendChild(el("li", "arrow"));
    graph.appendChild(el("li", "sink", "consumer"));
  }

  function stageError(key) {
    var found = null;
    model.errors.forEach(function (entry) {
      if (entry.stage === key && (found === null || found.kind !== "fatal")) { found = entry; }
    });
    if (found === null) { return ""; }
    var what = found.type + (found.message ? ": " + found.message : "");
    return found.kind === "fatal" ? "failed: " + what
      : (found.kind === "item" ? "failed items, e.g. " : "last retry: ") + what;
  }

  function renderStages() {
    model.stages.forEach(function (stage, index) {
      var card = cards[index];
      var status = field(stage.key, "status") || "pending";
      card.root.dataset.status = status;
      card.badge.dataset.status = status;
      card.badge.textContent = status;
      METRICS.forEach(function (metric) {
        var value = metric[0] === "rate" ? lastPoint("rate", index) : field(stage.key, metric[0]);
        card.values[metric[0]].textContent = metric[2](value);
      });
      card.error.textContent = stageError(stage.key);
    });
  }

  // ------------------------------------------------------------------ header, errors, state

  function renderHeader() {
    var run = model.run;
    var title = run.name ? run.name + " (" + run.id + ")" : run.id;
    byId("title").textContent = title;
    document.title = "streamkit: " + (run.name || run.id);
    var status = runStatus();
    var badge = byId("status");
    badge.textContent = status;
    badge.dataset.status = status;
    body.dataset.status = status;
    byId("items-out").textContent = count(model.fields["run.items_out"]);
    byId("wall-time").textContent = duration(model.fields["run.wall_time"]);
    byId("started").textContent = typeof run.started_at === "number"
      ? new Date(run.started_at * 1000).toLocaleString("en-GB") : "-";
    byId("footer").textContent = "run " + run.id + " · version " + run.version +
      " · config hash " + run.config_hash + (live ? " · live" : " · report");
  }

  function known(value) { return typeof value === "number" ? String(value) : "?"; }

  function errorKind(entry) {
    if (entry.kind === "fatal") { return "failed"; }
    if (entry.kind === "item") {
      return "item " + known(entry.index) + " failed (" + known(entry.attempt) + " attempts)";
    }
    return "item " + known(entry.index) + ", attempt " + known(entry.attempt) + " failed, retrying";
  }

  function renderErrors() {
    var list = byId("errors");
    clear(list);
    model.errors.forEach(function (entry) {
      var item = el("li", entry.kind);
      item.append(
        el("span", "when", "t=" + entry.t.toFixed(2) + " s "),
        el("span", "kind", errorKind(entry)),
        el("span", "where", " in " + (entry.stage === null ? "the source" : entry.stage) + ": "),
        el("span", "what", entry.type + (entry.message ? ": " + entry.message : ""))
      );
      list.appendChild(item);
    });
    byId("no-errors").hidden = model.errors.length > 0;
  }

  function renderState() {
    var rows = byId("state").tBodies[0];
    clear(rows);
    state.forEach(function (entry, name) {
      var row = el("tr");
      row.dataset.key = name;
      var recent = entry.history.slice(-HISTORY_SHOWN).map(function (pair) {
        var text = shown(pair[1]);
        return text.length > RECENT_CHARS ? text.slice(0, RECENT_CHARS - 1) + "…" : text;
      });
      row.append(el("td", "key", name), el("td", "value", shown(entry.value)),
        el("td", "history", recent.join(" → ")));
      rows.appendChild(row);
    });
    byId("no-state").hidden = state.size > 0;
    byId("state").hidden = state.size === 0;
  }

  // ------------------------------------------------------------------ status timeline

  function renderTimeline() {
    var box = byId("timeline");
    clear(box);
    var end = model.t.length ? model.t[model.t.length - 1] : 0;
    model.statuses.forEach(function (change) { end = Math.max(end, change[0]); });
    var rows = [{ who: null, name: "run" }].concat(model.stages.map(function (stage) {
      return { who: stage.key, name: stage.key };
    }));
    rows.forEach(function (row) {
      var changes = model.statuses.filter(function (change) { return change[1] === row.who; });
      if (changes.length && changes[0][0] > 0) { changes.unshift([0, row.who, "pending"]); }
      box.appendChild(el("div", "who", row.name));
      var bar = el("div", "bar");
      changes.forEach(function (change, i) {
        var last = i + 1 === changes.length;
        var until = last ? end : changes[i + 1][0];
        var part = el("span", last ? "last" : null);
        part.style.flexGrow = String(end > 0 ? 1000 * Math.max(0, until - change[0]) / end : 0);
        part.style.background = STATUS_COLORS[change[2]] || "#999";
        part.title = shown(change[2]) + " from " + change[0].toFixed(2) + " s" +
          (last ? "" : " to " + until.toFixed(2) + " s");
        part.dataset.status = shown(change[2]);
        bar.appendChild(part);
      });
      box.appendChild(bar);
    });
    var axis = el("div", "axis");
    axis.append(el("span", null, "0 s"), el("span", null, end.toFixed(2) + " s"));
    box.appendChild(axis);
  }

  // ------------------------------------------------------------------ charts

  function column(name, index, positive) {
    return model.series[name].map(function (values) {
      var value = values[index];
      return positive && !(value > 0) ? null : value;
    });
  }

  function stateSeries() {
    var numeric = [];
    state.forEach(function (entry, name) {
      if (entry.history.length && entry.history.every(function (pair) { return typeof pair[1] === "number"; })) {
        numeric.push([name, entry.history]);
      }
    });
    var times = [];
    numeric.forEach(function (pair) { pair[1].forEach(function (h) { times.push(h[0]); }); });
    times = Array.from(new Set(times)).sort(function (a, b) { return a - b; });
    var data = [times];
    numeric.forEach(function (pair) {
      var history = pair[1];
      var at = 0;
      var current = null;
      data.push(times.map(function (t) {
        while (at < history.length && history[at][0] <= t) { current = history[at][1]; at++; }
        return current;
      }));
    });
    return { names: numeric.map(function (pair) { return pair[0]; }), data: data };
  }

  function chartData(kind) {
    if (kind === "state") { return stateSeries(); }
    var data = [model.t];
    var names = [];
    model.stages.forEach(function (stage, index) {
      if (kind === "rate") {
        data.push(column("rate", index, false));
        names.push(stage.key);
      } else if (kind === "latency") {
        data.push(column("p50", index, true), column("p95", index, true));
        names.push(stage.key + " p50", stage.key + " p95");
      } else {
        data.push(column("errors", index, false), column("retries", index, false));
        names.push(stage.key + " errors", stage.key + " retries");
      }
    });
    return { names: names, data: data };
  }

  function valueAxis(kind) {
    var axis = {
      size: 70,
      values: function (u, splits) { return splits.map(kind === "latency" ? decade : compact); }
    };
    if (kind === "latency") {
      // Ticks, labels and grid lines at the powers of ten only.
      var decades = function (u, splits) {
        return splits.map(function (v) { return decade(v) ? v : null; });
      };
      axis.filter = decades;
      axis.grid = { filter: decades };
      axis.ticks = { filter: decades };
    }
    return axis;
  }

  function makeChart(kind, container, found) {
    var paired = kind === "latency" || kind === "errors";
    var series = [{ label: "t (s)" }].concat(found.names.map(function (name, i) {
      var index = paired ? Math.floor(i / 2) : i;
      return {
        label: name, stroke: color(index), width: 1.5, spanGaps: true,
        dash: paired && i % 2 === 1 ? [5, 4] : undefined
      };
    }));
    var options = {
      width: Math.max(320, container.clientWidth - 4), height: 200,
      series: series,
      scales: { x: { time: false }, y: kind === "latency" ? { distr: 3, log: 10 } : {} },
      axes: [{ label: "seconds since the start" }, valueAxis(kind)],
      legend: { show: false }
    };
    var plot = new uPlot(options, found.data, container);
    container.appendChild(legend(kind, found.names));
    return plot;
  }

  function legend(kind, names) {
    var box = el("div", "legend");
    var paired = kind === "latency" || kind === "errors";
    var shownNames = paired ? names.filter(function (name, i) { return i % 2 === 0; }) : names;
    shownNames.forEach(function (name, index) {
      var item = el("span", "legend-item");
      var swatch = el("span", "swatch");
      swatch.style.background = color(index);
      var label = paired ? name.replace(/ (p50|errors)$/, "") : name;
      item.append(swatch, el("span", null, label));
      box.appendChild(item);
    });
    if (paired) {
      box.appendChild(el("span", "legend-note", kind === "latency"
        ? "solid: p50, dashed: p95" : "solid: errors, dashed: retries"));
    }
    return box;
  }

  function renderCharts() {
    ["rate", "latency", "errors", "state"].forEach(function (kind) {
      var container = byId("chart-" + kind);
      var found = chartData(kind);
      var chart = charts[kind];
      var shape = found.names.join("\n");
      if (chart && chart.shape !== shape) {
        chart.plot.destroy();
        chart = null;
      }
      if (!found.names.length || found.data[0].length === 0) {
        if (chart) { chart.plot.destroy(); }
        delete charts[kind];
        clear(container);
        container.appendChild(el("p", "empty", kind === "state" ? "No numeric state key." : "No data yet."));
        return;
      }
      if (!chart) {
        clear(container);
        charts[kind] = { plot: makeChart(kind, container, found), shape: shape };
      } else {
        chart.plot.setData(found.data);
      }
    });
  }

  // ------------------------------------------------------------------ model

  function render() {
    renderHeader();
    renderStages();
    renderErrors();
    renderState();
    renderTimeline();
    renderCharts();
    body.dataset.updates = String(updates);
  }

  function load(snapshot) {
    model = snapshot;
    state = new Map();
    Object.keys(snapshot.state).forEach(function (name) { state.set(name, snapshot.state[name]); });
    Object.keys(charts).forEach(function (kind) { charts[kind].plot.destroy(); });
    charts = {};
    buildGraph();
    render();
    body.dataset.ready = "true";
  }

  function trim(list, most) {
    if (typeof most === "number" && list.length > most) { list.splice(0, list.length - most); }
  }

  function apply(patch) {
    var limits = model.limits;
    if (patch.fields) { Object.assign(model.fields, patch.fields); }
    if (patch.point) {
      model.t.push(patch.point.t);
      SERIES.forEach(function (name) { model.series[name].push(patch.point[name]); });
      trim(model.t, limits.points);
      SERIES.forEach(function (name) { trim(model.series[name], limits.points); });
    }
    if (patch.statuses) { Array.prototype.push.apply(model.statuses, patch.statuses); }
    if (patch.state) {
      Object.keys(patch.state).forEach(function (name) {
        var entry = state.get(name);
        if (!entry) { entry = { value: null, history: [] }; state.set(name, entry); }
        entry.value = patch.state[name];
        entry.history.push([patch.t, patch.state[name]]);
        trim(entry.history, limits.state_history);
      });
    }
    if (patch.errors) {
      Array.prototype.push.apply(model.errors, patch.errors);
      trim(model.errors, limits.errors);
    }
    updates += 1;
    render();
  }

  function connection(text) { byId("connection").textContent = text; }

  function connect() {
    connection("connecting…");
    var source = new EventSource("events" + window.location.search);
    source.addEventListener("init", function (event) {
      load(JSON.parse(event.data));
      body.dataset.connected = "true";
      connection("live");
    });
    source.addEventListener("patch", function (event) {
      if (model) { apply(JSON.parse(event.data)); }
    });
    source.addEventListener("end", function (event) {
      source.close();
      var data = JSON.parse(event.data);
      if (data.view) { load(data.view); }
      body.dataset.connected = "false";
      body.dataset.ended = "true";
      connection("the run has ended: its dashboard has stopped (this is its final state)");
    });
    source.onerror = function () {
      body.dataset.connected = "false";
      if (body.dataset.ended !== "true") { connection("disconnected: reconnecting…"); }
    };
  }

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (kind) {
      var container = byId("chart-" + kind);
      charts[kind].plot.setSize({ width: Math.max(320, container.clientWidth - 4), height: 200 });
    });
  });

  if (live) {
    connect();
  } else {
    load(JSON.parse(byId("streamkit-data").textContent));
    connection("report");
  }
})();
