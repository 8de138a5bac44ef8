// The status page's script: polls /v1/health and /v1/status every 2 s and fills the page.
// Everything shown is set through textContent (never as HTML): dead-letter reasons come
// from hostile input. Rates are this process's counters differenced between two polls.
"use strict";

const POLL_MS = 2000;
let last = null; // { at: ms, queued, success }

function set(id, text, bad) {
  const el = document.getElementById(id);
  el.textContent = text;
  el.classList.toggle("bad", Boolean(bad));
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function fill(tbody, rows) {
  tbody.replaceChildren();
  for (const cells of rows) {
    const tr = document.createElement("tr");
    for (const [text, cls] of cells) cell(tr, text, cls);
    tbody.appendChild(tr);
  }
}

function shown(v) {
  return v === null || v === undefined ? "unknown" : String(v);
}

function rate(now, prev, key, secs) {
  if (!prev || secs <= 0) return "–";
  return (Math.max(0, now[key] - prev[key]) / secs).toFixed(1);
}

function age(ms) {
  if (ms === null || ms === undefined) return "unknown";
  const s = ms / 1000;
  return s < 120 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min";
}

function showHealth(h) {
  const badge = document.getElementById("service");
  badge.textContent = h.service;
  badge.className = "badge " + (h.service === "ok" ? "ok" : "degraded");
  set("role", h.role);
  const reachable = h.queue_depth !== null;
  set("queue-state", reachable ? "reachable" : "unreachable", !reachable);
  set("db", h.db, h.db !== "connected");
  set("queue-depth", shown(h.queue_depth));
  set("dlq-depth", shown(h.dlq_depth), h.dlq_depth > 0);
  const reasons = document.getElementById("reasons");
  reasons.replaceChildren();
  for (const r of h.reasons.length ? h.reasons : ["none"]) {
    const li = document.createElement("li");
    li.textContent = r;
    reasons.appendChild(li);
  }
  const byReason = Object.entries(h.dlq_by_reason || {});
  fill(document.getElementById("dlq-by-reason"),
    byReason.map(([type, n]) => [[type, "error-type"], [String(n), "count"]]));
}

function showStatus(s, at) {
  set("version", s.version);
  set("git-sha", s.git_sha);
  const now = { at, queued: s.events.queued, success: s.events.success };
  const secs = last ? (at - last.at) / 1000 : 0;
  set("ingest-rate", rate(now, last, "queued", secs));
  set("commit-rate", rate(now, last, "success", secs));
  last = now;
  set("oldest", age(s.oldest_age_ms));
  set("mqtt-clients", s.mqtt ? s.mqtt.clients + " on " + s.mqtt.listen : "off");
  const letters = s.newest_dead_letters || [];
  fill(document.getElementById("letters"), letters.map((d) => [
    [String(d.seq), "seq"], [d.time || "", "time"], [d.error_type, "error-type"], [d.reason, "reason"],
  ]));
}

async function poll() {
  try {
    const [h, s] = await Promise.all([
      fetch("/v1/health", { cache: "no-store" }).then((r) => r.json()),
      fetch("/v1/status", { cache: "no-store" }).then((r) => r.json()),
    ]);
    showHealth(h);
    showStatus(s, Date.now());
    set("updated", new Date().toLocaleTimeString());
  } catch (e) {
    set("updated", "failed: " + e, true);
  }
}

poll();
setInterval(poll, POLL_MS);
