"""The routing proxy: `/mcp/<server>` and `/mcp/<server>/...` forwarded to the live container.

Bodies stream both ways (SSE events reach the client as the server sends them). The
client's own Authorization never reaches a server; the upstream Host is the container's
loopback address so SDK servers' DNS-rebinding guard accepts it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from pipeline.routes import Router, Upstream

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
    "transfer-encoding", "upgrade", "host", "authorization", "content-length",
})
RETRY_AFTER_SECONDS = "5"
CONNECT_TIMEOUT = 10.0


class Proxy:
    """Forwards MCP requests to the upstream the router names."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the shared upstream connection pool."""
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=None)
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector,
                                              auto_decompress=False)

    async def stop(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: Request) -> Response:
        """Forward one request to the server named in the path."""
        server = request.path_params["server"]
        upstream = self.router.get(server)
        if upstream is None:
            return JSONResponse({"error": f"no server named {server!r}"}, status_code=404)
        rest = request.path_params.get("rest", "")
        url = upstream.base_url + (f"/{rest}" if rest else "")
        if request.url.query:
            url += f"?{request.url.query}"
        return await self._forward(request, upstream, url)

    async def _forward(self, request: Request, upstream: Upstream, url: str) -> Response:
        assert self._session is not None, "Proxy.start() was not awaited"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = f"{upstream.host}:{upstream.port}"
        self.router.enter(upstream)
        try:
            has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
            upstream_response = await self._session.request(
                request.method, url, headers=headers, data=_body(request) if has_body else None,
                allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            self.router.leave(upstream)
            return _bad_gateway(upstream.server, exc)
        out_headers = {k: v for k, v in upstream_response.headers.items()
                       if k.lower() not in HOP_BY_HOP}
        if "text/event-stream" in upstream_response.headers.get("content-type", ""):
            out_headers["X-Accel-Buffering"] = "no"
            out_headers["Cache-Control"] = "no-cache"

        async def release() -> None:
            upstream_response.release()
            self.router.leave(upstream)

        return StreamingResponse(_stream(upstream_response), status_code=upstream_response.status,
                                 headers=out_headers, background=BackgroundTask(release))


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def _stream(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except (aiohttp.ClientError, OSError):
        return  # the upstream went away mid-stream; end the client's stream cleanly


def _bad_gateway(server: str, exc: BaseException) -> Response:
    body = {"jsonrpc": "2.0", "id": None,
            "error": {"code": -32603, "message": f"server {server!r} is unreachable: "
                      f"{exc.__class__.__name__}"}}
    return Response(json.dumps(body), status_code=502, media_type="application/json")
