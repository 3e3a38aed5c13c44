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

Lists (listing.py): each release's tools, prompts, resources and templates are fetched once, with
the aggregate's own token, and cached under its container id; a swap names new containers, so it
invalidates them by itself. A project's view is built from the cached lists of the releases its key
reaches and kept serialized. After a swap, each session-era client with an open GET stream whose
view changed gets the list_changed of that kind (clients.py); a stateless-era client sees the new
list on its next request.

Names and URIs are made in catalog.py and undone in addressing.py; the aggregate's own answers
are in replies.py. Server-to-client requests (sampling, elicitation, roots) ride the event stream
of the call that caused them; for a session-era client their ids are rewritten `<server>/<id>` on
the way out, so that two servers' ids never meet, and the client's answer is sent to that
server's session; a client's notifications/cancelled goes to the server running that call. What a
server sends outside a call arrives on the upstream session's GET stream, which the aggregate holds
while the client holds its own (feeds.py), and is rewritten the same way (`_heard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from typing import Any

from starlette.types import Receive, Scope, Send

from pipeline.config.settings import AggregateConfig
from pipeline.errors import BodyTooLarge, ClientGone, UpstreamFailed
from pipeline.proxy import replies
from pipeline.proxy.access import OPEN_CALLER, Caller, Denied
from pipeline.proxy.addressing import Addressing
from pipeline.proxy.catalog import View, public_uri
from pipeline.proxy.clients import CHANGED, ClientSession, ClientSessions
from pipeline.proxy.exchange import AsgiExchange, Exchange, Headers
from pipeline.proxy.feeds import Feeds
from pipeline.proxy.listing import LIST_METHODS, Listing
from pipeline.proxy.relay import Proxy, Reply, too_large
from pipeline.proxy.replies import JSON_TYPE, SERVER_INFO, SESSION_CAPABILITIES
from pipeline.proxy.upstreams import (
    ID_SEPARATOR,
    LEGACY_VERSION,
    MODERN_VERSION,
    Collected,
    Link,
    Piped,
    modern_headers,
    send,
)

MODERN_BYTES = MODERN_VERSION.encode()
SESSION_VERSIONS = ("2025-03-26", "2025-06-18", LEGACY_VERSION)
MODERN_LIST = b',"resultType":"complete","cacheScope":"private","ttlMs":0'  # 2026-07-28's list fields
FORWARDED = frozenset(  # what goes to a server (through the proxy, which rate-limits it)
    {
        "tools/call",
        "prompts/get",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "notifications/cancelled",
        None,  # a client's answer to a server's request
    }
)
LISTS = {method: kind for kind, method in LIST_METHODS.items()}
INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32600, -32601, -32602
SERVER_GONE = -32603
RATE_LIMITED = 429  # the proxy's answer to a key past its rate limit (and the aggregate's past a cap)
OVER_CAP = -32000  # the JSON-RPC code of a session or stream refused by `aggregate.max_*_per_key`
SERVER_CHANGED = frozenset(CHANGED.values())  # a server's own list_changed, heard on a feed
CHANGED_WINDOW = 1.0  # a server's list_changed reaches the clients at most once per window (the last kept)


class Aggregate:
    """The `/mcp` endpoint over a running Proxy."""

    def __init__(
        self, proxy: Proxy, idle_timeout: float = 0.0, config: AggregateConfig | None = None
    ) -> None:
        self.proxy = proxy
        self.config = config = config or AggregateConfig()
        self.listing = Listing(proxy, config)
        self.addressing = Addressing(proxy)
        self.clients = ClientSessions(idle_timeout, lambda: proxy.keepalive)
        self._stateless: dict[str, Link] = {}  # by key id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._told: dict[tuple[str, str], float] = {}  # (server, list_changed) -> when clients were told
        self._pending: dict[tuple[str, str], asyncio.TimerHandle] = {}  # a telling held to the window

    async def start(self) -> None:
        """Hear of swaps; expire idle client sessions."""
        self._loop = asyncio.get_running_loop()
        self.proxy.router.listeners.append(self._swapped)
        if self.clients.idle_timeout > 0:
            self._expiry = asyncio.create_task(self.clients.expire())

    async def stop(self) -> None:
        """End every client session (and its upstream sessions)."""
        with contextlib.suppress(ValueError):
            self.proxy.router.listeners.remove(self._swapped)
        if self._expiry is not None:
            self._expiry.cancel()
        for handle in self._pending.values():
            handle.cancel()
        await self.clients.end_all()

    async def handle(self, scope: Scope, receive: Receive, send_: Send) -> None:
        """ASGI: serve one request to `/mcp` that did not come through front.py's protocol."""
        scope.setdefault("path_params", {"server": ""})
        await self.serve(AsgiExchange(scope, receive, send_))

    async def serve(self, ex: Exchange) -> None:
        """Serve one request to `/mcp` (front.py hands its requests here as they are parsed)."""
        try:
            reply = await self._serve(ex)
        except ClientGone:
            return
        if reply is not None:
            await ex.answer(*reply)

    def quick_call(self, ex: Exchange, body: bytes) -> tuple[str, Headers, bytes] | None:
        """For a stateless-era tools/call to a stateless-era server, nothing to wait for: the server,
        headers and body to send it through the proxy as a `/mcp/<server>` request is sent (front.py
        then answers it from the pooled connection's callbacks). None for anything else."""
        if ex.method != "POST":
            return None
        authorization, modern = "", False
        for key, value in ex.headers:
            if key == b"mcp-protocol-version":
                modern = value == MODERN_BYTES
            elif key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"origin":
                return None  # CORS: the coroutine's way
        caller = self._caller(authorization, "")
        if not modern or isinstance(caller, Denied):
            return None
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):  # nested past the parser's depth
            return None
        params = message.get("params") if isinstance(message, dict) else None
        if not isinstance(params, dict) or message.get("method") != "tools/call" or message.get("id") is None:
            return None
        name = params.get("name")
        found = self.addressing.split(caller, name) if isinstance(name, str) else None
        live = self.proxy.router.get(found[0]) if found else None
        if found is None or live is None or not self.listing.catalog.modern.get(live.container_id):
            return None
        headers = [h for h in ex.headers if h[0] != b"mcp-name"]  # every one the client sent
        headers.append((b"mcp-name", found[1].encode()))
        forwarded = json.dumps(dict(message, params=dict(params, name=found[1])), ensure_ascii=False)
        return found[0], headers, forwarded.encode()

    async def view(self, caller: Caller, session: ClientSession | None = None, kind: str = "tools") -> View:
        """The caller's view of one kind (a session's own releases where it is still on them)."""
        pinned = session.pinned(self._container_of) if session is not None else {}
        return await self.listing.view(caller, pinned, kind)

    async def _serve(self, ex: Exchange) -> Reply | None:
        """Answer one request (None: it was answered as a stream)."""
        head = {k.decode("latin-1"): v.decode("latin-1") for k, v in ex.headers}
        origin = head.get("origin", "")
        if ex.method == "OPTIONS" and origin:
            return self.proxy._preflight(origin, head.get("access-control-request-headers", ""))
        caller = self._caller(head.get("authorization", ""), origin)
        if isinstance(caller, Denied):
            return replies.error_reply(caller.status, caller.message, caller.headers)
        session_id = head.get("mcp-session-id", "")
        if ex.method in ("GET", "DELETE"):
            found = self._session(caller, session_id)
            if not isinstance(found, ClientSession):
                return found
            if ex.method == "DELETE":
                await self.clients.end(found)
                return 200, b"", []
            held = self.clients.streams_of(caller.key_id)
            if held >= self.config.max_streams_per_key:
                return _over_cap(f"{held} /mcp GET streams", "aggregate.max_streams_per_key", "close one")
            await self.clients.stream(ex, found)
            return None
        if ex.method != "POST":
            return replies.error_reply(
                405, f"{ex.method} is not served on /mcp", {"Allow": "GET, POST, DELETE"}
            )
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
        except (ValueError, RecursionError):  # nested past the parser's depth
            return replies.rpc_error(None, -32700, "the body is not JSON", status=400)
        if not isinstance(message, dict):
            return replies.rpc_error(
                None, INVALID_REQUEST, "one JSON-RPC message per POST (no batches)", status=400
            )
        method, request_id = message.get("method"), message.get("id")
        if method not in FORWARDED:  # the proxy's path takes a token for the rest
            limited = self.proxy.gatekeeper.limit(caller)
            if limited is not None:
                return replies.error_reply(limited.status, limited.message, limited.headers)
        modern = head.get("mcp-protocol-version") == MODERN_VERSION
        if method == "initialize" and not modern:
            return self._initialize(caller, head, message)
        if method == "server/discover":
            return replies.result(request_id, replies.discover(), modern=True)
        session: ClientSession | None = None
        if not modern:
            found = self._session(caller, session_id)
            if not isinstance(found, ClientSession):
                return found
            session = found
            session.last_used = time.monotonic()
            session.caller = caller  # as the key's project is now (deploy.yaml may have been reloaded)
            if method is None and request_id is not None:
                return await self._answer_server(ex, session, message)
        if method == "notifications/cancelled" and session is not None:
            return await self._cancel(ex, session, message)
        if not isinstance(method, str) or request_id is None:
            return 202, b"", []  # a notification
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "ping":
            return replies.result(request_id, {}, modern)
        if method in LISTS:
            return await self._list(caller, session, request_id, modern, LISTS[method])
        if method == "logging/setLevel" and session is not None:
            return await self._set_level(session, request_id, params)
        target = await self.addressing.target(
            caller, lambda kind: self.view(caller, session, kind), method, params
        )
        if isinstance(target, str):
            return replies.rpc_error(request_id, INVALID_PARAMS, target)
        server, forwarded_params, name = target
        forwarded = json.dumps(dict(message, params=forwarded_params), ensure_ascii=False).encode()
        return await self._forward(ex, caller, session, head, server, method, name, forwarded, request_id)

    def _initialize(self, caller: Caller, head: dict[str, str], message: dict[str, Any]) -> Reply:
        """Open a client session: the aggregate's own id, its capabilities, no upstream session yet."""
        held = self.clients.sessions_of(caller.key_id)
        if held >= self.config.max_sessions_per_key:
            why = "end one (DELETE /mcp with its Mcp-Session-Id) or let one expire"
            setting = "aggregate.max_sessions_per_key"
            return _over_cap(f"{held} /mcp sessions", setting, why, message.get("id"))
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        asked = params.get("protocolVersion")
        version = asked if asked in SESSION_VERSIONS else LEGACY_VERSION
        link = Link(self.proxy, head.get("authorization", "").encode("latin-1"), config=self.config)
        if isinstance(params.get("capabilities"), dict):
            link.capabilities = params["capabilities"]
        if isinstance(params.get("clientInfo"), dict):
            link.client_info = params["clientInfo"]
        session = ClientSession(secrets.token_hex(16), caller, link, version)
        held = self.config.max_held
        session.feeds = Feeds(self.proxy, link, lambda s, heard: self._heard(session, s, heard), held)
        self.clients.add(session)
        result = {"protocolVersion": version, "capabilities": SESSION_CAPABILITIES, "serverInfo": SERVER_INFO}
        status, body, headers = replies.result(message.get("id"), result, modern=False)
        return status, body, [*headers, (b"mcp-session-id", session.id.encode())]

    def _session(self, caller: Caller, session_id: str) -> ClientSession | Reply:
        """The client's session, or the answer the spec gives for a missing (400) or unknown (404) one."""
        if not session_id:
            return replies.rpc_error(
                None, INVALID_REQUEST, "Mcp-Session-Id header required (initialize first)", 400
            )
        session = self.clients.get(session_id)
        if session is None or session.caller.key_id != caller.key_id:
            return replies.rpc_error(None, -32001, "session not found; send a new initialize", status=404)
        return session

    # lists and targets --------------------------------------------------------------------------
    async def _list(
        self, caller: Caller, session: ClientSession | None, request_id: object, modern: bool, kind: str
    ) -> Reply:
        """One of the project's lists: the union of its reachable releases' cached lists."""
        view = await self.view(caller, session, kind)
        if session is not None:
            session.listed[kind] = view.names
        extra = MODERN_LIST if modern else b""
        rid = json.dumps(request_id).encode()
        body = b'{"jsonrpc":"2.0","id":%s,"result":{"%s":%s%s}}' % (rid, kind.encode(), view.payload, extra)
        return 200, body, [JSON_TYPE]

    # forwarding ---------------------------------------------------------------------------------
    async def _forward(
        self,
        ex: Exchange,
        caller: Caller,
        session: ClientSession | None,
        head: dict[str, str],
        server: str,
        method: str,
        name: str,
        body: bytes,
        request_id: object,
    ) -> Reply | None:
        """Send a request to its server through the proxy; the answer goes straight back (resources
        are read whole, to give their URIs back as the aggregate's)."""
        rewrite = replies.resource_uris if method == "resources/read" else None
        if session is not None:
            return await self._on_session(ex, session, server, body, request_id, rewrite)
        authorization = head.get("authorization", "").encode("latin-1")
        if await self.listing.modern(server):
            headers = modern_headers(authorization, method, name if method != "completion/complete" else "")
            if rewrite is None:
                await self.proxy.serve(Piped("POST", server, headers, body, ex, [], max_held=self._held))
                return None
            inner = Collected("POST", server, headers, body, ex, self._held)
            await self.proxy.serve(inner)
            return replies.whole(inner, server, request_id, rewrite, modern=False)
        link = self._stateless_link(caller, head)
        return await self._converted(ex, link, server, body, request_id, rewrite)

    async def _on_session(
        self, ex: Exchange, session: ClientSession, server: str, body: bytes, request_id: object, rewrite: Any
    ) -> Reply | None:
        """Send a request on the client session's upstream session with `server`; one its release no
        longer holds is opened again on the live release, once (and the client told if its lists
        changed with the move)."""
        link = session.link
        mine = [(b"mcp-session-id", session.id.encode())]
        for _ in range(2):
            try:
                await link.session(server)
            except (UpstreamFailed, OSError, TimeoutError) as exc:
                return _unopened(server, request_id, exc)
            if session.streams and session.feeds is not None:
                session.feeds.open(server)
            if rewrite is not None:
                inner = Collected("POST", server, link.headers(server), body, ex, self._held)
                await self.proxy.serve(inner)
                if inner.status != 404:
                    return replies.whole(inner, server, request_id, rewrite, modern=False)
            else:
                piped = Piped("POST", server, link.headers(server), body, ex, mine, server, self._held)
                key = json.dumps(request_id)
                session.inflight[key] = server
                try:
                    await self.proxy.serve(piped)
                finally:
                    session.inflight.pop(key, None)
                if not piped.lost:
                    return None
            link.lost(server)  # its release was retired: open a session on the live one
            self.clients.check(session, self._viewer)
        return replies.rpc_error(request_id, SERVER_GONE, f"server {server!r} lost the session twice; retry")

    async def _converted(
        self, ex: Exchange, link: Link, server: str, body: bytes, request_id: object, rewrite: Any
    ) -> Reply:
        """A stateless-era client's request to a session-era-only server: sent on the key's session,
        the answer given back whole in the client's era."""
        for _ in range(2):
            try:
                await link.session(server)
            except (UpstreamFailed, OSError, TimeoutError) as exc:
                return _unopened(server, request_id, exc)
            inner = Collected("POST", server, link.headers(server), body, ex, self._held)
            await self.proxy.serve(inner)
            if inner.status != 404:
                return replies.whole(inner, server, request_id, rewrite, modern=True)
            link.lost(server)
        return replies.rpc_error(request_id, SERVER_GONE, f"server {server!r} lost the session twice; retry")

    async def _answer_server(self, ex: Exchange, session: ClientSession, message: dict[str, Any]) -> Reply:
        """The client's answer to a server's request (sampling, elicitation, roots): to that server."""
        server, sep, own = str(message.get("id")).partition(ID_SEPARATOR)
        if not sep or server not in session.link.sessions:
            return replies.rpc_error(
                None, INVALID_REQUEST, f"no server request {message.get('id')!r} is waiting", 400
            )
        try:
            original = json.loads(own)
        except (ValueError, RecursionError):  # nested past the parser's depth
            return replies.rpc_error(
                None, INVALID_REQUEST, f"no server request {message.get('id')!r} is waiting", 400
            )
        answer = json.dumps(dict(message, id=original)).encode()
        inner = Collected("POST", server, session.link.headers(server), answer, ex, self._held)
        await self.proxy.serve(inner)
        return (202 if inner.status < 300 else inner.status), b"", []

    async def _cancel(self, ex: Exchange, session: ClientSession, message: dict[str, Any]) -> Reply:
        """notifications/cancelled: passed to the server that runs the request it names, if any."""
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        assert isinstance(params, dict)
        server = session.inflight.get(json.dumps(params.get("requestId")))
        if server is not None and session.link.sessions.get(server):
            note = json.dumps(message).encode()
            headers = session.link.headers(server)
            await self.proxy.serve(Collected("POST", server, headers, note, ex, self._held))
        return 202, b"", []

    async def _set_level(self, session: ClientSession, request_id: object, params: dict[str, Any]) -> Reply:
        """logging/setLevel: kept for the sessions still to open, sent to those open that log."""
        level = params.get("level")
        if not isinstance(level, str):
            return replies.rpc_error(request_id, INVALID_PARAMS, "logging/setLevel needs a level")
        link = session.link
        link.level = level
        for server in [s for s, sid in link.sessions.items() if "logging" in link.offers.get(s, {})]:
            with contextlib.suppress(UpstreamFailed, OSError, TimeoutError):
                headers = link.headers(server)
                await send(self.proxy, server, headers, "logging/setLevel", {"level": level}, 1, self.config)
        return replies.result(request_id, {}, modern=False)

    def _stateless_link(self, caller: Caller, head: dict[str, str]) -> Link:
        """The upstream sessions of a stateless-era client's key."""
        link = self._stateless.get(caller.key_id)
        if link is None:
            authorization = head.get("authorization", "").encode()
            link = self._stateless[caller.key_id] = Link(self.proxy, authorization, config=self.config)
        return link

    # what servers send outside a call ------------------------------------------------------------
    def _heard(self, session: ClientSession, server: str, message: dict[str, Any]) -> None:
        """A message on a session's feed from `server`: rewritten as a call's would be, queued on the
        client's GET streams; a server's own list_changed is the aggregate's to spread."""
        method = message.get("method")
        if not isinstance(method, str):
            return  # an answer on a GET stream: nothing of the aggregate's waits for one
        if method in SERVER_CHANGED:
            self._server_changed(session, server, method)
            return
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        if method == "notifications/resources/updated" and isinstance(params, dict) and isinstance(uri, str):
            message = dict(message, params=dict(params, uri=public_uri(server, uri)))
        if "id" in message:  # the server's own request: answered through _answer_server
            message = dict(message, id=f"{server}{ID_SEPARATOR}{json.dumps(message['id'])}")
        session.send(message)

    def _server_changed(self, session: ClientSession, server: str, method: str) -> None:
        """A server changed a list: its release's cached lists go; every client session that sees
        the server hears list_changed (once per CHANGED_WINDOW, however many sessions heard it)."""
        container_id = session.pinned(self._container_of).get(server)
        if container_id:
            self.listing.forget(container_id)
        key = (server, method)
        if key in self._pending or self._loop is None:
            return
        wait = self._told.get(key, -CHANGED_WINDOW) + CHANGED_WINDOW - time.monotonic()
        if wait <= 0:
            self._tell_changed(key)
        else:
            self._pending[key] = self._loop.call_later(wait, self._tell_changed, key)

    def _tell_changed(self, key: tuple[str, str]) -> None:
        self._pending.pop(key, None)
        self._told[key] = time.monotonic()
        server, method = key
        for session in list(self.clients.by_id.values()):
            if session.streams and self.addressing.reaches(session.caller, server):
                session.tell(method)

    @property
    def _held(self) -> int:
        return self.config.max_held

    # swaps --------------------------------------------------------------------------------------
    def _container_of(self, session_id: str) -> str | None:
        held = self.proxy.router.session(session_id)
        return held.container_id if held is not None else None

    def _swapped(self) -> None:
        """The router swapped (a deploy thread): look at the sessions' views on the loop."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._after_swap)

    def reconfigured(self) -> None:
        """deploy.yaml was reloaded (a thread): look again at every session's views, on the loop."""
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._after_reload)

    def _after_reload(self) -> None:
        """Each session takes its project as reloaded (one that is gone ends the session) and hears
        list_changed for each kind whose view changed with it."""
        settings = self.proxy.gatekeeper.settings
        for session in list(self.clients.by_id.values()):
            project = session.caller.project
            if project is None:
                continue
            now = settings.project(project.name)
            if now is None:
                self.clients.end_soon(session)
            elif now != project:
                session.caller = Caller(session.caller.key_id, now)
        self.clients.after_swap(self._viewer)

    def _after_swap(self) -> None:
        live = {t.container_id for g in self.proxy.router.groups.values() for t in g.targets}
        held = {cid for c in self.clients.by_id.values() for cid in c.pinned(self._container_of).values()}
        self.listing.prune(live | held)
        self.clients.after_swap(self._viewer)

    async def _viewer(self, session: ClientSession, kind: str) -> View:
        return await self.view(session.caller, session, kind)


def _over_cap(held: str, setting: str, fix: str, request_id: object = None) -> Reply:
    """The answer to a session or GET stream past a key's cap: 429 with a JSON-RPC error saying so."""
    message = f"this key already holds {held}, the most deploy.yaml's {setting} allows; {fix}"
    return replies.rpc_error(request_id, OVER_CAP, message, status=RATE_LIMITED)


def _unopened(server: str, request_id: object, exc: Exception) -> Reply:
    """Why a server's session could not be opened: the key's rate limit is the 429 a call past it
    gets (Retry-After kept, so the client backs off); anything else says the server is unreachable."""
    if isinstance(exc, UpstreamFailed) and exc.status == RATE_LIMITED:
        retry = {"Retry-After": exc.retry_after} if exc.retry_after else {}
        return replies.error_reply(RATE_LIMITED, "rate limit exceeded", retry)
    return replies.rpc_error(request_id, SERVER_GONE, f"server {server!r} is not reachable now: {exc}")
