/* The service worker of the officers' page (served at /sw.js, scope "/"). At install it
   precaches the page shell the service lists at /offline-shell.json: the page, its scripts and
   styles, icons and ONNX Runtime Web's files. Page files are fetched from the network first (so
   an update shows at once) and from the cache when there is no network. API calls are never
   cached here: the active model and its decision data are kept by the page itself
   (js/offline/runtime.js), and cases made offline in IndexedDB (js/offline/cases.js). */
const SHELL_CACHE = "cites-shell-v1";

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL_CACHE);
    const response = await fetch("/offline-shell.json", { cache: "no-store" });
    const shell = await response.json();
    // One missing file (say the runtime is not installed) must not stop the rest.
    await Promise.allSettled(shell.files.map((url) => cache.add(new Request(url, { cache: "no-cache" }))));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("cites-shell-") && name !== SHELL_CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

function isShell(url) {
  return url.origin === self.location.origin
    && (url.pathname === "/" || url.pathname.startsWith("/static/") || url.pathname.startsWith("/icons/"));
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || !isShell(url)) return; // the API goes to the network as is
  event.respondWith((async () => {
    const cache = await caches.open(SHELL_CACHE);
    try {
      const response = await fetch(request, { cache: "no-cache" });
      if (response.ok) await cache.put(url.pathname, response.clone());
      return response;
    } catch (err) {
      const cached = await cache.match(url.pathname);
      if (cached) return cached;
      throw err;
    }
  })());
});
