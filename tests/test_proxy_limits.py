"""What one server or one client can make the proxy hold: bounded memory, caps and client timeouts.

Real HTTP on loopback throughout. Answers too large to hold stream through (issue 12, item 7); a
client's request target, headers, body, pace and connection count are bounded before any key is
checked (item 8), on front.py's fast path (`/mcp/x` POST/GET) and on the way it leaves to ASGI
(any other path or method: the pages and hooks).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.support.loopback import free_port
from tests.support.memory import peak_growth
from tests.support.proxy_rig import Recorder, Rig, jsonrpc, raw_upstream, running_proxy, upstream

MIB = 1 << 20
LARGE = 64 * MIB  # an answer far larger than anything the proxy may hold
MEMORY_BOUND = 24 * MIB  # what the whole test process's peak may rise by while LARGE passes through
SEND_PIECE = b"a" * MIB
FAST_AND_ASGI = ["front", "asgi"]
TIGHT = {
    "max_header": 4096,
    "max_url": 2048,
    "max_body": 64 * 1024,
    "header_timeout": 0.5,
    "body_timeout": 0.5,
    "send_timeout": 0.5,
    "max_connections": 20,
    "max_upstream_header": 8192,
}


# item 7: what a server answers ----------------------------------------------------------------
def _streaming(size: int, sized: bool, content_type: str = "application/json") -> Recorder:
    """A raw upstream answering every request with `size` bytes, produced as they are sent."""
    piece = b"x" * (64 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(piece)):
            yield piece

    async def answer(_: Request) -> Response:
        headers = {"content-length": str(size)} if sized else {}
        return StreamingResponse(body(), media_type=content_type, headers=headers)

    return Recorder(answer)


@pytest.mark.parametrize("way", FAST_AND_ASGI)
@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_a_large_answer_streams_through_in_bounded_memory(tmp_path: Path, way: str, sized: bool) -> None:
    """A 64 MiB answer reaches the client whole (its Content-Length passed on, or chunked) while the
    process's peak memory rises by well under its size."""
    with (
        running_proxy(tmp_path, front=way == "front") as rig,
        raw_upstream("x", _streaming(LARGE, sized)) as up,
    ):
        rig.router.swap({"x": up})
        with peak_growth() as growth:
            status, headers, received = _download(rig, "POST", json.dumps(jsonrpc("tools/call")).encode())
            grew = growth()
    assert status == 200
    assert received == LARGE
    assert headers.get("content-length") == (str(LARGE) if sized else None)
    assert grew < MEMORY_BOUND, f"peak memory rose by {grew / MIB:.0f} MiB relaying {LARGE / MIB:.0f} MiB"


@pytest.mark.parametrize("way", FAST_AND_ASGI)
def test_an_answer_cut_short_upstream_is_cut_short_for_the_client(tmp_path: Path, way: str) -> None:
    """An upstream that declares 4 MiB and closes after 1 MiB: the client's answer ends short too
    (its connection closes before the length is reached), never as if it were whole."""

    def half(sock: socket.socket) -> None:
        _read_request_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (4 * MIB))
        sock.sendall(SEND_PIECE)

    with running_proxy(tmp_path, front=way == "front") as rig, _tcp_upstream(half) as port:
        rig.router.swap({"x": upstream("x", port, "raw")})
        status, headers, received = _download(rig, "POST", b"{}")
    assert status == 200
    assert headers["content-length"] == str(4 * MIB)
    assert MIB <= received < 4 * MIB  # http.client's read(n) returns what came before the close


@pytest.mark.parametrize("way", FAST_AND_ASGI)
def test_a_client_leaving_a_large_answer_is_not_counted_as_a_server_error(tmp_path: Path, way: str) -> None:
    """A client that reads 1 MiB of a 64 MiB answer and leaves counts as a request, not as a 5xx
    (the watch window rolls a release back on 5xx answers)."""
    with (
        running_proxy(tmp_path, front=way == "front") as rig,
        raw_upstream("x", _streaming(LARGE, sized=True)) as up,
    ):
        rig.router.swap({"x": up})
        with _connect(rig) as sock:
            sock.sendall(b"POST /mcp/x HTTP/1.1\r\nhost: p\r\ncontent-length: 2\r\n\r\n{}")
            received = 0
            while received < MIB:
                received += len(sock.recv(65536))
        assert _eventually(lambda: rig.usage.totals("x") == (1, 0)), rig.usage.totals("x")


@pytest.mark.parametrize("way", FAST_AND_ASGI)
def test_huge_upstream_headers_get_502_naming_the_cap_in_bounded_memory(tmp_path: Path, way: str) -> None:
    """An upstream whose answer head runs to 32 MiB gets the client a 502 that names the server and
    the cap, and the proxy stops reading it past the cap (the peak memory barely rises)."""

    def endless_head(sock: socket.socket) -> None:
        _read_request_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-huge: ")
        with suppress(OSError):
            for _ in range(32):
                sock.sendall(SEND_PIECE)

    with (
        running_proxy(tmp_path, front=way == "front", limits=TIGHT) as rig,
        _tcp_upstream(endless_head) as port,
    ):
        rig.router.swap({"x": upstream("x", port, "raw")})
        with peak_growth() as growth:
            status, _, body = _fetch(rig, "POST", "/mcp/x", b"{}")
            grew = growth()
    assert status == 502
    message = json.loads(body)["error"]["message"]
    assert "'x'" in message and "over 8192 bytes" in message and "max_upstream_header" in message
    assert grew < 8 * MIB, f"peak memory rose by {grew / MIB:.0f} MiB"


@pytest.mark.parametrize("way", FAST_AND_ASGI)
@pytest.mark.parametrize("pooled", [False, True], ids=["new-connection", "pooled-connection"])
def test_a_client_that_leaves_before_a_silent_server_answers_frees_the_upstream(
    tmp_path: Path, way: str, pooled: bool
) -> None:
    """A server that never answers does not hold the proxy's upstream connection, its in-flight count
    (a drain waits on it) and its task once the client has gone: each retry of a client that gave up
    would else leave one more of each for as long as the server likes."""
    requests: list[int] = []
    closed = threading.Event()

    def silent(sock: socket.socket) -> None:
        while True:
            _read_request_head(sock)
            requests.append(1)
            if pooled and len(requests) == 1:  # the first one is answered: its connection is pooled
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
                )
                continue
            sock.settimeout(10)
            if sock.recv(65536) == b"":
                closed.set()
            return

    with (
        running_proxy(tmp_path, front=way == "front") as rig,
        _tcp_upstream(silent) as port,
    ):
        rig.router.swap({"x": upstream("x", port, "raw")})
        if pooled:
            assert _fetch(rig, "POST", "/mcp/x", b"{}")[0] == 200
        with _connect(rig) as sock:
            sock.sendall(b"POST /mcp/x HTTP/1.1\r\nhost: p\r\ncontent-length: 2\r\n\r\n{}")
            assert _eventually(lambda: len(requests) == (2 if pooled else 1))
        assert closed.wait(5), "the upstream connection outlived the client that left"
        assert _eventually(lambda: rig.router.inflight("raw") == 0)


def test_a_client_leaving_after_its_answer_leaves_the_next_request_on_that_upstream_alone(
    tmp_path: Path,
) -> None:
    """Once answered, a request's pooled upstream connection carries other clients' requests: the
    client that leaves afterwards (its keep-alive connection closing) must not cut theirs off."""

    async def answer(request: Request) -> Response:
        if await request.body() == b"slow":
            await asyncio.sleep(1.0)
        return Response(b"{}", media_type="application/json")

    with running_proxy(tmp_path) as rig, raw_upstream("x", Recorder(answer)) as up:
        rig.router.swap({"x": up})
        assert _fetch(rig, "POST", "/mcp/x", b"{}")[0] == 200  # an upstream connection is pooled
        first = _connect(rig)
        first.sendall(b"POST /mcp/x HTTP/1.1\r\nhost: p\r\ncontent-length: 2\r\n\r\n{}")
        assert first.recv(65536).startswith(b"HTTP/1.1 200")  # answered on the pooled connection
        result: list[int] = []
        other = threading.Thread(target=lambda: result.append(_fetch(rig, "POST", "/mcp/x", b"slow")[0]))
        other.start()
        time.sleep(0.3)  # the other request waits on the pooled connection
        first.close()
        other.join(10)
    assert result == [200]


# item 8: what a client sends ------------------------------------------------------------------
@pytest.fixture
def tight(tmp_path: Path) -> Iterator[Rig]:
    """A proxy with small caps and timeouts, served as the provider serves it, with server `x`."""
    with running_proxy(tmp_path, limits=TIGHT) as rig, raw_upstream("x", Recorder()) as up:
        rig.router.swap({"x": up})
        yield rig


FAST_PATH = ("POST", "/mcp/x")
ASGI_PATH = ("POST", "/hooks/github")  # not /mcp/: the pages' and hooks' way in
TARGETS = pytest.mark.parametrize("target", [FAST_PATH, ASGI_PATH], ids=["fast", "asgi"])


@TARGETS
def test_huge_request_headers_get_431(tight: Rig, target: tuple[str, str]) -> None:
    """Header lines past `max_header` (here 1 MiB of them) get 431 and a closed connection."""
    method, path = target
    head = f"{method} {path} HTTP/1.1\r\nhost: proxy\r\n".encode()
    lines = b"".join(b"x-filler-%d: %s\r\n" % (n, b"v" * 1000) for n in range(1024))
    with _connect(tight) as sock:
        with suppress(OSError):
            sock.sendall(head + lines + b"\r\n")
        status, body = _read_answer(sock)
    assert status == 431
    assert "over 4096 bytes" in body


@TARGETS
def test_one_header_line_past_the_cap_gets_431_even_in_one_read(tight: Rig, target: tuple[str, str]) -> None:
    """A single 6 KiB header (over a 4 KiB cap), sent in one piece, is refused too."""
    method, path = target
    with _connect(tight) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nhost: p\r\nx-big: {'v' * 6000}\r\n\r\n".encode())
        assert _read_answer(sock)[0] == 431


@TARGETS
def test_a_huge_url_gets_414_without_stalling_other_clients(tight: Rig, target: tuple[str, str]) -> None:
    """A 64 MiB request target gets 414 while other clients keep being answered promptly."""
    method, path = target
    answers: list[int] = []

    def send_huge() -> None:
        with _connect(tight) as sock:
            with suppress(OSError):
                sock.sendall(f"{method} {path}?q=".encode())
                for _ in range(64):
                    sock.sendall(SEND_PIECE)
            answers.append(_read_answer(sock)[0])

    sender = threading.Thread(target=send_huge)
    sender.start()
    slowest = 0.0
    while sender.is_alive():
        started = time.monotonic()
        assert _fetch(tight, "POST", "/mcp/x", b"{}")[0] == 200
        slowest = max(slowest, time.monotonic() - started)
    sender.join()
    assert answers == [414]
    assert slowest < 1.0, f"a small request took {slowest:.2f}s while the huge URL arrived"


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /mcp/x HTTP/1.1\r\nhost: p\r\n", b"POST /hooks/github HTTP/1.1\r\nhost: p\r\n"],
    ids=["nothing", "fast-half-head", "asgi-half-head"],
)
def test_a_head_not_complete_within_the_header_timeout_is_closed(tight: Rig, sent: bytes) -> None:
    """A connection that sends nothing, or half a head, is answered 408 and closed after the header
    timeout (0.5 s), however it trickles."""
    with _connect(tight) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        with suppress(OSError):
            for n in range(40):  # slowloris: a new header line every 0.1 s
                if sent:
                    sock.sendall(b"x-slow-%d: 1\r\n" % n)
                time.sleep(0.1)
                if _closed_now(sock):
                    break
        status = _read_answer(sock)[0]
        took = time.monotonic() - started
    assert status == 408
    assert 0.45 < took < 2.0, f"closed after {took:.2f}s, the header timeout is 0.5s"


@pytest.mark.parametrize("target", [FAST_PATH, ("PUT", "/mcp/x")], ids=["fast", "asgi"])
def test_a_body_trickling_past_the_body_timeout_is_closed(tight: Rig, target: tuple[str, str]) -> None:
    """A body sent a byte every 0.1 s is answered 408 and closed after the body timeout (0.5 s)."""
    method, path = target
    with _connect(tight) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nhost: p\r\ncontent-length: 100\r\n\r\n".encode())
        started = time.monotonic()
        with suppress(OSError):
            for _ in range(100):
                sock.sendall(b"x")
                time.sleep(0.1)
                if _closed_now(sock):
                    break
        status = _read_answer(sock)[0]
        took = time.monotonic() - started
    assert status == 408
    assert 0.45 < took < 2.0, f"closed after {took:.2f}s, the body timeout is 0.5s"


@pytest.mark.parametrize("target", [FAST_PATH, ("PUT", "/mcp/x")], ids=["fast", "asgi"])
def test_a_body_over_max_body_gets_413(tight: Rig, target: tuple[str, str]) -> None:
    """A body over the configured `max_body` (64 KiB here) is refused with 413 naming the cap."""
    status, _, body = _fetch(tight, target[0], target[1], b"x" * (65 * 1024))
    assert status == 413
    assert "over 65536 bytes" in body.decode()


@pytest.mark.parametrize("target", [FAST_PATH, ("PATCH", "/mcp/x")], ids=["fast", "asgi"])
def test_a_client_that_reads_nothing_of_its_answer_is_dropped_after_the_send_timeout(
    tmp_path: Path, target: tuple[str, str]
) -> None:
    """A client that asks for a 64 MiB answer and reads none of it is dropped once the send timeout
    (0.5 s) has passed with the proxy unable to write: it then gets what was buffered, and the end."""
    with (
        running_proxy(tmp_path, limits=TIGHT) as rig,
        raw_upstream("x", _streaming(LARGE, sized=True)) as up,
    ):
        rig.router.swap({"x": up})
        with _connect(rig) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            method, path = target
            sock.sendall(f"{method} {path} HTTP/1.1\r\nhost: p\r\ncontent-length: 2\r\n\r\n{{}}".encode())
            time.sleep(2.0)
            received = 0
            with suppress(OSError):
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
    assert 0 < received < LARGE // 4, f"received {received} bytes"


@pytest.mark.parametrize("target", [FAST_PATH, ("PUT", "/mcp/x"), ASGI_PATH], ids=["fast", "asgi", "hooks"])
def test_endless_chunk_trailers_are_cut_off_in_bounded_memory(tight: Rig, target: tuple[str, str]) -> None:
    """A chunked body followed by endless trailer lines (httptools hands them over as headers) gets
    413 and a closed connection once past `max_body` plus a head and one read, in bounded memory."""
    method, path = target
    trailers = b"".join(b"x-trailer-%d: %s\r\n" % (n, b"v" * 990) for n in range(1024))  # ~1 MiB
    with peak_growth() as growth, _connect(tight) as sock:
        with suppress(OSError):
            sock.sendall(
                f"{method} {path} HTTP/1.1\r\nhost: p\r\ntransfer-encoding: chunked\r\n\r\n".encode()
            )
            sock.sendall(b"2\r\n{}\r\n0\r\n")
            for _ in range(64):
                sock.sendall(trailers)
        started = time.monotonic()
        status, body = _read_answer(sock)  # until the proxy closes
        closed_after = time.monotonic() - started
        grew = growth()
    assert status in (413, 404), body  # 404: the hooks route answered before the body, then the close
    assert closed_after < 5
    assert grew < 16 * MIB, f"peak memory rose by {grew / MIB:.0f} MiB"


def test_connections_past_the_limit_get_503_and_are_closed(tight: Rig) -> None:
    """With 20 connections open, the 21st is answered 503 and closed at once; once some close, new
    connections are served again."""
    held = [_connect(tight) for _ in range(20)]
    try:
        time.sleep(0.1)
        with _connect(tight) as extra:
            extra.sendall(b"POST /mcp/x HTTP/1.1\r\nhost: p\r\ncontent-length: 2\r\n\r\n{}")
            status, body = _read_answer(extra)
        assert status == 503
        assert "over 20 open connections" in body
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 2
    while _fetch(tight, "POST", "/mcp/x", b"{}")[0] != 200:
        assert time.monotonic() < deadline, "new connections are still refused after the others closed"
        time.sleep(0.05)


def test_requests_within_the_limits_keep_working_on_one_connection(tight: Rig) -> None:
    """Heads and bodies under the caps, sent at once, are served on one keep-alive connection, and
    an idle kept-alive connection is left to uvicorn's keep-alive timer, not closed as a slow head."""
    conn = http.client.HTTPConnection("127.0.0.1", tight.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("POST", "/mcp/x", body=b"{}", headers={"x-fine": "v" * 1000})
            reply = conn.getresponse()
            assert reply.status == 200
            reply.read()
        time.sleep(0.3)  # under uvicorn's keep-alive of 5 s, over half the header timeout
        conn.request("POST", "/mcp/x", body=b"{}")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


# helpers --------------------------------------------------------------------------------------
def _download(rig: Rig, method: str, body: bytes) -> tuple[int, dict[str, str], int]:
    """Send a request to /mcp/x and read the answer, discarding its body; return its size."""
    conn = http.client.HTTPConnection("127.0.0.1", rig.port, timeout=30)
    try:
        conn.request(method, "/mcp/x", body=body, headers={"content-type": "application/json"})
        reply = conn.getresponse()
        received = 0
        while chunk := reply.read(256 * 1024):
            received += len(chunk)
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, received
    finally:
        conn.close()


def _fetch(rig: Rig, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection; the whole answer."""
    conn = http.client.HTTPConnection("127.0.0.1", rig.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        reply = conn.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        conn.close()


def _connect(rig: Rig) -> socket.socket:
    return socket.create_connection(("127.0.0.1", rig.port), timeout=10)


def _read_answer(sock: socket.socket) -> tuple[int, str]:
    """The status and body of the one answer the proxy sends before closing (0 if none)."""
    data = bytearray()
    with suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body.decode("utf-8", "replace")


def _closed_now(sock: socket.socket) -> bool:
    """Whether the proxy has answered or closed (without consuming what it sent)."""
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK)) or True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)
        sock.settimeout(10)


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _read_request_head(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk


@contextmanager
def _tcp_upstream(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A raw TCP upstream on loopback: each connection is handed to `handle`, then closed."""
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            with sock, suppress(OSError):
                handle(sock)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(5)
        listener.close()
