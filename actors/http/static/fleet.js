// The fleet panel: the instances sharing this one's Redis ([fleet]), from GET /api/fleet every
// 2 s. Self-contained: it adds its own section to the page, and stays hidden without [fleet].
(function () {
  "use strict";
  const PERIOD_MS = 2000;
  const section = document.createElement("section");
  section.className = "group";
  section.id = "g-fleet";
  section.hidden = true;
  section.innerHTML =
    '<h2>5 · Fleet</h2>' +
    '<p id="fleet-summary" class="muted"></p>' +
    '<table class="limits"><thead><tr><th>Instance</th><th>Status</th><th>Breakers open</th>' +
    '<th>Queue</th><th>Connections</th><th>Last seen</th></tr></thead>' +
    '<tbody id="fleet-instances"></tbody></table>';
  document.querySelector("main").appendChild(section);

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function render(f) {
    section.hidden = !f.enabled;
    if (!f.enabled) return;
    const modes = Object.entries(f.modes || {}).map(([p, m]) => p + ": " + m).join(", ");
    const redis = f.redis.up ? "Redis up" + (f.redis.rtt_ms != null ? " (" + f.redis.rtt_ms + " ms)" : "")
                             : "Redis DOWN";
    document.getElementById("fleet-summary").textContent =
      f.live + " live instance(s) · " + redis + (f.stale ? " · last known view" : "") + " · modes: " + modes;
    const body = document.getElementById("fleet-instances");
    body.replaceChildren();
    for (const i of f.instances) {
      const tr = document.createElement("tr");
      tr.dataset.instance = i.instance_id;
      const open = Object.entries(i.breakers || {}).filter(([, s]) => s !== "closed").map(([t, s]) => t + " " + s);
      tr.append(cell(i.instance_id + (i.self ? " (this one)" : "")), cell(i.status || "?", i.status),
                cell(open.join(", ") || "none"), cell(i.queue_depth + " waiting, " + i.in_flight + " running"),
                cell((i.connections || {}).open + " open"), cell(i.last_seen_s + " s ago"));
      body.appendChild(tr);
    }
  }

  async function poll() {
    try {
      const r = await fetch("/api/fleet", { credentials: "same-origin", cache: "no-store" });
      if (r.ok) render(await r.json());
    } catch (e) { /* the stream's banner already says the server is unreachable */ }
  }
  poll();
  setInterval(poll, PERIOD_MS);
})();
