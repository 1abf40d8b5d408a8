"""What a Python handler gets from hearth: Request, Response, kv, config, http.

    from hearth import Response, kv

    def handle(request):
        hits = kv.increment("hits")
        return Response(f"hello, visitor {hits}\\n")

Everything here is synchronous: a handler runs one request at a time.
"""

import json as _json
from typing import Dict, List, Optional, Tuple, Union
from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Err, Ok
from wit_world.imports import atomics as _atomics
from wit_world.imports import outgoing_handler as _outgoing
from wit_world.imports import streams as _streams
from wit_world.imports import types as _types
from wit_world.imports import wasi_config_store as _config
from wit_world.imports import wasi_keyvalue_store as _kv

Body = Union[str, bytes, dict, list, None]


class Request:
    """An incoming request: method, url, path, query, headers, body."""

    def __init__(self, method: str, url: str, headers: Dict[str, str], body: bytes):
        self.method = method
        self.url = url
        parts = urlsplit(url)
        self.path = parts.path or "/"
        self.query: Dict[str, str] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.headers = headers
        self.body = body

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return _json.loads(self.body or b"null")


class Response:
    """What a handler returns: a body (text, bytes, or a dict/list sent as
    JSON), a status (200) and headers."""

    def __init__(self, body: Body = b"", status: int = 200, headers: Optional[Dict[str, str]] = None):
        self.status = status
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}
        if isinstance(body, (dict, list)):
            self.body = _json.dumps(body).encode()
            self.headers.setdefault("content-type", "application/json")
        elif isinstance(body, str):
            self.body = body.encode()
            self.headers.setdefault("content-type", "text/plain; charset=utf-8")
        else:
            self.body = body or b""

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self):
        return _json.loads(self.body or b"null")


class _Kv:
    """The app's key-value store ("default")."""

    _bucket = None

    def _store(self):
        if self._bucket is None:
            self._bucket = _kv.open("default")
        return self._bucket

    def get(self, key: str) -> Optional[str]:
        value = self._store().get(key)
        return None if value is None else value.decode("utf-8", errors="replace")

    def get_bytes(self, key: str) -> Optional[bytes]:
        return self._store().get(key)

    def get_json(self, key: str):
        value = self.get(key)
        return None if value is None else _json.loads(value)

    def set(self, key: str, value: Union[str, bytes]) -> None:
        self._store().set(key, value if isinstance(value, bytes) else str(value).encode())

    def set_json(self, key: str, value) -> None:
        self._store().set(key, _json.dumps(value).encode())

    def delete(self, key: str) -> None:
        self._store().delete(key)

    def has(self, key: str) -> bool:
        return self._store().exists(key)

    def increment(self, key: str, by: int = 1) -> int:
        """Adds `by` to the number under `key` atomically; returns the new value."""
        return _atomics.increment(self._store(), key, by)

    def keys(self) -> List[str]:
        keys: List[str] = []
        cursor = None
        while True:
            page = self._store().list_keys(cursor)
            keys.extend(page.keys)
            cursor = page.cursor
            if cursor is None:
                return keys


class _Config:
    """The app's config values and secrets."""

    def get(self, key: str) -> Optional[str]:
        return _config.get(key)

    def all(self) -> Dict[str, str]:
        return dict(_config.get_all())


class _Http:
    """Outbound HTTP, to the hosts the app's manifest lists."""

    def fetch(self, url: str, method: str = "GET", headers: Optional[Dict[str, str]] = None, body: Body = None) -> Response:
        parts = urlsplit(url)
        if isinstance(body, (dict, list)):
            payload = _json.dumps(body).encode()
            headers = {"content-type": "application/json", **(headers or {})}
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = body or b""
        fields = _types.Fields.from_list([(k.lower(), v.encode()) for k, v in (headers or {}).items()])
        request = _types.OutgoingRequest(fields)
        request.set_method(_method(method))
        request.set_scheme(_types.Scheme_Https() if parts.scheme == "https" else _types.Scheme_Http())
        request.set_authority(parts.netloc)
        request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        outgoing = request.body()
        future = _outgoing.handle(request, None)
        _write(outgoing, payload)
        pollable = future.subscribe()
        while True:
            answer = future.get()
            if answer is not None:
                break
            pollable.block()
        answer = answer.value if isinstance(answer, Ok) else answer
        if isinstance(answer, Err):
            raise RuntimeError(f"fetch {url} failed: {answer.value}")
        incoming = answer.value if isinstance(answer, Ok) else answer
        status = incoming.status()
        got = {k: v.decode("utf-8", errors="replace") for k, v in incoming.headers().entries()}
        data = _read(incoming.consume())
        response = Response(data, status, got)
        return response


def _method(name: str):
    known = {
        "GET": _types.Method_Get, "HEAD": _types.Method_Head, "POST": _types.Method_Post,
        "PUT": _types.Method_Put, "DELETE": _types.Method_Delete, "CONNECT": _types.Method_Connect,
        "OPTIONS": _types.Method_Options, "TRACE": _types.Method_Trace, "PATCH": _types.Method_Patch,
    }
    upper = name.upper()
    return known[upper]() if upper in known else _types.Method_Other(name)


def _method_name(method) -> str:
    if isinstance(method, _types.Method_Other):
        return method.value
    return type(method).__name__.split("_", 1)[1].upper()


def _read(body) -> bytes:
    stream = body.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(65536))
        except Err as error:
            if isinstance(error.value, _streams.StreamError_Closed):
                break
            raise
    stream.__exit__(None, None, None)
    _types.IncomingBody.finish(body)
    return b"".join(chunks)


def _write(body, data: bytes) -> None:
    stream = body.write()
    for start in range(0, len(data), 4096):
        stream.blocking_write_and_flush(data[start:start + 4096])
    stream.__exit__(None, None, None)
    _types.OutgoingBody.finish(body, None)


kv = _Kv()
config = _Config()
http = _Http()
