"""Real HTTP servers on 127.0.0.1 for tests: an SDK MCP server, or any ASGI app, in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from pipeline.proxy.front import config as front_config


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_asgi(app: Any, port: int | None = None, *, front: bool = False, **config: Any) -> Iterator[int]:
    """Serve an ASGI app on a loopback port in a thread; yield the port.

    With `front`, `app` is an `App` served as the provider serves it (pipeline/proxy/front.py), so its
    `/mcp/` requests take the proxy's fast path. `config`: more uvicorn.Config options.
    """
    port = port or free_port()
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "log_level": "error",
        "lifespan": "on",
        **config,
    }
    server = uvicorn.Server(front_config(app, **options) if front else uvicorn.Config(app, **options))
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
