"""A small HTTP/1.1 server on asyncio streams: just what streamable HTTP needs, standard library only.

The bridge runs inside a server's image with whatever `python3` that image has, so it cannot rely
on uvicorn or starlette being importable there. Requests are bounded (head, body, header count,
time to arrive); answers are a whole body or a chunked event stream; connections are kept alive.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 4 * 1024 * 1024
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

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.started = False
        self.streaming = False

    async def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer with a whole body."""
        head = _head(status, {**(headers or {}), "Content-Length": str(len(body))})
        self.started = True
        self.writer.write(head + body)
        await self.writer.drain()

    async def start_stream(self, headers: dict[str, str] | None = None) -> None:
        """Begin a `text/event-stream` answer (chunked, unbuffered)."""
        fixed = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "Transfer-Encoding": "chunked",
        }
        self.started = self.streaming = True
        self.writer.write(_head(200, {**(headers or {}), **fixed}))
        await self.writer.drain()

    async def event(self, data: bytes) -> None:
        """Write one SSE event whose data is `data` (one line of JSON)."""
        await self._chunk(b"event: message\ndata: " + data + b"\n\n")

    async def comment(self) -> None:
        """Write a keep-alive comment."""
        await self._chunk(b": ping\n\n")

    async def end_stream(self) -> None:
        """Finish a stream."""
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()

    async def _chunk(self, data: bytes) -> None:
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await self.writer.drain()


Handler = Callable[[Request, Reply], Awaitable[None]]


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    """Listen on host:port and answer every request with `handler`."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _connection(reader, writer, handler)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away, or was too slow: nothing to answer
        except Exception as exc:  # a bug of ours ends this connection, never the bridge
            sys.stderr.write(f"central-mcp bridge: a request failed: {exc!r}\n")
        finally:
            writer.close()

    return await asyncio.start_server(connection, host, port, limit=MAX_HEAD_BYTES, backlog=1024)


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    first = True
    while True:
        try:
            request = await _read_request(reader, IDLE_TIMEOUT if not first else HEAD_TIMEOUT)
        except BadRequest as exc:
            reply = Reply(writer)
            await reply.send(
                exc.status, str(exc).encode(), {"Content-Type": "text/plain", "Connection": "close"}
            )
            return
        if request is None:
            return
        first = False
        reply = Reply(writer)
        await handler(request, reply)
        if not reply.started:
            await reply.send(500, b"no answer", {"Content-Type": "text/plain"})
        if request.headers.get("connection", "").lower() == "close":
            return


async def _read_request(reader: asyncio.StreamReader, wait: float) -> Request | None:
    try:
        async with asyncio.timeout(wait):  # no task per request, unlike wait_for
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise BadRequest("the request head broke off") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise BadRequest(f"the request head is over {MAX_HEAD_BYTES} bytes", 413) from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("not an HTTP/1.1 request line")
    if len(lines) > MAX_HEADERS + 3:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"a header line without ':': {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    async with asyncio.timeout(HEAD_TIMEOUT):
        body = await _read_body(reader, headers)
    return Request(parts[0], parts[1].split("?", 1)[0], headers, body)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await _read_chunked(reader)
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest(f"Content-Length {length_text[:40]!r} is not a number")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise BadRequest(f"the body is over {MAX_BODY_BYTES} bytes", 413)
    return await reader.readexactly(length) if length else b""


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise BadRequest("a malformed chunk size") from exc
        if len(body) + size > MAX_BODY_BYTES:
            raise BadRequest(f"the body is over {MAX_BODY_BYTES} bytes", 413)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers are ignored
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
