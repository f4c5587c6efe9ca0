// The operator dashboard: live node power (SSE, 1 Hz), agents and LLM, top consumers, DuckDB history,
// and storage / overlay panels when this node has those parts.
import {
  ApiError, TokenStore, follow, fmtEnergyWh, fmtJoules, fmtWatts, getJSON, registerServiceWorker, request,
  tokenFromInput,
} from "./lib/api.js";
import { drawChart, palette } from "./lib/chart.js";
import { ago, cell, short, showCluster, showNetwork, showStorage } from "./lib/panels.js";

const $ = (id) => document.getElementById(id);
const tokens = new TokenStore("hero.operator");
const LIVE_SPAN_S = 3600;
const TABLE_ROWS = 50;
const PANELS_MS = 10000;
const HISTORY_MS = 60000;
const HISTORY_EMPTY_MS = 5000; // a new node flushes its first history rows within seconds: look again soon

const state = {
  streams: null, // AbortController for both live streams and the pollers
  live: [], // [unix, watts] for the live chart: minute buckets from history, then 1 Hz samples
  budget: null,
  historyWindow: "1h",
  history: null,
  names: new Map(), // agent id -> user name, from the operator's power reports
  timers: [],
  historyTimer: null,
};

// ---------- views ----------

async function signOut() {
  // Revoke the token itself, so a copy left in a link or on another screen stops working too.
  const token = tokens.get();
  tokens.clear();
  if (token) await request(token, "/api/auth/logout", { method: "POST" }).catch(() => {});
  showSignIn("Signed out. `hero operator token` prints a new operator token.");
}

function showSignIn(message = "") {
  stop();
  $("dash").hidden = true;
  $("signout").hidden = true;
  $("live").hidden = true;
  $("node-id").textContent = "";
  $("signin-view").hidden = false;
  $("signin-error").textContent = message;
  $("token-input").focus();
}

function showDash() {
  $("signin-view").hidden = true;
  $("dash").hidden = false;
  $("signout").hidden = false;
  $("live").hidden = false;
}

function setLive(kind) {
  $("live").dataset.state = kind;
  $("live").textContent = { live: "Live", connecting: "Connecting…", offline: "Offline" }[kind] || kind;
}

function authFailed(err) {
  tokens.clear();
  showSignIn(err.status === 403 ? "That token is not the operator token: it gets no dashboard data." : err.message);
}

/** An agent as the operator knows it: its user's name, the short id beside it (the full id as a tooltip). */
function agentLabel(agentId, extra = "") {
  const span = document.createElement("span");
  span.title = agentId + extra;
  const name = state.names.get(agentId);
  if (name) {
    const strong = document.createElement("span");
    strong.className = "agent-name";
    strong.textContent = name;
    span.append(strong);
  }
  const code = document.createElement("code");
  code.className = "agent-id";
  code.textContent = agentId.slice(0, name ? 8 : 10) + "…";
  span.append(code);
  return span;
}

// ---------- live power ----------

function onPower(r) {
  state.budget = r.budget_watts;
  const known = state.names.size;
  for (const a of r.agents || []) if (a.user) state.names.set(a.agent_id, a.user);
  if (state.names.size !== known) drawHistory(); // the legend can name agents now
  // Every figure of a report is a mean over the same last window_s seconds: they add up.
  const win = `${Math.round(r.window_s || 0)} s`;
  $("node-watts").textContent = fmtWatts(r.node_watts);
  $("node-watts").title = `mean of the last ${win}`;
  $("budget").textContent = fmtWatts(r.budget_watts);
  const src = $("source");
  src.textContent = r.source === "rapl" ? "RAPL" : "model";
  src.className = "badge " + (r.source === "rapl" ? "ok" : "warn");
  src.title = r.source === "rapl" ? "Measured by RAPL energy counters"
    : `Modelled from the hardware profile${r.rapl ? " (" + r.rapl + ")" : ""}`;
  const meter = $("budget-meter");
  meter.max = r.budget_watts;
  meter.low = r.budget_watts * 0.75;
  meter.high = r.budget_watts * 0.9;
  meter.value = Math.min(r.budget_watts, r.node_watts);
  const parts = [
    `${fmtWatts(r.headroom_watts)} headroom`,
    `idle ${fmtWatts(r.idle_watts)}`,
    `agents ${fmtWatts(r.agents_watts)}`,
    `runtime ${fmtWatts(r.runtime_watts)}`,
    `other ${fmtWatts(r.other_watts)}`,
  ];
  $("headroom").textContent = parts.join(" · ") + ` (mean of the last ${win})`;
  $("live-legend").textContent = `node watts (${win} means live; 1 min means before)`;
  while (state.live.length && state.live[state.live.length - 1][0] >= r.ts) state.live.pop();
  state.live.push([r.ts, r.node_watts]);
  const cutoff = r.ts - LIVE_SPAN_S;
  while (state.live.length && state.live[0][0] < cutoff) state.live.shift();
  drawLive();
  renderTable(r.agents || [], win);
}

function drawLive() {
  const now = state.live.length ? state.live[state.live.length - 1][0] : Date.now() / 1000;
  // The window is the last hour, or less on a node younger than that, so its first minutes are readable.
  const first = state.live.length ? state.live[0][0] : now;
  const from = Math.max(now - LIVE_SPAN_S, Math.min(first, now - 60));
  const color = palette(0);
  $("live-swatch").style.background = color;
  drawChart($("live-chart"), {
    series: [{ name: "node", color, fill: true, points: state.live }],
    from, to: now, budget: state.budget, height: 190,
  });
  const last = state.live[state.live.length - 1];
  $("live-chart").setAttribute("aria-label",
    `Node watts over the last hour; now ${last ? fmtWatts(last[1]) : "unknown"} of a ${fmtWatts(state.budget)} budget`);
}

function renderTable(agents, win) {
  const rows = [...agents].sort((a, b) => b.watts - a.watts);
  const max = Math.max(1e-9, ...rows.map((a) => a.watts));
  const body = $("top-table").tBodies[0];
  const frag = document.createDocumentFragment();
  for (const a of rows.slice(0, TABLE_ROWS)) {
    const tr = document.createElement("tr");
    tr.dataset.agent = a.agent_id;
    tr.dataset.watts = String(a.watts);
    cell(tr, agentLabel(a.agent_id, ` (${a.status})`), "left");
    const st = document.createElement("span");
    st.className = "status " + a.status;
    st.textContent = a.status;
    cell(tr, st, "left col-status");
    const w = document.createElement("span");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round((a.watts / max) * 48)}px`;
    bar.setAttribute("aria-hidden", "true");
    w.append(bar, fmtWatts(a.watts));
    cell(tr, w, "watts");
    cell(tr, fmtJoules(a.joules), "joules");
    cell(tr, fmtEnergyWh(a.wh_today), "today");
    frag.append(tr);
  }
  body.replaceChildren(frag);
  $("agents-count").textContent = `${agents.length} agent${agents.length === 1 ? "" : "s"}`;
  $("top-note").textContent = `Watts: each agent's mean over the last ${win}, as in the header.` +
    (rows.length > TABLE_ROWS ? ` Showing the top ${TABLE_ROWS} of ${rows.length}.` : "");
}

// ---------- status (agents, LLM) ----------

function onStatus(s) {
  $("node-id").textContent = s.node_id ? `node ${short(s.node_id)}` : "";
  $("agents-active").textContent = s.agents.active;
  $("agents-hibernated").textContent = s.agents.hibernated;
  $("activation-rate").textContent = s.activation_rate_per_min.toFixed(1);
  renderDamaged(s.agents.damaged, s.damaged_agents || []);
  const rt = s.runtime;
  $("runtime-note").textContent =
    `${rt.turns} turns · ${rt.activations} activations · ${rt.hibernations} hibernations · ${rt.timers_pending} timers pending`;
  onLLM(s.llm);
}

/** Agents whose stored objects cannot be read: how many, and each one's user and the store's reason. */
function renderDamaged(count, agents) {
  const dd = $("agents-damaged");
  dd.textContent = count;
  dd.className = count ? "bad" : "";
  for (const a of agents) if (a.user) state.names.set(a.agent_id, a.user);
  $("agents-damaged-list").replaceChildren(...agents.map((a) => {
    const li = document.createElement("li");
    li.dataset.agent = a.agent_id;
    const why = document.createElement("span");
    why.className = "note";
    why.textContent = ` ${a.reason ?? "unreadable"}` + (a.since ? ` (since ${ago(a.since)})` : "");
    li.append(agentLabel(a.agent_id), why);
    return li;
  }));
  $("agents-damaged-list").hidden = $("agents-damaged-title").hidden = !agents.length;
}

/** The shared model: batch, queue, KV cache, prompt reuse, and each running request's share of the CPU. */
function onLLM(llm) {
  const pct = (x) => `${Math.round(100 * x)} %`;
  $("llm-model").textContent = llm.model || "–";
  $("llm-loaded").textContent = llm.loaded ? "loaded" : "unloaded";
  $("llm-loaded").title = llm.last_load_seconds != null ? `last (re)load ${llm.last_load_seconds.toFixed(2)} s` : "";
  $("llm-tps").textContent = llm.tokens_per_s.toFixed(1);
  $("llm-batch").textContent = `${llm.running} / ${llm.parallel}`;
  $("llm-queue").textContent = `${llm.queue_depth} / ${llm.queue_max}`;
  $("llm-kv").textContent = pct(llm.kv_use);
  const prompt = llm.prompt_tokens_total + llm.prompt_tokens_reused_total;
  $("llm-reuse").textContent = prompt ? pct(llm.prompt_tokens_reused_total / prompt) : "–";
  $("llm-ttft").textContent = `${llm.time_to_first_token_s.toFixed(2)} s`;
  $("llm-threads").textContent = `${llm.threads_used} / ${llm.threads}`;
  const note = $("llm-note");
  note.replaceChildren(`${llm.tokens_total} tokens generated · ${llm.requests_total} requests · ` +
    `${llm.rejected_total} refused (queue full)`);
  if (llm.sequences.length) {
    note.append(" · decoding now (CPU time so far, each request's share of the shared steps): ");
    llm.sequences.forEach((q, i) => {
      if (i) note.append(", ");
      note.append(agentLabel(q.agent_id), ` ${q.cpu_s.toFixed(2)} s, ${q.generated} tokens`);
    });
  }
}

// ---------- history ----------

async function loadHistory() {
  try {
    state.history = await getJSON(tokens.get(), `/api/node/power/chart?window=${state.historyWindow}`);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return authFailed(err);
    $("history-card").hidden = true;
    return;
  }
  $("history-card").hidden = false;
  drawHistory();
}

function drawHistory() {
  const h = state.history;
  if (!h) return;
  const at = (t) => Math.min(t + h.bucket_s / 2, h.end); // a bucket's middle; the current one at "now"
  const node = h.ts.map((t, i) => [at(t), h.node_watts[i]]);
  drawChart($("hist-node"), {
    series: [{ name: "node", color: palette(0), fill: true, points: node }],
    from: h.start, to: h.end, budget: h.budget_watts.find((b) => b != null) ?? state.budget, height: 170,
  });
  const series = h.agents.map((a, i) => ({
    name: a.agent_id, color: palette(i), points: h.ts.map((t, j) => [at(t), a.watts[j]]),
  }));
  drawChart($("hist-agents"), { series, from: h.start, to: h.end, height: 170 });
  // The chart plots watts (each bucket's mean); the legend gives each agent's mean over the whole window, so
  // both speak watts, and ranking by energy over the window is ranking by that mean.
  const span = Math.max(1, h.end - h.start);
  const bucket = h.bucket_s >= 600 ? `${Math.round(h.bucket_s / 60)} min` : "1 min";
  $("hist-agents-title").textContent = `Top 10 agents by energy, in watts (${bucket} means; legend: mean over the window)`;
  const legend = $("hist-legend");
  legend.replaceChildren(...h.agents.map((a, i) => {
    const li = document.createElement("li");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = palette(i);
    const label = agentLabel(a.agent_id, ` · ${fmtEnergyWh(a.wh)} in this window`);
    li.append(sw, label, ` ${fmtWatts(a.joules / span)}`);
    return li;
  }));
  if (!h.agents.length) {
    const li = document.createElement("li");
    li.textContent = "No agent drew power in this window.";
    legend.append(li);
  }
  const peak = Math.max(0, ...h.node_watts.filter((v) => v != null));
  $("hist-node").setAttribute("aria-label", `Node watts, ${h.window === "1h" ? "last hour" : "last day"}; peak ${fmtWatts(peak)}`);
}

// ---------- optional parts: storage (QSS), the overlay network, the cluster (lib/panels.js) ----------

/** GET an optional part's figures; null (the panel stays hidden) when this node has no such part. */
async function probe(path) {
  try {
    return await getJSON(tokens.get(), path);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) authFailed(err);
    return null; // 404/503: this node has no such part; the panel stays hidden
  }
}

// ---------- session ----------

function stop() {
  state.streams?.abort();
  state.streams = null;
  for (const t of state.timers) clearInterval(t);
  clearTimeout(state.historyTimer);
  state.timers = [];
}

async function start() {
  let status;
  try {
    status = await getJSON(tokens.get(), "/api/node/status");
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) authFailed(err);
    else { setTimeout(start, 3000); $("signin-error").textContent = "Cannot reach the node. Retrying…"; }
    return;
  }
  stop();
  showDash();
  onStatus(status);
  const signal = (state.streams = new AbortController()).signal;
  const common = { token: () => tokens.get(), signal, onAuthError: authFailed };
  follow("/api/node/status/stream", {
    ...common, onState: setLive, onEvent: (ev) => ev.event === "status" && onStatus(JSON.parse(ev.data)),
  });
  const metered = status.parts.power;
  $("power-card").hidden = !metered;
  $("top-card").hidden = !metered;
  $("nopower-card").hidden = metered;
  if (metered) {
    await loadHistory();
    // Seed the live chart with the finished minutes of the last hour; 1 Hz samples follow.
    const h = state.history;
    const now = Date.now() / 1000;
    state.live = (h?.ts || []).map((t, i) => [t + h.bucket_s / 2, h.node_watts[i], t + h.bucket_s])
      .filter(([, v, end]) => v != null && end <= now).map(([t, v]) => [t, v]);
    follow("/api/node/power/stream", { ...common, onEvent: (ev) => ev.event === "power" && onPower(JSON.parse(ev.data)) });
    const again = () => {
      if (signal.aborted) return;
      const empty = !state.history || !state.history.node_watts.some((v) => v != null);
      state.historyTimer = setTimeout(() => loadHistory().then(again), empty ? HISTORY_EMPTY_MS : HISTORY_MS);
    };
    again();
  }
  const panels = () => {
    if (status.parts.storage) probe("/api/node/storage").then(showStorage);
    if (status.parts.network) probe("/api/node/net").then(showNetwork);
    probe("/api/node/cluster").then(showCluster);
  };
  panels();
  state.timers.push(setInterval(panels, PANELS_MS));
}

function wire() {
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = tokenFromInput($("token-input").value);
    if (!token) return;
    tokens.set(token);
    $("token-input").value = "";
    start();
  });
  $("signout").addEventListener("click", signOut);
  for (const b of document.querySelectorAll("[data-window]")) {
    b.addEventListener("click", () => {
      state.historyWindow = b.dataset.window;
      for (const o of document.querySelectorAll("[data-window]")) o.setAttribute("aria-pressed", String(o === b));
      loadHistory();
    });
  }
  let resize;
  addEventListener("resize", () => {
    clearTimeout(resize);
    resize = setTimeout(() => { if (state.live.length) drawLive(); drawHistory(); }, 150);
  });
}

wire();
registerServiceWorker();
tokens.adoptFromUrl();
if (tokens.get()) start();
else showSignIn();
