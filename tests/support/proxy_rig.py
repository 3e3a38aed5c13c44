"""The proxy under test and what it forwards to, all real and on loopback.

`running_proxy` serves a tiny `App` built from `proxy_routes(proxy.handle)`, mounted as the real app
mounts it, around a real Router, Gatekeeper, Usage and Store; `sdk_upstream` serves an SDK MCP server
whose tools say which upstream answered; `Recorder` is a raw upstream that keeps every request it saw
and answers as told.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.session import ServerSession
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import Completion, EmptyResult, SamplingMessage, SubscribeRequestParams, TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.app import App, aggregate_routes, proxy_routes
from pipeline.config.settings import AggregateConfig, Project, ProxyTimeouts, Settings
from pipeline.proxy.access import Gatekeeper
from pipeline.proxy.aggregate import Aggregate
from pipeline.proxy.relay import Proxy
from pipeline.proxy.router import Router, Upstream
from pipeline.proxy.usage import Usage
from pipeline.remote import Dialer
from pipeline.store import Store
from tests.support.clock import FakeClock
from tests.support.loopback import serve_asgi

KEEPALIVE = 0.3
LEGACY = "2025-11-25"  # the session era's last version
MODERN = "2026-07-28"  # the stateless era
ACCEPT_BOTH = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
SDK_TIMEOUT = httpx2.Timeout(30.0, read=300.0)  # what the SDK's own default client uses
ALL_METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]


@dataclass
class Rig:
    """A running proxy and the real services behind it."""

    port: int
    router: Router
    store: Store
    settings: Settings
    usage: Usage
    clock: FakeClock  # the Gatekeeper's: key-cache expiry and rate-limit refills
    aggregate: Aggregate | None = None  # the `/mcp` endpoint over the proxy

    def url(self, server: str, rest: str = "") -> str:
        """The proxy URL of `server` (with `rest` appended verbatim)."""
        return f"http://127.0.0.1:{self.port}/mcp/{server}{rest}"

    @property
    def endpoint(self) -> str:
        """The aggregate endpoint's URL."""
        return f"http://127.0.0.1:{self.port}/mcp"


def proxy_app(proxy: Proxy, router: Router, aggregate: Aggregate | None = None) -> App:
    """The proxy's routes (and the aggregate's, when given) in an app whose lifespan opens and
    closes the upstream pool."""

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        router.loop = asyncio.get_running_loop()
        await proxy.start()
        if aggregate is not None:
            await aggregate.start()
        app.proxy, app.aggregate = proxy, aggregate  # as the real app: skip Starlette's routing
        try:
            yield
        finally:
            app.proxy = app.aggregate = None
            if aggregate is not None:
                await aggregate.stop()
            await proxy.stop()

    routes = proxy_routes(proxy.handle)
    if aggregate is not None:
        routes = [*aggregate_routes(aggregate.handle), *routes]
    return App(routes=routes, lifespan=lifespan)


@contextmanager
def running_proxy(
    state_dir: Path,
    *,
    projects: tuple[Project, ...] = (),
    allowed_origins: tuple[str, ...] = (),
    keepalive: float = KEEPALIVE,
    front: bool = True,
    session_idle_timeout: float = 0.0,
    limits: dict[str, Any] | None = None,
    dialer: Callable[[], Dialer] | None = None,
    aggregate: AggregateConfig | None = None,
    **config: Any,
) -> Iterator[Rig]:
    """Serve a proxy on loopback with a fresh Store in `state_dir`; yield its rig.

    As the provider serves it, `/mcp/` requests take front.py's fast path; with `front=False`
    plain uvicorn serves the app, so every request goes through ASGI (`Proxy.handle`). Sessions do not
    expire unless `session_idle_timeout` (seconds) is given. `limits`: more ProxyTimeouts fields (caps
    and client timeouts); `dialer` reaches remote servers; `aggregate`: deploy.yaml's `aggregate`
    (caps, timeouts; the defaults if None); `config`: more uvicorn.Config options.
    """
    settings = Settings(
        config_path=Path("deploy.yaml"),
        state_dir=state_dir,
        projects=projects,
        proxy=ProxyTimeouts(
            keepalive=keepalive,
            drain_timeout=5.0,
            session_drain_timeout=10.0,
            session_idle_timeout=session_idle_timeout,
            allowed_origins=allowed_origins,
            **(limits or {}),
        ),
    )
    store = Store(state_dir / "central-mcp.db")
    router, usage, clock = Router(), Usage(store), FakeClock()
    caps = settings.proxy
    proxy = Proxy(
        router,
        Gatekeeper(settings, store, clock=clock),
        usage,
        keepalive,
        session_idle_timeout,
        max_body=caps.max_body,
        max_upstream_header=caps.max_upstream_header,
        dialer=dialer,
    )
    joined = Aggregate(proxy, session_idle_timeout, aggregate)
    try:
        with serve_asgi(proxy_app(proxy, router, joined), front=front, limits=caps, **config) as port:
            yield Rig(port, router, store, settings, usage, clock, joined)
    finally:
        store.close()


def upstream(server: str, port: int, container_id: str, release: int = 1, path: str = "/mcp") -> Upstream:
    """An Upstream on 127.0.0.1."""
    return Upstream(
        server=server, release=release, container_id=container_id, host="127.0.0.1", port=port, path=path
    )


# SDK upstreams ---------------------------------------------------------------------------------
def sdk_app(
    label: str,
    *,
    stateless: bool = False,
    json_response: bool = False,
    protect: bool = False,
    calls: list[str] | None = None,
    ended: list[float] | None = None,
) -> Starlette:
    """An SDK MCP server whose `whoami` answers `label`; `protect` keeps its DNS-rebinding guard on.

    `calls`, when given, receives the name of each tool call as it starts; `ended` the monotonic
    time at which each `slow` call returns.
    """
    server = MCPServer(f"server-{label}")

    @server.tool()
    def whoami() -> str:
        """Say which upstream answered."""
        if calls is not None:
            calls.append("whoami")
        return label

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    async def slow(seconds: float, steps: int, ctx: Context) -> str:
        """Sleep `seconds` in `steps` parts, reporting progress after each; then say who answered."""
        if calls is not None:
            calls.append("slow")
        for step in range(1, steps + 1):
            await asyncio.sleep(seconds / steps)
            await ctx.report_progress(step, steps, f"step {step}")
        if ended is not None:
            ended.append(time.monotonic())
        return label

    security = None if protect else TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=stateless,
        json_response=json_response,
        transport_security=security,
        host="127.0.0.1" if protect else "0.0.0.0",
    )


@contextmanager
def sdk_upstream(server: str, label: str, **options: Any) -> Iterator[Upstream]:
    """Serve `sdk_app(label, **options)` on loopback; yield it as an Upstream (container id = label)."""
    with serve_asgi(sdk_app(label, **options)) as port:
        yield upstream(server, port, container_id=label)


@asynccontextmanager
async def connect(
    url: str,
    *,
    mode: str = "legacy",
    headers: dict[str, str] | None = None,
    statuses: list[httpx2.Response] | None = None,
    **options: Any,
) -> AsyncIterator[Client]:
    """An SDK Client on `url` with the SDK's default timeouts; every HTTP response lands in `statuses`;
    `options`: more Client options (callbacks)."""
    http = httpx2.AsyncClient(headers=headers, timeout=SDK_TIMEOUT)
    if statuses is not None:
        seen = statuses

        async def record(response: httpx2.Response) -> None:
            seen.append(response)

        http.event_hooks["response"].append(record)
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode, **options) as client:
        yield client


async def eventually(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll `check` until it holds or `timeout` passes (the proxy counts a request done just after
    its last byte is sent, so a client can see the end a moment before the counters do)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def text_of(result: Any) -> str:
    """The text of a tool result's first content block."""
    return str(result.content[0].text)


# raw upstreams ---------------------------------------------------------------------------------
@dataclass
class Seen:
    """One request as an upstream received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """A raw upstream: records each request, answers with `answer(request)` or 200 + JSON echo."""

    answer: Callable[[Request], Awaitable[Response]] | None = None
    seen: list[Seen] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        """Record the request, then answer it."""
        body = await request.body()
        self.seen.append(
            Seen(request.method, request.url.path, request.url.query, dict(request.headers), body)
        )
        if self.answer is not None:
            return await self.answer(request)
        return Response(b'{"jsonrpc": "2.0", "id": 1, "result": {}}', media_type="application/json")

    def app(self) -> Starlette:
        """The recorder as an ASGI app serving /mcp and everything under it."""
        return Starlette(
            routes=[
                Route("/mcp", self.endpoint, methods=ALL_METHODS),
                Route("/mcp/{rest:path}", self.endpoint, methods=ALL_METHODS),
            ]
        )


@contextmanager
def raw_upstream(server: str, recorder: Recorder, container_id: str = "raw") -> Iterator[Upstream]:
    """Serve a Recorder on loopback; yield it as an Upstream."""
    with serve_asgi(recorder.app()) as port:
        yield upstream(server, port, container_id=container_id)


def jsonrpc(method: str, params: dict[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    """A JSON-RPC request body."""
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}


UPDATE_EVERY = 0.1  # how often rich_app tells a subscribed session that its resource was updated
UPDATES = 30  # how many times


def rich_app(label: str) -> Starlette:
    """An SDK MCP server with more than tools: a resource, a resource template, a prompt with
    completion, a tool that asks the client to sample (`ask`) and one that logs (`chatty`).

    On its own (outside any call, so on the session's GET stream) it tells a session that subscribed
    to a resource that it was updated, every UPDATE_EVERY seconds, UPDATES times; after the second,
    it gains a tool `extra` and sends tools/list_changed."""
    server = MCPServer(f"rich-{label}")
    announcing: set[asyncio.Task[None]] = set()
    gained: list[str] = []

    def extra() -> str:
        """A tool the server gained on its own."""
        return f"extra of {label}"

    async def announce(session: ServerSession, uri: str) -> None:
        for sent in range(UPDATES):
            await asyncio.sleep(UPDATE_EVERY)
            await session.send_resource_updated(uri)
            if sent == 1 and not gained:
                gained.append("extra")
                server.add_tool(extra)
                await session.send_tool_list_changed()

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        task = asyncio.create_task(announce(ctx.session, str(params.uri)))
        announcing.add(task)
        task.add_done_callback(announcing.discard)
        return EmptyResult()

    # MCPServer has no decorator for resources/subscribe: its low-level server takes the handler
    server._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)

    @server.resource("note://readme", description="The readme.")
    def readme() -> str:
        return f"readme of {label}"

    @server.resource("note://topics/{topic}", description="A note on a topic.")
    def topic(topic: str) -> str:
        return f"{label} on {topic}"

    @server.prompt(description="Greet someone.")
    def greet(name: str) -> str:
        return f"Hello {name}, from {label}"

    async def complete(ref: Any, argument: Any, context: Any) -> Completion:
        return Completion(values=[f"{argument.value}-{label}"])

    server.completion()(complete)  # type: ignore[no-untyped-call]  # the SDK's decorator is untyped

    @server.tool()
    async def ask(question: str, ctx: Context) -> str:
        """Ask the client's model, through sampling; return what it said."""
        message = SamplingMessage(role="user", content=TextContent(type="text", text=question))
        # related to the call, so the request rides the call's own stream (not the session's GET stream)
        answer = await ctx.session.create_message([message], max_tokens=10, related_request_id=ctx.request_id)
        return f"{label} heard: {answer.content.text}"

    @server.tool()
    async def chatty(ctx: Context) -> str:
        """Log a line at info, then answer."""
        await ctx.info(f"chatty {label} says hello")
        return label

    return server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host="0.0.0.0",
    )


@contextmanager
def rich_upstream(server: str, label: str) -> Iterator[Upstream]:
    """Serve `rich_app(label)` on loopback; yield it as an Upstream (container id = label)."""
    with serve_asgi(rich_app(label)) as port:
        yield upstream(server, port, container_id=label)
