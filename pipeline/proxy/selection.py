"""deploy.yaml's `projects[].tools` on `/mcp/<server>` too: a denied tool is refused, and left out of
tools/list, for a key whose project has a tools rule.

The aggregate `/mcp` applies the rule when it builds a project's lists and routes a call; a key
that could reach the same server at `/mcp/<server>` would otherwise call the denied tool there.
Only requests of a project that has a rule come here (front.py's fast path sends them to the
proxy's coroutine, which asks here; one attribute check per request): every other request keeps
the proxy's path untouched. A tools/call
(alone or in a batch) naming a denied tool is answered with a JSON-RPC error and never forwarded;
a tools/list answer is read whole (at most MAX_FILTERED bytes) and given back without the denied
tools; anything else is forwarded as the proxy forwards it.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.config.settings import DEFAULT_MAX_HANDSHAKE, Project
from pipeline.errors import UpstreamError
from pipeline.proxy.exchange import Exchange, Headers

DENIED = -32602  # invalid params: the tool is not one this key may call here
PARSE_ERROR = -32700  # JSON-RPC's: a body the rule cannot be checked on is not forwarded
UNREADABLE = object()  # _json's answer for a body that is not JSON this parser reads
MAX_FILTERED = DEFAULT_MAX_HANDSHAKE  # a tools/list answer read whole to filter it
JSON_TYPE = (b"content-type", b"application/json")
Reply = tuple[int, bytes, Headers]  # relay.py's: status, body, headers


def selects(project: Project | None) -> bool:
    """Whether requests of `project`'s keys go through here."""
    return project is not None and bool(project.tools_allow or project.tools_deny)


def screen(project: Project, ex: Exchange, body: bytes) -> Reply | Exchange:
    """The answer refusing the request (a tools/call of a denied tool; a body this parser cannot
    read, which a laxer server's might, and run a denied tool), or the exchange to answer it on:
    one that filters a tools/list answer, or the client's own. The body is parsed once."""
    if ex.method != "POST":
        return ex
    found = _json(body)
    if found is UNREADABLE and body.strip():
        text = f"the body is not JSON the provider can read (project {project.name!r} has a tools rule)"
        answer = {"jsonrpc": "2.0", "id": None, "error": {"code": PARSE_ERROR, "message": text}}
        return 400, json.dumps(answer, ensure_ascii=False).encode(), [JSON_TYPE]
    messages = _messages(found)
    for message in messages:
        params = message.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        calling = message.get("method") == "tools/call" and isinstance(name, str)
        if calling and not project.may_call(ex.server, str(name)):
            text = f"tool {name!r} of {ex.server!r} is not allowed for project {project.name!r}"
            error = {"code": DENIED, "message": f"{text} (deploy.yaml tools)"}
            answer = {"jsonrpc": "2.0", "id": message.get("id"), "error": error}
            return 200, json.dumps(answer, ensure_ascii=False).encode(), [JSON_TYPE]
    if any(m.get("method") == "tools/list" for m in messages):
        return Filtered(ex, project)
    return ex


class Filtered:
    """The client's exchange, with a tools/list answer read whole and the denied tools taken out."""

    def __init__(self, ex: Exchange, project: Project) -> None:
        self.ex = ex
        self.project = project
        self.method, self.server, self.rest = ex.method, ex.server, ex.rest
        self.query, self.headers = ex.query, ex.headers
        self.status = 0
        self.answer_headers: Headers = []
        self.chunks: list[bytes] = []
        self.held = 0

    async def read_body(self, limit: int) -> bytes:
        """The client's body."""
        return await self.ex.read_body(limit)

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        """A whole answer, filtered."""
        await self.ex.answer(status, self._filtered(body, headers), headers)

    async def start(self, status: int, headers: Headers) -> None:
        """A streamed answer begins: kept until it ends."""
        self.status = status
        self.answer_headers = [(k, v) for k, v in headers if k != b"content-length"]

    async def write(self, chunk: bytes) -> None:
        """Keep a part (the answer goes out whole, filtered, when it ends)."""
        self.held += len(chunk)
        if self.held > MAX_FILTERED:
            raise UpstreamError(f"server {self.server!r}'s tools/list answer is over {MAX_FILTERED} bytes")
        self.chunks.append(chunk)

    async def end(self) -> None:
        """Send the whole answer, filtered."""
        body = b"".join(self.chunks)
        await self.ex.answer(self.status, self._filtered(body, self.answer_headers), self.answer_headers)

    async def abort(self) -> None:
        """The server's answer was cut short: so is the client's (nothing was sent yet)."""
        error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32603, "message": "answer cut short"}}
        await self.ex.answer(502, json.dumps(error).encode(), [JSON_TYPE])

    async def gone(self) -> None:
        """When the client leaves."""
        await self.ex.gone()

    def _filtered(self, body: bytes, headers: Headers) -> bytes:
        """The body without the tools the project denies (JSON, or each event of a stream)."""
        server = self.server
        if any(k == b"content-type" and b"text/event-stream" in v for k, v in headers):
            events = body.replace(b"\r\n", b"\n").split(b"\n\n")
            return b"\n\n".join(_filter_event(e, self.project, server) for e in events)
        found = _json(body)
        if isinstance(found, dict) and _filter(found, self.project, server):
            return json.dumps(found, ensure_ascii=False).encode()
        return body


def _messages(found: Any) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a parsed request body (one, or a batch); none when it is not JSON."""
    items = found if isinstance(found, list) else [found]
    return [m for m in items if isinstance(m, dict)]


def _filter_event(event: bytes, project: Project, server: str) -> bytes:
    """One event with its data's tools/list result filtered."""
    lines = event.split(b"\n")
    data = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
    if len(data) != 1:
        return event
    found = _json(lines[data[0]][5:])
    if not isinstance(found, dict) or not _filter(found, project, server):
        return event
    lines[data[0]] = b"data: " + json.dumps(found, ensure_ascii=False).encode()
    return b"\n".join(lines)


def _filter(message: dict[str, Any], project: Project, server: str) -> bool:
    """Take the denied tools out of a tools/list result in place; whether it had any to look at."""
    result = message.get("result")
    tools = result.get("tools") if isinstance(result, dict) else None
    if not isinstance(tools, list):
        return False
    assert isinstance(result, dict)
    result["tools"] = [
        t for t in tools if not isinstance(t, dict) or project.may_call(server, str(t.get("name", "")))
    ]
    return True


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8 or not JSON; nested past the parser's depth
        return UNREADABLE
