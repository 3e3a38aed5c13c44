"""Processes for bench/proxy_bench.py, each under uvicorn like production, on 127.0.0.1.

    python bench/proxy_runner.py proxy --port P --upstream-port U [--key] [--asgi]   central-mcp's proxy
    python bench/proxy_runner.py aggregate --port P --upstream-port U [--servers N]   the same, and /mcp
    python bench/proxy_runner.py sdk --port P [--tools N]                  SDK server, stateless, JSON
    python bench/proxy_runner.py echo --port P                             raw Starlette JSON echo

`proxy` routes `/mcp/bench` to `http://127.0.0.1:U/mcp` with the real Router, Gatekeeper, Usage (with
Metrics) and Store, in an `App` as `create_app` builds it, served with serve.py's protocol
(pipeline/proxy/front.py: `/mcp/` requests skip the ASGI cycle); with `--key` deploy.yaml has a project
and the process prints a fresh key on its first line; with `--asgi` uvicorn's own httptools protocol
serves it, so `/mcp/` requests take the ASGI way (`App` → `Proxy.handle`) as without front.py.
`aggregate` also serves the aggregate endpoint `/mcp` over that proxy; with `--servers N` it routes
`bench-0` … `bench-<N-1>` to the same upstream as N releases (each its own container id, so each
list is fetched and cached apart). `sdk --tools N` serves `echo` and N-1 more tools.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.app import App, aggregate_routes, proxy_routes
from pipeline.config.settings import Project, ProxyTimeouts, Settings
from pipeline.metrics import Metrics
from pipeline.proxy import front
from pipeline.proxy.access import Gatekeeper, create_key
from pipeline.proxy.aggregate import Aggregate
from pipeline.proxy.relay import Proxy
from pipeline.proxy.router import Router, Upstream
from pipeline.proxy.usage import Usage
from pipeline.store import Store

SERVER = "bench"
UNLIMITED = 10**9


def proxy_app(
    upstream_port: int, state_dir: Path, with_key: bool, aggregate: bool = False, servers: int = 0
) -> tuple[App, str]:
    """The proxy mounted as the real app mounts it, in front of one upstream, with the real app's
    Prometheus metrics (and the aggregate `/mcp`, `servers` more routes, when asked); return the app
    and a key ('' without projects)."""
    projects = (Project("bench", per_minute=UNLIMITED, burst=UNLIMITED),) if with_key else ()
    settings = Settings(
        config_path=Path("deploy.yaml"), state_dir=state_dir, projects=projects, proxy=ProxyTimeouts()
    )
    store = Store(state_dir / "central-mcp.db")
    key = create_key(store, settings, "bench") if with_key else ""
    router, usage = Router(), Usage(store, Metrics())
    router.swap({SERVER: Upstream(SERVER, 1, "bench-1", "127.0.0.1", upstream_port, "/mcp")})
    more = {f"{SERVER}-{n}": f"bench-c{n}" for n in range(servers)}
    router.swap(
        {name: Upstream(name, 1, cid, "127.0.0.1", upstream_port, "/mcp") for name, cid in more.items()}
    )
    proxy = Proxy(router, Gatekeeper(settings, store), usage, settings.proxy.keepalive)  # default caps
    joined = Aggregate(proxy) if aggregate else None

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        router.loop = asyncio.get_running_loop()
        await proxy.start()
        if joined is not None:
            await joined.start()
        app.proxy, app.aggregate = proxy, joined
        flusher = asyncio.create_task(_flush(usage))  # as the real app does, every 5 s
        try:
            yield
        finally:
            flusher.cancel()
            app.proxy = app.aggregate = None
            if joined is not None:
                await joined.stop()
            await proxy.stop()

    routes = proxy_routes(proxy.handle)
    if joined is not None:
        routes = [*aggregate_routes(joined.handle), *routes]
    return App(routes=routes, lifespan=lifespan), key


async def _flush(usage: Usage) -> None:
    while True:
        await asyncio.sleep(5.0)
        await asyncio.to_thread(usage.flush)


def sdk_app(tools: int = 1) -> Starlette:
    """An SDK MCP server, stateless with JSON answers, with an `echo` tool and `tools - 1` more."""
    server = MCPServer("bench")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    for n in range(1, tools):
        server.add_tool(_numbered(n), name=f"tool_{n}", description=f"Tool number {n}: return the text.")

    return server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,
        json_response=True,
        host="127.0.0.1",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


def _numbered(n: int) -> Any:
    def tool(text: str) -> str:
        return f"{n}:{text}"

    return tool


def echo_app() -> Starlette:
    """A raw JSON echo: answers every POST with a fixed small JSON-RPC result."""
    answer = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}],"isError":false}}'

    async def endpoint(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/json")

    return Starlette(routes=[Route("/mcp", endpoint, methods=["POST"])])


def main(argv: list[str]) -> None:
    """Serve one of the bench's processes until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["proxy", "aggregate", "sdk", "echo"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, default=0)
    parser.add_argument("--key", action="store_true", help="require a project key (printed first)")
    parser.add_argument("--asgi", action="store_true", help="serve the proxy without front.py's fast path")
    parser.add_argument("--servers", type=int, default=0, help="aggregate: more routes to the upstream")
    parser.add_argument("--tools", type=int, default=1, help="sdk: how many tools it serves")
    args = parser.parse_args(argv)
    logging.getLogger("mcp").setLevel(logging.WARNING)  # the SDK says "session manager started" at INFO
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": args.port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
    }
    if args.role in ("proxy", "aggregate"):
        state = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
        app, key = proxy_app(args.upstream_port, state, args.key, args.role == "aggregate", args.servers)
        print(key, flush=True)
        if args.asgi:  # as tests/loopback.py's serve_asgi(front=False) does
            config = uvicorn.Config(app, http="httptools", **options)
        else:
            config = front.config(app, **options)  # as serve.py runs the provider
    else:
        config = uvicorn.Config(sdk_app(args.tools) if args.role == "sdk" else echo_app(), **options)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main(sys.argv[1:])
