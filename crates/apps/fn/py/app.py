"""What hearth builds: the handler module's `handle(request)` wired to
wasi:http's incoming handler through the small types in hearth.py."""

import traceback

import handler
import hearth
from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports import types as _types

if not callable(getattr(handler, "handle", None)):
    raise SystemExit(
        "handler.py defines no handle(request) function: add `def handle(request): return Response(\"hello\")`"
    )


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: _types.IncomingRequest, response_out: _types.ResponseOutparam) -> None:
        headers = {k: v.decode("utf-8", errors="replace") for k, v in request.headers().entries()}
        authority = request.authority() or headers.get("host", "localhost")
        url = f"http://{authority}{request.path_with_query() or '/'}"
        body = hearth._read(request.consume())
        incoming = hearth.Request(hearth._method_name(request.method()), url, headers, body)
        try:
            response = handler.handle(incoming)
            if not isinstance(response, hearth.Response):
                raise TypeError(f"handle(request) returned {type(response).__name__}, not a Response: return Response(body)")
        except Exception:
            traceback.print_exc()
            response = hearth.Response("the handler failed: see `hearth app logs`\n", 500)
        fields = _types.Fields.from_list([(k, v.encode()) for k, v in response.headers.items()])
        outgoing = _types.OutgoingResponse(fields)
        outgoing.set_status_code(response.status)
        body = outgoing.body()
        _types.ResponseOutparam.set(response_out, Ok(outgoing))
        hearth._write(body, response.body)
