// The chat app: sign-in, history, streamed replies with stop, live events, the agent's power footprint.
// Its parts: the message log (lib/messagelog.js), the power footprint (lib/footprint.js), QR sign-in (lib/scan.js).
import {
  ApiError, TokenStore, follow, getJSON, readEvents, registerServiceWorker, request, tokenFromInput,
} from "./lib/api.js";
import { showFootprint } from "./lib/footprint.js";
import { signInWithKey } from "./lib/keylogin.js";
import {
  append, drop, followNewest, log, mark, messageElement, receive, resetLog, revealNewest, showEarlier, showPage,
} from "./lib/messagelog.js";
import { canScan, startScan, stopScan } from "./lib/scan.js";

const $ = (id) => document.getElementById(id);
const tokens = new TokenStore("hero.token");
const DRAFT = "hero.draft";
const FOOTPRINT_MS = 10000;

const state = {
  me: null,
  sending: null, // AbortController of the reply being streamed
  events: null, // AbortController of the live event stream
  footprintTimer: null,
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

// ---------- history ----------

async function loadHistory() {
  showPage(await getJSON(tokens.get(), "/api/me/messages?limit=100"));
}

async function loadEarlier() {
  if (log.oldestSeq === null) return;
  showEarlier(await getJSON(tokens.get(), `/api/me/messages?limit=100&before=${log.oldestSeq}`));
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
  log.pendingUser.push(mine);
  log.pendingReply.push(reply);
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
      drop(mine, log.pendingUser);
      drop(reply, log.pendingReply);
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
    lastId: () => log.lastSeq,
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
    showFootprint(await getJSON(tokens.get(), "/api/me/power"));
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
  if (canScan()) {
    $("scan").hidden = false;
    $("scan").addEventListener("click", () => startScan(signInWithToken, (err) => {
      $("signin-error").textContent = `Cannot scan: ${err.message}. Paste the token instead.`;
    }));
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
