"""The HTTP front: uvicorn's httptools protocol, with `/mcp/` requests served straight from the parser.

uvicorn turns each request into an ASGI cycle: a scope, a task running the app's middleware and
routing, a message dict per send and two writes per answer. For the proxy's hot path that cycle
cost more than the proxying itself (bench/README.md), so `FrontProtocol` hands a `/mcp/<server>`
request for an MCP method (GET, POST, DELETE, OPTIONS) to the proxy as a `ProxyCycle`: the
parser's own headers and body in, one write per whole answer out. Every other request (the
pages, the hooks, HEAD, an upgrade, a path outside `/mcp/<server>`), and every request before the
lifespan has set `App.proxy`, goes through uvicorn's ASGI cycle unchanged, where app.py's routes
serve `/mcp/` too.

Most proxy requests need no task either: once the body is in (`on_message_complete`),
`ProxyCycle.begin` runs the proxy's checks and routing, writes the request on an idle pooled
upstream connection and answers from that connection's parser callbacks when its answer is
complete. Both writes are deferred with `call_soon`, so the writes of all requests that arrived
in one turn of the loop go out together and the upstream and the client wake up less often
(measured here: ~40 µs of CPU per request instead of ~49 µs writing at once). Whatever has to
wait on more than the upstream's answer — a body larger than one read, Expect: 100-continue, a
pipelined request, a new upstream connection, an event stream, an upstream failure — continues
in a task with the proxy's coroutine (`Proxy.serve` or `Proxy.forward`), as the ASGI way does.

`ProxyCycle` is a uvicorn `RequestResponseCycle`, so uvicorn's connection handling (the keep-alive
timer, pipelined requests, read and write flow control, disconnects, a graceful shutdown waiting
for running requests) works for it unchanged. That ties this module to uvicorn's protocol class;
pyproject.toml pins the uvicorn minor version it was written against, and the proxy tests run
through it as well as through ASGI.

Before any of that, `FrontProtocol` bounds what a client may make the process hold, for every
request whichever way it then takes (deploy.yaml's `proxy:` section): a request target over
`max_url` bytes gets 414, header lines over `max_header` 431 (counted only when the reads that
carried the head were larger than that, so a usual request pays one addition; and bounded per read
while a head is incomplete, since httptools gathers a header line across reads before it hands it
over); a head not complete within `header_timeout` of its first byte (or of the
connection's) and a body not complete within `body_timeout` of its head get 408 and are closed;
a client that reads nothing of its answer for `send_timeout` while the proxy waits to write is
dropped; past `max_connections` open connections a new one gets 503 and is closed. Whatever the
route, a request's body (with its chunk trailers, which httptools hands over as headers) may not
run past `max_body` plus a head and one read: then 413 and close. The timeouts cost the
hot path no timer: one `Watchdog` per server sweeps the connections a few times per timeout and
reads the phase and start time each connection notes down (on a clock the sweep keeps).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import unquote

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from pipeline.config.settings import ProxyTimeouts
from pipeline.errors import BodyTooLarge, ClientGone, HeadTooLarge
from pipeline.proxy.aggregate import Aggregate
from pipeline.proxy.exchange import Headers, has_body, mcp_target
from pipeline.proxy.pool import Connection
from pipeline.proxy.relay import CLIENT_GONE, Proxy, Ticket, is_stream, too_large

FAST_METHODS = frozenset({b"GET", b"POST", b"DELETE", b"OPTIONS"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLOSE = b"connection: close\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"
LAST_CHUNK = b"0\r\n\r\n"
PLAIN_TEXT = (b"content-type", b"text/plain; charset=utf-8")
NO_SCOPE: Any = {"type": "http"}  # a ProxyCycle has no ASGI scope; uvicorn's code paths it takes read none
READ_BYTES = 256 * 1024  # the most one read hands the protocol (uvloop's and asyncio's buffers)
SWEEPS_PER_TIMEOUT = 4  # how often the watchdog looks, per shortest timeout
MAX_SWEEP_PERIOD = 1.0
MIN_SWEEP_PERIOD = 0.01
RETRY_AFTER = (b"retry-after", b"1")
AGGREGATE_TARGETS = frozenset({b"/mcp", b"/mcp/"})


class Phase(StrEnum):
    """What the proxy waits for from a client connection: nothing, a request's head, or its body."""

    IDLE = "idle"  # between requests (uvicorn's keep-alive timer), or answering
    HEAD = "head"
    BODY = "body"


IDLE, HEAD, BODY = Phase.IDLE, Phase.HEAD, Phase.BODY


class Front(Protocol):
    """What the protocol serves `/mcp/` with (app.py's App): `proxy` is set while it runs, else None;
    `aggregate` likewise serves `/mcp`."""

    proxy: Proxy | None
    aggregate: Aggregate | None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve every request the fast path leaves to ASGI."""


def config(app: Front, limits: ProxyTimeouts | None = None, **options: Any) -> uvicorn.Config:
    """A uvicorn Config serving the ASGI `app`, whose `/mcp/` requests `app.proxy` takes when set,
    holding every client to `limits` (deploy.yaml's `proxy:` section; its defaults when None)."""
    return uvicorn.Config(app, http=protocol_for(app, limits or ProxyTimeouts()), **options)


def protocol_for(front: Front, limits: ProxyTimeouts) -> type[FrontProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to `front` and `limits`."""
    bound = {
        "front": front,
        "limits": limits,
        "watchdog": Watchdog(limits),
        "max_url": limits.max_url,
        "max_head": limits.max_header,
        "head_guard": limits.max_header + limits.max_url + READ_BYTES,
        "body_guard": limits.max_body + limits.max_header + READ_BYTES,
    }
    return type("BoundFrontProtocol", (FrontProtocol,), bound)


class FrontProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, serving `/mcp/<server>` requests without an ASGI cycle."""

    front: Front
    limits: ProxyTimeouts
    watchdog: Watchdog
    max_url: int  # a request target's bytes at most (414)
    max_head: int  # a request's header bytes at most (431)
    head_guard: int  # bytes read while one head is incomplete at most: the caps, plus one read
    body_guard: int  # bytes read while one body is incomplete at most (its trailers too)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Take the connection, unless `max_connections` are open: then answer 503 and close."""
        super().connection_made(transport)  # type: ignore[arg-type]
        self.refusal: HeadTooLarge | None = None
        self.head_read = self.body_read = self.reading = 0
        self.stuck_since = 0.0  # when the watchdog first saw writes to this client paused
        if len(self.connections) > self.limits.max_connections:
            self.client_phase = IDLE
            self._refuse(503, f"over {self.limits.max_connections} open connections; retry", RETRY_AFTER)
            return
        self.watchdog.watch(self)
        self.client_phase, self.phase_since = HEAD, self.watchdog.now  # its first request is due

    def connection_lost(self, exc: Exception | None) -> None:
        """The client left: a proxy request still waiting on its upstream without a task lets go of it."""
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, ProxyCycle):
            cycle.client_left()

    def data_received(self, data: bytes) -> None:
        """Parse, then bound what httptools holds of a head that is still incomplete."""
        self.reading = size = len(data)
        HttpToolsProtocol.data_received(self, data)  # not super(): no proxy object per read
        phase = self.client_phase
        if phase is HEAD:
            self.head_read += size  # counts from the read the head began in: at most one read over
            if self.head_read > self.head_guard:
                self._refuse(431, f"request headers over {self.max_head} bytes")
        elif phase is BODY:
            self.body_read += size
            if self.body_read > self.body_guard:
                self._refuse(413, f"request body over {self.limits.max_body} bytes")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools refused; 414 or 431 when a limit refused it."""
        refusal, self.refusal = self.refusal, None
        if refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(refusal.status, str(refusal))

    def on_message_begin(self) -> None:
        """Start reading a request; its ASGI scope is built only if it takes the ASGI way."""
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.client_phase, self.phase_since = HEAD, self.watchdog.now
        self.head_read = 0

    def on_url(self, url: bytes) -> None:
        """Collect the request target, up to `max_url` bytes."""
        self.url += url
        if len(self.url) > self.max_url:
            raise self._refusing(HeadTooLarge(414, f"request target over {self.max_url} bytes"))

    def on_headers_complete(self) -> None:
        """Start the request: the proxy's fast path when it applies, else uvicorn's ASGI cycle."""
        # The head is at most the reads that carried it: count its header lines only past the cap.
        if self.head_read + self.reading > self.max_head and _size(self.headers) > self.max_head:
            raise self._refusing(HeadTooLarge(431, f"request headers over {self.max_head} bytes"))
        self.client_phase, self.phase_since = BODY, self.watchdog.now
        self.body_read = 0
        # An answer made while parsing (a 404, 401, 429, 413) armed the keep-alive timer; the next
        # request in the same read must not run under it (uvicorn disarms it only when data arrives).
        self._unset_keepalive_if_required()
        proxy = self.front.proxy
        method = self.parser.get_method()
        if (
            proxy is None
            or method not in FAST_METHODS
            or not self.url.startswith(b"/mcp/")
            or self.root_path
            or self.limit_concurrency is not None
            or self.parser.should_upgrade()
        ):
            if not self._aggregate(proxy, method):
                self._asgi()
            return
        raw, _, query = self.url.partition(b"?")
        if b"#" in self.url:
            self._asgi()  # a fragment: uvicorn's URL parser takes it apart
            return
        try:
            path = raw.decode("ascii")
        except UnicodeDecodeError:
            self._asgi()  # uvicorn answers it as it would any such path
            return
        target = mcp_target(unquote(path) if "%" in path else path)
        if target is None:
            if not self._aggregate(proxy, method):
                self._asgi()
            return
        server, rest = target
        if self.transport.is_closing():
            return  # an answer just closed the connection: a request after it cannot be answered
        version = self.parser.get_http_version()
        cycle = ProxyCycle(
            self,
            proxy,
            method.decode("ascii"),
            server,
            rest,
            query,
            version,
            keep_alive=version != "1.0" and self.parser.should_keep_alive(),
        )
        self._start(cycle)

    def _aggregate(self, proxy: Proxy | None, method: bytes) -> bool:
        """Take a request to the aggregate endpoint `/mcp` (or `/mcp/`) as an `AggregateCycle`, as
        `/mcp/<server>` requests are taken: False to leave it to ASGI. Only requests that missed the
        proxy's fast path get here, so that path pays nothing for it."""
        aggregate = self.front.aggregate
        if (
            aggregate is None
            or proxy is None
            or self.url not in AGGREGATE_TARGETS
            or method not in FAST_METHODS
            or self.root_path
            or self.limit_concurrency is not None
            or self.parser.should_upgrade()
        ):
            return False
        if self.transport.is_closing():
            return True  # an answer just closed the connection: a request after it cannot be answered
        version = self.parser.get_http_version()
        keep_alive = version != "1.0" and self.parser.should_keep_alive()
        method_name = method.decode("ascii")
        self._start(AggregateCycle(self, proxy, method_name, "", "", b"", version, keep_alive, aggregate))
        return True

    def _start(self, cycle: ProxyCycle) -> None:
        """Make `cycle` the connection's; begin it once its body is in (after the one before it)."""
        previous, self.cycle = self.cycle, cycle
        if previous is not None and not previous.response_complete:
            self.flow.pause_reading()  # pipelined: uvicorn starts it when the one before has answered
            self.pipeline.appendleft((cycle, self.app))
        elif self.expect_100_continue:
            self._start_asgi_task(cycle, self.app)  # its coroutine says 100 Continue when it reads
        else:
            cycle.waiting = True  # begun by on_message_complete, once the body is in

    def on_body(self, body: bytes) -> None:
        """Collect the body; one too large to wait for is read by the request's coroutine instead."""
        super().on_body(body)
        cycle = self.cycle
        if isinstance(cycle, ProxyCycle) and cycle.waiting and self.flow.read_paused:
            cycle.waiting = False
            self._start_asgi_task(cycle, self.app)

    def on_message_complete(self) -> None:
        """The request is all in: a waiting proxy request begins."""
        self.client_phase = IDLE
        super().on_message_complete()
        cycle = self.cycle
        if isinstance(cycle, ProxyCycle) and cycle.waiting:
            cycle.waiting = False
            cycle.begin()

    def _asgi(self) -> None:
        """Hand the request to uvicorn's ASGI cycle, with the scope uvicorn builds for it."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.expect_100_continue = url, expect
        self.headers.extend(headers)  # the scope holds this list
        super().on_headers_complete()

    def check_pace(self, now: float, watchdog: Watchdog) -> None:
        """Close the connection if the head or body the proxy waits for is overdue (408); drop it if
        the client has read nothing of its answer for `send_timeout`."""
        if self.transport.is_closing():
            return
        if not self.flow.write_paused:
            self.stuck_since = 0.0
        elif not self.stuck_since:
            self.stuck_since = now
        elif now - self.stuck_since > watchdog.send_timeout + watchdog.period:
            self.transport.abort()  # close() would wait to write what the client does not read
            return
        phase = self.client_phase
        if phase is IDLE:
            return
        if self.flow.read_paused:  # the proxy, not the client, holds the request back (pipelining)
            self.phase_since = now
            return
        timeout = watchdog.header_timeout if phase is HEAD else watchdog.body_timeout
        if now - self.phase_since > timeout + watchdog.period:  # `since` is up to a period early
            what = "headers" if phase is HEAD else "body"
            self._refuse(408, f"request {what} not received within {timeout:g}s")

    def _refusing(self, refusal: HeadTooLarge) -> HeadTooLarge:
        """Note the refusal that uvicorn's `send_400_response` sends once httptools stops."""
        self.refusal = refusal
        return refusal

    def _refuse(self, status: int, message: str, *extra: tuple[bytes, bytes]) -> None:
        """Answer the request being read with `status` and a JSON error, unless it has an answer
        already or another one is under way; then close."""
        phase, self.client_phase = self.client_phase, IDLE
        if self.transport.is_closing():
            return
        cycle = self.cycle  # while a body is read, the cycle is that request's; else the one before
        if cycle is None or (cycle.response_complete if phase is not BODY else not cycle.response_started):
            body = json.dumps({"error": message}).encode()
            fields = [STATUS_LINE[status], _encoded(self.server_state.default_headers)]
            fields.extend(b"%s: %s\r\n" % field for field in (*extra, (b"content-type", b"application/json")))
            fields.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            self.transport.write(b"".join(fields) + body)
        self.transport.close()
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # as uvicorn's connection_lost will: write nothing more
            cycle.message_event.set()


class Watchdog:
    """One timer per server for the client timeouts: sweeps the open connections a few times per
    timeout, closing those whose head or body is overdue; runs only while connections are open."""

    def __init__(self, limits: ProxyTimeouts) -> None:
        self.header_timeout = limits.header_timeout
        self.body_timeout = limits.body_timeout
        self.send_timeout = limits.send_timeout
        shortest = min(limits.header_timeout, limits.body_timeout, limits.send_timeout)
        self.period = min(max(shortest / SWEEPS_PER_TIMEOUT, MIN_SWEEP_PERIOD), MAX_SWEEP_PERIOD)
        self.now = 0.0  # the loop's clock at the last sweep: what connections note their phase's start with
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, protocol: FrontProtocol) -> None:
        """Make sure the sweeps run over `protocol`'s server's connections."""
        if self._timer is None:
            loop = protocol.loop
            self.now = loop.time()
            self._timer = loop.call_later(self.period, self._sweep, loop, protocol.connections)

    def _sweep(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        now = self.now = loop.time()
        for connection in list(connections):
            if isinstance(connection, FrontProtocol):
                connection.check_pace(now, self)
        self._timer = loop.call_later(self.period, self._sweep, loop, connections) if connections else None


class ProxyCycle(RequestResponseCycle):
    """One `/mcp/` request as the proxy's Exchange, answered on the connection's transport."""

    def __init__(
        self,
        protocol: FrontProtocol,
        proxy: Proxy,
        method: str,
        server: str,
        rest: str,
        query: bytes,
        version: str,
        keep_alive: bool,
    ) -> None:
        super().__init__(
            scope=NO_SCOPE,
            transport=protocol.transport,
            flow=protocol.flow,
            logger=protocol.logger,
            access_logger=protocol.access_logger,
            access_log=protocol.access_log,
            default_headers=protocol.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=protocol.expect_100_continue,
            keep_alive=keep_alive,
            on_response=protocol.on_response_complete,
        )
        self.proxy = proxy
        self.method = method
        self.server = server
        self.rest = rest
        self.query = query
        self.headers: Headers = protocol.headers
        self.target = protocol.url
        self.client = protocol.client
        self.version = version
        self.waiting = False  # for its body, to begin without a task
        self.ticket: Ticket | None = None
        self.conn: Connection | None = None
        self.sent = False  # the request was written to `conn`
        self._loop = protocol.loop
        self._tasks = protocol.tasks

    async def run_asgi(self, app: Any) -> None:
        """Serve the request with the proxy's coroutine (uvicorn starts a cycle's task with this)."""
        await self._guarded(self.proxy.serve(self))

    def begin(self) -> None:
        """Serve the request, its body all in, without a task where nothing has to wait but the
        upstream: answer at once, or send it on a pooled connection and answer from that
        connection's callbacks. What has to wait on more (a new connection, an event stream, an
        upstream failure) continues in a task with the proxy's coroutine."""
        proxy = self.proxy
        try:
            admitted = proxy.admit(self)
            if not isinstance(admitted, Ticket):
                self._whole(*admitted)
                return
            if len(self.body) > proxy.max_body:
                self._whole(*too_large(proxy.max_body))
                return
            self.ticket = admitted
            refused = proxy.route(self, admitted, bytes(self.body))
            if refused is not None:
                self._whole(*refused)
                return
            conn = proxy.idle_connection(admitted)
            if conn is None:
                self._spawn(proxy.forward(self, admitted))
                return
            self.conn = conn
            conn.listener = self._upstream_event
            self._loop.call_soon(self._send)  # batched with the loop's other writes
        except Exception as exc:
            self._crash(exc)

    def client_left(self) -> None:
        """The client went away: if the answer is still awaited on a pooled connection's callbacks
        (no task watches the client then), close that connection and end the request, so that a
        server that never answers holds neither."""
        conn, ticket = self.conn, self.ticket
        if conn is None or ticket is None or conn.listener != self._upstream_event:
            return  # not waiting on callbacks: a task has the request, or it ended (and its pooled
            # connection may carry another client's request by now)
        conn.listener = None
        self.conn = None  # a `_send` still due sends nothing
        if self.sent:
            conn.release()  # closes it: its answer is not complete
        else:
            conn.close()
        self.proxy.finish(ticket, CLIENT_GONE)

    def _send(self) -> None:
        conn, ticket = self.conn, self.ticket
        if conn is not None and ticket is not None:  # else the request went to a task meanwhile
            self.sent = True
            conn.send(ticket.request, head_only=False)

    def _upstream_event(self) -> None:
        """The pooled connection moved on: relay a whole answer, or hand the rest to a task."""
        conn, ticket = self.conn, self.ticket
        assert conn is not None and ticket is not None
        try:
            if not self.sent:  # the upstream closed the idle connection first: use a new one
                conn.listener = None
                self.conn = None
                conn.release()
                self._spawn(self.proxy.forward(self, ticket))
            elif conn.complete:
                conn.listener = None
                self._loop.call_soon(self._relay_whole)  # batched with the loop's other writes
            elif conn.error is not None or (conn.head_done and (conn.held or is_stream(conn))):
                conn.listener = None
                self._spawn(self.proxy.forward(self, ticket, sent=conn))
        except Exception as exc:
            self._crash(exc)

    def _relay_whole(self) -> None:
        """Write the upstream's whole answer; then the request is no longer in flight."""
        conn, ticket = self.conn, self.ticket
        assert conn is not None and ticket is not None
        try:
            answer = self.proxy.whole_answer(ticket, conn)
            self._whole(*answer)
            conn.release()
            self.proxy.finish(ticket, answer[0])
        except Exception as exc:
            self._crash(exc)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task that uvicorn's graceful shutdown waits for."""
        task = self._loop.create_task(self._guarded(work))
        task.add_done_callback(self._spawned_done)
        self._tasks.add(task)

    def _spawned_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():  # perhaps before `_guarded` ran (shutdown): still leave and answer
            self._crash(asyncio.CancelledError())

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except BaseException as exc:
            self._crash(exc)
            if not isinstance(exc, Exception):
                raise

    def _crash(self, exc: BaseException) -> None:
        """A bug (or a cancellation) ended the request: answer 500 if nothing was sent yet."""
        if self.conn is not None:
            self.conn.release()  # closes it unless its answer was complete; no-op once released
        if self.ticket is not None:
            self.proxy.finish(self.ticket, 500)  # no-op once finished
        if isinstance(exc, Exception):
            self.logger.error("Exception in the proxy", exc_info=exc)
        if not self.response_started and not self.disconnected:
            self.keep_alive = False
            self._whole(500, b"Internal Server Error", [PLAIN_TEXT])
        else:
            self.transport.close()

    # Exchange ---------------------------------------------------------------------------------
    async def read_body(self, limit: int) -> bytes:
        """The whole request body, as the parser collected it."""
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(CONTINUE)
            self.waiting_for_100_continue = False
        while self.more_body and not self.disconnected and len(self.body) <= limit:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected:
            raise ClientGone()
        if len(self.body) > limit:
            self.keep_alive = False  # the rest of the body is not read: this connection cannot go on
            raise BodyTooLarge(limit)
        self.flow.resume_reading()  # paused while the body piled up; a disconnect must still be read
        return bytes(self.body)

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        """Send a whole answer in one write."""
        if await self._writable():
            self._whole(status, body, headers)

    async def start(self, status: int, headers: Headers) -> None:
        """Start a streamed answer: with the Content-Length in `headers`, else chunked."""
        if not await self._writable():
            return
        self.chunked_encoding = has_body(status) and not any(name == b"content-length" for name, _ in headers)
        head = self._head(status, headers)
        self.transport.write(head + CHUNKED + b"\r\n" if self.chunked_encoding else head + b"\r\n")

    async def write(self, chunk: bytes) -> None:
        """Send part of a streamed answer (as one chunk when chunked)."""
        if chunk and await self._writable():
            self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self.chunked_encoding else chunk)

    async def end(self) -> None:
        """End a streamed answer."""
        if await self._writable():
            if self.chunked_encoding:
                self.transport.write(LAST_CHUNK)
            self._complete()

    async def abort(self) -> None:
        """Cut a streamed answer short: close the connection before its length or last chunk."""
        if not self.disconnected and not self.response_complete:
            self.keep_alive = False
            self._complete()

    async def gone(self) -> None:
        """Return once the client has gone away."""
        self.flow.resume_reading()  # else the connection's end is never read
        while not self.disconnected:
            await self.message_event.wait()
            self.message_event.clear()

    # internals --------------------------------------------------------------------------------
    async def _writable(self) -> bool:
        """Wait while the client reads slower than we write; False once it has gone."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        return not self.disconnected and not self.response_complete

    def _whole(self, status: int, body: bytes, headers: Headers) -> None:
        """Write a whole answer now, with its length (the transport buffers what the client has
        not read yet)."""
        if self.disconnected or self.response_complete:
            return
        length = (b"content-length: %d\r\n" % len(body)) if has_body(status) else b""
        self.transport.write(b"".join((self._head(status, headers), length, b"\r\n", body)))
        self._complete()

    def _head(self, status: int, headers: Headers) -> bytes:
        """The status line and headers, without the blank line that ends them.

        Header names and values come from the proxy's own constants or from headers that httptools
        parsed (it refuses CR, LF and NUL in them), so unlike uvicorn's `send` this does not check
        them again.
        """
        self.response_started = True
        self.waiting_for_100_continue = False
        if self.access_log:
            client = self.client
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                f"{client[0]}:{client[1]}" if client else "-",
                self.method,
                self.target.decode("latin-1"),
                self.version,
                status,
            )
        fields = [STATUS_LINE.get(status) or b"HTTP/1.1 %d \r\n" % status, _encoded(self.default_headers)]
        fields.extend([b"%s: %s\r\n" % field for field in headers])
        if not self.keep_alive:
            fields.append(CLOSE)
        return b"".join(fields)

    def _complete(self) -> None:
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        on_response, self.on_response = self.on_response, _nothing  # once, and let go of the protocol
        on_response()


def _nothing() -> None:
    pass


class AggregateCycle(ProxyCycle):
    """One request to the aggregate endpoint `/mcp`, served by its coroutine on the connection's
    transport (one write per whole answer, as a `/mcp/<server>` request is answered)."""

    def __init__(
        self,
        protocol: FrontProtocol,
        proxy: Proxy,
        method: str,
        server: str,
        rest: str,
        query: bytes,
        version: str,
        keep_alive: bool,
        aggregate: Aggregate,
    ) -> None:
        super().__init__(protocol, proxy, method, server, rest, query, version, keep_alive)
        self.aggregate = aggregate

    async def run_asgi(self, app: Any) -> None:
        """Serve the request with the aggregate's coroutine."""
        await self._guarded(self.aggregate.serve(self))

    def begin(self) -> None:
        """Serve the request, its body all in: a stateless-era tools/call to a stateless-era server as
        `/mcp/<server>` serves one, with its name and body rewritten for that server (no task); any
        other request with the aggregate's coroutine, in a task."""
        try:
            quick = self.aggregate.quick_call(self, bytes(self.body)) if not self.more_body else None
        except Exception as exc:
            self._crash(exc)
            return
        if quick is None:
            self._spawn(self.aggregate.serve(self))
            return
        self.server, self.headers, body = quick
        self.body = bytearray(body)
        super().begin()


def _size(headers: Headers) -> int:
    """The bytes of header lines as they were sent (name, ": ", value, CRLF)."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


_default_fields: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")


def _encoded(headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (server, date) as header lines; uvicorn replaces the list each
    second with a new date, so the lines are made once per list."""
    global _default_fields
    if _default_fields[0] is not headers:
        _default_fields = (headers, b"".join(b"%s: %s\r\n" % field for field in headers))
    return _default_fields[1]
