"""pipeline/bridge/wire.py over real loopback sockets: keep-alive, pipelining, streams, and the
bounds on what a client may send (head, headers, body, time)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pipeline.bridge import wire
from pipeline.bridge.wire import Reply, Request

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _echo(request: Request, reply: Reply) -> None:
    """Answer with the method, path and body; `/stream` answers two events, `/boom` raises."""
    if request.path == "/boom":
        raise RuntimeError("a bug")
    if request.path == "/stream":
        await reply.start_stream()
        await reply.event(b"one")
        await reply.event(b"two")
        await reply.end_stream()
        return
    await reply.send(200, f"{request.method} {request.path} ".encode() + request.body)


def _serve(test: Callable[[int], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        server = await wire.serve("127.0.0.1", 0, _echo)
        port = server.sockets[0].getsockname()[1]
        try:
            return await asyncio.wait_for(test(port), 10)
        finally:
            server.close()

    return asyncio.run(run())


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one whole answer (a chunked body reassembled)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in head[1:] if x)}
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return int(head[0].split()[1]), headers, bytes(body)
    return int(head[0].split()[1]), headers, await reader.readexactly(int(headers["content-length"]))


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_a_kept_alive_connection_answers_pipelined_requests_in_order() -> None:
    """Three requests written at once on one connection get three answers, in order."""

    async def test(port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post("/a?q=1", b"1") + _post("/b", b"22") + _post("/c", b""))
        answers = [(await _answer(reader))[2] for _ in range(3)]
        writer.close()
        return answers

    assert _serve(test) == [b"POST /a 1", b"POST /b 22", b"POST /c "]


def test_a_request_split_across_many_writes_is_read_whole() -> None:
    """A head and body arriving a byte at a time make one request."""

    async def test(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for byte in _post("/slow", b"body"):
            writer.write(bytes([byte]))
            await writer.drain()
        answer = (await _answer(reader))[2]
        writer.close()
        return answer

    assert _serve(test) == b"POST /slow body"


def test_a_chunked_body_is_reassembled() -> None:
    """Transfer-Encoding: chunked (with an extension and a trailer) gives the whole body."""

    async def test(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n"
        )
        answer = (await _answer(reader))[2]
        writer.close()
        return answer

    assert _serve(test) == b"POST /c abcde"


def test_an_event_stream_is_chunked_and_the_connection_stays_open() -> None:
    """A streamed answer arrives as SSE events in chunks; the next request is answered after it."""

    async def test(port: int) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n" + _post("/after", b""))
        stream = (await _answer(reader))[2]
        after = (await _answer(reader))[2]
        writer.close()
        return stream, after

    stream, after = _serve(test)
    assert stream == b"event: message\ndata: one\n\nevent: message\ndata: two\n\n"
    assert after == b"POST /after "


@pytest.mark.parametrize(
    ("request_bytes", "status", "fragment"),
    [
        (b"NONSENSE\r\n\r\n", 400, b"request line"),
        (b"POST /x HTTP/1.1\r\nno colon here\r\n\r\n", 400, b"without ':'"),
        (b"POST /x HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400, b"not a number"),
        (b"POST /x HTTP/1.1\r\n" + b"X: y\r\n" * (wire.MAX_HEADERS + 1) + b"\r\n", 400, b"headers"),
        (b"POST /x HTTP/1.1\r\nX: " + b"a" * wire.MAX_HEAD_BYTES + b"\r\n\r\n", 413, b"head is over"),
        (_post("/x", b"")[:-4] + b"0\r\nContent-Length: 99999999\r\n\r\n", 413, b"body is over"),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, b"chunk size"),
        (
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % (wire.MAX_BODY_BYTES + 1),
            413,
            b"body is over",
        ),
    ],
)
def test_a_bad_or_oversized_request_gets_a_clear_error_and_the_connection_closes(
    request_bytes: bytes, status: int, fragment: bytes
) -> None:
    """Malformed or over-bound requests are answered 400/413 naming what was wrong, then closed."""

    async def test(port: int) -> tuple[int, bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes)
        got, _, body = await _answer(reader)
        rest = await reader.read()
        writer.close()
        return got, body, rest

    got, body, rest = _serve(test)
    assert got == status
    assert fragment in body
    assert rest == b""


def test_a_client_too_slow_to_send_its_head_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half a head and then silence: the connection closes after HEAD_TIMEOUT."""
    monkeypatch.setattr(wire, "HEAD_TIMEOUT", 0.3)

    async def test(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return rest

    assert _serve(test) == b""


def test_a_body_that_stops_arriving_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole head and part of its body, then silence: closed after HEAD_TIMEOUT."""
    monkeypatch.setattr(wire, "HEAD_TIMEOUT", 0.3)

    async def test(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post("/x", b"0123456789")[:-5])
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return rest

    assert _serve(test) == b""


def test_an_idle_kept_alive_connection_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """After an answer, a connection that sends nothing more is closed after IDLE_TIMEOUT."""
    monkeypatch.setattr(wire, "IDLE_TIMEOUT", 0.3)

    async def test(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post("/x", b""))
        await _answer(reader)
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return rest

    assert _serve(test) == b""


def test_a_handler_that_fails_ends_only_its_connection() -> None:
    """A bug in the handler closes that connection; the server answers the next one."""

    async def test(port: int) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post("/boom", b""))
        broken = await reader.read()
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post("/fine", b""))
        fine = (await _answer(reader))[2]
        writer.close()
        return broken, fine

    broken, fine = _serve(test)
    assert b"200" not in broken
    assert fine == b"POST /fine "


def test_connection_close_ends_the_connection_after_the_answer() -> None:
    """`Connection: close` gets its answer, then the server closes."""

    async def test(port: int) -> tuple[bytes, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post("/x", b"", "Connection: close\r\n") + _post("/never", b""))
        answer = (await _answer(reader))[2]
        rest = await reader.read()
        writer.close()
        return answer, rest

    assert _serve(test) == (b"POST /x ", b"")
