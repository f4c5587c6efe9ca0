// The chat's message log: bubbles from the history, the event stream and our own sends, matched by seq,
// and the log kept on its newest message unless the reader scrolled up to older ones.

const $ = (id) => document.getElementById(id);

export const log = {
  lastSeq: 0,
  oldestSeq: null,
  bySeq: new Map(), // seq -> element
  pendingUser: [], // our own messages not yet confirmed by the event stream: {el, text}
  pendingReply: [], // our own replies (streaming or done) not yet confirmed: {el, final}
  stick: true, // the log follows the newest message (until the reader scrolls up to older ones)
};

const LABELS = {
  user: "You said", assistant: "Your agent said", reminder: "Reminder from your agent", error: "Error",
  stopped: "Your agent said (stopped)",
};
const MARKED = new Set(["reminder", "error", "stopped"]); // kinds with a style of their own (app.css)

export function messageElement({ role, content = "", kind = "chat", ts, seq }) {
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
export function mark(el, kind) {
  el.classList.add(kind);
  el.querySelector(".visually-hidden").textContent = LABELS[kind] + ": ";
}

function setSeq(el, seq) {
  el.dataset.seq = String(seq);
  log.bySeq.set(seq, el);
  log.lastSeq = Math.max(log.lastSeq, seq);
  if (log.oldestSeq === null || seq < log.oldestSeq) log.oldestSeq = seq;
}

// ---------- keeping the newest message in view ----------
// The log follows its newest message unless the reader has scrolled up. Whatever changes the log's size
// (the power footprint appearing above it, a banner, the phone's keyboard, the composer growing) or its
// content (a new bubble, a streamed token, a reply marked stopped) brings the newest message back in view;
// a check made before such a change ("were we near the bottom?") cannot see it, so observers do the work.

function nearBottom() {
  const el = $("log");
  return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
}

function scrollToNewest() {
  const el = $("log");
  el.scrollTop = el.scrollHeight;
}

function keepNewestInView() {
  if (log.stick) scrollToNewest();
}

/** Load, send, stop and pushed messages always show the newest message, wherever the reader was. */
export function revealNewest() {
  log.stick = true;
  scrollToNewest();
}

export function followNewest() {
  const el = $("log");
  // A scroll by the reader decides whether to follow; our own scrolls end at the bottom, so they keep it on.
  el.addEventListener("scroll", () => { log.stick = nearBottom(); }, { passive: true });
  new ResizeObserver(keepNewestInView).observe(el);
  new MutationObserver(keepNewestInView).observe(el, { childList: true, subtree: true, characterData: true });
}

// ---------- bubbles ----------

export function append(el) {
  $("empty").hidden = true;
  $("log").append(el);
  return el;
}

/** A message from the history or the event stream: confirm our own pending bubble, or add it (false: known). */
export function receive(m) {
  if (log.bySeq.has(m.seq)) return false;
  if (m.role === "user") {
    const i = log.pendingUser.findIndex((p) => p.text === m.content);
    if (i >= 0) {
      const [p] = log.pendingUser.splice(i, 1);
      setSeq(p.el, m.seq);
      return true;
    }
  } else if (m.role === "assistant" && m.kind !== "reminder" && log.pendingReply.length) {
    const p = log.pendingReply.shift();
    p.final = true; // deltas still in flight must not be appended after the agent's final text
    if (m.content || !p.el.querySelector(".body").textContent) p.el.querySelector(".body").textContent = m.content;
    if (m.kind === "error" || m.kind === "stopped") mark(p.el, m.kind);
    setSeq(p.el, m.seq);
    return true;
  }
  append(messageElement(m));
  return true;
}

/** Take back a pending bubble (its message never reached the agent). */
export function drop(item, list) {
  const i = list.indexOf(item);
  if (i >= 0) list.splice(i, 1);
  item.el.remove();
  if (!$("log").querySelector(".msg")) $("empty").hidden = false;
}

/** The newest page of the history (GET /api/me/messages). */
export function showPage(page) {
  for (const m of page.messages) receive(m);
  $("more").hidden = !page.has_more;
  $("empty").hidden = page.messages.length > 0;
  revealNewest();
}

/** An older page, above what is shown, keeping the reader's place. */
export function showEarlier(page) {
  const el = $("log");
  const before = el.scrollHeight;
  const older = document.createDocumentFragment();
  for (const m of page.messages) if (!log.bySeq.has(m.seq)) older.append(messageElement(m));
  log.stick = false; // the reader asked for older messages: stay with them
  el.insertBefore(older, el.querySelector(".msg"));
  $("more").hidden = !page.has_more;
  el.scrollTop += el.scrollHeight - before; // keep the reader's place
}

export function resetLog() {
  for (const el of [...$("log").querySelectorAll(".msg")]) el.remove();
  log.bySeq.clear();
  log.pendingUser = [];
  log.pendingReply = [];
  log.lastSeq = 0;
  log.oldestSeq = null;
}
