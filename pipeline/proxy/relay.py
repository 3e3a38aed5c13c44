"""The routing proxy: `/mcp/<server>` and `/mcp/<server>/...` forwarded to the live container.

Transparent to both MCP eras: methods, status codes, bodies and the MCP headers pass
through unchanged; SSE streams flow unbuffered with keep-alive comments on quiet streams;
a session stays with the container that issued it (see routes.py). The client's own
Authorization never reaches a server, and the upstream Host is the container's loopback
address so that SDK servers' DNS-rebinding guard accepts it.

`Proxy.serve` works on an `Exchange`: one client request and the means to answer it. front.py's
HTTP protocol makes one straight from the parser for `/mcp/` requests, with no ASGI cycle in
between (the fast path); `Proxy.handle` adapts an ASGI request to one, for every other way in
(app.py's `proxy_routes`). Upstreams are reached with pool.py's HTTP/1.1 client, which writes a
request in one go. A JSON answer is relayed whole, with its length, when it is complete within
pool.PAUSE_BYTES; a larger one streams through as it arrives (its Content-Length passed on, else
chunked), reading from the upstream no faster than the client reads, so no answer is ever held
whole; one cut short is cut short for the client too (never ended as if whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Coroutine, Mapping, Set
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from starlette.types import Receive, Scope, Send

from pipeline.config.settings import DEFAULT_MAX_BODY, DEFAULT_MAX_UPSTREAM_HEADER
from pipeline.errors import (
    BodyTooLarge,
    ClientGone,
    UpstreamError,
    UpstreamRefused,
    UpstreamUnreachable,
)
from pipeline.proxy import selection
from pipeline.proxy.access import Caller, Denied, Gatekeeper
from pipeline.proxy.exchange import (
    DOT_SEGMENTS,
    AsgiExchange,
    Exchange,
    Headers,
    has_dot_segment,
)
from pipeline.proxy.expiry import expire_sessions
from pipeline.proxy.pool import Connection, Pool, RemotePool
from pipeline.proxy.router import Router, Target, Upstream
from pipeline.proxy.sessions import Session
from pipeline.proxy.split import rpc_failed
from pipeline.proxy.usage import Usage
from pipeline.remote import Dialer

Reply = tuple[int, bytes, Headers]  # an answer the proxy makes itself: status, body, headers
T = TypeVar("T")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"authorization",
        b"content-length",
    }
)
# The Origin was checked here; SDK servers' own guard would refuse a public one. The whole body is
# sent at once, so an Expect: 100-continue is answered by the front server, not the upstream. The
# browser's cookies (the admin cookie among them) belong to the provider's origin, not to a server.
NOT_FORWARDED = HOP_BY_HOP | {b"origin", b"expect", b"cookie"}
# uvicorn writes its own Date and Server (forwarding them doubles them); a server may not set cookies
# on, or clear the data of, the provider's origin, nor any other policy a browser keeps for the whole
# origin (HSTS, network error reports of every URL to a host of its choosing, another service for the
# origin, a service worker's scope).
NOT_RELAYED = HOP_BY_HOP | {
    b"date",
    b"server",
    b"set-cookie",
    b"set-cookie2",
    b"clear-site-data",
    b"strict-transport-security",
    b"nel",
    b"report-to",
    b"reporting-endpoints",
    b"alt-svc",
    b"service-worker-allowed",
}
# Answers that are neither JSON nor an event stream (an HTML page, an SVG, no type at all) would run
# on the provider's origin: the browser gets them sniff-free and sandboxed (an opaque origin).
MCP_TYPES = (b"application/json", b"text/event-stream")
SANDBOX = (
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; sandbox; frame-ancestors 'none'"),
)
NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})  # no Content-Length: 0
PATH_SAFE = "/:@!$&'()*+,;=~"  # RFC 3986 pchar and "/": not percent-encoded in the upstream path
SESSION_HEADER = b"mcp-session-id"
# A session id is visible ASCII (the spec); a longer one than this is no session id but a server
# making the proxy hold (and save) its bytes for every request until the idle timeout.
MAX_SESSION_ID = 1024
SESSION_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_SESSION_ID)
RETRY_AFTER_SECONDS = "5"
CLIENT_GONE = 499  # counted for a request whose client left before its answer came (nginx's code)
CONNECT_TIMEOUT = 10.0
KEEPALIVE_COMMENT = b": keep-alive\n\n"
ROUTE_ATTEMPTS = 3
WAKE_ATTEMPTS = 2  # a server that went to sleep between the look and the route is woken once more
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, "
    "Mcp-Method, Mcp-Name, Last-Event-ID"
)
EXPOSED_HEADERS = b"Mcp-Session-Id, MCP-Protocol-Version"
JSON_TYPE = (b"content-type", b"application/json")
REQUEST_STATE = b'"requestState"'  # a stateless-era multi-round-trip request's state (2026-07-28)
MAX_REQUEST_STATE = 64 * 1024  # longer ones are not remembered (a retry then goes to any replica)


class Ticket:
    """One request on its way through the proxy: what its headers said, then where it goes.

    From `Proxy.route` until `Proxy.finish` the request is counted in flight on `upstream`.
    """

    __slots__ = (
        "access",
        "caller",
        "closer",
        "fields",
        "method",
        "origin",
        "request",
        "rpc_error",
        "session",
        "session_id",
        "started",
        "target",
        "upstream",
    )

    def __init__(
        self, method: str, caller: Caller, origin: str, session_id: str, fields: list[bytes]
    ) -> None:
        self.method = method
        self.caller = caller
        self.origin = origin
        self.session_id = session_id
        self.fields = fields  # the request headers that go upstream, as `name: value\r\n` lines
        self.upstream: Upstream | None = None
        self.target: Target | None = None  # the replica it goes to (`upstream` is its address)
        self.session: Session | None = None  # the live session the request belongs to, if any
        self.closer: asyncio.Event | None = None  # set when the upstream is retired
        self.request = b""  # the whole upstream request: head and body
        self.started = 0.0
        self.rpc_error = False  # a canary's answer carried a JSON-RPC error (split.rpc_failed)
        self.access: tuple[str, ...] = ("all",)  # the server's `access` it was admitted under


class Waker(Protocol):
    """Starts servers scaled to zero (pipeline/idle.py): the proxy holds their first requests."""

    @property
    def asleep(self) -> Set[str]:
        """The servers with no container now (read on the hot path; replaced in one step)."""

    def access(self, server: str) -> tuple[str, ...]:
        """Who may use an asleep server (its live release's `access`)."""

    async def wake(self, server: str) -> Reply | None:
        """Start `server` (one start for all who wait) and return None once it is routed, or the
        answer for a request that cannot wait longer."""


class Proxy:
    """Forwards MCP requests to the upstream the router names.

    A request goes `admit` (its headers: CORS preflight, key, scope, rate limit, declared size)
    → the body is read → `route` (session or live upstream; counted in flight) → the upstream
    request and answer → `finish`. `serve` runs those steps as one coroutine; front.py runs the
    same steps from parser callbacks when nothing has to wait but the upstream's answer.
    """

    def __init__(
        self,
        router: Router,
        gatekeeper: Gatekeeper,
        usage: Usage,
        keepalive: float,
        session_idle_timeout: float = 0.0,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_upstream_header: int = DEFAULT_MAX_UPSTREAM_HEADER,
        dialer: Callable[[], Dialer] | None = None,
    ) -> None:
        self.router = router
        self.dialer = dialer  # how remote servers are reached; None: this proxy serves none
        self.gatekeeper = gatekeeper
        self.usage = usage
        self.keepalive = keepalive
        self.max_body = max_body  # a request body at most (413)
        self.max_upstream_header = max_upstream_header  # an answer's head at most (502)
        self.session_idle_timeout = session_idle_timeout  # 0: sessions never expire
        self._pool: Pool | None = None
        self._remote_pools: dict[bool, Pool] = {}  # by TLS or not
        self._expiry: asyncio.Task[None] | None = None
        self.waker: Waker | None = None  # scale to zero: starts an asleep server on its first request

    async def start(self) -> None:
        """Open the shared upstream connection pool; start expiring idle sessions."""
        self._pool = Pool(CONNECT_TIMEOUT, self.max_upstream_header)
        if self.dialer is not None:
            self._remote_pools = {
                tls: RemotePool(self.dialer, tls, CONNECT_TIMEOUT, self.max_upstream_header)
                for tls in (True, False)
            }
        if self.session_idle_timeout > 0:
            self._expiry = asyncio.create_task(
                expire_sessions(self.router, self.pool_for, self.session_idle_timeout)
            )

    async def stop(self) -> None:
        """Stop expiring sessions; close the pool."""
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        for pool in (self._pool, *self._remote_pools.values()):
            if pool is not None:
                pool.close()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: serve a request that did not come through front.py's fast path."""
        await self.serve(AsgiExchange(scope, receive, send))

    async def serve(self, ex: Exchange) -> None:
        """Authorize, route and forward one request to the server named in its path."""
        ticket = self.admit(ex)
        if not isinstance(ticket, Ticket):
            await _send_reply(ex, ticket)
            return
        await self.serve_admitted(ex, ticket)

    async def serve_admitted(self, ex: Exchange, ticket: Ticket) -> None:
        """Read, route and forward one admitted request (its project's tool rule applied, if any)."""
        try:
            body = await ex.read_body(self.max_body)  # before routing: a slow body must not outlive a drain
        except ClientGone:
            return
        except BodyTooLarge:
            await _send_reply(ex, too_large(self.max_body))
            return
        project = ticket.caller.project
        if project is not None and selection.selects(project):  # deploy.yaml's projects[].tools
            screened = selection.screen(project, ex, body)
            if isinstance(screened, tuple):
                await _send_reply(ex, screened)
                return
            ex = screened
        await self.carry(ex, ticket, body)

    async def carry(self, ex: Exchange, ticket: Ticket, body: bytes) -> None:
        """Route an admitted request with its body and forward it; an asleep server is woken first
        (again if it went to sleep between that look and the route: the idle job runs on a thread)."""
        refused: Reply | None = None
        for _ in range(WAKE_ATTEMPTS):
            if self.asleep(ex.server, ticket):
                assert self.waker is not None
                woken = await self.waker.wake(ex.server)
                if woken is not None:
                    await _send_reply(ex, _cors(woken, ticket.origin))
                    return
            refused = self.route(ex, ticket, body)
            if refused is None:
                await self.forward(ex, ticket)
                return
            if not self.asleep(ex.server, ticket):
                break
        assert refused is not None  # only a request that was forwarded left the loop without one
        await _send_reply(ex, refused)

    def asleep(self, server: str, ticket: Ticket) -> bool:
        """Whether a request must wake its server first (one without a session: a session died
        with the container, and its 404 makes the client initialize, which wakes it)."""
        return self.waker is not None and server in self.waker.asleep and not ticket.session_id

    def admit(self, ex: Exchange) -> Ticket | Reply:
        """Read the request's headers: a ticket for it, or the answer that refuses it."""
        if (ex.rest or ex.server in DOT_SEGMENTS) and has_dot_segment(ex.server, ex.rest):
            return _dot_segment(ex.server, ex.rest)
        method = ex.method
        origin = authorization = declared = session_id = asked = ""
        sessions = False
        fields: list[bytes] = []
        for name, value in ex.headers:
            if name in NOT_FORWARDED:
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                elif name == b"origin":
                    origin = value.decode("latin-1")
                elif name == b"content-length":
                    declared = value.decode("latin-1")
                continue
            if name == SESSION_HEADER:
                if sessions:  # the proxy would check one and a server read another
                    return _json(400, {"error": "more than one Mcp-Session-Id header"})
                sessions = True
                session_id = value.decode("latin-1")
            elif name == b"access-control-request-headers":
                asked = value.decode("latin-1")
            fields.append(b"%s: %s\r\n" % (name, value))
        if method == "OPTIONS" and origin:
            return self._preflight(origin, asked)
        live = self.router.get(ex.server)
        access = live.access if live else self._asleep_access(ex.server)
        verdict = self.gatekeeper.check(authorization, origin, ex.server, access)
        if isinstance(verdict, Denied):
            return _json(verdict.status, {"error": verdict.message}, verdict.headers)
        if declared.isdecimal() and int(declared) > self.max_body:
            return too_large(self.max_body)
        ticket = Ticket(method, verdict, origin, session_id, fields)
        ticket.access = access
        return ticket

    def route(self, ex: Exchange, ticket: Ticket, body: bytes) -> Reply | None:
        """Pick the ticket's upstream and count it in flight there, with the upstream request
        made; or return the answer when there is none."""
        for _ in range(ROUTE_ATTEMPTS):
            routed = self._route(ex.server, ticket, body)
            if not isinstance(routed, Target):
                return _cors(routed, ticket.origin)
            closer = self.router.enter(routed, ticket.session)
            if closer is not None:
                ticket.target, ticket.upstream, ticket.closer = routed, routed.upstream, closer
                ticket.request = self._request(ex, routed.upstream, ticket.fields, body)
                ticket.started = time.monotonic()
                return None
        return _json(503, {"error": f"server {ex.server!r} is being replaced; retry"}, {"Retry-After": "1"})

    def idle_connection(self, ticket: Ticket) -> Connection | None:
        """A pooled keep-alive connection to the ticket's upstream, if one is idle."""
        assert ticket.upstream is not None
        return self.pool_for(ticket.upstream).take((ticket.upstream.host, ticket.upstream.port))

    def pool_for(self, upstream: Upstream) -> Pool:
        """The pool that reaches `upstream`: containers', or remote servers' (checked, TLS)."""
        if upstream.remote is None:
            assert self._pool is not None, "Proxy.start() was not awaited"
            return self._pool
        pool = self._remote_pools.get(upstream.remote.tls)
        if pool is None:
            raise UpstreamError(f"this proxy was started without a way to reach remote {upstream.server!r}")
        return pool

    async def forward(self, ex: Exchange, ticket: Ticket, sent: Connection | None = None) -> None:
        """Send the ticket's request (unless the pooled connection `sent` carries it already) and
        relay the answer: whole, or as it arrives (an event stream, or a body too large to hold)."""
        upstream = ticket.upstream
        assert upstream is not None, "Proxy.route() did not admit this ticket"
        try:
            pool = self.pool_for(upstream)
            if sent is not None:
                waiting = pool.answer_to(sent, ticket.method, ticket.request)
            else:
                waiting = pool.request(
                    upstream.host, upstream.port, ticket.method, ticket.request, upstream.relayed
                )
            conn = await _unless_gone(ex, waiting)  # a silent server holds nothing once the client left
        except ClientGone:
            self.finish(ticket, CLIENT_GONE)
            return
        except OSError as exc:  # refused, reset, timed out, or not HTTP
            if isinstance(exc, UpstreamUnreachable) and self._failover(ticket):
                await self.forward(ex, ticket)  # nothing was sent: another replica takes it
                return
            self.finish(ticket, 502)
            await _send_reply(ex, _cors(_bad_gateway(upstream.server, exc), ticket.origin))
            return
        except BaseException:  # cancelled (shutdown): still leave, or a drain would wait for this forever
            self.finish(ticket, 502)
            raise
        status = 502  # what the usage counts if this ends early
        try:
            headers = self._relayed(ticket, conn)
            if is_stream(conn):
                status = conn.status
                headers = [(k, v) for k, v in headers if k != b"x-accel-buffering"]
                headers.append((b"x-accel-buffering", b"no"))
                if not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-cache"))
                await ex.start(status, _cors((status, b"", headers), ticket.origin)[2])
                await self._relay(conn, ex, ticket.closer, KEEPALIVE_COMMENT, ticket)
                await ex.end()
                return
            # JSON answers and 202s are mostly small: relay them whole, with their length.
            try:
                payload = await _unless_gone(ex, conn.read_whole())
            except ClientGone:
                status = CLIENT_GONE
                return
            except OSError as exc:
                answer = _bad_gateway(upstream.server, exc)
            else:
                if payload is None:
                    status = await self._stream_body(conn, ex, ticket, headers)
                    return
                self._learn(ticket, payload)
                answer = (conn.status, payload, headers)
            status = answer[0]
            await _send_reply(ex, _cors(answer, ticket.origin))  # still in flight: a drain waits for this
        finally:
            conn.release()  # pools it if the answer is complete, else closes it
            self.finish(ticket, status)

    def _failover(self, ticket: Ticket) -> bool:
        """Move a request outside any session off a replica no connection could be made to (taken
        out of rotation) onto another healthy one; False when there is none (then 502)."""
        old = ticket.target
        if old is None or ticket.session_id or not self.router.suspend(old):
            return False
        new = self.router.pick(old.upstream.server)
        closer = self.router.enter(new) if new is not None and new is not old else None
        if new is None or closer is None:
            return False
        self.router.leave(old)
        host = b"\r\nhost: %s\r\n"
        ticket.request = ticket.request.replace(
            host % old.upstream.authority.encode(), host % new.upstream.authority.encode(), 1
        )
        ticket.target, ticket.upstream, ticket.closer = new, new.upstream, closer
        return True

    def whole_answer(self, ticket: Ticket, conn: Connection) -> Reply:
        """The answer to relay for a complete upstream answer that is not an event stream."""
        body = conn.take_body()
        self._learn(ticket, body)
        return _cors((conn.status, body, self._relayed(ticket, conn)), ticket.origin)

    def finish(self, ticket: Ticket, status: int) -> None:
        """The ticket's request has ended: no longer in flight; counted in the usage. Idempotent."""
        upstream, target = ticket.upstream, ticket.target
        if upstream is None or target is None or ticket.closer is None:
            return
        ticket.closer = None
        now = time.monotonic()
        self.router.leave(target, ticket.session, now)
        self.usage.count(ticket.caller, upstream.server, status, now - ticket.started)
        if self.router.splits and ticket.method == "POST":  # a canary is being judged
            self.router.observe(target, status, ticket.rpc_error, now - ticket.started)

    def _asleep_access(self, server: str) -> tuple[str, ...]:
        """An asleep server's access (no upstream names it), so the key is checked before it wakes."""
        if self.waker is not None and server in self.waker.asleep:
            return self.waker.access(server)
        return ("all",)

    def _preflight(self, origin: str, asked: str) -> Reply:
        """Answer a browser's CORS preflight: allowed origins need no key for it."""
        if not self.gatekeeper.origin_allowed(origin):
            return _json(403, {"error": f"origin {origin!r} is not allowed"})
        return (
            204,
            b"",
            _encode(
                {
                    "Access-Control-Allow-Origin": origin,
                    "Vary": "Origin",
                    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                    "Access-Control-Allow-Headers": asked or ALLOWED_HEADERS,
                    "Access-Control-Max-Age": "600",
                }
            ),
        )

    def _route(self, server: str, ticket: Ticket, body: bytes) -> Target | Reply:
        """The target for the ticket (its session's, when it carries one; the one that minted the
        request state it carries back; else the least busy replica), or the answer.

        A session id the proxy does not hold — never issued through it, ended, expired, retired,
        or issued to another key — answers 404, which tells the client to initialize again.
        """
        if ticket.session_id:
            session = ticket.session = self.router.session(ticket.session_id)
            if session is None or session.server != server or session.key_id != ticket.caller.key_id:
                return _session_gone()
            target = self.router.target_of(session)
            return target if target is not None else _session_gone()
        if REQUEST_STATE in body:  # a stateless-era retry: back to the replica that minted its state
            pinned = self._pinned(server, body)
            if pinned is not None:
                return pinned if self._admits(ticket, pinned) else _not_for(ticket, server)
        target = self.router.pick(server)
        if target is not None:
            return target if self._admits(ticket, target) else _not_for(ticket, server)
        if server in self.router.known:
            return _json(
                503,
                {"error": f"server {server!r} has no healthy upstream right now"},
                {"Retry-After": RETRY_AFTER_SECONDS},
            )
        return _json(404, {"error": f"no server named {server!r}"})

    def _admits(self, ticket: Ticket, target: Target) -> bool:
        """Whether the target's `access` lets the ticket's key in: it was admitted under another (its
        server was not live yet, or a deploy changed it while the body came)."""
        access = target.upstream.access
        return access == ticket.access or self.gatekeeper.reaches(
            ticket.caller, target.upstream.server, access
        )

    def _pinned(self, server: str, body: bytes) -> Target | None:
        """The replica that minted the request state a request carries back, if it still serves."""
        group = self.router.groups.get(server)
        if group is None or (len(group.targets) < 2 and server not in self.router.splits):
            return None  # one replica and no canary: nothing to choose
        state = request_state(body, "params")
        target = self.router.pinned(server, state) if state else None
        return target if target is not None and target.upstream.server == server else None

    def _learn(self, ticket: Ticket, body: bytes) -> None:
        """Remember which replica minted the request state an answer carries (a server with replicas)."""
        target = ticket.target
        if self.router.splits and target is not None and not ticket.rpc_error:
            ticket.rpc_error = self._canary_failed(target, body)
        if target is None or REQUEST_STATE not in body or ticket.session_id:
            return
        server = target.upstream.server
        group = self.router.groups.get(server)
        if group is None or (len(group.targets) < 2 and server not in self.router.splits):
            return
        for line in body.splitlines() if body.lstrip()[:1] != b"{" else (body,):
            state = request_state(line.removeprefix(b"data:"), "result")
            if state:
                self.router.pin(state, target.container_id)

    def _canary_failed(self, target: Target, body: bytes) -> bool:
        """Whether an answer of a canary release carries a JSON-RPC error (parsed on canaries only:
        the stable release's answers are never read)."""
        split = self.router.splits.get(target.upstream.server)
        return split is not None and split.canary.release == target.upstream.release and rpc_failed(body)

    @staticmethod
    def _request(ex: Exchange, upstream: Upstream, fields: list[bytes], body: bytes) -> bytes:
        """The upstream request: request line, Host, the forwarded headers, length and body."""
        method, rest, query = ex.method, ex.rest, ex.query
        target = (upstream.path + "/" + quote(rest, safe=PATH_SAFE) if rest else upstream.path) or "/"
        if upstream.remote is not None:  # its own headers, never a client's of the same names
            names = upstream.remote.names
            fields = [upstream.remote.headers, *(f for f in fields if f.split(b":", 1)[0] not in names)]
        fields.append(
            b"\r\n" if not body and method in NO_BODY_METHODS else b"content-length: %d\r\n\r\n" % len(body)
        )
        start = f"{method} {target}".encode() + (b"?" + query if query else b"")
        host = f" HTTP/1.1\r\nhost: {upstream.authority}\r\n".encode()
        return b"".join((start, host, *fields, body))

    def _relayed(self, ticket: Ticket, conn: Connection) -> Headers:
        """The answer's headers to relay; a session the answer opens or ends is recorded."""
        headers: Headers = []
        issued = kind = b""
        for name, value in conn.headers:
            if name in NOT_RELAYED:
                continue
            if name == SESSION_HEADER:
                if not SESSION_ID.fullmatch(value):
                    continue  # neither tracked nor relayed (MAX_SESSION_ID)
                issued = value
            elif name == b"content-type":
                kind = value
            headers.append((name, value))
        if not kind.startswith(MCP_TYPES) or b"," in kind:  # a browser takes a list's last type
            headers.extend(SANDBOX)
        if conn.status < 300:
            assert ticket.upstream is not None
            self._track_session(
                ticket.method, ticket.session_id, issued.decode("latin-1"), ticket.upstream, ticket.caller
            )
        elif conn.status == 404 and ticket.session is not None:
            self.router.end_session(ticket.session_id)  # the container no longer knows it
        return headers

    async def _stream_body(self, conn: Connection, ex: Exchange, ticket: Ticket, headers: Headers) -> int:
        """Relay a body too large to hold as it arrives, with the upstream's Content-Length when it
        gave one; cut the client's answer short if the upstream's is. Return the status to count."""
        length = conn.header(b"content-length")
        if length:
            headers.append((b"content-length", length))
        await ex.start(conn.status, _cors((conn.status, b"", headers), ticket.origin)[2])
        if await self._relay(conn, ex, None, b""):
            await ex.end()
            return conn.status
        await ex.abort()
        return 502 if conn.error is not None else conn.status  # else the client left: not the server's fault

    async def _relay(
        self,
        conn: Connection,
        ex: Exchange,
        closer: asyncio.Event | None,
        comment: bytes,
        ticket: Ticket | None = None,
    ) -> bool:
        """Relay a body as it arrives; write `comment` on a quiet stream at an event boundary; stop
        when `closer` is set or the client goes away. Return whether the upstream's body ended whole."""
        closing: asyncio.Future[Any] = asyncio.ensure_future((closer or asyncio.Event()).wait())
        gone: asyncio.Future[Any] = asyncio.ensure_future(ex.gone())
        reading: asyncio.Future[bytes] | None = None
        at_boundary = True
        try:
            while True:
                reading = reading or asyncio.ensure_future(conn.read_chunk())
                done, _ = await asyncio.wait(
                    {reading, closing, gone}, timeout=self.keepalive, return_when=asyncio.FIRST_COMPLETED
                )
                if reading in done:
                    chunk = reading.result()
                    reading = None
                    if not chunk:
                        break  # the body ended, or the upstream went away mid-stream
                    at_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n"))
                    if ticket is not None:
                        self._learn(ticket, chunk)
                    await ex.write(chunk)
                elif done:
                    break  # retired, or the client left
                elif at_boundary and comment:
                    await ex.write(comment)
        finally:
            closing.cancel()
            gone.cancel()
            if reading is not None:
                reading.cancel()
        return conn.complete

    def _track_session(
        self, method: str, session_id: str, issued: str, upstream: Upstream, caller: Caller
    ) -> None:
        if method == "DELETE" and session_id:
            self.router.end_session(session_id)
        elif issued and not session_id and self.router.session(issued) is None:
            self.router.open_session(issued, upstream, caller.key_id)


async def _unless_gone(ex: Exchange, waiting: Coroutine[Any, Any, T]) -> T:
    """Await `waiting`, unless the client goes away first: then cancel it (the pool closes the
    upstream connection it waited on) and raise ClientGone."""
    work: asyncio.Future[T] = asyncio.ensure_future(waiting)
    gone: asyncio.Future[None] = asyncio.ensure_future(ex.gone())
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
    if work.cancelled():
        raise ClientGone()
    return work.result()


def _not_for(ticket: Ticket, server: str) -> Reply:
    """The 403 for a key whose project the routed release's `access` leaves out (access.py's words)."""
    project = ticket.caller.project
    name = project.name if project is not None else ""
    return _cors(_json(403, {"error": f"project {name!r} may not use server {server!r}"}), ticket.origin)


def request_state(text: bytes, member: str) -> str:
    """The `requestState` of a JSON-RPC message's `params` or `result` ("" if it has none)."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):  # nested past the parser's depth
        return ""
    part = message.get(member) if isinstance(message, dict) else None
    state = part.get("requestState") if isinstance(part, dict) else None
    return state if isinstance(state, str) and 0 < len(state) <= MAX_REQUEST_STATE else ""


def is_stream(conn: Connection) -> bool:
    """Whether the upstream's answer is an event stream (relayed as it arrives)."""
    return b"text/event-stream" in conn.header(b"content-type")


def too_large(limit: int) -> Reply:
    """The answer to a request body over `limit` bytes."""
    return _json(413, {"error": f"request body over {limit} bytes"})


async def _send_reply(ex: Exchange, answer: Reply) -> None:
    await ex.answer(*answer)


def _cors(answer: Reply, origin: str) -> Reply:
    """Let an allowed browser origin read the answer and the session header."""
    if origin:
        answer[2].extend(
            (
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", EXPOSED_HEADERS),
                (b"vary", b"Origin"),
            )
        )
    return answer


def _encode(headers: Mapping[str, str]) -> Headers:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def _json(
    status: int, content: object, headers: Mapping[str, str] | None = None, compact: bool = True
) -> Reply:
    """A JSON answer (compact as Starlette's JSONResponse renders it)."""
    body = json.dumps(content, ensure_ascii=False, separators=(",", ":") if compact else None).encode()
    return status, body, [*_encode(headers or {}), JSON_TYPE]


def _dot_segment(server: str, rest: str) -> Reply:
    path = f"/mcp/{server}/{rest}" if rest else f"/mcp/{server}"
    return _json(
        400,
        {
            "error": f"path {path!r} is refused: a dot segment ('.' or '..', also percent-encoded, "
            "double-encoded or written with backslashes) may not appear in an /mcp/ path"
        },
    )


def _session_gone() -> Reply:
    return _json(
        404,
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32001, "message": "session not found; send a new initialize"},
        },
        compact=False,
    )


def _bad_gateway(server: str, exc: BaseException) -> Reply:
    """A 502 naming the server; what went wrong when the upstream spoke badly (our own words)."""
    if isinstance(exc, UpstreamRefused):
        why = f"was not connected to: {exc}"
    elif isinstance(exc, UpstreamUnreachable):  # the cause's name only: not the container's address
        why = f"is unreachable: {(exc.__cause__ or exc).__class__.__name__}"
    elif isinstance(exc, UpstreamError):
        why = f"answered badly: {exc}"
    else:
        why = f"is unreachable: {exc.__class__.__name__}"
    return _json(
        502,
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": -32603,
                "message": f"server {server!r} {why}",
            },
        },
        compact=False,
    )
