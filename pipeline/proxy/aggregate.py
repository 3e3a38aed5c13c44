"""`/mcp`: one MCP endpoint per project — every tool its key may reach, namespaced `<server>__<tool>`.

Where it sits: to the client it is an MCP server (both eras: a session-era client initializes and
gets the aggregate's own `Mcp-Session-Id`; a 2026-07-28 client sends `server/discover` and then
self-contained requests). To each server it is an MCP client whose every request goes through
`Proxy.serve` as an `InnerExchange` (upstreams.py), so keys, scopes, rate limits, usage, the
session table and the drain are the proxy's own, not re-implemented: a call made here is counted,
limited and routed exactly as the same call on `/mcp/<server>`.

Sessions: a client session owns a `Link` holding at most one upstream session per server, opened
on the first call to that server and DELETEd when the client's session ends (DELETE, or idle past
`proxy.session_idle_timeout`). 20 clients that each call 2 of 5 servers hold 40 upstream sessions,
never 100. An upstream session stays on the release that issued it until it ends or the session
drain deadline passes (the router's rule); then the proxy answers 404, the link opens a new one on
the live release and sends the call again. A stateless-era client has no session: its key owns one
link, whose upstream sessions end by the proxy's idle expiry.

Lists: each release's tools/list is fetched once, with the aggregate's own token, and cached under
its container id (catalog.py); a swap names new containers, so it invalidates by itself. A
project's view is built from the cached lists of the releases its key reaches and kept serialized.
After a swap, each session-era client with an open GET stream whose view changed gets
`notifications/tools/list_changed`; a stateless-era client sees the new list on its next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

from pipeline.errors import BodyTooLarge, ClientGone
from pipeline.proxy.access import OPEN_CALLER, Caller, Denied
from pipeline.proxy.catalog import MAX_NAME, SEPARATOR, Catalog, Releases, View
from pipeline.proxy.exchange import AsgiExchange, Exchange, Headers
from pipeline.proxy.relay import Proxy, Reply, too_large
from pipeline.proxy.upstreams import (
    LEGACY_VERSION,
    MODERN_VERSION,
    Collected,
    Link,
    Piped,
    UpstreamFailed,
    modern_headers,
    send,
    speaks_modern,
)

log = logging.getLogger("central-mcp")
SESSION_VERSIONS = ("2025-03-26", "2025-06-18", LEGACY_VERSION)
SERVER_INFO = {"name": "central-mcp", "version": "1"}
CAPABILITIES: dict[str, Any] = {"tools": {"listChanged": True}}
MAX_LIST_PAGES = 20  # a server's tools/list pages followed at most
JSON_TYPE = (b"content-type", b"application/json")
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
LIST_CHANGED = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/tools/list_changed"}\n\n'
KEEPALIVE = b": keep-alive\n\n"
MODERN_LIST = b',"resultType":"complete","cacheScope":"private","ttlMs":0'  # 2026-07-28's list fields
INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32600, -32601, -32602
SERVER_GONE = -32603


@dataclass
class ClientSession:
    """The aggregate's session with one session-era client."""

    id: str
    caller: Caller
    link: Link
    version: str
    last_used: float = field(default_factory=time.monotonic)
    listed: frozenset[str] | None = None  # the names it was last sent in a tools/list
    streams: list[asyncio.Queue[bytes]] = field(default_factory=list)  # its open GET streams


class Aggregate:
    """The `/mcp` endpoint over a running Proxy."""

    def __init__(self, proxy: Proxy, idle_timeout: float = 0.0) -> None:
        self.proxy = proxy
        self.idle_timeout = idle_timeout  # 0: client sessions end only by DELETE
        self.catalog = Catalog()
        self.sessions: dict[str, ClientSession] = {}
        self._stateless: dict[str, Link] = {}  # by key id
        self._fetching: dict[str, asyncio.Future[None]] = {}  # by container id
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Hear of swaps; expire idle client sessions."""
        self._loop = asyncio.get_running_loop()
        self.proxy.router.listeners.append(self._swapped)
        if self.idle_timeout > 0:
            self._expiry = asyncio.create_task(self._expire())

    async def stop(self) -> None:
        """End every client session (and its upstream sessions)."""
        with contextlib.suppress(ValueError):
            self.proxy.router.listeners.remove(self._swapped)
        if self._expiry is not None:
            self._expiry.cancel()
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.link.close() for s in sessions), return_exceptions=True)

    async def handle(self, scope: Scope, receive: Receive, send_: Send) -> None:
        """ASGI: serve one request to `/mcp`."""
        scope.setdefault("path_params", {"server": ""})
        ex = AsgiExchange(scope, receive, send_)
        try:
            reply = await self._serve(ex)
        except ClientGone:
            return
        if reply is not None:
            await ex.answer(*reply)

    async def _serve(self, ex: AsgiExchange) -> Reply | None:
        """Answer one request (None: it was answered as a stream)."""
        head = {k.decode("latin-1"): v.decode("latin-1") for k, v in ex.headers}
        origin = head.get("origin", "")
        if ex.method == "OPTIONS" and origin:
            return self.proxy._preflight(origin, head.get("access-control-request-headers", ""))
        caller = self._caller(head.get("authorization", ""), origin)
        if isinstance(caller, Denied):
            return _error_reply(caller.status, caller.message, caller.headers)
        session_id = head.get("mcp-session-id", "")
        if ex.method == "GET":
            return await self._stream(ex, caller, session_id)
        if ex.method == "DELETE":
            return await self._end(caller, session_id)
        if ex.method != "POST":
            return _error_reply(405, f"{ex.method} is not served on /mcp", {"Allow": "GET, POST, DELETE"})
        try:
            body = await ex.read_body(self.proxy.max_body)
        except BodyTooLarge:
            return too_large(self.proxy.max_body)
        return await self._post(ex, caller, head, session_id, body)

    def _caller(self, authorization: str, origin: str) -> Caller | Denied:
        gatekeeper = self.proxy.gatekeeper
        if origin and not gatekeeper.origin_allowed(origin):
            return Denied(403, f"origin {origin!r} is not allowed", {})
        return gatekeeper.identify(authorization) if gatekeeper.required else OPEN_CALLER

    async def _post(
        self, ex: Exchange, caller: Caller, head: dict[str, str], session_id: str, body: bytes
    ) -> Reply | None:
        """Answer one JSON-RPC message."""
        try:
            message = json.loads(body)
        except ValueError:
            return _rpc_error(None, -32700, "the body is not JSON", status=400)
        if not isinstance(message, dict):
            return _rpc_error(None, INVALID_REQUEST, "one JSON-RPC message per POST (no batches)", status=400)
        method, request_id = message.get("method"), message.get("id")
        modern = head.get("mcp-protocol-version") == MODERN_VERSION
        if method == "initialize" and not modern:
            return self._initialize(caller, head, message)
        if method == "server/discover":
            return _result(request_id, _discover(), modern=True)
        session: ClientSession | None = None
        if not modern:
            found = self._session(caller, session_id)
            if not isinstance(found, ClientSession):
                return found
            session = found
            session.last_used = time.monotonic()
        if not isinstance(method, str) or request_id is None:
            return 202, b"", []  # a notification, or an answer to a server's request
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "ping":
            return _result(request_id, {}, modern)
        if method == "tools/list":
            return await self._list(caller, session, request_id, modern)
        if method == "tools/call":
            return await self._call(ex, caller, session, head, message, params)
        return _rpc_error(request_id, METHOD_NOT_FOUND, f"method {method!r} is not served by /mcp")

    def _initialize(self, caller: Caller, head: dict[str, str], message: dict[str, Any]) -> Reply:
        """Open a client session: the aggregate's own id, its capabilities, no upstream session yet."""
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        asked = params.get("protocolVersion")
        version = asked if asked in SESSION_VERSIONS else LEGACY_VERSION
        link = Link(self.proxy, head.get("authorization", "").encode("latin-1"))
        if isinstance(params.get("capabilities"), dict):
            link.capabilities = params["capabilities"]
        if isinstance(params.get("clientInfo"), dict):
            link.client_info = params["clientInfo"]
        session = ClientSession(secrets.token_hex(16), caller, link, version)
        self.sessions[session.id] = session
        result = {"protocolVersion": version, "capabilities": CAPABILITIES, "serverInfo": SERVER_INFO}
        status, body, headers = _result(message.get("id"), result, modern=False)
        return status, body, [*headers, (b"mcp-session-id", session.id.encode())]

    def _session(self, caller: Caller, session_id: str) -> ClientSession | Reply:
        """The client's session, or the answer the spec gives for a missing (400) or unknown (404) one."""
        if not session_id:
            return _rpc_error(None, INVALID_REQUEST, "Mcp-Session-Id header required (initialize first)", 400)
        session = self.sessions.get(session_id)
        if session is None or session.caller.key_id != caller.key_id:
            return _rpc_error(None, -32001, "session not found; send a new initialize", status=404)
        return session

    # tools --------------------------------------------------------------------------------------
    async def _list(
        self, caller: Caller, session: ClientSession | None, request_id: object, modern: bool
    ) -> Reply:
        """The project's tools: the union of its reachable releases' cached lists."""
        view = await self.view(caller, session)
        if session is not None:
            session.listed = view.names
        extra = MODERN_LIST if modern else b""
        body = b'{"jsonrpc":"2.0","id":%s,"result":{"tools":%s%s}}' % (
            json.dumps(request_id).encode(),
            view.payload,
            extra,
        )
        return 200, body, [JSON_TYPE]

    async def view(self, caller: Caller, session: ClientSession | None = None) -> View:
        """The caller's view, its missing release lists fetched first (a failing server is left out)."""
        releases = self._releases(caller, session)
        view = self.catalog.view(caller.project, releases)
        if view is not None:
            return view
        await asyncio.gather(*(self._fetch(server, cid) for server, cid in releases))
        view = self.catalog.view(caller.project, releases)
        if view is not None:
            return view
        cached = tuple((s, c) for s, c in releases if self.catalog.tools_of(c) is not None)
        partial = self.catalog.view(caller.project, cached)
        assert partial is not None
        return partial

    def _releases(self, caller: Caller, session: ClientSession | None) -> Releases:
        """(server, container id) of every live server the caller reaches; a session's own release
        where it holds an upstream session still on one."""
        router, gatekeeper = self.proxy.router, self.proxy.gatekeeper
        pinned: dict[str, str] = {}
        if session is not None:
            for server, sid in session.link.sessions.items():
                held = router.session(sid) if sid else None
                if held is not None:
                    pinned[server] = held.container_id
        return tuple(
            sorted(
                (server, pinned.get(server, up.container_id))
                for server, up in router.table.items()
                if gatekeeper.reaches(caller, server, up.access)
            )
        )

    async def _fetch(self, server: str, container_id: str) -> None:
        """Fetch and cache a release's tools/list once, however many requests wait for it."""
        if self.catalog.tools_of(container_id) is not None:
            return
        fetching = self._fetching.get(container_id)
        if fetching is None:
            fetching = self._fetching[container_id] = asyncio.ensure_future(self._fetch_list(server))
            fetching.add_done_callback(lambda _: self._fetching.pop(container_id, None))
        with contextlib.suppress(UpstreamFailed, OSError, TimeoutError):
            await asyncio.shield(fetching)

    async def _fetch_list(self, server: str) -> None:
        """tools/list of `server`'s live release on a session of the aggregate's own (then ended)."""
        link = Link(self.proxy, f"Bearer {self.proxy.gatekeeper.internal_token}".encode())
        try:
            session = await link.session(server)
            held = self.proxy.router.session(session) if session else None
            live = self.proxy.router.get(server)
            container_id = held.container_id if held else live.container_id if live else ""
            tools: list[dict[str, Any]] = []
            cursor: object = None
            for page in range(MAX_LIST_PAGES):
                params = {"cursor": cursor} if cursor else {}
                answer = await send(self.proxy, server, link.headers(server), "tools/list", params, page + 1)
                tools.extend(t for t in answer.result.get("tools", ()) if isinstance(t, dict))
                cursor = answer.result.get("nextCursor")
                if not cursor:
                    break
            if container_id:
                self.catalog.modern[container_id] = await speaks_modern(
                    self.proxy, server, link.authorization
                )
                self.catalog.keep(container_id, tools)
        except (UpstreamFailed, OSError, TimeoutError) as exc:
            log.info("aggregate: listing the tools of %s failed: %s", server, exc)
            raise
        finally:
            await link.close()

    async def _call(
        self,
        ex: Exchange,
        caller: Caller,
        session: ClientSession | None,
        head: dict[str, str],
        message: dict[str, Any],
        params: dict[str, Any],
    ) -> Reply | None:
        """Route a tools/call to its server, through the proxy, the answer going straight back."""
        request_id = message.get("id")
        name = params.get("name")
        if not isinstance(name, str):
            return _rpc_error(request_id, INVALID_PARAMS, "tools/call needs a tool name")
        target = await self._target(caller, session, name)
        if isinstance(target, str):
            return _rpc_error(request_id, INVALID_PARAMS, target)
        server, tool = target
        forwarded = dict(message, params=dict(params, name=tool))
        body = json.dumps(forwarded, ensure_ascii=False, separators=(",", ":")).encode()
        authorization = head.get("authorization", "").encode("latin-1")
        if session is not None:
            return await self._on_session(ex, session.link, server, body, session.id, request_id)
        live = self.proxy.router.get(server)
        if live is not None and live.container_id not in self.catalog.modern:
            await self._fetch(server, live.container_id)  # learns the release's era too
        if live is not None and self.catalog.modern.get(live.container_id):
            piped = Piped("POST", server, modern_headers(authorization, "tools/call", tool), body, ex, [])
            await self.proxy.serve(piped)
            return None
        return await self._converted(self._stateless_link(caller, head), server, body, request_id)

    async def _on_session(
        self, ex: Exchange, link: Link, server: str, body: bytes, session_id: str, request_id: object
    ) -> Reply | None:
        """Send a request on the link's session with `server`, the answer piped to the client; a
        session its release no longer holds is opened again on the live release, once."""
        mine = [(b"mcp-session-id", session_id.encode())]
        for _ in range(2):
            try:
                await link.session(server)
            except (UpstreamFailed, OSError, TimeoutError) as exc:
                return _rpc_error(request_id, SERVER_GONE, f"server {server!r} is not reachable now: {exc}")
            piped = Piped("POST", server, link.headers(server), body, ex, mine)
            await self.proxy.serve(piped)
            if not piped.lost:
                return None
            link.lost(server)  # its release was retired: open a session on the live one
        return _rpc_error(request_id, SERVER_GONE, f"server {server!r} lost the session twice; retry")

    async def _converted(self, link: Link, server: str, body: bytes, request_id: object) -> Reply:
        """A stateless-era client's call to a session-era-only server: sent on the key's session,
        the answer given back whole in the client's era."""
        for _ in range(2):
            try:
                await link.session(server)
            except (UpstreamFailed, OSError, TimeoutError) as exc:
                return _rpc_error(request_id, SERVER_GONE, f"server {server!r} is not reachable now: {exc}")
            inner = Collected("POST", server, link.headers(server), body)
            await self.proxy.serve(inner)
            if inner.status == 404:
                link.lost(server)
                continue
            message = inner.message(request_id)
            if message is None:
                return inner.status or 502, b"".join(inner.chunks), [JSON_TYPE]
            if isinstance(message.get("result"), dict):
                message["result"].setdefault("resultType", "complete")
            return 200, json.dumps(message, ensure_ascii=False).encode(), [JSON_TYPE]
        return _rpc_error(request_id, SERVER_GONE, f"server {server!r} lost the session twice; retry")

    async def _target(
        self, caller: Caller, session: ClientSession | None, name: str
    ) -> tuple[str, str] | str:
        """The (server, tool) a public name routes to, or why it routes nowhere."""
        server, sep, tool = name.partition(SEPARATOR)
        if sep and tool and len(name) < MAX_NAME:
            live = self.proxy.router.get(server)
            if live is None or not self.proxy.gatekeeper.reaches(caller, server, live.access):
                return f"no tool {name!r}: no live server {server!r} for this key"
        else:
            route = (await self.view(caller, session)).routes.get(name)
            if route is None:
                return f"no tool {name!r} on /mcp (tools/list names every tool offered)"
            server, tool = route
        if caller.project is not None and not caller.project.may_call(server, tool):
            return f"tool {name!r} is not allowed for project {caller.project.name!r} (deploy.yaml tools)"
        return server, tool

    def _stateless_link(self, caller: Caller, head: dict[str, str]) -> Link:
        """The upstream sessions of a stateless-era client's key."""
        link = self._stateless.get(caller.key_id)
        if link is None:
            link = self._stateless[caller.key_id] = Link(self.proxy, head.get("authorization", "").encode())
        return link

    # streams, ends, swaps -------------------------------------------------------------------------
    async def _stream(self, ex: Exchange, caller: Caller, session_id: str) -> Reply | None:
        """A session-era client's GET stream: the aggregate's notifications, keep-alive comments."""
        found = self._session(caller, session_id)
        if not isinstance(found, ClientSession):
            return found
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        found.streams.append(queue)
        await ex.start(200, [*SSE_HEADERS, (b"mcp-session-id", found.id.encode())])
        gone = asyncio.ensure_future(ex.gone())
        try:
            while not gone.done() and found.id in self.sessions:
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getting, gone}, timeout=self.proxy.keepalive)
                if getting in done:
                    await ex.write(getting.result())
                else:
                    getting.cancel()
                    if not done:
                        await ex.write(KEEPALIVE)
                found.last_used = time.monotonic()
            if not gone.done():
                await ex.end()
        finally:
            gone.cancel()
            found.streams.remove(queue)
        return None

    async def _end(self, caller: Caller, session_id: str) -> Reply:
        """DELETE: end the client's session and its upstream sessions."""
        found = self._session(caller, session_id)
        if not isinstance(found, ClientSession):
            return found
        self.sessions.pop(found.id, None)
        await found.link.close()
        return 200, b"", []

    def _swapped(self) -> None:
        """The router swapped (a deploy thread): look at the sessions' views on the loop."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._after_swap)

    def _after_swap(self) -> None:
        live = {u.container_id for u in self.proxy.router.table.values()}
        held = {
            s.container_id
            for c in self.sessions.values()
            for sid in c.link.sessions.values()
            if sid and (s := self.proxy.router.session(sid)) is not None
        }
        self.catalog.prune(live | held)
        for session in list(self.sessions.values()):
            if session.streams and session.listed is not None:
                task = asyncio.ensure_future(self._tell_if_changed(session))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _tell_if_changed(self, session: ClientSession) -> None:
        """Send list_changed on the session's streams if its view lost or gained a tool."""
        view = await self.view(session.caller, session)
        if view.names != session.listed:
            for queue in session.streams:
                queue.put_nowait(LIST_CHANGED)

    async def _expire(self) -> None:
        interval = max(self.idle_timeout / 4, 0.05)
        while True:
            await asyncio.sleep(interval)
            before = time.monotonic() - self.idle_timeout
            idle = [s for s in self.sessions.values() if not s.streams and s.last_used < before]
            for session in idle:
                self.sessions.pop(session.id, None)
            if idle:
                await asyncio.gather(*(s.link.close() for s in idle), return_exceptions=True)


def _discover() -> dict[str, Any]:
    """The answer to a stateless-era client's server/discover."""
    return {
        "supportedVersions": [MODERN_VERSION],
        "capabilities": CAPABILITIES,
        "cacheScope": "private",
        "ttlMs": 0,
        "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
    }


def _result(request_id: object, result: dict[str, Any], modern: bool) -> Reply:
    if modern:
        result = {**result, "resultType": "complete"}
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}, separators=(",", ":"))
    return 200, body.encode(), [JSON_TYPE]


def _rpc_error(request_id: object, code: int, message: str, status: int = 200) -> Reply:
    error = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return status, json.dumps(error, separators=(",", ":")).encode(), [JSON_TYPE]


def _error_reply(status: int, message: str, headers: dict[str, str]) -> Reply:
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return status, json.dumps({"error": message}).encode(), [*encoded, JSON_TYPE]
