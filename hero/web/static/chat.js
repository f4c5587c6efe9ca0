// The chat app: sign-in, history, streamed replies with stop, live events, the agent's power footprint.
import {
  ApiError, TokenStore, follow, fmtEnergyWh, fmtWatts, getJSON, readEvents, registerServiceWorker, request,
  tokenFromInput,
} from "./lib/api.js";
import { signInWithKey } from "./lib/keylogin.js";

const $ = (id) => document.getElementById(id);
const tokens = new TokenStore("hero.token");
const DRAFT = "hero.draft";
const FOOTPRINT_MS = 10000;

const state = {
  me: null,
  lastSeq: 0,
  oldestSeq: null,
  bySeq: new Map(), // seq -> element
  pendingUser: [], // our own messages not yet confirmed by the event stream: {el, text}
  pendingReply: [], // our own replies (streaming or done) not yet confirmed
  sending: null, // AbortController of the reply being streamed
  events: null, // AbortController of the live event stream
  footprintTimer: null,
  stick: true, // the log follows the newest message (until the reader scrolls up to older ones)
};

// ---------- views ----------

function showSignIn(message = "", { expired = false } = {}) {
  stopSession();
  $("chat-view").hidden = true;
  $("signout").hidden = true;
  $("live").hidden = true;
  $("who").textContent = "";
  $("signin-view").hidden = false;
  $("signin-title").textContent = expired ? "Sign in again" : "Sign in to your agent";
  $("signin-error").textContent = message;
  const kept = expired && Boolean($("text").value.trim());
  $("signin-kept").hidden = !kept;
  $("signin-lead").hidden = kept;
  const tab = document.querySelector('[role="tab"][aria-selected="true"]');
  (tab?.id === "tab-key" ? $("key-input") : $("token-input")).focus();
}

function showChat() {
  $("signin-view").hidden = true;
  $("chat-view").hidden = false;
  $("signout").hidden = false;
  $("live").hidden = false;
  $("signin-error").textContent = "";
  $("text").focus();
}

function banner(text) {
  $("banner").textContent = text || "";
  $("banner").hidden = !text;
}

function setLive(kind) {
  const el = $("live");
  el.dataset.state = kind;
  el.textContent = { live: "Live", connecting: "Connecting…", offline: "Offline" }[kind] || kind;
}

// ---------- messages ----------

const LABELS = {
  user: "You said", assistant: "Your agent said", reminder: "Reminder from your agent", error: "Error",
  stopped: "Your agent said (stopped)",
};
const MARKED = new Set(["reminder", "error", "stopped"]); // kinds with a style of their own (app.css)

function messageElement({ role, content = "", kind = "chat", ts, seq }) {
  const el = document.createElement("article");
  el.className = `msg ${role === "user" ? "user" : "assistant"}`;
  if (MARKED.has(kind)) el.classList.add(kind);
  const label = document.createElement("span");
  label.className = "visually-hidden";
  label.textContent = (LABELS[kind] || LABELS[role] || role) + ": ";
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = content;
  const meta = document.createElement("span");
  meta.className = "meta";
  const time = document.createElement("time");
  const when = ts ? new Date(ts * 1000) : new Date();
  time.dateTime = when.toISOString();
  time.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  meta.append(time);
  el.append(label, body, meta);
  if (seq) setSeq(el, seq);
  return el;
}

/** Mark a reply of the live stream as the history has it (stopped, error): its style and its spoken label. */
function mark(el, kind) {
  el.classList.add(kind);
  el.querySelector(".visually-hidden").textContent = LABELS[kind] + ": ";
}

function setSeq(el, seq) {
  el.dataset.seq = String(seq);
  state.bySeq.set(seq, el);
  state.lastSeq = Math.max(state.lastSeq, seq);
  if (state.oldestSeq === null || seq < state.oldestSeq) state.oldestSeq = seq;
}

// ---------- keeping the newest message in view ----------
// The log follows its newest message unless the reader has scrolled up. Whatever changes the log's size
// (the power footprint appearing above it, a banner, the phone's keyboard, the composer growing) or its
// content (a new bubble, a streamed token, a reply marked stopped) brings the newest message back in view;
// a check made before such a change ("were we near the bottom?") cannot see it, so observers do the work.

function nearBottom() {
  const log = $("log");
  return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
}

function scrollToNewest() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

function keepNewestInView() {
  if (state.stick) scrollToNewest();
}

/** Load, send, stop and pushed messages always show the newest message, wherever the reader was. */
function revealNewest() {
  state.stick = true;
  scrollToNewest();
}

function followNewest() {
  const log = $("log");
  // A scroll by the reader decides whether to follow; our own scrolls end at the bottom, so they keep it on.
  log.addEventListener("scroll", () => { state.stick = nearBottom(); }, { passive: true });
  new ResizeObserver(keepNewestInView).observe(log);
  new MutationObserver(keepNewestInView).observe(log, { childList: true, subtree: true, characterData: true });
}

function append(el) {
  $("empty").hidden = true;
  $("log").append(el);
  return el;
}

/** A message from the history or the event stream: confirm our own pending bubble, or add it (false: known). */
function receive(m) {
  if (state.bySeq.has(m.seq)) return false;
  if (m.role === "user") {
    const i = state.pendingUser.findIndex((p) => p.text === m.content);
    if (i >= 0) {
      const [p] = state.pendingUser.splice(i, 1);
      setSeq(p.el, m.seq);
      return true;
    }
  } else if (m.role === "assistant" && m.kind !== "reminder" && state.pendingReply.length) {
    const p = state.pendingReply.shift();
    p.final = true; // deltas still in flight must not be appended after the agent's final text
    if (m.content || !p.el.querySelector(".body").textContent) p.el.querySelector(".body").textContent = m.content;
    if (m.kind === "error" || m.kind === "stopped") mark(p.el, m.kind);
    setSeq(p.el, m.seq);
    return true;
  }
  append(messageElement(m));
  return true;
}

async function loadHistory() {
  const page = await getJSON(tokens.get(), "/api/me/messages?limit=100");
  for (const m of page.messages) receive(m);
  $("more").hidden = !page.has_more;
  $("empty").hidden = page.messages.length > 0;
  revealNewest();
}

async function loadEarlier() {
  if (state.oldestSeq === null) return;
  const log = $("log");
  const before = log.scrollHeight;
  const page = await getJSON(tokens.get(), `/api/me/messages?limit=100&before=${state.oldestSeq}`);
  const older = document.createDocumentFragment();
  for (const m of page.messages) if (!state.bySeq.has(m.seq)) older.append(messageElement(m));
  state.stick = false; // the reader asked for older messages: stay with them
  log.insertBefore(older, log.querySelector(".msg"));
  $("more").hidden = !page.has_more;
  log.scrollTop += log.scrollHeight - before; // keep the reader's place
}

// ---------- sending ----------

function setSending(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("log").setAttribute("aria-busy", on ? "true" : "false");
}

async function send() {
  const input = $("text");
  const text = input.value.trim();
  if (!text || state.sending) return;
  const controller = new AbortController();
  state.sending = controller;
  setSending(true);
  banner("");
  revealNewest();
  const mine = { el: append(messageElement({ role: "user", content: text })), text };
  const reply = { el: append(messageElement({ role: "assistant" })), final: false };
  reply.el.classList.add("streaming");
  state.pendingUser.push(mine);
  state.pendingReply.push(reply);
  const body = reply.el.querySelector(".body");
  let accepted = false;
  try {
    const res = await request(tokens.get(), "/v1/chat/completions", {
      method: "POST",
      body: { model: "hero", stream: true, messages: [{ role: "user", content: text }] },
      signal: controller.signal,
    });
    accepted = true; // the message is durable in the agent's history: the draft can go
    if (input.value.trim() === text) input.value = "";
    localStorage.removeItem(DRAFT);
    autosize();
    for await (const ev of readEvents(res)) {
      if (ev.data === "[DONE]") break;
      const chunk = JSON.parse(ev.data);
      if (chunk.error) {
        reply.el.classList.add("error");
        if (!reply.final) body.textContent += (body.textContent ? "\n" : "") + chunk.error.message;
        continue;
      }
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta && !reply.final) body.textContent += delta;
    }
  } catch (err) {
    if (err.name === "AbortError") {
      mark(reply.el, "stopped");
      revealNewest();
    } else if (!accepted) {
      // Nothing reached the agent: take the bubbles back, keep the text in the composer.
      drop(mine, state.pendingUser);
      drop(reply, state.pendingReply);
      if (err instanceof ApiError && err.status === 401) {
        showSignIn(err.message, { expired: true });
      } else if (err instanceof ApiError && err.status === 429) {
        banner(`The node is at its power budget: try again in ${err.retryAfter || 5} s. Your message is kept.`);
      } else if (err instanceof ApiError) {
        banner(`Not sent: ${err.message}`);
      } else {
        banner("Could not reach your node. Your message is kept; send it again when you are back online.");
      }
    } else {
      reply.el.classList.add("error");
      body.textContent += (body.textContent ? "\n" : "") + "The connection dropped; the full reply will appear when it is back.";
    }
  } finally {
    reply.el.classList.remove("streaming");
    state.sending = null;
    setSending(false);
    if (!$("chat-view").hidden) input.focus();
  }
}

function drop(item, list) {
  const i = list.indexOf(item);
  if (i >= 0) list.splice(i, 1);
  item.el.remove();
  if (!$("log").querySelector(".msg")) $("empty").hidden = false;
}

function stop() {
  state.sending?.abort();
}

function autosize() {
  const t = $("text");
  t.style.height = "auto";
  t.style.height = Math.min(t.scrollHeight + 2, innerHeight * 0.4) + "px";
}

// ---------- live events and footprint ----------

function connectEvents() {
  state.events?.abort();
  const controller = new AbortController();
  state.events = controller;
  follow("/api/me/events", {
    token: () => tokens.get(),
    lastId: () => state.lastSeq,
    signal: controller.signal,
    onState: setLive,
    onEvent: (ev) => {
      if (ev.event === "message" && receive(JSON.parse(ev.data))) revealNewest();
    },
    onAuthError: (err) => showSignIn(err.message, { expired: true }),
  });
}

async function refreshFootprint() {
  if (document.visibilityState !== "visible" || !tokens.get()) return;
  try {
    const p = await getJSON(tokens.get(), "/api/me/power");
    $("fp-watts").textContent = fmtWatts(p.watts);
    $("fp-today").textContent = fmtEnergyWh(p.wh_today);
    const avg = p.node_average?.watts;
    $("fp-avg").textContent = fmtWatts(avg);
    const cmp = $("fp-cmp");
    if (avg > 0) {
      const ratio = p.watts / avg;
      cmp.dataset.level = ratio > 1.25 ? "high" : ratio < 0.8 ? "low" : "even";
      cmp.textContent = ratio > 1.25 ? `${ratio.toFixed(1)}× the average`
        : ratio < 0.8 ? "below the average" : "about the average";
    } else {
      cmp.textContent = "";
    }
    $("footprint").hidden = false;
  } catch (err) {
    $("footprint").hidden = true; // this node does not meter power (404), or we are offline
    if (err instanceof ApiError && err.status === 401) showSignIn(err.message, { expired: true });
  }
}

// ---------- session ----------

function stopSession() {
  state.events?.abort();
  state.events = null;
  state.sending?.abort();
  clearInterval(state.footprintTimer);
  state.footprintTimer = null;
}

function resetLog() {
  for (const el of [...$("log").querySelectorAll(".msg")]) el.remove();
  state.bySeq.clear();
  state.pendingUser = [];
  state.pendingReply = [];
  state.lastSeq = 0;
  state.oldestSeq = null;
}

async function start() {
  let me;
  try {
    me = await getJSON(tokens.get(), "/api/me");
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      const wasSignedIn = state.me !== null || Boolean(tokens.get());
      tokens.clear();
      showSignIn(err.status === 403 ? "That is not a user token (the operator token opens the dashboard)." : err.message,
        { expired: wasSignedIn && err.status === 401 });
    } else {
      banner("Cannot reach your node. Retrying…");
      setTimeout(start, 3000);
    }
    return false;
  }
  if (state.me && state.me.agent_id !== me.agent_id) resetLog();
  state.me = me;
  banner("");
  $("who").textContent = me.name;
  showChat();
  try {
    await loadHistory();
  } catch (err) {
    banner(`Could not load your history: ${err.message}`);
  }
  connectEvents();
  refreshFootprint();
  state.footprintTimer = setInterval(refreshFootprint, FOOTPRINT_MS);
  return true;
}

async function signInWithToken(token) {
  if (!token) {
    $("signin-error").textContent = "Paste a token or a sign-in link first.";
    return;
  }
  tokens.set(token);
  if (await start()) $("token-input").value = "";
}

async function signOut() {
  const token = tokens.get();
  stopSession();
  tokens.clear();
  state.me = null;
  resetLog();
  if (token) request(token, "/api/auth/logout", { method: "POST" }).catch(() => {});
  showSignIn("");
}

// ---------- QR scanning (where the browser can: BarcodeDetector, e.g. Chrome on Android) ----------

let scanStream = null;

async function startScan() {
  try {
    const detector = new BarcodeDetector({ formats: ["qr_code"] });
    scanStream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" } });
    const video = $("scan-video");
    video.srcObject = scanStream;
    $("scanner").hidden = false;
    await video.play();
    while (scanStream) {
      const codes = await detector.detect(video).catch(() => []);
      const token = codes.map((c) => tokenFromInput(c.rawValue)).find(Boolean);
      if (token) {
        stopScan();
        await signInWithToken(token);
        return;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  } catch (err) {
    stopScan();
    $("signin-error").textContent = `Cannot scan: ${err.message}. Paste the token instead.`;
  }
}

function stopScan() {
  scanStream?.getTracks().forEach((t) => t.stop());
  scanStream = null;
  $("scanner").hidden = true;
}

// ---------- wiring ----------

function selectTab(tab) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  tab.focus();
}

function wire() {
  followNewest();
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("stop").addEventListener("click", stop);
  $("more").addEventListener("click", () => loadEarlier().catch((err) => banner(err.message)));
  const text = $("text");
  text.value = localStorage.getItem(DRAFT) || "";
  text.addEventListener("input", () => { localStorage.setItem(DRAFT, text.value); autosize(); });
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.sending) stop(); });
  $("signout").addEventListener("click", signOut);
  $("panel-token").addEventListener("submit", (e) => {
    e.preventDefault();
    signInWithToken(tokenFromInput($("token-input").value));
  });
  $("panel-key").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("signin-error").textContent = "";
    $("key-submit").disabled = true;
    try {
      const { token } = await signInWithKey($("key-input").value);
      $("key-input").value = "";
      tokens.set(token);
      await start();
    } catch (err) {
      $("signin-error").textContent = err.message;
    } finally {
      $("key-submit").disabled = false;
    }
  });
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (e) => {
      const i = tabs.indexOf(tab);
      if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
        e.preventDefault();
        selectTab(tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length]);
      }
    });
  }
  if ("BarcodeDetector" in window && navigator.mediaDevices?.getUserMedia) {
    $("scan").hidden = false;
    $("scan").addEventListener("click", startScan);
    $("scan-cancel").addEventListener("click", stopScan);
  }
  document.addEventListener("visibilitychange", refreshFootprint);
  autosize();
}

wire();
registerServiceWorker();
tokens.adoptFromUrl();
if (tokens.get()) start();
else showSignIn();
