"""Real HTTP servers on 127.0.0.1 for tests: an SDK MCP server, or any ASGI app, in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipeline.config.settings import ProxyTimeouts
from pipeline.proxy.front import config as front_config


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_asgi(
    app: Any,
    port: int | None = None,
    *,
    front: bool = False,
    limits: ProxyTimeouts | None = None,
    **config: Any,
) -> Iterator[int]:
    """Serve an ASGI app on a loopback port in a thread; yield the port.

    With `front`, `app` is an `App` served as the provider serves it (pipeline/proxy/front.py), so its
    `/mcp/` requests take the proxy's fast path and clients are held to `limits` (the defaults when
    None). `config`: more uvicorn.Config options.
    """
    port = port or free_port()
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "log_level": "error",
        "lifespan": "on",
        **config,
    }
    server = uvicorn.Server(front_config(app, limits, **options) if front else uvicorn.Config(app, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def mcp_app(name: str = "loopback", *, stateless: bool = False, json_response: bool = False) -> Any:
    """An SDK MCP server with `echo` and `slow_count` tools, as an ASGI app at /mcp."""
    server = MCPServer(name)

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    return server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=stateless,
        json_response=json_response,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host="0.0.0.0",
    )


def huge_tools_app(size: int, *, sse: bool) -> Starlette:
    """An MCP server whose tools/list answer runs to `size` bytes (one tool with a huge description),
    produced as it is sent, as JSON or as one SSE event."""

    async def endpoint(request: Request) -> Response:
        message = await request.json()
        if "id" not in message:
            return Response(status_code=202)
        if message["method"] == "initialize":
            info = {"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "huge"}}
            return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": info})
        head = b'{"jsonrpc":"2.0","id":%d,"result":{"tools":[{"name":"t","description":"' % message["id"]
        tail = b'","inputSchema":{"type":"object"}}]}}'

        async def body() -> AsyncIterator[bytes]:
            yield b"event: message\ndata: " + head if sse else head
            piece = b"x" * (64 * 1024)
            for _ in range(size // len(piece)):
                yield piece
            yield tail + b"\n\n" if sse else tail

        return StreamingResponse(body(), media_type="text/event-stream" if sse else "application/json")

    return Starlette(routes=[Route("/mcp", endpoint, methods=["POST", "DELETE"])])
