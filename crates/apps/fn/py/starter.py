# A hearth handler: `hearth fn deploy NAME handler.py` serves it at
# http://NAME.localhost:8080/. `http.fetch` reaches the hosts listed under
# `outbound` in hearth.toml.
from hearth import Response, config, kv


def handle(request):
    if request.method == "POST":
        kv.set("last", request.text())
    visits = kv.increment("visits")
    return Response({
        "path": request.path,
        "visits": visits,
        "last": kv.get("last"),
        "greeting": config.get("greeting") or "hello",
    })
