"""The routing proxy: `/mcp/<server>` and `/mcp/<server>/...` forwarded to the live container.

Transparent to both MCP eras: methods, status codes, bodies and the MCP headers pass
through unchanged; SSE streams flow unbuffered with keep-alive comments on quiet streams;
a session stays with the container that issued it (see routes.py). The client's own
Authorization never reaches a server, and the upstream Host is the container's loopback
address so that SDK servers' DNS-rebinding guard accepts it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from pipeline.access import Caller, Denied, Gatekeeper
from pipeline.routes import Router, Upstream
from pipeline.usage import Usage

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "authorization", "content-length",
})
SERVER_SET = frozenset({"date", "server"})  # uvicorn writes its own; forwarding them doubles them
SESSION_HEADER = "mcp-session-id"
RETRY_AFTER_SECONDS = "5"
CONNECT_TIMEOUT = 10.0
MAX_BODY_BYTES = 4 * 1024 * 1024
KEEPALIVE_COMMENT = b": keep-alive\n\n"
ROUTE_ATTEMPTS = 3
ALLOWED_HEADERS = ("Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, "
                   "Mcp-Method, Mcp-Name, Last-Event-ID")
EXPOSED_HEADERS = "Mcp-Session-Id, MCP-Protocol-Version"


class Proxy:
    """Forwards MCP requests to the upstream the router names."""

    def __init__(self, router: Router, gatekeeper: Gatekeeper, usage: Usage, keepalive: float) -> None:
        self.router = router
        self.gatekeeper = gatekeeper
        self.usage = usage
        self.keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the shared upstream connection pool."""
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=None)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False,
                                              skip_auto_headers=("User-Agent", "Accept-Encoding"))

    async def stop(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: Request) -> Response:
        """Authorize, route and forward one request to the server named in the path."""
        server = request.path_params["server"]
        origin = request.headers.get("origin", "")
        if request.method == "OPTIONS" and origin:
            return self._preflight(request, origin)
        live = self.router.get(server)
        verdict = self.gatekeeper.check(request.headers.get("authorization", ""), origin, server,
                                        live.access if live else ("all",))
        if isinstance(verdict, Denied):
            return JSONResponse({"error": verdict.message}, status_code=verdict.status,
                                headers=verdict.headers)
        declared = request.headers.get("content-length", "")
        if declared.isdecimal() and int(declared) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        body = await request.body()  # read before routing: a slow body must not outlive a drain
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        session_id = request.headers.get(SESSION_HEADER, "")
        for _ in range(ROUTE_ATTEMPTS):
            routed = self._route(server, session_id, verdict)
            if isinstance(routed, Response):
                return _cors(routed, origin)
            closer = self.router.enter(routed)
            if closer is not None:
                return _cors(await self._forward(request, routed, closer, body, verdict, session_id), origin)
        return JSONResponse({"error": f"server {server!r} is being replaced; retry"}, status_code=503,
                            headers={"Retry-After": "1"})

    def _preflight(self, request: Request, origin: str) -> Response:
        """Answer a browser's CORS preflight: allowed origins need no key for it."""
        if not self.gatekeeper.origin_allowed(origin):
            return JSONResponse({"error": f"origin {origin!r} is not allowed"}, status_code=403)
        asked = request.headers.get("access-control-request-headers", "")
        return Response(status_code=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": asked or ALLOWED_HEADERS, "Access-Control-Max-Age": "600"})

    def _route(self, server: str, session_id: str, caller: Caller) -> Upstream | Response:
        if session_id:
            session = self.router.session(session_id)
            if session is not None:
                upstream = self.router.upstream_of(session)
                if session.server != server or session.key_id != caller.key_id or upstream is None:
                    return _session_gone(session_id)
                return upstream
            if self.router.is_retired_session(session_id):
                return _session_gone(session_id)
        upstream = self.router.get(server)
        if upstream is not None:
            return upstream
        if server in self.router.known:
            return JSONResponse({"error": f"server {server!r} has no healthy upstream right now"},
                                status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS})
        return JSONResponse({"error": f"no server named {server!r}"}, status_code=404)

    async def _forward(self, request: Request, upstream: Upstream, closer: asyncio.Event, body: bytes,
                       caller: Caller, session_id: str) -> Response:
        assert self._session is not None, "Proxy.start() was not awaited"
        rest = request.path_params.get("rest", "")
        url = upstream.base_url + (f"/{rest}" if rest else "")
        if request.url.query:
            url += f"?{request.url.query}"
        # The Origin was checked above; SDK servers' own guard would refuse a public one.
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"origin"}}
        headers["Host"] = f"{upstream.host}:{upstream.port}"
        started = time.monotonic()
        try:
            response = await self._session.request(request.method, url, headers=headers,
                                                   data=body or None, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            self.router.leave(upstream, closer)
            self.usage.count(caller, upstream.server, 502, time.monotonic() - started)
            return _bad_gateway(upstream.server, exc)
        self._track_session(request.method, session_id, response, upstream, caller)
        out_headers = {k.lower(): v for k, v in response.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() not in SERVER_SET}
        is_sse = "text/event-stream" in response.headers.get("content-type", "")
        if is_sse:
            out_headers["x-accel-buffering"] = "no"
            out_headers.setdefault("cache-control", "no-cache")

        async def finish() -> None:
            response.release()
            self.router.leave(upstream, closer)
            self.usage.count(caller, upstream.server, response.status, time.monotonic() - started)

        if not is_sse:
            # JSON answers and 202s are small: relay them whole, with their length (much faster).
            try:
                payload = await response.read()
            except (aiohttp.ClientError, OSError) as exc:
                await finish()
                return _bad_gateway(upstream.server, exc)
            await finish()
            return Response(payload, status_code=response.status, headers=out_headers)
        return StreamingResponse(_sse(response, closer, self.keepalive), status_code=response.status,
                                 headers=out_headers, background=BackgroundTask(finish))

    def _track_session(self, method: str, session_id: str, response: aiohttp.ClientResponse,
                       upstream: Upstream, caller: Caller) -> None:
        issued = response.headers.get(SESSION_HEADER, "")
        if method == "DELETE" and session_id and response.status < 300:
            self.router.end_session(session_id)
        elif issued and self.router.session(issued) is None and response.status < 300:
            self.router.open_session(issued, upstream, caller.key_id)
        elif session_id and response.status < 300 and self.router.session(session_id) is None:
            self.router.open_session(session_id, upstream, caller.key_id)  # adopt after a restart


def _cors(response: Response, origin: str) -> Response:
    """Let an allowed browser origin read the answer and the session header."""
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers["Vary"] = "Origin"
    return response


async def _sse(response: aiohttp.ClientResponse, closer: asyncio.Event,
               keepalive: float) -> AsyncIterator[bytes]:
    """Relay an event stream as it arrives; comment on quiet streams; stop when told to close."""
    closing: asyncio.Future[Any] = asyncio.ensure_future(closer.wait())
    reading: asyncio.Future[Any] | None = None
    at_boundary = True
    try:
        while True:
            reading = reading or asyncio.ensure_future(response.content.readany())
            done, _ = await asyncio.wait({reading, closing}, timeout=keepalive,
                                         return_when=asyncio.FIRST_COMPLETED)
            if reading in done:
                chunk = reading.result()
                reading = None
                if not chunk:
                    return
                at_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n"))
                yield chunk
            elif closing in done:
                return
            elif at_boundary:
                yield KEEPALIVE_COMMENT
    except (aiohttp.ClientError, OSError):
        return  # the upstream went away mid-stream; end the client's stream cleanly
    finally:
        closing.cancel()
        if reading is not None:
            reading.cancel()


def _session_gone(session_id: str) -> Response:
    body = {"jsonrpc": "2.0", "id": None,
            "error": {"code": -32001, "message": "session not found; send a new initialize"}}
    return Response(json.dumps(body), status_code=404, media_type="application/json")


def _bad_gateway(server: str, exc: BaseException) -> Response:
    body = {"jsonrpc": "2.0", "id": None,
            "error": {"code": -32603, "message": f"server {server!r} is unreachable: "
                      f"{exc.__class__.__name__}"}}
    return Response(json.dumps(body), status_code=502, media_type="application/json")
