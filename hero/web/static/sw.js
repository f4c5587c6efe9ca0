// Hero's service worker: the app shell works offline; live data (/api, /v1) always goes to the network.
// Shell requests are network-first (a node on the LAN is fast and the pages stay fresh) with the cache
// as the offline fallback. Bump VERSION when the list of shell files changes.
const VERSION = "hero-shell-v3";
const SHELL = [
  "/",
  "/dashboard",
  "/manifest.webmanifest",
  "/static/app.css",
  "/static/chat.js",
  "/static/dashboard.js",
  "/static/lib/api.js",
  "/static/lib/keylogin.js",
  "/static/lib/chart.js",
  "/static/lib/panels.js",
  "/static/lib/messagelog.js",
  "/static/lib/footprint.js",
  "/static/lib/scan.js",
  "/static/icons/icon.svg",
  "/static/icons/icon-192.png",
  "/static/icons/icon-512.png",
  "/static/icons/maskable-512.png",
  "/static/icons/apple-touch-icon.png",
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(VERSION)
      .then((cache) => cache.addAll(SHELL.map((url) => new Request(url, { cache: "reload" }))))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k.startsWith("hero-shell-") && k !== VERSION).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

function shellKey(url) {
  // Sign-in links carry ?token=…: never use them as cache keys, and never store the token.
  if (url.pathname === "/" || url.pathname === "/index.html") return "/";
  if (url.pathname === "/dashboard") return "/dashboard";
  return SHELL.includes(url.pathname) ? url.pathname : null;
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  const key = shellKey(url);
  if (key === null) return; // APIs, streams and anything else: straight to the network
  event.respondWith(
    (async () => {
      const cache = await caches.open(VERSION);
      try {
        const response = await fetch(request);
        if (response.ok) cache.put(key, response.clone());
        return response;
      } catch (err) {
        const cached = await cache.match(key);
        if (cached) return cached;
        throw err;
      }
    })(),
  );
});
