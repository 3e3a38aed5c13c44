"""A small HTTP/1.1 server on an asyncio Protocol: just what streamable HTTP needs, standard library only.

The bridge runs inside a server's image with whatever `python3` that image has, so it cannot rely
on uvicorn or starlette being importable there. Requests are bounded (head, body, header count,
time to arrive); answers are a whole body or a chunked event stream; connections are kept alive
and pipelined requests are answered in order. Bytes are parsed as they arrive (no stream reader,
no task per request): a handler may answer at once, later from a callback (`Reply.answer`), or
return a coroutine, which runs as a task.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 4 * 1024 * 1024
READ_CHUNK = 64 * 1024  # bytes read from a socket at once
MAX_CHUNK_LINE = 1024  # bytes of a chunk-size line
HEAD_TIMEOUT = 30.0  # seconds a client may take to send a request head or body
IDLE_TIMEOUT = 75.0  # seconds a kept-alive connection may sit between requests
REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    """A request that cannot be read; the connection answers 400 (or 413) and closes."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """One HTTP request: method, path without query, lower-cased headers, the whole body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Reply:
    """The answer to one request: a whole body, or an event stream written as it goes."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.started = False
        self.streaming = False
        self.done = False
        self.on_lost: Callable[[], object] | None = None  # called if the client goes away first

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer with a whole body now (a client that went away is not written to)."""
        if self.started:
            raise RuntimeError("this request was already answered")
        self.started = True
        head = _head(status, headers, len(body))
        if len(body) < 65536:
            self.connection.write(head + body)  # one send: copying a small body is cheaper
        else:
            self.connection.write(head, body)
        self._finish()

    async def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer with a whole body, then wait while the client reads slowly."""
        self.answer(status, body, headers)
        await self.connection.drain()

    async def start_stream(self, headers: dict[str, str] | None = None) -> None:
        """Begin a `text/event-stream` answer (chunked, unbuffered)."""
        fixed = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "Transfer-Encoding": "chunked",
        }
        self.started = self.streaming = True
        self.connection.write(_head(200, {**(headers or {}), **fixed}, None))
        await self.connection.drain()

    async def event(self, data: bytes) -> None:
        """Write one SSE event whose data is `data` (one line of JSON)."""
        await self._chunk(b"event: message\ndata: " + data + b"\n\n")

    async def comment(self) -> None:
        """Write a keep-alive comment."""
        await self._chunk(b": ping\n\n")

    async def end_stream(self) -> None:
        """Finish a stream."""
        self.connection.write(b"0\r\n\r\n")
        self._finish()
        await self.connection.drain()

    async def _chunk(self, data: bytes) -> None:
        self.connection.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.connection.drain()

    def _finish(self) -> None:
        self.done = True
        self.on_lost = None
        self.connection.finished(self)


Handler = Callable[[Request, Reply], Awaitable[None] | None]


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Listen on host:port and answer every request with `handler`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(handler), host, port, backlog=1024)


class _Connection(asyncio.BufferedProtocol):
    """One client connection: parses requests as bytes arrive, one answered at a time, in order.

    Buffered: the socket is read into one reused buffer (a plain Protocol gets a fresh 256 KiB
    bytes object for every read)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scanned = 0  # bytes of buffer known to hold no end of head
        self.head: tuple[str, str, dict[str, str]] | None = None  # read, waiting for its body
        self.length = 0  # of the body awaited; -1 while reading chunks
        self.chunks = bytearray()
        self.chunk_left = -1  # bytes of the current chunk still to read (-1: a size line is next)
        self.trailer = 0  # bytes of trailers read (-1: not in trailers)
        self.reply: Reply | None = None
        self.close_after = False
        self.eof = False
        self.lost = False
        self.paused_reading = False
        self.paused_writing = False
        self.drained: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock for the first request."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._arm(HEAD_TIMEOUT)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the transport reads the next bytes: the shared scratch buffer."""
        return _SCRATCH

    def buffer_updated(self, nbytes: int) -> None:
        """Keep the bytes read; parse a request unless one is being answered."""
        self.buffer += _SCRATCH[:nbytes]
        if self.reply is None:
            self._parse()
        elif len(self.buffer) > MAX_HEAD_BYTES + MAX_BODY_BYTES and self.transport is not None:
            self.transport.pause_reading()  # pipelined requests wait for the one being answered
            self.paused_reading = True

    def eof_received(self) -> bool:
        """The client sent all it will: answer what is in hand, then close."""
        self.eof = True
        if self.reply is None:
            self._parse()
            if self.reply is None and not self.lost:
                self._broke_off()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The client went away: stop timers, wake writers, tell the request being answered."""
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._wake(ConnectionError("the client closed the connection"))
        reply, self.reply = self.reply, None
        if reply is not None and reply.on_lost is not None:
            lost, reply.on_lost = reply.on_lost, None
            lost()

    def pause_writing(self) -> None:
        """The client reads slowly: writers wait in `drain`."""
        self.paused_writing = True

    def resume_writing(self) -> None:
        """The client caught up."""
        self.paused_writing = False
        self._wake(None)

    def write(self, data: bytes, more: bytes = b"") -> None:
        """Write to the client unless it has gone away."""
        if not self.lost and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            if more:
                self.transport.write(more)

    async def drain(self) -> None:
        """Wait while the client reads slowly; raise ConnectionError once it has gone away."""
        if self.lost:
            raise ConnectionError("the client closed the connection")
        if self.paused_writing:
            if self.drained is None:
                self.drained = self.loop.create_future()
            await asyncio.shield(self.drained)

    def finished(self, reply: Reply) -> None:
        """The request being answered is done: close, or go on to the next one."""
        if reply is not self.reply:
            return
        self.reply = None
        if self.lost or self.transport is None:
            return
        if self.close_after:
            self.transport.close()
            return
        self._arm(IDLE_TIMEOUT)
        if self.paused_reading:
            self.paused_reading = False
            self.transport.resume_reading()
        if self.buffer or self.eof:
            self.loop.call_soon(self._resume)  # not from inside the answer's own callback

    def _resume(self) -> None:
        if self.reply is None and not self.lost:
            self._parse()
            if self.eof and self.reply is None and not self.lost:
                self._broke_off()

    def _broke_off(self) -> None:
        assert self.transport is not None
        if self.buffer or self.head is not None:
            self._refuse(BadRequest("the request broke off"))
        else:
            self.transport.close()

    def _parse(self) -> None:
        try:
            request = self._take()
        except BadRequest as exc:
            self._refuse(exc)
            return
        if request is not None:
            self._dispatch(request)

    def _dispatch(self, request: Request) -> None:
        self.reply = reply = Reply(self)
        self.close_after = request.headers.get("connection", "").lower() == "close"
        try:
            pending = self.handler(request, reply)
        except Exception as exc:  # a bug of ours ends this connection, never the bridge
            self._failed(exc)
            return
        if pending is not None:
            self.loop.create_task(self._run(pending, reply))

    async def _run(self, pending: Awaitable[None], reply: Reply) -> None:
        try:
            await pending
        except (ConnectionError, asyncio.CancelledError):
            return
        except Exception as exc:  # a bug of ours ends this connection, never the bridge
            self._failed(exc)
            return
        if not reply.started:
            reply.answer(500, b"no answer", {"Content-Type": "text/plain"})
        elif not reply.done:
            self._failed(RuntimeError("a stream was left open"))

    def _failed(self, exc: Exception) -> None:
        sys.stderr.write(f"central-mcp bridge: a request failed: {exc!r}\n")
        self.reply = None
        if self.transport is not None:
            self.transport.close()

    def _refuse(self, exc: BadRequest) -> None:
        self.reply = reply = Reply(self)
        self.close_after = True
        reply.answer(exc.status, str(exc).encode(), {"Content-Type": "text/plain", "Connection": "close"})

    def _take(self) -> Request | None:
        """The next whole request from the buffer, or None until more bytes arrive."""
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n", max(0, self.scanned - 3))
            if end < 0:
                self.scanned = len(self.buffer)
                if self.scanned > MAX_HEAD_BYTES:
                    raise BadRequest(f"the request head is over {MAX_HEAD_BYTES} bytes", 413)
                return None
            if end + 4 > MAX_HEAD_BYTES:
                raise BadRequest(f"the request head is over {MAX_HEAD_BYTES} bytes", 413)
            self.head = _parse_head(self.buffer[:end].decode("latin-1"))
            del self.buffer[: end + 4]
            self.scanned = 0
            self.length = _body_length(self.head[2])
            self.chunks, self.chunk_left, self.trailer = bytearray(), -1, -1
        body = self._body()
        if body is None:
            self._arm(HEAD_TIMEOUT)  # the body has as long as a head to arrive
            return None
        method, path, headers = self.head
        self.head = None
        return Request(method, path, headers, body)

    def _body(self) -> bytes | None:
        if self.length >= 0:
            if len(self.buffer) < self.length:
                return None
            body = bytes(self.buffer[: self.length])
            del self.buffer[: self.length]
            return body
        return self._chunked()

    def _chunked(self) -> bytes | None:
        buffer = self.buffer
        while True:
            if self.trailer >= 0:  # trailers are read and ignored, up to an empty line
                end = buffer.find(b"\r\n")
                if end < 0:
                    if self.trailer + len(buffer) > MAX_HEAD_BYTES:
                        raise BadRequest(f"the trailers are over {MAX_HEAD_BYTES} bytes", 413)
                    return None
                del buffer[: end + 2]
                if end == 0:
                    return bytes(self.chunks)
                self.trailer += end + 2
            elif self.chunk_left < 0:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_CHUNK_LINE:
                        raise BadRequest("a malformed chunk size")
                    return None
                try:
                    size = int(bytes(buffer[:end]).split(b";", 1)[0].strip(), 16)
                except ValueError as exc:
                    raise BadRequest("a malformed chunk size") from exc
                del buffer[: end + 2]
                if size < 0 or len(self.chunks) + size > MAX_BODY_BYTES:
                    raise BadRequest(f"the body is over {MAX_BODY_BYTES} bytes", 413)
                if size == 0:
                    self.trailer = 0
                else:
                    self.chunk_left = size
            else:
                if len(buffer) < self.chunk_left + 2:
                    return None
                self.chunks += buffer[: self.chunk_left]
                del buffer[: self.chunk_left + 2]
                self.chunk_left = -1

    def _arm(self, seconds: float) -> None:
        """Close the connection unless a request is whole within `seconds` (one timer, moved lazily)."""
        self.deadline = self.loop.time() + seconds
        if self.timer is not None and self.timer.when() > self.deadline:
            self.timer.cancel()
            self.timer = None
        if self.timer is None and not self.lost:
            self.timer = self.loop.call_at(self.deadline, self._expire)

    def _expire(self) -> None:
        self.timer = None
        if self.lost or self.reply is not None:
            return  # being answered: the clock starts again when the answer is done
        if self.loop.time() >= self.deadline:
            if self.transport is not None:
                self.transport.close()
        else:
            self.timer = self.loop.call_at(self.deadline, self._expire)

    def _wake(self, exc: Exception | None) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            if exc is None:
                drained.set_result(None)
            else:
                drained.set_exception(exc)
                drained.exception()  # retrieved here: a writer may not be waiting


_SCRATCH = memoryview(bytearray(READ_CHUNK))  # read into, then copied out, within one callback


def _parse_head(text: str) -> tuple[str, str, dict[str, str]]:
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("not an HTTP/1.1 request line")
    if len(lines) > MAX_HEADERS + 1:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"a header line without ':': {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1].split("?", 1)[0], headers


def _body_length(headers: dict[str, str]) -> int:
    """Bytes of body to read, or -1 for a chunked body."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return -1
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest(f"Content-Length {length_text[:40]!r} is not a number")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise BadRequest(f"the body is over {MAX_BODY_BYTES} bytes", 413)
    return length


def _head(status: int, headers: dict[str, str] | None, length: int | None) -> bytes:
    text = f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
    if headers:
        text += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    if length is not None:
        text += f"Content-Length: {length}\r\n"
    return (text + "\r\n").encode("latin-1")
