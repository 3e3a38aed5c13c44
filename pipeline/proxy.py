"""The routing proxy: `/mcp/<server>` and `/mcp/<server>/...` forwarded to the live container.

Transparent to both MCP eras: methods, status codes, bodies and the MCP headers pass
through unchanged; SSE streams flow unbuffered with keep-alive comments on quiet streams;
a session stays with the container that issued it (see routes.py). The client's own
Authorization never reaches a server, and the upstream Host is the container's loopback
address so that SDK servers' DNS-rebinding guard accepts it.

`Proxy.handle` is a raw ASGI app (app.py's `proxy_routes` mounts it): the hot path builds no
Starlette Request or Response, reads each header once, and forwards with upstream.py's pooled
HTTP/1.1 client, which writes a request in one go and relays a JSON answer whole.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from starlette.types import Receive, Scope, Send

from pipeline.access import Caller, Denied, Gatekeeper
from pipeline.routes import Router, Upstream
from pipeline.upstream import Connection, Pool
from pipeline.usage import Usage

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, bytes, Headers]  # an answer the proxy makes itself: status, body, headers

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailers",
    b"transfer-encoding", b"upgrade", b"host", b"authorization", b"content-length",
})
# The Origin was checked here; SDK servers' own guard would refuse a public one. The whole body is
# sent at once, so an Expect: 100-continue is answered by the front server, not the upstream.
NOT_FORWARDED = HOP_BY_HOP | {b"origin", b"expect"}
NOT_RELAYED = HOP_BY_HOP | {b"date", b"server"}  # uvicorn writes its own; forwarding them doubles them
NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})  # no Content-Length: 0
PATH_SAFE = "/:@!$&'()*+,;=~"  # RFC 3986 pchar and "/": not percent-encoded in the upstream path
SESSION_HEADER = b"mcp-session-id"
RETRY_AFTER_SECONDS = "5"
CONNECT_TIMEOUT = 10.0
MAX_BODY_BYTES = 4 * 1024 * 1024
KEEPALIVE_COMMENT = b": keep-alive\n\n"
ROUTE_ATTEMPTS = 3
ALLOWED_HEADERS = ("Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, "
                   "Mcp-Method, Mcp-Name, Last-Event-ID")
EXPOSED_HEADERS = b"Mcp-Session-Id, MCP-Protocol-Version"
JSON_TYPE = (b"content-type", b"application/json")
STREAM_END: dict[str, Any] = {"type": "http.response.body", "body": b"", "more_body": False}


class Proxy:
    """Forwards MCP requests to the upstream the router names."""

    def __init__(self, router: Router, gatekeeper: Gatekeeper, usage: Usage, keepalive: float) -> None:
        self.router = router
        self.gatekeeper = gatekeeper
        self.usage = usage
        self.keepalive = keepalive
        self._pool: Pool | None = None

    async def start(self) -> None:
        """Open the shared upstream connection pool."""
        self._pool = Pool(CONNECT_TIMEOUT)

    async def stop(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            self._pool.close()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: authorize, route and forward one request to the server named in the path."""
        server: str = scope["path_params"]["server"]
        method: str = scope["method"]
        origin = authorization = declared = session_id = asked = ""
        fields: list[bytes] = []  # the request headers that go upstream, as `name: value\r\n` lines
        for name, value in scope["headers"]:
            if name in NOT_FORWARDED:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"origin":
                    origin = value.decode("latin-1")
                elif name == b"content-length":
                    declared = value.decode("latin-1")
                continue
            if name == SESSION_HEADER:
                session_id = value.decode("latin-1")
            elif name == b"access-control-request-headers":
                asked = value.decode("latin-1")
            fields.append(b"%s: %s\r\n" % (name, value))
        if method == "OPTIONS" and origin:
            await _reply(send, self._preflight(origin, asked))
            return
        live = self.router.get(server)
        verdict = self.gatekeeper.check(authorization, origin, server, live.access if live else ("all",))
        if isinstance(verdict, Denied):
            await _reply(send, _json(verdict.status, {"error": verdict.message}, verdict.headers))
            return
        if declared.isdecimal() and int(declared) > MAX_BODY_BYTES:
            await _reply(send, _json(413, {"error": f"request body over {MAX_BODY_BYTES} bytes"}))
            return
        try:
            body = await _read_body(receive)  # read before routing: a slow body must not outlive a drain
        except _ClientGone:
            return
        if body is None:
            await _reply(send, _json(413, {"error": f"request body over {MAX_BODY_BYTES} bytes"}))
            return
        for _ in range(ROUTE_ATTEMPTS):
            routed = self._route(server, session_id, verdict)
            if not isinstance(routed, Upstream):
                await _reply(send, _cors(routed, origin))
                return
            closer = self.router.enter(routed)
            if closer is not None:
                await self._forward(scope, receive, send, routed, closer, fields, body, verdict, session_id,
                                    origin)
                return
        await _reply(send, _json(503, {"error": f"server {server!r} is being replaced; retry"},
                                 {"Retry-After": "1"}))

    def _preflight(self, origin: str, asked: str) -> Answer:
        """Answer a browser's CORS preflight: allowed origins need no key for it."""
        if not self.gatekeeper.origin_allowed(origin):
            return _json(403, {"error": f"origin {origin!r} is not allowed"})
        return 204, b"", _encode({
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": asked or ALLOWED_HEADERS, "Access-Control-Max-Age": "600"})

    def _route(self, server: str, session_id: str, caller: Caller) -> Upstream | Answer:
        if session_id:
            session = self.router.session(session_id)
            if session is not None:
                upstream = self.router.upstream_of(session)
                if session.server != server or session.key_id != caller.key_id or upstream is None:
                    return _session_gone()
                return upstream
            if self.router.is_retired_session(session_id):
                return _session_gone()
        upstream = self.router.get(server)
        if upstream is not None:
            return upstream
        if server in self.router.known:
            return _json(503, {"error": f"server {server!r} has no healthy upstream right now"},
                         {"Retry-After": RETRY_AFTER_SECONDS})
        return _json(404, {"error": f"no server named {server!r}"})

    async def _forward(self, scope: Scope, receive: Receive, send: Send, upstream: Upstream,
                       closer: asyncio.Event, fields: list[bytes], body: bytes, caller: Caller,
                       session_id: str, origin: str) -> None:
        assert self._pool is not None, "Proxy.start() was not awaited"
        method: str = scope["method"]
        rest: str = scope["path_params"].get("rest", "")
        target = (upstream.path + "/" + quote(rest, safe=PATH_SAFE) if rest else upstream.path) or "/"
        query: bytes = scope["query_string"]
        fields.append(b"\r\n" if not body and method in NO_BODY_METHODS
                      else b"content-length: %d\r\n\r\n" % len(body))
        start = f"{method} {target}".encode() + (b"?" + query if query else b"")
        host = f" HTTP/1.1\r\nhost: {upstream.host}:{upstream.port}\r\n".encode()
        request = b"".join((start, host, *fields, body))
        started = time.monotonic()
        try:
            conn = await self._pool.request(upstream.host, upstream.port, method, request)
        except OSError as exc:  # refused, reset, timed out, or not HTTP
            self._done(upstream, closer, caller, 502, started)
            await _reply(send, _cors(_bad_gateway(upstream.server, exc), origin))
            return
        except BaseException:  # cancelled (shutdown): still leave, or a drain would wait for this forever
            self._done(upstream, closer, caller, 502, started)
            raise
        status = 502  # what the usage counts if this ends early
        try:
            self._track_session(method, session_id, conn, upstream, caller)
            headers = [(k, v) for k, v in conn.headers if k not in NOT_RELAYED]
            if b"text/event-stream" in conn.header(b"content-type"):
                status = conn.status
                headers = [(k, v) for k, v in headers if k != b"x-accel-buffering"]
                headers.append((b"x-accel-buffering", b"no"))
                if not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-cache"))
                await send({"type": "http.response.start", "status": status,
                            "headers": _cors((status, b"", headers), origin)[2]})
                await self._relay(conn, receive, send, closer)
                return
            # JSON answers and 202s are small: relay them whole, with their length.
            try:
                payload = await conn.read_body()
            except OSError as exc:
                answer = _bad_gateway(upstream.server, exc)
            else:
                if conn.status >= 200 and conn.status not in (204, 304):
                    headers.append((b"content-length", b"%d" % len(payload)))
                answer = (conn.status, payload, headers)
            status = answer[0]
        finally:
            conn.release()  # pools it if the answer is complete, else closes it
            self._done(upstream, closer, caller, status, started)
        await _reply(send, _cors(answer, origin))

    def _done(self, upstream: Upstream, closer: asyncio.Event, caller: Caller, status: int,
              started: float) -> None:
        self.router.leave(upstream, closer)
        self.usage.count(caller, upstream.server, status, time.monotonic() - started)

    async def _relay(self, conn: Connection, receive: Receive, send: Send, closer: asyncio.Event) -> None:
        """Relay an event stream as it arrives; comment on quiet streams; stop when told to close
        or when the client goes away."""
        closing: asyncio.Future[Any] = asyncio.ensure_future(closer.wait())
        gone: asyncio.Future[Any] = asyncio.ensure_future(_disconnected(receive))
        reading: asyncio.Future[bytes] | None = None
        at_boundary = True
        try:
            while True:
                reading = reading or asyncio.ensure_future(conn.read_chunk())
                done, _ = await asyncio.wait({reading, closing, gone}, timeout=self.keepalive,
                                             return_when=asyncio.FIRST_COMPLETED)
                if reading in done:
                    chunk = reading.result()
                    reading = None
                    if not chunk:
                        break  # the body ended, or the upstream went away mid-stream: end cleanly
                    at_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n"))
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                elif done:
                    break  # retired, or the client left
                elif at_boundary:
                    await send({"type": "http.response.body", "body": KEEPALIVE_COMMENT, "more_body": True})
        finally:
            closing.cancel()
            gone.cancel()
            if reading is not None:
                reading.cancel()
        await send(STREAM_END)

    def _track_session(self, method: str, session_id: str, conn: Connection, upstream: Upstream,
                       caller: Caller) -> None:
        if conn.status >= 300:
            return
        issued = conn.header(SESSION_HEADER).decode("latin-1")
        if method == "DELETE" and session_id:
            self.router.end_session(session_id)
        elif issued and self.router.session(issued) is None:
            self.router.open_session(issued, upstream, caller.key_id)
        elif session_id and self.router.session(session_id) is None:
            self.router.open_session(session_id, upstream, caller.key_id)  # adopt after a restart


class _ClientGone(Exception):
    """The client disconnected before its request body was complete."""


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None once it is over MAX_BODY_BYTES."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if message["type"] == "http.disconnect":
            raise _ClientGone
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _reply(send: Send, answer: Answer) -> None:
    status, body, headers = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _cors(answer: Answer, origin: str) -> Answer:
    """Let an allowed browser origin read the answer and the session header."""
    if origin:
        answer[2].extend(((b"access-control-allow-origin", origin.encode("latin-1")),
                          (b"access-control-expose-headers", EXPOSED_HEADERS), (b"vary", b"Origin")))
    return answer


def _encode(headers: Mapping[str, str]) -> Headers:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def _json(status: int, content: object, headers: Mapping[str, str] | None = None,
          compact: bool = True) -> Answer:
    """A JSON answer (compact as Starlette's JSONResponse renders it), with its length."""
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":") if compact else None).encode()
    return status, body, [*_encode(headers or {}), JSON_TYPE, (b"content-length", b"%d" % len(body))]


def _session_gone() -> Answer:
    return _json(404, {"jsonrpc": "2.0", "id": None,
                       "error": {"code": -32001, "message": "session not found; send a new initialize"}},
                 compact=False)


def _bad_gateway(server: str, exc: BaseException) -> Answer:
    return _json(502, {"jsonrpc": "2.0", "id": None,
                       "error": {"code": -32603, "message": f"server {server!r} is unreachable: "
                                 f"{exc.__class__.__name__}"}}, compact=False)
