// Triage live dashboard: one server-sent-event stream of snapshots and alerts, no build step.
"use strict";

const HISTORY = 300;                 // points kept per chart (one per snapshot, ~5 min at 1/s)
const PRIORITIES = ["CRITICAL", "HIGH", "NORMAL", "LOW", "BATCH"];
const $ = (id) => document.getElementById(id);
const series = { t: [], p50: [], p95: [], p99: [], p95m: [], rate: [], err: [], usage: [], mem: [],
                 q: Object.fromEntries(PRIORITIES.map((p) => [p, []])) };
const alertLog = [];
let charts = null;

function fmtMs(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const ms = seconds * 1000;
  return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : ms.toFixed(ms < 10 ? 1 : 0) + " ms";
}
function fmtPct(x, digits = 1) { return x === null || x === undefined ? "–" : x.toFixed(digits) + " %"; }
function fmtDuration(ms) {
  const s = Math.floor(ms / 1000), d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
        m = Math.floor(s % 3600 / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function tile(name, state, cls, detail) {
  const t = el("div", "tile " + cls);
  t.dataset.name = name;
  t.append(el("div", "name", name), el("div", "state", state), el("div", "detail", detail || ""));
  return t;
}
const CLASS = { healthy: "ok", CLOSED: "ok", degraded: "warn", HALF_OPEN: "warn", unhealthy: "bad",
                OPEN: "bad", unknown: "off", not_configured: "off" };

function makeChart(target, labels, colors, opts = {}) {
  const width = Math.max(target.clientWidth, 280);
  const s = [{}].concat(labels.map((label, i) => ({ label, stroke: colors[i], width: 2,
                                                   dash: opts.dash ? opts.dash[i] || undefined : undefined,
                                                   scale: opts.scales ? opts.scales[i] : "y" })));
  const axes = [{ stroke: "#8b98a5", grid: { stroke: "#2b3540" } },
                { stroke: "#8b98a5", grid: { stroke: "#2b3540" } }];
  if (opts.scales) axes.push({ side: 1, scale: "pct", stroke: "#8b98a5", grid: { show: false } });
  return new uPlot({ width, height: 180, series: s, axes,
                     scales: { x: { time: true }, pct: { range: [0, 100] } } },
                   [[]].concat(labels.map(() => [])), target);
}

function initCharts() {
  charts = {
    latency: makeChart($("c-latency"), ["P50 10s", "P95 10s", "P99 10s", "P95 1m"],
                       ["#2ea043", "#d29922", "#f85149", "#8b98a5"], { dash: [null, null, null, [6, 4]] }),
    rate: makeChart($("c-rate"), ["req/s", "errors %"], ["#58a6ff", "#f85149"], { scales: ["y", "pct"] }),
    usage: makeChart($("c-usage"), ["db usage %", "memory %"], ["#a371f7", "#3fb950"]),
    queue: makeChart($("c-queue"), PRIORITIES, ["#f85149", "#d29922", "#58a6ff", "#8b98a5", "#6e7681"]),
  };
}

function push(arr, v) { arr.push(v); if (arr.length > HISTORY) arr.shift(); }

function record(s) {
  push(series.t, s.t);
  const ms = (x) => x === null || x === undefined ? null : x * 1000;
  const recent = s.latency10s || {}, minute = s.latency || {};
  push(series.p50, ms(recent.p50));   // the last 10 s: a spike shows when it happens
  push(series.p95, ms(recent.p95));
  push(series.p99, ms(recent.p99));
  push(series.p95m, ms(minute.p95));  // beside the 1-minute P95 it stands out against
  push(series.rate, s.traffic ? s.traffic.ratePerSecond : null);
  push(series.err, s.traffic ? s.traffic.errorRate * 100 : null);
  push(series.usage, s.database ? s.database.usagePercentage : null);
  push(series.mem, s.memory ? s.memory.percent : null);
  for (const p of PRIORITIES) push(series.q[p], s.queue ? s.queue.depthByPriority[p] || 0 : null);
  charts.latency.setData([series.t, series.p50, series.p95, series.p99, series.p95m]);
  charts.rate.setData([series.t, series.rate, series.err]);
  charts.usage.setData([series.t, series.usage, series.mem]);
  charts.queue.setData([series.t].concat(PRIORITIES.map((p) => series.q[p])));
  for (const c of Object.values(charts)) showLatest(c);
}

// uPlot's legend shows the values under the cursor, "--" without one: show the latest point
// unless the pointer is on the chart.
function showLatest(chart) {
  if (chart.cursor.left === undefined || chart.cursor.left < 0) chart.setLegend({ idx: series.t.length - 1 });
}

function fmtBytes(n) {
  return n >= 1 << 30 ? (n / (1 << 30)).toFixed(2) + " GiB" : (n / (1 << 20)).toFixed(0) + " MiB";
}

function renderBanner(s) {
  $("banner").className = "banner " + s.status;
  $("status").textContent = s.status.toUpperCase();
  $("http-code").textContent = s.httpStatus;
  $("uptime").textContent = fmtDuration(s.uptime);
  $("updated").textContent = new Date(s.t * 1000).toLocaleTimeString();
  const reasons = $("reasons");
  reasons.replaceChildren(...(s.degradation || []).slice(0, 6).map((d) =>
    el("li", "", d.reason + (d.value !== null && d.value !== undefined ? ` (${d.value} vs ${d.threshold})` : ""))));
}

function renderComponents(s) {
  const tiles = [];
  const db = s.database;
  tiles.push(tile("database", (s.components.database.status || "unknown").toUpperCase(),
                  CLASS[s.components.database.status] || "off",
                  db ? `${db.responseTimeMs === null ? "–" : db.responseTimeMs.toFixed(1) + " ms"} · ${fmtPct(db.usagePercentage, 0)}` : "no database"));
  tiles.push(tile("queue", s.components.queue.status.toUpperCase(), CLASS[s.components.queue.status],
                  `${s.queue.inFlight}/${s.queue.maxConcurrent} busy · ${s.queue.depth} waiting` +
                  (s.queue.configuredMaxConcurrent ? ` · limit reduced (configured ${s.queue.configuredMaxConcurrent})` : '')));
  for (const [tier, b] of Object.entries(s.breakers)) {
    tiles.push(tile("breaker " + tier, b.state, CLASS[b.state], `${b.failures}/${b.threshold} failures`));
  }
  const lim = s.limiter;
  tiles.push(tile("rate limiter", lim && lim.enabled ? "ON" : "OFF", lim && lim.enabled ? "ok" : "off",
                  lim ? `${lim.keys} keys` : ""));
  const actors = Object.values(s.actors || {});
  const down = actors.filter((a) => !a.running).length;
  const restarts = actors.reduce((n, a) => n + a.restarts, 0);
  tiles.push(tile("actors", down ? `${down} DOWN` : "RUNNING", down ? "bad" : restarts ? "warn" : "ok",
                  `${actors.length} actors · ${restarts} restarts`));
  $("components").replaceChildren(...tiles);
}

function renderBreakers(s) {
  $("breakers").replaceChildren(...Object.entries(s.breakers).map(([tier, b]) => {
    const t = tile(tier, b.state, CLASS[b.state],
                   `${b.failures}/${b.threshold} failures · ${fmtDuration(b.timeInState * 1000)} in state · ${b.openings} openings`);
    t.id = "breaker-" + tier;
    return t;
  }));
  const items = (s.transitions || []).slice().reverse().map((tr) => {
    const li = el("li", tr.toState === "open" ? "critical" : tr.toState === "half_open" ? "warning" : "info");
    li.append(el("span", "when", new Date(tr.wall * 1000).toLocaleTimeString()),
              document.createTextNode(`${tr.tier}: ${tr.fromState.toUpperCase()} → ${tr.toState.toUpperCase()} — ${tr.reason}`));
    return li;
  });
  $("transitions").replaceChildren(...(items.length ? items : [el("li", "muted", "No transitions yet.")]));
}

function renderKpis(s) {
  const lat = s.latency || {};
  $("k-p50").textContent = fmtMs(lat.p50);
  $("k-p95").textContent = fmtMs(lat.p95);
  $("k-p99").textContent = fmtMs(lat.p99);
  $("k-rate").textContent = s.traffic ? s.traffic.ratePerSecond.toFixed(1) + " /s" : "–";
  // A fallback (stale) answer is a 200 but not a fresh one: shown beside the errors, so an open
  // breaker behind a cache does not read as 0 % errors.
  $("k-err").textContent = !s.traffic ? "–" : fmtPct(s.traffic.errorRate * 100, 2) +
    (s.traffic.stale ? ` + ${fmtPct(s.traffic.staleRate * 100, 1)} stale` : "");
  $("k-usage").textContent = s.database ? fmtPct(s.database.usagePercentage, 0) : "–";
  $("k-mem").textContent = s.memory ? fmtBytes(s.memory.rssBytes) : "–";
  $("k-mem-limit").textContent = s.memory ?
    `${fmtPct(s.memory.percent)} of ${fmtBytes(s.memory.limitBytes)} (${s.memory.limitSource})` : "–";
}

function renderLimits(s) {
  const rows = Object.entries((s.limiter && s.limiter.policies) || {}).map(([name, p]) => {
    const tr = el("tr");
    tr.append(el("td", "", name), el("td", "", String(p.limit)), el("td", "", p.windowS + " s"),
              el("td", "", String(p.allowed)), el("td", p.rejected ? "hot" : "", String(p.rejected)),
              el("td", "", String(p.keys)));
    return tr;
  });
  $("limits").replaceChildren(...rows);
}

function renderAlerts() {
  const items = alertLog.slice(-30).reverse().map((a) => {
    const li = el("li", a.severity + (a.state === "resolved" ? " resolved" : ""));
    li.append(el("span", "when", new Date(a.started_at).toLocaleTimeString()),
              document.createTextNode(`${a.severity.toUpperCase()} ${a.state}: ${a.message}`));
    return li;
  });
  $("alerts").replaceChildren(...(items.length ? items : [el("li", "muted", "No alerts.")]));
}

function onSnapshot(s) {
  renderBanner(s); renderComponents(s); renderBreakers(s); renderKpis(s); renderLimits(s); record(s);
}

function onAlert(a) {
  alertLog.push(a);
  if (alertLog.length > 200) alertLog.shift();
  renderAlerts();
}

let source = null;
function connect() {
  source = new EventSource("/api/dashboard/stream");
  source.addEventListener("open", () => { $("stream").textContent = "live"; });
  source.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
  source.addEventListener("alert", (e) => onAlert(JSON.parse(e.data)));
  source.addEventListener("error", () => {
    $("stream").textContent = "reconnecting";
    if (source.readyState === EventSource.CLOSED) {  // the browser gave up: try again ourselves
      source.close();
      setTimeout(connect, 1000);
    }
  });
}

window.addEventListener("load", () => { initCharts(); connect(); });
