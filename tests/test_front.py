"""front.py: `/mcp/` requests served from uvicorn's parser without an ASGI cycle, on real sockets.

HTTP/1.1 corners that the fast path handles itself (pipelining, bodies larger than one read,
Expect: 100-continue, HTTP/1.0, clients that leave), against a real upstream on loopback.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pipeline.config.settings import DEFAULT_MAX_BODY as MAX_BODY_BYTES
from pipeline.proxy.relay import Proxy
from tests.support.proxy_rig import Recorder, Rig, jsonrpc, raw_upstream, running_proxy

HEADERS = b"content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
Answer = tuple[int, dict[str, str], bytes]


async def _echo(request: Request) -> Response:
    """Answer with the request's own body, so answers can be told apart."""
    return Response(await request.body(), media_type="application/json")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A proxy served as the provider serves it, with server `x` echoing request bodies."""
    with running_proxy(tmp_path) as running, raw_upstream("x", Recorder(_echo)) as upstream:
        running.router.swap({"x": upstream})
        yield running


@pytest.fixture(params=["front", "asgi"])
def either_rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """The same, reached through front.py's fast path or through ASGI (both must read bodies alike)."""
    with (
        running_proxy(tmp_path, front=request.param == "front") as running,
        raw_upstream("x", Recorder(_echo)) as upstream,
    ):
        running.router.swap({"x": upstream})
        yield running


def test_mcp_requests_do_not_go_through_asgi(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST, GET, DELETE and OPTIONS to /mcp/x are answered without Proxy.handle (the ASGI way in)."""

    def refuse(*_: object) -> None:
        raise AssertionError("an /mcp/ request went through ASGI")

    monkeypatch.setattr(Proxy, "handle", refuse)
    body = json.dumps(jsonrpc("tools/list")).encode()
    with httpx2.Client(timeout=10) as http:
        reply = http.post(rig.url("x"), content=body, headers={"content-type": "application/json"})
        assert reply.content == body
        for method in ("GET", "DELETE", "OPTIONS"):
            assert http.request(method, rig.url("x", "/sub?q=1")).status_code == 200


def test_methods_the_fast_path_leaves_alone_are_served_through_asgi(rig: Rig) -> None:
    """HEAD, PUT and PATCH reach the upstream through the ASGI way in, on the same connection as a POST."""
    with httpx2.Client(timeout=10) as http:
        for method in ("POST", "HEAD", "PUT", "PATCH", "POST"):
            reply = http.request(method, rig.url("x"), content=b"" if method == "HEAD" else b"{}")
            assert reply.status_code == 200, method
        assert http.get(f"http://127.0.0.1:{rig.port}/elsewhere").status_code == 404


def test_pipelined_requests_are_answered_in_order(rig: Rig) -> None:
    """Three requests written at once on one connection get their three answers, in order."""
    bodies = [json.dumps(jsonrpc("tools/call", {"n": n}, request_id=n)).encode() for n in range(3)]
    data = b"".join(_post(b"/mcp/x", body) for body in bodies)
    with _connect(rig) as sock:
        sock.sendall(data)
        answers = _read_answers(sock, 3)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert [a[2] for a in answers] == bodies


def test_body_larger_than_one_read_is_forwarded_whole(either_rig: Rig) -> None:
    """A 3 MiB body (many reads, so the request's coroutine reads the rest) reaches the upstream intact."""
    body = json.dumps(jsonrpc("x", {"blob": "ab" * (3 << 19)})).encode()
    with httpx2.Client(timeout=30) as http:
        reply = http.post(either_rig.url("x"), content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 200
        assert reply.content == body
        assert http.post(either_rig.url("x"), content=b"{}").content == b"{}"  # the connection goes on


def test_chunked_body_over_the_limit_gets_413_and_the_connection_closes(either_rig: Rig) -> None:
    """A chunked body that grows past MAX_BODY_BYTES is refused with 413; the rest is never read."""
    chunk = b"x" * (1 << 20)
    head = b"POST /mcp/x HTTP/1.1\r\nhost: proxy\r\n" + HEADERS + b"transfer-encoding: chunked\r\n\r\n"
    with _connect(either_rig) as sock:
        sock.sendall(head)
        try:
            for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the proxy answered and closed while the client was still sending
        status, headers, body = _read_answers(sock, 1)[0]
        assert status == 413
        assert headers.get("connection") == "close"
        assert f"over {MAX_BODY_BYTES} bytes" in body.decode()
        assert _closed(sock)


def test_expect_100_continue_gets_continue_before_the_body_is_sent(rig: Rig) -> None:
    """A client that waits for 100 Continue gets it, sends its body, and gets the upstream's answer."""
    body = json.dumps(jsonrpc("ping")).encode()
    head = _post(b"/mcp/x", body).split(b"\r\n\r\n", 1)[0] + b"\r\nexpect: 100-continue\r\n\r\n"
    with _connect(rig) as sock:
        sock.sendall(head)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        assert _read_answers(sock, 1)[0][::2] == (200, body)


def test_http_1_0_request_is_answered_then_closed(rig: Rig) -> None:
    """An HTTP/1.0 request gets its answer with `connection: close`, then the proxy closes."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    with _connect(rig) as sock:
        sock.sendall(_post(b"/mcp/x", body).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        status, headers, answer = _read_answers(sock, 1)[0]
        assert (status, answer) == (200, body)
        assert headers["connection"] == "close"
        assert _closed(sock)


async def test_client_that_leaves_before_the_answer_leaves_nothing_in_flight(tmp_path: Path) -> None:
    """A client gone while the upstream works is no longer counted in flight, without waiting for the
    upstream's answer (a server that never answers would hold it for good)."""

    async def slow(request: Request) -> Response:
        await asyncio.sleep(0.5)
        return Response(await request.body(), media_type="application/json")

    with running_proxy(tmp_path) as rig, raw_upstream("x", Recorder(slow), container_id="slow") as upstream:
        rig.router.swap({"x": upstream})
        with _connect(rig) as sock:
            sock.sendall(_post(b"/mcp/x", b"{}"))
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 0.3  # before the upstream answers
        while rig.router.inflight("slow") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert rig.router.inflight("slow") == 0
        async with httpx2.AsyncClient(timeout=10) as http:
            assert (await http.post(rig.url("x"), content=b"{}")).content == b"{}"
        assert rig.usage.totals("x") == (2, 0)


def test_a_request_pipelined_behind_an_immediate_answer_is_not_cut_by_the_keepalive_timer(
    tmp_path: Path,
) -> None:
    """A 404 answered while parsing arms uvicorn's keep-alive timer; the slow request read with it
    in the same packet still gets its answer after the keep-alive timeout has passed."""

    async def slow(request: Request) -> Response:
        await asyncio.sleep(1.5)
        return Response(await request.body(), media_type="application/json")

    with running_proxy(tmp_path, timeout_keep_alive=1) as rig, raw_upstream("x", Recorder(slow)) as upstream:
        rig.router.swap({"x": upstream})
        with _connect(rig) as sock:
            sock.sendall(_post(b"/mcp/nosuch", b"{}") + _post(b"/mcp/x", b'{"slow":1}'))
            answers = _read_answers(sock, 2)
    assert [(a[0], a[2]) for a in answers][1] == (200, b'{"slow":1}')
    assert answers[0][0] == 404


def test_a_request_after_an_answer_that_closed_the_connection_is_not_sent_upstream(tmp_path: Path) -> None:
    """An answer to HTTP/1.0 closes the connection (even when the client asked to keep it); a request
    pipelined after it never reaches the upstream (its answer could not be delivered)."""
    recorder = Recorder()
    with running_proxy(tmp_path) as rig, raw_upstream("x", recorder) as upstream:
        rig.router.swap({"x": upstream})
        with httpx2.Client(timeout=10) as http:  # a pooled upstream connection for the fast path
            assert http.post(rig.url("x"), content=b'{"warm":1}').status_code == 200
        asks_keepalive = b" HTTP/1.0\r\nconnection: keep-alive\r\n"
        first = _post(b"/mcp/nosuch", b"{}").replace(b" HTTP/1.1\r\n", asks_keepalive, 1)
        with _connect(rig) as sock:
            sock.sendall(first + _post(b"/mcp/x", b'{"second":1}'))
            assert _read_answers(sock, 1)[0][0] == 404
            assert _closed(sock)
        time.sleep(0.3)
        assert [seen.body for seen in recorder.seen] == [b'{"warm":1}']
        assert rig.router.inflight("raw") == 0


@pytest.mark.parametrize("size", [10, 200_000])
async def test_client_leaving_an_event_stream_is_noticed_after_any_body(tmp_path: Path, size: int) -> None:
    """A client that closes a quiet event stream ends the relay (nothing left in flight), also after
    a body large enough to pause reading from it."""

    async def stream(request: Request) -> Response:
        await request.body()

        async def events() -> AsyncIterator[bytes]:
            yield b"data: partial"  # no event boundary: the proxy adds no keep-alive comment
            await asyncio.sleep(30)

        return StreamingResponse(events(), media_type="text/event-stream")

    with running_proxy(tmp_path) as rig, raw_upstream("x", Recorder(stream)) as upstream:
        rig.router.swap({"x": upstream})
        with _connect(rig) as sock:
            sock.sendall(_post(b"/mcp/x", b"{" + b" " * size + b"}"))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        deadline = time.monotonic() + 5
        while rig.router.inflight("raw") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert rig.router.inflight("raw") == 0


# raw HTTP ---------------------------------------------------------------------------------------
def _post(path: bytes, body: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: proxy\r\n%scontent-length: %d\r\n\r\n" % (path, HEADERS, len(body))
    return head + body


def _connect(rig: Rig) -> socket.socket:
    return socket.create_connection(("127.0.0.1", rig.port), timeout=10)


def _read_answers(sock: socket.socket, count: int) -> list[Answer]:
    """Read `count` answers with a Content-Length each (what the fast path writes)."""
    buffer = b""
    answers: list[Answer] = []
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            assert data, f"connection closed after {len(answers)} answers"
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(buffer) < length:
            data = sock.recv(65536)
            assert data, "connection closed inside an answer"
            buffer += data
        answers.append((int(lines[0].split()[1]), headers, buffer[:length]))
        buffer = buffer[length:]
    return answers


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closes the connection (reads end) within the socket's timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("step", ["admit", "whole_answer"])
def test_a_bug_in_the_proxy_answers_500_and_leaves_nothing_in_flight(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """An exception in a proxy step is logged and answered with 500; no request stays counted in
    flight, and the next request is served."""

    def broken(*_: object) -> None:
        raise RuntimeError(f"bug in {step}")

    with httpx2.Client(timeout=10) as http:
        assert http.post(rig.url("x"), content=b"{}").status_code == 200  # a pooled connection to reuse
        with monkeypatch.context() as patch:
            patch.setattr(Proxy, step, broken)
            reply = http.post(rig.url("x"), content=b"{}")
        assert (reply.status_code, reply.text) == (500, "Internal Server Error")
        assert rig.router.inflight("raw") == 0
        assert http.post(rig.url("x"), content=b"{}").content == b"{}"


def test_paths_the_fast_path_does_not_parse_go_through_asgi(rig: Rig) -> None:
    """`/mcp/` without a server name (the aggregate endpoint, which refuses a message without a
    session with 400) and a request target with a fragment are left to ASGI's routing."""
    with _connect(rig) as sock:
        sock.sendall(_post(b"/mcp/", b"{}") + _post(b"/mcp/x#part", b"{}"))
        answers = _read_answers(sock, 2)
    assert [a[0] for a in answers] == [400, 200]
    assert answers[1][2] == b"{}"
