// What hearth builds: the prelude, then the handler, then the handler
// wired to incoming requests through the engine's fetch event.
import "./prelude.js";
import * as handler from "./handler.js";

const fetchHandler =
  typeof handler.default?.fetch === "function"
    ? handler.default.fetch.bind(handler.default)
    : typeof handler.fetch === "function"
      ? handler.fetch
      : typeof handler.default === "function"
        ? handler.default
        : null;
if (fetchHandler === null) {
  throw new Error(
    "handler.js exports no fetch handler: add `export default { async fetch(request) { return new Response(\"hello\"); } }`",
  );
}

addEventListener("fetch", (event) =>
  event.respondWith(
    (async () => {
      const response = await fetchHandler(event.request);
      if (!(response instanceof Response)) {
        throw new TypeError(`fetch(request) returned ${typeof response}, not a Response: return new Response(body)`);
      }
      return response;
    })(),
  ),
);
