"""One client request to the proxy and the means to answer it: the `Exchange` the proxy works on.

front.py's `ProxyCycle` is one, made straight from uvicorn's parser; `AsgiExchange` makes one
from an ASGI request (scope, receive, send) for every other way in.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from pipeline.errors import BodyTooLarge, ClientGone

Headers = list[tuple[bytes, bytes]]
DOT_SEGMENTS = frozenset({".", ".."})
STREAM_END: dict[str, Any] = {"type": "http.response.body", "body": b"", "more_body": False}


class Exchange(Protocol):
    """One client request to the proxy, and the means to answer it."""

    method: str
    server: str
    rest: str  # the path after `/mcp/<server>/`, decoded ("" for `/mcp/<server>`)
    query: bytes
    headers: Headers  # lower-case names, as received

    async def read_body(self, limit: int) -> bytes:
        """The whole request body (raise ClientGone if the client left first, BodyTooLarge past
        `limit` bytes)."""

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        """Send a whole answer; the exchange adds its Content-Length (`headers` have none)."""

    async def start(self, status: int, headers: Headers) -> None:
        """Start a streamed answer."""

    async def write(self, chunk: bytes) -> None:
        """Send part of a streamed answer."""

    async def end(self) -> None:
        """End a streamed answer."""

    async def abort(self) -> None:
        """End a streamed answer cut short, so that the client cannot take it for whole."""

    async def gone(self) -> None:
        """Return once the client has gone away."""


class AsgiExchange:
    """An Exchange over ASGI: the path params come from app.py's routes or its shortcut."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params: dict[str, str] = scope["path_params"]
        self.method: str = scope["method"]
        self.server = params["server"]
        self.rest = params.get("rest", "")
        self.query: bytes = scope["query_string"]
        self.headers: Headers = scope["headers"]
        self._receive = receive
        self._send = send
        self._close = False  # the body was not read to its end: the connection cannot go on

    async def read_body(self, limit: int) -> bytes:
        """The whole request body."""
        message = await self._receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if message["type"] == "http.disconnect":
                raise ClientGone()
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                self._close = True
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        """Send a whole answer, with its length."""
        if has_body(status):
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        if self._close:
            headers = [*headers, (b"connection", b"close")]  # uvicorn then closes after the answer
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    async def start(self, status: int, headers: Headers) -> None:
        """Start a streamed answer."""
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, chunk: bytes) -> None:
        """Send part of a streamed answer."""
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self) -> None:
        """End a streamed answer."""
        await self._send(STREAM_END)

    async def abort(self) -> None:
        """Leave the answer unended: uvicorn then closes the connection (and logs that it did)."""

    async def gone(self) -> None:
        """Return once the client has gone away."""
        while (await self._receive())["type"] != "http.disconnect":
            pass


def has_body(status: int) -> bool:
    """Whether an answer with this status carries a body (and so a Content-Length)."""
    return status >= 200 and status not in (204, 304)


def mcp_target(path: str) -> tuple[str, str] | None:
    """The server name and the rest of a decoded `/mcp/<server>` or `/mcp/<server>/<rest>` path
    ("" when there is no rest), or None for any other path."""
    if not path.startswith("/mcp/"):
        return None
    server, _, rest = path[5:].partition("/")
    return (server, rest) if server else None


def has_dot_segment(server: str, rest: str) -> bool:
    """Whether a decoded `/mcp/<server>/<rest>` path could step out of the server's path upstream:
    a `.` or `..` segment (also as `..;`), a backslash (some servers read it as `/`), or a `%` left
    after decoding (a double-encoded character that an upstream may decode again)."""
    if server in DOT_SEGMENTS:
        return True
    if not rest:
        return False
    if "\\" in rest or "%" in rest:
        return True
    return "." in rest and any(seg.partition(";")[0] in DOT_SEGMENTS for seg in rest.split("/"))
