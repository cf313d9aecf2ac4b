// spindle web: the page. Plain DOM and canvas, no libraries. Every value
// from the daemon goes into the page as text (textContent / text nodes),
// never as markup, so a payload such as <script> is shown, not run.
"use strict";

const state = { token: sessionStorage.getItem("spindle-token") || "", readOnly: false, timer: null, view: "" };

// el("td", {class: "x"}, "text", child): an element; strings become text nodes.
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const k of kids.flat()) {
    if (k === null || k === undefined) continue;
    e.appendChild(typeof k === "object" ? k : document.createTextNode(String(k)));
  }
  return e;
}

function status(msg, ok) {
  const s = document.getElementById("status");
  s.textContent = msg || "";
  s.className = msg ? (ok ? "ok" : "err") : "";
}

async function get(path) {
  const r = await fetch(path, { headers: { "Accept": "application/json" } });
  const j = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

async function act(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Spindle-Token": state.token },
    body: JSON.stringify(body || {}),
  });
  const j = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}

// Runs an action, reports it, and redraws the current view.
async function run(label, path, body) {
  try {
    await act(path, body);
    status(label + ": done", true);
  } catch (e) {
    status(label + ": " + e.message, false);
  }
  render();
}

function fmtRate(x) { return (x || 0) >= 100 ? Math.round(x).toString() : (x || 0).toFixed(1); }
function fmtUs(us) {
  if (us === null || us === undefined) return "–";
  if (us < 1000) return us + " µs";
  if (us < 1e6) return (us / 1000).toFixed(1) + " ms";
  return (us / 1e6).toFixed(2) + " s";
}
function actionAttrs() { return state.readOnly ? { disabled: true, title: "read-only" } : {}; }
function qlink(name) { return el("a", { href: "#/queue/" + encodeURIComponent(name), "data-queue": name }, name); }
function jlink(id) { return el("a", { href: "#/job/" + id }, "#" + id); }

function card(n, label, id) {
  return el("div", { class: "card", id }, el("div", { class: "n" }, n), el("div", { class: "l" }, label));
}

// ---------------------------------------------------------------- overview

async function overview(view) {
  const [o, h] = await Promise.all([get("/api/overview"), get("/api/history")]);
  state.readOnly = o.read_only;
  const s = o.server;
  const rows = o.queues.map((q) =>
    el("tr", { "data-queue": q.name },
      el("td", {}, qlink(q.name), q.paused ? el("span", { class: "paused" }, " paused") : null),
      el("td", {}, q.ready), el("td", {}, q.delayed), el("td", {}, q.reserved), el("td", {}, q.buried),
      el("td", {}, fmtRate(q.put_rate)), el("td", {}, fmtRate(q.done_rate)),
      el("td", {}, fmtUs(q.wait_p50_us)), el("td", {}, fmtUs(q.wait_p99_us)),
      el("td", {}, q.workers_waiting), el("td", {}, q.workers_holding ?? "–"), el("td", {}, q.desired_workers ?? "–")));
  const canvas = el("canvas", { id: "chart", width: 1100, height: 260 });
  view.replaceChildren(
    el("div", { class: "cards" },
      card(s["current-jobs-ready"], "ready", "total-ready"),
      card(s["current-jobs-delayed"], "delayed", "total-delayed"),
      card(s["current-jobs-reserved"], "reserved", "total-reserved"),
      card(s["current-jobs-buried"], "buried", "total-buried"),
      card(fmtRate(o.put_rate) + "/s", "put rate", "put-rate"),
      card(fmtRate(o.done_rate) + "/s", "complete rate", "done-rate"),
      card(s["total-jobs"], "jobs ever put", "total-jobs"),
      card(s["current-workers"], "worker connections", "workers"),
      card(s["current-connections"], "connections", "connections")),
    el("h2", {}, "Queues"),
    el("table", { id: "queues" },
      el("thead", {}, el("tr", {}, ["queue", "ready", "delayed", "reserved", "buried", "put/s", "done/s",
        "wait p50", "wait p99", "waiting", "holding", "desired"].map((t) => el("th", {}, t)))),
      el("tbody", {}, rows)),
    el("h2", {}, "Throughput and backlog"),
    el("div", { class: "legend" },
      el("span", {}, el("i", { class: "c-put" }), "put/s"),
      el("span", {}, el("i", { class: "c-done" }), "done/s"),
      el("span", {}, el("i", { class: "c-backlog" }), "backlog (ready + delayed), right axis")),
    canvas);
  chart(canvas, h.samples);
}

// Throughput (left axis) and backlog (right axis) over the kept samples.
function chart(c, samples) {
  const g = c.getContext("2d");
  const W = c.width, H = c.height, L = 50, R = 60, T = 10, B = 24;
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  if (samples.length < 2) { g.fillText("collecting samples…", L, H / 2); return; }
  const t0 = samples[0].t, t1 = samples[samples.length - 1].t;
  const rmax = Math.max(1, ...samples.map((s) => Math.max(s.put_rate, s.done_rate)));
  const bmax = Math.max(1, ...samples.map((s) => s.ready + s.delayed));
  const x = (t) => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
  const yl = (v) => H - B - (H - T - B) * v / rmax;
  const yr = (v) => H - B - (H - T - B) * v / bmax;
  g.strokeStyle = "#ddd"; g.fillStyle = "#555";
  for (let i = 0; i <= 4; i++) {
    const y = T + (H - T - B) * i / 4;
    g.beginPath(); g.moveTo(L, y); g.lineTo(W - R, y); g.stroke();
    g.fillText(fmtRate(rmax * (4 - i) / 4), 4, y + 4);
    g.fillText(Math.round(bmax * (4 - i) / 4).toString(), W - R + 6, y + 4);
  }
  g.fillText("-" + Math.round((t1 - t0) / 1000) + " s", L, H - 6);
  g.fillText("now", W - R - 20, H - 6);
  const line = (color, f, y) => {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    samples.forEach((s, i) => (i ? g.lineTo : g.moveTo).call(g, x(s.t), y(f(s))));
    g.stroke(); g.lineWidth = 1;
  };
  line("#2b6cb0", (s) => s.put_rate, yl);
  line("#2f855a", (s) => s.done_rate, yl);
  line("#c05621", (s) => s.ready + s.delayed, yr);
}

// ---------------------------------------------------------------- queue

async function queue(view, name) {
  const q = await get("/api/queues/" + encodeURIComponent(name));
  state.readOnly = q.read_only;
  const st = q.stats;
  const base = "/api/queues/" + encodeURIComponent(name);
  const paused = st["pause-time-left"] > 0;
  const secs = el("input", { id: "pause-secs", type: "number", min: 1, value: 3600, class: "num" });
  const kickN = el("input", { id: "kick-count", type: "number", min: 1, value: 100, class: "num" });
  const boxes = ["ready", "delayed", "buried"].map((s) => el("input", { type: "checkbox", id: "clear-" + s, value: s }));
  const next = ["ready", "delayed", "buried"].map((s) => {
    const j = q.next[s];
    return el("tr", { id: "next-" + s }, el("td", {}, s),
      el("td", {}, j ? jlink(j.id) : "none"),
      el("td", {}, j ? j.size + " B" : ""),
      el("td", { class: "preview" }, j ? j.preview : ""));
  });
  view.replaceChildren(
    el("h2", {}, "Queue ", el("span", { id: "queue-name" }, name), " ",
      el("span", { id: "paused-state", class: paused ? "paused" : "" },
        paused ? "paused (" + st["pause-time-left"] + " s left)" : "running")),
    el("div", { class: "cards" },
      ["ready", "delayed", "reserved", "buried"].map((s) => card(st["current-jobs-" + s], s, "q-" + s)),
      card(fmtRate(q.put_rate) + "/s", "put rate"), card(fmtRate(q.done_rate) + "/s", "complete rate"),
      card(fmtUs(st["wait-p50-us"]), "wait p50"), card(fmtUs(st["wait-p99-us"]), "wait p99"),
      card(st["current-waiting"], "workers waiting"), card(st["workers-holding"] ?? "–", "holding"),
      card(st["desired-workers"] ?? "–", "desired")),
    el("div", { class: "cards", id: "q-limits" },
      card(st["limit-concurrency"] ? st["limit-concurrency"] : "none", "concurrency limit", "q-limit-concurrency"),
      card(st["limit-rate"] && st["limit-rate"] !== "-" ? st["limit-rate"] : "none", "rate limit (starts/ms/burst)", "q-limit-rate"),
      card(st["on-expiry"] ?? "–", "on expiry"),
      card(st.expired ?? "–", "expired", "q-expired"), card(st.cancelled ?? "–", "cancelled", "q-cancelled"),
      card(st.fired ?? "–", "fired by schedules", "q-fired")),
    el("div", { class: "actions" },
      el("button", { id: "pause-btn", ...actionAttrs(),
        onclick: () => run("pause " + name, base + "/pause", { seconds: Number(secs.value) }) }, "Pause"),
      secs, "seconds",
      el("button", { id: "resume-btn", ...actionAttrs(), onclick: () => run("resume " + name, base + "/resume") }, "Resume"),
      el("button", { id: "kick-queue-btn", ...actionAttrs(),
        onclick: () => run("kick " + name, base + "/kick", { count: Number(kickN.value) }) }, "Kick"), kickN, "jobs"),
    el("fieldset", { class: "actions" }, el("legend", {}, "Clear jobs by state"),
      boxes.map((b) => el("label", {}, b, " " + b.value)),
      el("button", { id: "clear-btn", ...actionAttrs(), onclick: () => {
        const states = boxes.filter((b) => b.checked).map((b) => b.value);
        if (!states.length) { status("clear: pick a state", false); return; }
        if (!confirm("Delete every " + states.join(", ") + " job of " + name + "?")) return;
        run("clear " + name, base + "/clear", { states });
      } }, "Clear")),
    el("h3", {}, "Schedules"),
    (q.schedules || []).length
      ? el("table", { id: "schedules" },
          el("thead", {}, el("tr", {}, ["name", "rule", "paused", "next in", "last job", "fired", "skipped"].map((t) => el("th", {}, t)))),
          el("tbody", {}, q.schedules.map((s) => el("tr", { "data-schedule": s.name },
            el("td", {}, s.name), el("td", {}, s.rule), el("td", {}, String(s.paused)),
            el("td", {}, s.paused ? "–" : (s["next-in-ms"] / 1000).toFixed(1) + " s"),
            el("td", {}, s["last-job"] ? jlink(s["last-job"]) : "none"),
            el("td", {}, s.fired), el("td", {}, s.skipped)))))
      : el("p", { id: "no-schedules" }, "none"),
    el("h3", {}, "Next job by state (peek)"),
    el("table", { id: "next" }, el("thead", {}, el("tr", {}, ["state", "job", "size", "payload"].map((t) => el("th", {}, t)))),
      el("tbody", {}, next)),
    el("h3", {}, "All counters"),
    statsTable(st, "queue-stats"));
}

function statsTable(st, id) {
  return el("table", { id }, el("tbody", {},
    Object.entries(st).map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v)))));
}

// ---------------------------------------------------------------- job

async function job(view, id) {
  let j;
  try { j = await get("/api/jobs/" + encodeURIComponent(id)); } catch (e) {
    view.replaceChildren(el("h2", {}, "Job " + id), el("p", { id: "job-missing" }, e.message));
    return;
  }
  state.readOnly = j.read_only;
  const st = j.stats;
  const canKick = st.state === "buried" || st.state === "delayed";
  view.replaceChildren(
    el("h2", {}, "Job ", el("span", { id: "job-title" }, "#" + j.id), " in ", qlink(st.tube), " — ",
      el("span", { id: "job-state" }, st.state)),
    el("div", { class: "cards" },
      card(st.pri, "priority"), card(st.age + " s", "age"), card(st.attempts ?? st.reserves, "attempts"),
      card(st.ttr + " s", "ttr"), card(st["time-left"] + " s", "time left")),
    st["last-error"] ? el("p", {}, "Last error: ", el("code", { id: "last-error" }, st["last-error"])) : null,
    el("div", { class: "actions" },
      el("button", { id: "kick-btn", ...actionAttrs(), disabled: state.readOnly || !canKick,
        onclick: () => run("kick job " + j.id, "/api/jobs/" + j.id + "/kick") }, "Kick"),
      el("button", { id: "delete-btn", ...actionAttrs(), onclick: () => {
        if (!confirm("Delete job " + j.id + "?")) return;
        run("delete job " + j.id, "/api/jobs/" + j.id + "/delete");
      } }, "Delete"),
      el("button", { id: "cancel-btn", ...actionAttrs(), onclick: () => {
        if (!confirm("Cancel job " + j.id + "? A running job's worker is told at its next command.")) return;
        run("cancel job " + j.id, "/api/jobs/" + j.id + "/cancel");
      } }, "Cancel"),
      el("a", { id: "download", href: "/api/jobs/" + j.id + "/payload", download: "job-" + j.id + ".bin" }, "Download payload")),
    el("h3", {}, "Payload (" + j.size + " bytes" + (j.truncated ? ", first 4096 shown" : "") + (j.utf8 ? "" : ", not UTF-8") + ")"),
    el("pre", { id: "payload" }, j.payload),
    el("h3", {}, "Counters"),
    statsTable(st, "job-stats"));
}

// ---------------------------------------------------------------- routing

async function render() {
  const view = document.getElementById("view");
  const hash = location.hash || "#/";
  let m;
  try {
    if ((m = hash.match(/^#\/queue\/(.+)$/))) await queue(view, decodeURIComponent(m[1]));
    else if ((m = hash.match(/^#\/job\/(\d+)$/))) await job(view, m[1]);
    else await overview(view);
    const mode = document.getElementById("mode");
    mode.textContent = state.readOnly ? "read-only" : (state.token ? "actions enabled" : "enter the token to act");
    document.getElementById("token-form").hidden = state.readOnly;
    document.body.dataset.loaded = hash;
  } catch (e) {
    status("cannot load: " + e.message, false);
  }
}

function schedule() {
  clearInterval(state.timer);
  // Only the overview refreshes itself; a queue or job page would lose
  // what the user is typing.
  if (!location.hash.startsWith("#/queue/") && !location.hash.startsWith("#/job/")) {
    state.timer = setInterval(render, 1000);
  }
}

window.addEventListener("hashchange", () => { status(""); render(); schedule(); });
window.addEventListener("DOMContentLoaded", () => {
  const m = location.hash.match(/^#token=([0-9A-Za-z_-]+)$/);
  if (m) {
    state.token = m[1];
    sessionStorage.setItem("spindle-token", state.token);
    history.replaceState(null, "", "#/");
  }
  document.getElementById("token").value = state.token;
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = document.getElementById("token").value.trim();
    sessionStorage.setItem("spindle-token", state.token);
    status("token set", true);
    render();
  });
  document.getElementById("job-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = document.getElementById("job-id").value.trim();
    if (/^\d+$/.test(id)) location.hash = "#/job/" + id;
    else status("a job id is a number", false);
  });
  render();
  schedule();
});
