// Talking to the node: bearer-token fetch, JSON errors, and SSE read through fetch
// (EventSource cannot send an Authorization header, and tokens never go in URLs).

export class ApiError extends Error {
  constructor(status, message, type, retryAfter) {
    super(message);
    this.status = status;
    this.type = type;
    this.retryAfter = retryAfter;
  }
}

/** A token kept in localStorage under `key` (the chat and the dashboard keep theirs apart). */
export class TokenStore {
  constructor(key) { this.key = key; }
  get() { try { return localStorage.getItem(this.key); } catch { return null; } }
  set(token) { localStorage.setItem(this.key, token); }
  clear() { localStorage.removeItem(this.key); }

  /** Take `?token=` from the address bar (the sign-in link the node prints), store it and strip it. */
  adoptFromUrl() {
    const url = new URL(location.href);
    const token = url.searchParams.get("token");
    if (!token) return false;
    this.set(token.trim());
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
    return true;
  }
}

/** Accept a pasted token or a pasted sign-in link (`http://node/?token=…`). */
export function tokenFromInput(text) {
  const value = (text || "").trim();
  if (!value) return "";
  try {
    const url = new URL(value);
    return (url.searchParams.get("token") || "").trim();
  } catch {
    return value.replace(/\s+/g, "");
  }
}

async function errorFrom(res) {
  let message = `${res.status} ${res.statusText}`;
  let type = "http_error";
  try {
    const body = await res.json();
    if (body && body.error) { message = body.error.message || message; type = body.error.type || type; }
  } catch { /* not JSON: keep the status line */ }
  const retry = Number(res.headers.get("Retry-After")) || undefined;
  return new ApiError(res.status, message, type, retry);
}

/** fetch with the bearer token; non-2xx answers throw ApiError carrying the server's message. */
export async function request(token, path, { method = "GET", body, headers = {}, signal } = {}) {
  const init = { method, headers: { ...headers }, signal, cache: "no-store" };
  if (token) init.headers.Authorization = "Bearer " + token;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (!res.ok) throw await errorFrom(res);
  return res;
}

export async function getJSON(token, path, options) {
  return (await request(token, path, options)).json();
}

/**
 * Parse a text/event-stream body into {event, data, id, retry} objects.
 * `onActivity` is called on every chunk (pings included) so callers can spot a dead connection.
 */
export async function* readEvents(res, onActivity = () => {}) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onActivity();
      buffer += value;
      const blocks = buffer.split(/\r\n\r\n|\n\n|\r\r/);
      buffer = blocks.pop();
      for (const block of blocks) {
        const ev = { event: "message", data: "", id: undefined, retry: undefined };
        const data = [];
        let any = false;
        for (const line of block.split(/\r\n|\n|\r/)) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          any = true;
          if (field === "data") data.push(val);
          else if (field === "event") ev.event = val;
          else if (field === "id") ev.id = val;
          else if (field === "retry") ev.retry = Number(val);
        }
        if (!any) continue;
        ev.data = data.join("\n");
        yield ev;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/**
 * Follow an SSE endpoint for as long as `signal` is not aborted: reconnect with backoff,
 * resume with Last-Event-ID, and give up only on 401/403 (the caller asks the user to sign in).
 * Handlers: onEvent(ev), onState("live"|"connecting"|"offline"), onAuthError(ApiError).
 */
export function follow(path, { token, lastId, onEvent, onState = () => {}, onAuthError, signal, idleMs = 45000 }) {
  let retryMs = 1000;
  let last = lastId;
  const run = async () => {
    while (!signal.aborted) {
      const attempt = new AbortController();
      const stop = () => attempt.abort();
      signal.addEventListener("abort", stop, { once: true });
      let watchdog;
      const pet = () => { clearTimeout(watchdog); watchdog = setTimeout(stop, idleMs); };
      try {
        onState("connecting");
        const headers = { Accept: "text/event-stream" };
        const id = typeof last === "function" ? last() : last;
        if (id) headers["Last-Event-ID"] = String(id);
        const res = await request(token(), path, { headers, signal: attempt.signal });
        onState("live");
        retryMs = 1000;
        pet();
        for await (const ev of readEvents(res, pet)) {
          if (ev.retry) retryMs = ev.retry;
          if (ev.id !== undefined && typeof last !== "function") last = ev.id;
          if (ev.event === "auth") {
            const body = JSON.parse(ev.data);
            onAuthError(new ApiError(401, body.error.message, "unauthorized"));
            return;
          }
          onEvent(ev);
        }
      } catch (err) {
        if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
          onAuthError(err);
          return;
        }
      } finally {
        clearTimeout(watchdog);
        signal.removeEventListener("abort", stop);
      }
      if (signal.aborted) return;
      onState(navigator.onLine ? "connecting" : "offline");
      await sleep(retryMs, signal);
      retryMs = Math.min(retryMs * 2, 15000);
    }
  };
  return run();
}

export function sleep(ms, signal) {
  // Coming back online or to the foreground ends the wait: reconnect at once, not after the backoff.
  return new Promise((resolve) => {
    const visible = () => { if (document.visibilityState === "visible") done(); };
    const done = () => {
      clearTimeout(t);
      removeEventListener("online", done);
      document.removeEventListener("visibilitychange", visible);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener("abort", done);
    addEventListener("online", done);
    document.addEventListener("visibilitychange", visible);
  });
}

/** Register the service worker (root scope) so the shell loads offline and the app can be installed. */
export function registerServiceWorker() {
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch((err) => console.warn("service worker:", err));
  }
}

export function fmtWatts(w) {
  if (w == null || Number.isNaN(w)) return "–";
  const a = Math.abs(w);
  if (a >= 100) return w.toFixed(0) + " W";
  if (a >= 10) return w.toFixed(1) + " W";
  if (a >= 1) return w.toFixed(2) + " W";
  if (a >= 0.001) return (w * 1000).toFixed(a >= 0.01 ? 0 : 1) + " mW";
  return a === 0 ? "0 W" : (w * 1e6).toFixed(0) + " µW";
}

export function fmtEnergyWh(wh) {
  if (wh == null || Number.isNaN(wh)) return "–";
  const a = Math.abs(wh);
  if (a >= 1000) return (wh / 1000).toFixed(2) + " kWh";
  if (a >= 1) return wh.toFixed(2) + " Wh";
  if (a >= 0.001) return (wh * 1000).toFixed(a >= 0.01 ? 0 : 1) + " mWh";
  return a === 0 ? "0 Wh" : (wh * 1e6).toFixed(0) + " µWh";
}

export function fmtJoules(j) {
  if (j == null || Number.isNaN(j)) return "–";
  const a = Math.abs(j);
  if (a >= 1e6) return (j / 1e6).toFixed(2) + " MJ";
  if (a >= 1e3) return (j / 1e3).toFixed(2) + " kJ";
  if (a >= 1) return j.toFixed(1) + " J";
  return a === 0 ? "0 J" : (j * 1000).toFixed(1) + " mJ";
}
