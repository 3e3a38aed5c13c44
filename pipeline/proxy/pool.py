"""A small HTTP/1.1 client for the proxy: pooled keep-alive connections to upstreams, nothing else.

It sends a request head and body in one write and parses the answer with httptools, so a small
JSON answer costs one write, one read and no per-request objects beyond the connection's own
state. Bodies are handed over whole (`read_whole`) or as they arrive (`read_chunk`: event streams,
and answers too large to hold). A connection goes back to its pool only after a complete answer it
may reuse.

What an upstream sends is bounded: an answer's head (status line and headers) over the pool's
`max_head` bytes fails the answer with an UpstreamError, before httptools has gathered more than
one read past it; past PAUSE_BYTES of unread body, reading from the upstream pauses until the
proxy relays what it holds, so a large answer streams through in bounded memory.

Instead of awaiting, a caller may set `Connection.listener`: it is then called (from the
parser's callbacks) when the answer's head is in, when the answer is complete and when the
connection ends or fails, and when the unread body reaches PAUSE_BYTES (`held`), and reads the
state it needs (`head_done`, `complete`, `held`, `error`) there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

import httptools

from pipeline import remote
from pipeline.config.settings import DEFAULT_MAX_UPSTREAM_HEADER
from pipeline.errors import RemoteRefused, UpstreamError, UpstreamRefused, UpstreamUnreachable
from pipeline.remote import Dialer

IDLE_SECONDS = 4.0  # below the 5 s keep-alive of uvicorn and Node, so the server never closes first
PAUSE_BYTES = 256 * 1024  # unread body above this pauses reading from the upstream (the answer is held)
MAX_HEAD_BYTES = DEFAULT_MAX_UPSTREAM_HEADER
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one request at a time."""

    def __init__(self, pool: Pool, key: tuple[str, int]) -> None:
        self._pool = pool
        self.key = key
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.held = False  # reading paused with PAUSE_BYTES of the body unread: relay with `read_chunk`
        self._head_bytes = 0  # of the answer being read, until its head is done
        self._head_only = False
        self._busy = False
        self._keep_alive = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.closed = False
        self.idle_since = 0.0
        self.error: BaseException | None = None
        self.listener: Callable[[], None] | None = None

    # asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.complete or not self._busy:
            self._fail(UpstreamError("the upstream sent data outside an answer"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad HTTP from the upstream: {exc}"))
            return
        if not self.head_done:  # all of this read was head: httptools holds it until the head ends
            self._head_bytes += len(data)
            if self._head_bytes > self._pool.max_head:
                limit = self._pool.max_head
                self._fail(UpstreamError(f"its answer's head is over {limit} bytes (max_upstream_header)"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        if not self.complete and self.error is None:
            if self.head_done and self._until_eof():
                self.complete = True  # a body without length or chunks ends with the connection
            else:
                self.error = exc or UpstreamError("the upstream closed the connection")
        self._wake()

    # httptools callbacks ------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self.headers = []  # an interim answer (100 Continue, 103 Early Hints): wait for the real one
            return
        self.status = status
        self.head_done = True
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the answer ends
        if self._head_only:
            self.complete = True  # the answer to HEAD has no body, whatever its Content-Length says
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > PAUSE_BYTES and not self.held:
            self.held = True  # held: relayed as a stream, not whole
            assert self._transport is not None
            self._transport.pause_reading()
            self._wake()
        elif self.listener is None:  # a listener reads the body once it is complete, or held
            self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self._wake()

    # the proxy's side ---------------------------------------------------------------------------
    def send(self, data: bytes, head_only: bool) -> None:
        """Write one whole request (head and body)."""
        assert self._transport is not None
        self._head_only = head_only
        self._busy = True
        self._transport.write(data)

    @property
    def unanswered(self) -> bool:
        """Whether not one byte of an answer arrived on this connection."""
        return self._head_bytes == 0 and not self.head_done

    async def read_head(self) -> None:
        """Wait for the status line and headers; raise if the upstream failed first."""
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def read_whole(self) -> bytes | None:
        """Wait for the whole body and return it; None once it is too large to hold (then relay it
        with `read_chunk`)."""
        while not self.complete:
            if self.error is not None:
                raise self.error
            if self.held:
                return None
            await self._wait()
        return self.take_body()

    def take_body(self) -> bytes:
        """The body bytes that arrived and were not read yet (all of it once `complete`)."""
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        return body

    async def read_chunk(self) -> bytes:
        """Return the body bytes that arrived since the last call; b"" once the body ended or broke.

        Reading from the upstream pauses while more than PAUSE_BYTES are unread.
        """
        while not self._chunks:
            if self.complete or self.error is not None:
                return b""
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self.held and self._transport is not None:
            self.held = False
            self._transport.resume_reading()
        return data

    def header(self, name: bytes) -> bytes:
        """The first value of a response header (lower-case `name`), or b""."""
        for key, value in self.headers:
            if key == name:
                return value
        return b""

    def release(self) -> None:
        """Done with this answer: pool the connection if it may carry another, else close it.
        Once only: a second call does nothing."""
        if not self._busy:
            return
        self.listener = None
        reusable = self.complete and self._keep_alive and not self._head_only
        if reusable and not self.closed and not self.held:  # paused: a stream's reads were held
            self.status = 0
            self.headers = []
            self.head_done = self.complete = self._busy = False
            self._chunks.clear()
            self._buffered = self._head_bytes = 0
            self._pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        """Close the connection (a pending read ends with an error)."""
        self._busy = False
        if self._transport is not None and not self.closed:
            self._transport.close()

    # internals ----------------------------------------------------------------------------------
    def _wait(self) -> asyncio.Future[None]:
        """A future that the next parser event or the connection's end resolves (awaited directly:
        no coroutine frame of its own)."""
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def _wake(self) -> None:
        if self.listener is not None:
            self.listener()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None and not self.complete:
            self.error = error
        self.close()
        self._wake()

    def _until_eof(self) -> bool:
        """Whether the answer's body is delimited by the end of the connection."""
        if self.status in (204, 304) or self.header(b"content-length"):
            return False
        return b"chunked" not in self.header(b"transfer-encoding").lower()


class Pool:
    """Idle keep-alive connections per (host, port); a new one is opened when none is idle."""

    def __init__(
        self, connect_timeout: float, max_head: int = MAX_HEAD_BYTES, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.max_head = max_head  # an answer's status line and headers at most
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._open: set[Connection] = set()

    async def request(
        self, host: str, port: int, method: str, data: bytes, relayed: bool = False
    ) -> Connection:
        """Send `data` (a whole request) and return the connection once the answer's head is in.
        `relayed`: `host` is the Swarm relay, whose reset of a new connection before any answer
        means it could not reach the replica (UpstreamUnreachable: nothing was sent)."""
        key = (host, port)
        conn = self.take(key)
        if conn is not None:
            conn.send(data, method == "HEAD")
            return await self.answer_to(conn, method, data)
        return await self._fresh(key, method, data, relayed)

    async def answer_to(self, conn: Connection, method: str, data: bytes) -> Connection:
        """Wait for the head of the answer to `data`, already sent on the pooled `conn`.

        A reused connection that fails before any answer is retried once on a new connection when
        the method is idempotent (RFC 9112, 9.3.1), as aiohttp does.
        """
        try:
            await conn.read_head()
            return conn
        except OSError:
            conn.close()
            if method not in IDEMPOTENT:
                raise
        except BaseException:
            conn.close()
            raise
        return await self._fresh(conn.key, method, data)

    def take(self, key: tuple[str, int]) -> Connection | None:
        """An idle connection to `key` (host, port) that is still fresh, or None."""
        idle = self._idle.get(key)
        if not idle:
            return None
        limit = time.monotonic() - self.idle_seconds
        while idle:
            conn = idle.pop()  # the most recently used first
            if conn.idle_since >= limit and not conn.closed:
                return conn
            conn.close()
        return None

    def put(self, conn: Connection) -> None:
        """Keep a connection that finished an answer for the next request to the same place."""
        now = time.monotonic()
        conn.idle_since = now
        idle = self._idle.setdefault(conn.key, [])
        idle.append(conn)
        if idle[0].idle_since < now - self.idle_seconds:
            idle.pop(0).close()

    def forget(self, conn: Connection) -> None:
        """Drop a closed connection."""
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        """Close every connection, idle or busy."""
        for conn in list(self._open):
            conn.close()
        self._idle.clear()

    async def _fresh(
        self, key: tuple[str, int], method: str, data: bytes, relayed: bool = False
    ) -> Connection:
        conn = await self._connect(key)
        try:
            conn.send(data, method == "HEAD")
            await conn.read_head()
        except ConnectionResetError as exc:
            conn.close()
            if relayed and conn.unanswered:
                raise UpstreamUnreachable(f"the relay could not reach the replica ({exc})") from exc
            raise
        except BaseException:
            conn.close()
            raise
        return conn

    async def _connect(self, key: tuple[str, int]) -> Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(lambda: Connection(self, key), *key)
        except OSError as exc:  # TimeoutError too: nothing was sent
            raise UpstreamUnreachable(f"{exc.__class__.__name__}: {exc}") from exc
        self._open.add(conn)
        return conn


class RemotePool(Pool):
    """The pool for remote servers: each new connection resolves the host and checks the address
    again (pipeline/remote.py), connects to that address, and verifies TLS against the name. Kept
    apart from `Pool`, whose containers are reached at an address the provider gave them."""

    def __init__(
        self, dialer: Callable[[], Dialer], tls: bool, connect_timeout: float, max_head: int = MAX_HEAD_BYTES
    ) -> None:
        super().__init__(connect_timeout, max_head)
        self.dialer = dialer  # asked per connection: a reload's CA and allowed hosts apply at once
        self.tls = tls

    async def _connect(self, key: tuple[str, int]) -> Connection:
        dialer = self.dialer()
        try:
            async with asyncio.timeout(max(self.connect_timeout, dialer.connect_timeout)):
                conn = await remote.open_connection(dialer, *key, self.tls, lambda: Connection(self, key))
        except RemoteRefused as exc:
            raise UpstreamRefused(str(exc)) from exc
        assert isinstance(conn, Connection)
        self._open.add(conn)
        return conn
