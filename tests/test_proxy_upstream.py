"""The proxy's own HTTP/1.1 client (pipeline/proxy/pool.py) against upstreams that behave oddly.

Each upstream here is a raw TCP server in the test's event loop that reads requests and writes
exactly the bytes the test chooses: big bodies, HEAD, bodies that end with the connection,
interim 1xx answers, idle connections closed by the server, broken answers. The proxy in front is
the real one (`running_proxy`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest

from tests.support.proxy_rig import ACCEPT_BOTH, Rig, eventually, jsonrpc, running_proxy, upstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Raw"], Awaitable[None]]
CALL = json.dumps(jsonrpc("tools/call", {"name": "echo", "arguments": {"text": "hi"}}))


@dataclass
class Raw:
    """A raw upstream: how many connections it accepted and the request heads it read."""

    port: int = 0
    connections: int = 0
    heads: list[bytes] = field(default_factory=list)


@pytest.fixture(params=["front", "asgi"])
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A proxy with open access, reached as the provider serves it (front.py's fast path) or through
    ASGI (the way in for what the fast path leaves alone)."""
    with running_proxy(tmp_path, front=request.param == "front") as running:
        yield running


@asynccontextmanager
async def raw_server(rig: Rig, handler: Handler) -> AsyncIterator[Raw]:
    """Serve `handler` on a loopback port, live as server `x` behind the proxy."""
    raw = Raw()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw.connections += 1
        try:
            await handler(reader, writer, raw)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    rig.router.swap({"x": upstream("x", raw.port, "raw")})
    async with server:
        yield raw


async def read_request(reader: asyncio.StreamReader, raw: Raw) -> tuple[bytes, bytes]:
    """Read one request; return its head and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    raw.heads.append(head)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def answer(body: bytes, status: bytes = b"200 OK", extra: bytes = b"") -> bytes:
    """A keep-alive JSON answer with its length."""
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
    """Answer every request on the connection with a small JSON body."""
    while True:
        await read_request(reader, raw)
        writer.write(answer(b'{"ok":true}'))
        await writer.drain()


async def test_connections_are_kept_alive_and_reused(rig: Rig) -> None:
    """Twenty calls in a row reach the upstream over one connection, each whole."""
    async with raw_server(rig, keep_answering) as raw, httpx2.AsyncClient() as http:
        for _ in range(20):
            reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
            assert (reply.status_code, reply.content) == (200, b'{"ok":true}')
    assert raw.connections == 1
    assert len(raw.heads) == 20


@pytest.mark.parametrize("size", [300_000, 3_000_000])
async def test_big_json_answer_is_relayed_whole(rig: Rig, size: int) -> None:
    """A JSON answer larger than the stream pause threshold arrives whole, with its length."""
    body = b'{"data":"' + b"x" * size + b'"}'

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        while True:
            await read_request(reader, raw)
            writer.write(answer(body))
            await writer.drain()

    async with raw_server(rig, big), httpx2.AsyncClient(timeout=30) as http:
        reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
    assert reply.status_code == 200
    assert reply.headers["content-length"] == str(len(body))
    assert reply.content == body


async def test_big_event_stream_is_relayed_whole(rig: Rig) -> None:
    """A 4 MB event stream sent in chunks arrives whole and in order (reading pauses and resumes)."""
    events = [b"data: " + str(n).encode() * 1000 + b"\n\n" for n in range(1000)]

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await read_request(reader, raw)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for event in events:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(rig, stream), httpx2.AsyncClient(timeout=30) as http:
        reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
    assert reply.status_code == 200
    assert reply.content.replace(b": keep-alive\n\n", b"") == b"".join(events)


async def test_head_gets_headers_and_the_next_request_still_works(rig: Rig) -> None:
    """HEAD passes the status through without waiting for a body; a request after it gets its answer."""

    async def head_then_post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        while True:
            head, _ = await read_request(reader, raw)
            body = b'{"ok":true}'
            if head.startswith(b"HEAD "):
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % len(body)
                )
            else:
                writer.write(answer(body))
            await writer.drain()

    async with raw_server(rig, head_then_post), httpx2.AsyncClient(timeout=5) as http:
        head = await http.head(rig.url("x"))
        post = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == "application/json"
    assert (post.status_code, post.content) == (200, b'{"ok":true}')


async def test_body_that_ends_with_the_connection_is_relayed(rig: Rig) -> None:
    """An answer with neither length nor chunks (its end is the connection's) arrives whole."""

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await read_request(reader, raw)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{"a":')
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"1}")
        await writer.drain()

    async with raw_server(rig, until_close) as raw, httpx2.AsyncClient(timeout=5) as http:
        first = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
        second = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
    assert (first.status_code, first.content) == (200, b'{"a":1}')
    assert (second.status_code, second.content) == (200, b'{"a":1}')
    assert raw.connections == 2


async def test_interim_answers_are_skipped(rig: Rig) -> None:
    """A 103 Early Hints before the real answer is not what the client gets."""

    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        while True:
            await read_request(reader, raw)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\n")
            writer.write(answer(b'{"ok":true}', b"201 Created"))
            await writer.drain()

    async with raw_server(rig, hints), httpx2.AsyncClient(timeout=5) as http:
        reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
    assert (reply.status_code, reply.content) == (201, b'{"ok":true}')
    assert "link" not in reply.headers


async def test_idle_connection_closed_by_the_upstream_is_not_reused(rig: Rig) -> None:
    """An upstream that closes idle connections quickly: the next POST opens a new one and succeeds."""

    async def short_keepalive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        while True:
            await read_request(reader, raw)
            writer.write(answer(b'{"ok":true}'))
            await writer.drain()
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.05)
            except TimeoutError:
                return  # idle for 50 ms: close, as a server with a short keep-alive does
            raise AssertionError("no request was expected this soon")

    async with raw_server(rig, short_keepalive) as raw, httpx2.AsyncClient(timeout=5) as http:
        replies = []
        for _ in range(3):
            replies.append(await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=CALL))
            await asyncio.sleep(0.2)
    assert [r.status_code for r in replies] == [200, 200, 200]
    assert raw.connections == 3


@pytest.mark.parametrize(
    "reply",
    [
        b"this is not http\r\n\r\n",
        b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"cut',
        b"",
    ],
    ids=["garbage", "cut-body", "closed"],
)
async def test_broken_answer_gets_502_and_leaves_nothing_in_flight(rig: Rig, reply: bytes) -> None:
    """Garbage, a body cut short, or a close without an answer: 502 naming the server, nothing in flight."""

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await read_request(reader, raw)
        writer.write(reply)
        await writer.drain()

    async with raw_server(rig, broken), httpx2.AsyncClient(timeout=5) as http:
        answered = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
    assert answered.status_code == 502
    assert "'x'" in answered.json()["error"]["message"]
    assert await eventually(lambda: rig.router.inflight("raw") == 0)


async def test_odd_path_and_query_reach_the_upstream_encoded(rig: Rig) -> None:
    """A path below the server with a space and a query pass as a valid request target."""
    async with raw_server(rig, keep_answering) as raw, httpx2.AsyncClient(timeout=5) as http:
        reply = await http.get(rig.url("x", "/a%20b/c?q=1%202&r"))
    assert reply.status_code == 200
    assert raw.heads[0].split(b"\r\n")[0] == b"GET /mcp/a%20b/c?q=1%202&r HTTP/1.1"


@pytest.mark.parametrize(("method", "status"), [("GET", 200), ("POST", 502)])
async def test_reused_connection_dropped_before_answering_is_retried_only_if_idempotent(
    rig: Rig, method: str, status: int
) -> None:
    """A kept-alive connection closed right as the next request arrives: GET is sent again on a new
    connection; POST is not (the upstream may have acted on it), so it gets 502."""

    async def drops_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: Raw) -> None:
        await read_request(reader, raw)
        writer.write(answer(b'{"ok":true}'))
        await writer.drain()
        if raw.connections == 1:
            await read_request(reader, raw)  # the race: the server closes instead of answering
            return
        await keep_answering(reader, writer, raw)

    async with raw_server(rig, drops_second) as raw, httpx2.AsyncClient(timeout=5) as http:
        first = await http.request(method, rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
        second = await http.request(method, rig.url("x"), headers=ACCEPT_BOTH, content=CALL)
    assert first.status_code == 200
    assert second.status_code == status
    assert raw.connections == (2 if method == "GET" else 1)
