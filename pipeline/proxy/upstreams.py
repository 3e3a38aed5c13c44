"""The aggregate's side as an MCP client: one request to one server, sent through `Proxy.serve`.

Nothing here opens a socket: an `InnerExchange` is a request the aggregate makes up (the client's
own Authorization, a JSON-RPC body) and hands to the proxy exactly as front.py hands it a client's,
so the key, the project's scope for that server, its rate limit, usage, the session table and the
drain all apply as they do on `/mcp/<server>`. The answer is collected whole (`Collected`), or,
for a call whose answer goes back to the client as it is, passed to the client's own exchange as
it arrives (`Piped`: an event stream flows through unbuffered, progress notifications included).

`Link` holds the upstream sessions one owner (a client session of the aggregate, or a stateless
client's key) has opened, one per server at most, opened lazily on first use. The proxy's router
binds each to the key and to the release that issued it, so a call stays on that release until
the session ends or its drain deadline passes; then the proxy answers 404 and the link opens a new
session on the live release and sends the call again.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.config.settings import AggregateConfig
from pipeline.errors import BodyTooLarge, UpstreamError, UpstreamFailed
from pipeline.proxy.exchange import Exchange, Headers
from pipeline.proxy.relay import Proxy

LEGACY_VERSION = "2025-11-25"  # what the aggregate speaks to each server: the session era's last
MODERN_VERSION = "2026-07-28"
ACCEPT = (b"accept", b"application/json, text/event-stream")
JSON_BODY = (b"content-type", b"application/json")
CLIENT_INFO = {"name": "central-mcp-aggregate", "version": "1"}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
    "io.modelcontextprotocol/clientCapabilities": {},
}
ID_SEPARATOR = "/"  # a server's request id as the client sees it: `<server>/<id as JSON>`
# deploy.yaml's `aggregate`: `upstream_timeout` for the aggregate's own requests (initialize, lists;
# calls are the client's) and `max_held`, what it holds of one answer it reads whole (a list, a
# resource) or of one event it rewrites (past it the answer fails as the server's fault).
DEFAULTS = AggregateConfig()


class InnerExchange(abc.ABC):
    """A request the aggregate makes to one server through the proxy; the answer is `handle`d."""

    def __init__(self, method: str, server: str, headers: Headers, body: bytes) -> None:
        self.method = method
        self.server = server
        self.rest = ""
        self.query = b""
        self.headers = headers
        self.body = body

    async def read_body(self, limit: int) -> bytes:
        """The body the aggregate made."""
        if len(self.body) > limit:
            raise BodyTooLarge(limit)
        return self.body

    @abc.abstractmethod
    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        """A whole answer."""

    @abc.abstractmethod
    async def start(self, status: int, headers: Headers) -> None:
        """A streamed answer begins."""

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None:
        """More of a streamed answer."""

    async def end(self) -> None:  # noqa: B027 - a hook: nothing to do unless a kind says so
        """A streamed answer ended whole."""

    async def abort(self) -> None:  # noqa: B027 - a hook, as end
        """A streamed answer was cut short."""

    async def gone(self) -> None:
        """The aggregate never leaves its own request."""
        await asyncio.Event().wait()


class Collected(InnerExchange):
    """An inner request whose answer is kept whole: status, headers and body. Made for a client's
    request (`client`), it ends when that client leaves, as a `/mcp/<server>` request does."""

    def __init__(
        self,
        method: str,
        server: str,
        headers: Headers,
        body: bytes,
        client: Exchange | None = None,
        max_held: int = DEFAULTS.max_held,
    ) -> None:
        super().__init__(method, server, headers, body)
        self.client = client
        self.max_held = max_held
        self.status = 0
        self.answer_headers: Headers = []
        self.chunks: list[bytes] = []
        self.whole = False
        self.result: dict[str, Any] = {}  # the JSON-RPC result, once `send` checked it
        self.held = 0  # bytes kept

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        """Keep a whole answer."""
        self.status, self.answer_headers, self.chunks, self.whole = status, headers, [body], True
        self.held = len(body)

    async def start(self, status: int, headers: Headers) -> None:
        """Keep a streamed answer's head."""
        self.status, self.answer_headers = status, headers

    async def write(self, chunk: bytes) -> None:
        """Keep a streamed answer's part, up to `max_held` bytes in all."""
        self.held += len(chunk)
        if self.held > self.max_held:
            raise UpstreamError(f"server {self.server!r} answered more than {self.max_held} bytes")
        self.chunks.append(chunk)

    async def end(self) -> None:
        """The streamed answer is whole."""
        self.whole = True

    async def gone(self) -> None:
        """The client left (never, for the aggregate's own requests)."""
        if self.client is not None:
            await self.client.gone()
        else:
            await super().gone()

    def header(self, name: bytes) -> str:
        """One answer header's value ("" when absent)."""
        return next((v.decode("latin-1") for k, v in self.answer_headers if k == name), "")

    def message(self, request_id: object) -> dict[str, Any] | None:
        """The JSON-RPC answer to `request_id` in the body (JSON, or an event stream's events)."""
        body = b"".join(self.chunks)
        if b"text/event-stream" in self.header(b"content-type").encode():
            for message in sse_messages(body):
                if message.get("id") == request_id and "method" not in message:
                    return message
            return None
        try:
            found = json.loads(body)
        except (ValueError, RecursionError):  # nested past the parser's depth
            return None
        return found if isinstance(found, dict) else None


class Piped(InnerExchange):
    """An inner request whose answer goes to the client's exchange as it arrives, with the client's
    session header instead of the server's; a lost upstream session (404) is held back instead.

    With `requests_of` (a server name), the ids of that server's own requests in an event stream
    (sampling, elicitation, roots) are rewritten `<server>/<id>` for a session-era client, event by
    event; everything else in the stream passes through untouched.
    """

    def __init__(
        self,
        method: str,
        server: str,
        headers: Headers,
        body: bytes,
        client: Exchange,
        session: Headers,
        requests_of: str = "",
        max_held: int = DEFAULTS.max_held,
    ) -> None:
        super().__init__(method, server, headers, body)
        self.max_held = max_held
        self.client = client
        self.session = session  # the aggregate's own session header for the client, or none
        self.requests_of = requests_of
        self.lost = False  # the proxy or server no longer knows the upstream session: open another
        self.status = 0
        self._partial = b""  # an event not yet whole (only while rewriting)

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        """Pass a whole answer on, unless it says the upstream session is gone."""
        self.status = status
        if status == 404 and any(k == b"mcp-session-id" for k, _ in self.headers):
            self.lost = True
            return
        if self.requests_of and _is_stream(headers):
            body = self._rewrite(body, final=True)
        await self.client.answer(status, body, self._headers(headers))

    async def start(self, status: int, headers: Headers) -> None:
        """Start the client's streamed answer."""
        self.status = status
        if not _is_stream(headers):
            self.requests_of = ""
        await self.client.start(status, self._headers(headers))

    async def write(self, chunk: bytes) -> None:
        """Pass a part on (whole events only, while rewriting)."""
        if self.requests_of:
            chunk = self._rewrite(chunk, final=False)
            if not chunk:
                return
        await self.client.write(chunk)

    async def end(self) -> None:
        """End the client's answer."""
        if self._partial:
            await self.client.write(self._rewrite(b"", final=True))
        await self.client.end()

    async def abort(self) -> None:
        """Cut the client's answer short too."""
        await self.client.abort()

    async def gone(self) -> None:
        """The client left: the proxy stops waiting on the server."""
        await self.client.gone()

    def _headers(self, headers: Headers) -> Headers:
        return [(k, v) for k, v in headers if k != b"mcp-session-id"] + self.session

    def _rewrite(self, chunk: bytes, final: bool) -> bytes:
        """The whole events in what arrived so far, a server request's id rewritten in each."""
        text = (self._partial + chunk).replace(b"\r\n", b"\n")
        whole, sep, self._partial = text.rpartition(b"\n\n")
        if len(self._partial) > self.max_held:  # no event ends: pass it on as it is, rewriting no more
            self.requests_of, whole, sep, self._partial = "", text, b"", b""
        if final:
            whole, sep, self._partial = text, b"", b""
        if not whole:
            return b""
        return b"\n\n".join(self._event(e) for e in whole.split(b"\n\n")) + sep

    def _event(self, event: bytes) -> bytes:
        if b'"method"' not in event or b'"id"' not in event:
            return event  # results and notifications pass untouched
        lines = event.split(b"\n")
        data = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
        if len(data) != 1:
            return event
        try:
            message = json.loads(lines[data[0]][5:])
        except (ValueError, RecursionError):  # nested past the parser's depth
            return event
        if not isinstance(message, dict) or "method" not in message or "id" not in message:
            return event
        message["id"] = f"{self.requests_of}{ID_SEPARATOR}{json.dumps(message['id'])}"
        lines[data[0]] = b"data: " + json.dumps(message, ensure_ascii=False).encode()
        return b"\n".join(lines)


def _is_stream(headers: Headers) -> bool:
    return any(k == b"content-type" and b"text/event-stream" in v for k, v in headers)


@dataclass
class Link:
    """The upstream sessions of one owner, by server: opened lazily, ended with the owner."""

    proxy: Proxy
    authorization: bytes
    capabilities: dict[str, Any] = field(default_factory=dict)  # the client's, passed on
    client_info: dict[str, Any] = field(default_factory=lambda: dict(CLIENT_INFO))
    sessions: dict[str, str] = field(default_factory=dict)  # server -> upstream session id ("": none)
    offers: dict[str, dict[str, Any]] = field(default_factory=dict)  # server -> its capabilities
    level: str = ""  # the client's logging/setLevel, sent to each session as it opens
    config: AggregateConfig = DEFAULTS  # its requests' timeout and what it holds of an answer
    _opening: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    _ending: set[asyncio.Future[None]] = field(default_factory=set)  # sessions ended in the background

    def headers(self, server: str) -> Headers:
        """The headers of a request on this owner's session with `server` (opened already)."""
        fields: Headers = [(b"authorization", self.authorization), ACCEPT, JSON_BODY]
        fields.append((b"mcp-protocol-version", LEGACY_VERSION.encode()))
        session = self.sessions.get(server, "")
        if session:
            fields.append((b"mcp-session-id", session.encode("latin-1")))
        return fields

    async def session(self, server: str) -> str:
        """This owner's session id with `server`, opened (initialize, then initialized) if it has none."""
        if server in self.sessions:
            return self.sessions[server]
        opening = self._opening.get(server)
        if opening is None:
            opening = self._opening[server] = asyncio.ensure_future(self._open(server))
        try:
            return await asyncio.shield(opening)
        finally:
            if opening.done():
                self._opening.pop(server, None)

    def lost(self, server: str) -> None:
        """Forget the session with `server` (its release retired it): the next use opens another."""
        self.sessions.pop(server, None)

    async def close(self) -> None:
        """End every upstream session this owner opened (DELETE through the proxy)."""
        servers, self.sessions = dict(self.sessions), {}
        ends = [self._end(server, sid) for server, sid in servers.items() if sid]
        if ends:
            await asyncio.gather(*ends, return_exceptions=True)

    async def _open(self, server: str) -> str:
        init = {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": self.capabilities,
            "clientInfo": self.client_info,
        }
        fields: Headers = [(b"authorization", self.authorization), ACCEPT, JSON_BODY]
        answer = await send(self.proxy, server, fields, "initialize", init, config=self.config)
        session = answer.header(b"mcp-session-id")
        offers = answer.result.get("capabilities")
        self.offers[server] = offers if isinstance(offers, dict) else {}
        await self._initialized(server, session)
        self.sessions[server] = session  # only now: no request goes on a session not initialized
        if self.level and "logging" in self.offers[server]:
            level, headers = {"level": self.level}, self.headers(server)
            await send(self.proxy, server, headers, "logging/setLevel", level, config=self.config)
        return session

    async def _initialized(self, server: str, session: str) -> None:
        """Send notifications/initialized on a new session; an answer that is not 2xx (the spec's way
        to refuse a notification; the key's 429) or none in time leaves the session unusable: it is
        ended and the open fails (a server may drop every request of a session never initialized)."""
        fields: Headers = [(b"authorization", self.authorization), ACCEPT, JSON_BODY]
        fields.append((b"mcp-protocol-version", LEGACY_VERSION.encode()))
        if session:
            fields.append((b"mcp-session-id", session.encode("latin-1")))
        note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
        inner = Collected("POST", server, fields, note, max_held=self.config.max_held)
        try:
            async with asyncio.timeout(self.config.upstream_timeout):  # as every request of its own
                await self.proxy.serve(inner)
        except TimeoutError:
            inner.status = 0
        if 200 <= inner.status < 300:
            return
        if session:  # in the background: a silent server must not hold the call another timeout
            ending = asyncio.ensure_future(self._end_quietly(server, session))
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
        why = f"answered {inner.status}" if inner.status else "got no answer in time"
        retry = inner.header(b"retry-after")
        raise UpstreamFailed(server, inner.status, f"notifications/initialized {why}", retry)

    async def _end_quietly(self, server: str, session: str) -> None:
        """End a session that never became usable; if that is refused too (the same 429), the
        proxy's idle expiry ends it."""
        with contextlib.suppress(UpstreamError, OSError, TimeoutError):
            await self._end(server, session)

    async def _end(self, server: str, session: str) -> None:
        fields: Headers = [
            (b"authorization", self.authorization),
            (b"mcp-session-id", session.encode("latin-1")),
            (b"mcp-protocol-version", LEGACY_VERSION.encode()),
        ]
        async with asyncio.timeout(self.config.upstream_timeout):
            await self.proxy.serve(Collected("DELETE", server, fields, b"", max_held=self.config.max_held))


async def speaks_modern(
    proxy: Proxy, server: str, authorization: bytes, config: AggregateConfig = DEFAULTS
) -> bool:
    """Whether `server`'s live release answers a 2026-07-28 server/discover naming that version."""
    fields: Headers = [(b"authorization", authorization), ACCEPT, JSON_BODY]
    fields += [(b"mcp-protocol-version", MODERN_VERSION.encode()), (b"mcp-method", b"server/discover")]
    try:
        answer = await send(proxy, server, fields, "server/discover", {"_meta": MODERN_META}, config=config)
    except (UpstreamFailed, OSError, TimeoutError):
        return False
    versions = answer.result.get("supportedVersions")
    return isinstance(versions, list) and MODERN_VERSION in versions


def modern_headers(authorization: bytes, method: str, name: str) -> Headers:
    """The headers of a stateless-era request (its method and name repeated as the era asks)."""
    fields: Headers = [(b"authorization", authorization), ACCEPT, JSON_BODY]
    fields += [(b"mcp-protocol-version", MODERN_VERSION.encode()), (b"mcp-method", method.encode())]
    if name:
        fields.append((b"mcp-name", name.encode()))
    return fields


async def send(
    proxy: Proxy,
    server: str,
    fields: Headers,
    method: str,
    params: dict[str, Any],
    request_id: int = 1,
    config: AggregateConfig = DEFAULTS,
) -> Collected:
    """Send one JSON-RPC request of the aggregate's own to `server`; the answer, checked to be a
    result (else UpstreamFailed naming the server and what it said)."""
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode()
    inner = Collected("POST", server, fields, body, max_held=config.max_held)
    async with asyncio.timeout(config.upstream_timeout):
        await proxy.serve(inner)
    message = inner.message(request_id)
    if inner.status != 200 or message is None:
        raise UpstreamFailed(server, inner.status, _why(inner, message), inner.header(b"retry-after"))
    if "result" not in message:
        raise UpstreamFailed(server, inner.status, f"{method} failed: {message.get('error')}")
    result = message["result"]
    inner.result = result if isinstance(result, dict) else {}
    return inner


def sse_messages(body: bytes) -> list[dict[str, Any]]:
    """The JSON-RPC messages in an event stream's `data:` lines."""
    messages: list[dict[str, Any]] = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data:
            continue
        try:
            found = json.loads(data)
        except (ValueError, RecursionError):  # nested past the parser's depth
            continue
        if isinstance(found, dict):
            messages.append(found)
    return messages


def _why(inner: Collected, message: dict[str, Any] | None) -> str:
    """What was wrong with an answer: its status and the proxy's or server's own words."""
    text = b"".join(inner.chunks)[:300].decode("utf-8", "replace")
    return f"answered {inner.status}: {text}" if message is None or inner.status != 200 else text
