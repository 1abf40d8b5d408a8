// A hearth handler: `hearth fn deploy NAME handler.js` serves it at
// http://NAME.localhost:8080/. `kv` (key-value) and `config` are globals;
// `fetch` reaches the hosts listed under `outbound` in hearth.toml.
export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (request.method === "POST") {
      kv.set("last", await request.text());
    }
    const visits = kv.increment("visits");
    return Response.json({
      path: url.pathname,
      visits,
      last: kv.get("last"),
      greeting: config.get("greeting") ?? "hello",
    });
  },
};
