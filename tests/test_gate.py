"""The MCP health gate: its waiting with a fake clock, its handshake against real servers on loopback."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipeline import gate
from pipeline.errors import AnswerTooLarge, GateError, NotMCP
from tests.support.clock import FakeClock
from tests.support.loopback import free_port, huge_tools_app, mcp_app, serve_asgi
from tests.support.memory import peak_growth


@pytest.mark.parametrize("stateless", [False, True])
@pytest.mark.parametrize("json_response", [False, True])
def test_sdk_server_passes_the_gate_and_its_tools_are_recorded(stateless: bool, json_response: bool) -> None:
    """A real SDK server passes with its tool list, over JSON or SSE answers, with or without sessions."""
    with serve_asgi(mcp_app("gated", stateless=stateless, json_response=json_response)) as port:
        result = gate.wait_until_healthy(f"http://127.0.0.1:{port}/mcp", timeout=10, interval=0.1)
    assert [t["name"] for t in result.tools] == ["echo"]
    assert result.tools[0]["inputSchema"]["properties"]["text"]["type"] == "string"
    assert result.server_name == "gated"
    assert result.protocol_version.startswith("20")


def test_http_server_that_is_not_mcp_fails_after_the_deadline() -> None:
    """A server that answers HTTP 200 but not MCP never passes; the error says what it answered."""
    app = Starlette(routes=[Route("/mcp", lambda r: HTMLResponse("<h1>hello</h1>"), methods=["GET", "POST"])])
    with serve_asgi(app) as port, pytest.raises(GateError) as err:
        gate.wait_until_healthy(f"http://127.0.0.1:{port}/mcp", timeout=0.6, interval=0.1)
    assert "no MCP handshake within" in str(err.value)
    assert "text/html" in str(err.value)


def test_jsonrpc_error_to_initialize_is_not_healthy() -> None:
    """An endpoint answering initialize with a JSON-RPC error does not pass."""
    body = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "nope"}}
    app = Starlette(routes=[Route("/mcp", lambda r: JSONResponse(body), methods=["POST"])])
    with serve_asgi(app) as port, pytest.raises(GateError) as err:
        gate.wait_until_healthy(f"http://127.0.0.1:{port}/mcp", timeout=0.5, interval=0.1)
    assert "error" in str(err.value)


def test_nothing_listening_fails_with_the_connection_reason() -> None:
    """With nothing on the port the gate fails at the deadline naming the connection error."""
    with pytest.raises(GateError) as err:
        gate.wait_until_healthy(f"http://127.0.0.1:{free_port()}/mcp", timeout=0.3, interval=0.1)
    assert "connection" in str(err.value)


def test_exited_container_fails_at_once_without_waiting_for_the_deadline() -> None:
    """When the container is no longer alive the gate fails on its first check, not at the deadline."""
    clock = FakeClock()
    started = clock()
    with pytest.raises(GateError) as err:
        gate.wait_until_healthy(
            "http://127.0.0.1:9/mcp",
            timeout=3600,
            interval=1,
            alive=lambda: False,
            clock=clock,
            sleep=clock.sleep,
        )
    assert "exited" in str(err.value)
    assert clock() == started


def test_gate_sees_a_server_that_starts_late_soon_after_it_listens() -> None:
    """A server that starts listening while the gate retries passes within a backoff step of listening."""
    port = free_port()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(gate.wait_until_healthy, f"http://127.0.0.1:{port}/mcp", timeout=10, interval=1)
        time.sleep(0.3)
        with serve_asgi(mcp_app(), port=port):
            listening = time.monotonic()
            result = waiting.result(10)
            passed = time.monotonic()
    assert result.tools and result.seconds >= 0.3
    assert passed - listening < gate.MAX_BACKOFF + 0.2


def test_port_that_accepts_and_closes_is_not_up_yet() -> None:
    """A port that accepts and closes unanswered (docker-proxy before the server listens) is not up yet."""
    with _accept_and_close() as port, pytest.raises(GateError) as err:
        gate.wait_until_healthy(f"http://127.0.0.1:{port}/mcp", timeout=0.3, interval=1)
    assert "connection:" in str(err.value)
    assert "not as an MCP" not in str(err.value)


class FakeTime:
    """A monotonic clock that moves only when the gate sleeps, recording each pause."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def _refusing(times: int = 10**9) -> Callable[[str, float], gate.GateResult]:
    """A probe that is refused `times` times, then passes."""
    calls = iter(range(times + 1))

    def probe(url: str, timeout: float) -> gate.GateResult:
        if next(calls) < times:
            raise ConnectionRefusedError(111, "Connection refused")
        return gate.GateResult("2025-11-25", "fake", [{"name": "t"}])

    return probe


def _gate(fake: FakeTime, probe: Callable[[str, float], gate.GateResult], **kwargs: Any) -> gate.GateResult:
    options: dict[str, Any] = {"timeout": 20.0, "interval": 1.0, **kwargs}
    return gate.wait_until_healthy(
        "http://127.0.0.1:9/mcp", clock=fake.clock, sleep=fake.sleep, probe=probe, **options
    )


def test_backoff_doubles_from_ten_milliseconds_and_is_capped() -> None:
    """Pauses start at FIRST_BACKOFF and double up to MAX_BACKOFF, or to a shorter manifest interval."""
    assert list(itertools.islice(gate.backoff(1.0), 5)) == [0.01, 0.02, 0.04, 0.05, 0.05]
    assert list(itertools.islice(gate.backoff(0.03), 3)) == [0.01, 0.02, 0.03]
    assert list(itertools.islice(gate.backoff(0.005), 2)) == [0.005, 0.005]


def test_pauses_grow_and_stay_bounded_while_nothing_listens() -> None:
    """While the port refuses, the gate's pauses grow from 10 ms and never exceed MAX_BACKOFF."""
    fake = FakeTime()
    with pytest.raises(GateError):
        _gate(fake, _refusing(), timeout=2.0)
    assert fake.pauses[:3] == [0.01, 0.02, 0.04]
    assert max(fake.pauses) == gate.MAX_BACKOFF


def test_deadline_holds_and_the_error_names_the_last_failure() -> None:
    """A candidate that never answers fails exactly at its deadline, naming the connection error."""
    fake = FakeTime()
    with pytest.raises(GateError) as err:
        _gate(fake, _refusing(), timeout=2.0)
    assert fake.now == pytest.approx(2.0)
    assert "no MCP handshake within 2s" in str(err.value)
    assert "ConnectionRefusedError" in str(err.value)


def test_a_last_attempt_cut_by_the_deadline_keeps_what_the_server_said() -> None:
    """A server that answers initialize with an error, then a last attempt that only times out (the
    deadline cut it short): the error names the timeout and the server's own answer before it."""
    fake = FakeTime()
    answers = iter([NotMCP("initialize returned error -32000: did not answer initialize within 4s")])

    def probe(url: str, timeout: float) -> gate.GateResult:
        fake.now += min(timeout, 4.5)  # the bridge answers after its 4s init timeout
        raise next(answers, TimeoutError("timed out"))

    with pytest.raises(GateError) as err:
        _gate(fake, probe, timeout=8.0)
    assert "last: connection: TimeoutError: timed out" in str(err.value)
    assert "the server last answered: initialize returned error -32000: did not answer" in str(err.value)


def test_connection_refused_then_success_returns_quickly() -> None:
    """Three refusals then a handshake pass after 10 + 20 + 40 ms, not after three intervals."""
    fake = FakeTime()
    result = _gate(fake, _refusing(3))
    assert result.seconds == pytest.approx(0.07)
    assert result.server_name == "fake"


def test_container_that_dies_while_waited_for_fails_without_the_deadline() -> None:
    """A container that exits while the gate retries fails a check period later, not at its deadline."""
    fake = FakeTime()
    with pytest.raises(GateError) as err:
        _gate(fake, _refusing(), timeout=3600.0, alive=lambda: fake.now < 1.0)
    assert 1.0 <= fake.now <= 1.0 + gate.ALIVE_PERIOD + gate.MAX_BACKOFF
    assert "exited" in str(err.value) and "ConnectionRefusedError" in str(err.value)


def test_a_container_that_died_during_an_attempt_held_to_the_deadline_is_named_as_exited() -> None:
    """One attempt can outlast the whole timeout (the Swarm relay waits its connect timeout on a task
    that is gone): the gate then says the container exited, not that it never spoke MCP."""
    fake = FakeTime()

    def slow(url: str, timeout: float) -> gate.GateResult:
        fake.now += timeout
        raise http.client.RemoteDisconnected("Remote end closed connection without response")

    with pytest.raises(GateError, match="exited before completing the MCP handshake"):
        _gate(fake, slow, timeout=5.0, alive=lambda: fake.now < 1.0)


def test_container_state_is_checked_at_most_every_alive_period() -> None:
    """Docker is asked about the container at most once per ALIVE_PERIOD, not on every quick attempt."""
    fake = FakeTime()
    checks: list[float] = []

    def alive() -> bool:
        checks.append(fake.now)
        return True

    with pytest.raises(GateError):
        _gate(fake, _refusing(), timeout=1.0, alive=alive)
    assert len(fake.pauses) > 2 * len(checks)
    assert all(b - a >= gate.ALIVE_PERIOD for a, b in itertools.pairwise(checks))


def test_endpoint_that_is_not_mcp_is_retried_until_the_deadline_and_named() -> None:
    """An answer that is not MCP keeps failing until the deadline and the error says what it answered."""
    fake = FakeTime()

    def probe(url: str, timeout: float) -> gate.GateResult:
        raise NotMCP("initialize answered HTTP 404: not found")

    with pytest.raises(GateError) as err:
        _gate(fake, probe, timeout=1.0)
    assert "HTTP 404" in str(err.value)


@contextmanager
def _accept_and_close() -> Iterator[int]:
    """Listen on a loopback port that accepts each connection and closes it at once."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_stateless_era_server_is_gated_with_tools_list_alone() -> None:
    """A 2026-07-28 server that refuses initialize passes with a stateless tools/list carrying Mcp-Method."""
    seen: list[tuple[str, str]] = []

    async def endpoint(request: Request) -> JSONResponse:
        message = await request.json()
        seen.append((message["method"], request.headers.get("mcp-method", "")))
        if message["method"] == "initialize":
            return JSONResponse(
                {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "error": {"code": -32601, "message": "stateless only"},
                }
            )
        tools = [{"name": "lookup", "inputSchema": {"type": "object"}}]
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": {"tools": tools}})

    app = Starlette(routes=[Route("/mcp", endpoint, methods=["POST"])])
    with serve_asgi(app) as port:
        result = gate.wait_until_healthy(f"http://127.0.0.1:{port}/mcp", timeout=5, interval=0.1)
    assert result.protocol_version == gate.STATELESS_PROTOCOL
    assert [t["name"] for t in result.tools] == ["lookup"]
    assert ("tools/list", "tools/list") in seen


def test_tools_list_pages_are_all_collected() -> None:
    """A server that pages its tool list has every page collected by the gate."""

    async def endpoint(request: Request) -> Response:
        message = await request.json()
        if "id" not in message:
            return Response(status_code=202)
        if message["method"] == "initialize":
            result: dict[str, object] = {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "serverInfo": {"name": "paged", "version": "1"},
            }
        elif (message.get("params") or {}).get("cursor") == "2":
            result = {"tools": [{"name": "second", "inputSchema": {"type": "object"}}]}
        else:
            result = {"tools": [{"name": "first", "inputSchema": {"type": "object"}}], "nextCursor": "2"}
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": result})

    app = Starlette(routes=[Route("/mcp", endpoint, methods=["POST", "DELETE"])])
    with serve_asgi(app) as port:
        result = gate.wait_until_healthy(f"http://127.0.0.1:{port}/mcp", timeout=5, interval=0.1)
    assert [t["name"] for t in result.tools] == ["first", "second"]


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
def test_a_huge_tools_list_fails_the_gate_at_once_naming_the_cap(sse: bool) -> None:
    """A 150 MiB tools/list fails the gate at once (no retries until the deadline) with an error that
    names the method and the cap, and the gate reads little past the cap."""
    with serve_asgi(huge_tools_app(150 << 20, sse=sse)) as port, peak_growth() as growth:
        started = time.monotonic()
        with pytest.raises(AnswerTooLarge) as err:
            url = f"http://127.0.0.1:{port}/mcp"
            gate.wait_until_healthy(url, timeout=60, interval=0.1, max_bytes=1 << 20)
        took = time.monotonic() - started
        grew = growth()
    assert "tools/list answered more than 1048576 bytes" in str(err.value)
    assert "proxy.max_handshake" in str(err.value)
    assert took < 10
    assert grew < 16 << 20, f"peak memory rose by {grew >> 20} MiB"


def test_an_answer_that_trickles_past_the_timeout_ends_the_handshake() -> None:
    """A server that sends its answer a byte at a time cannot hold a handshake past its timeout."""

    async def endpoint(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(1000):
                yield b" "
                await asyncio.sleep(0.05)

        return StreamingResponse(body(), media_type="application/json")

    app = Starlette(routes=[Route("/mcp", endpoint, methods=["POST"])])
    with serve_asgi(app) as port:
        started = time.monotonic()
        with pytest.raises((NotMCP, TimeoutError)):  # past the deadline, or the last read timed out
            gate.handshake(f"http://127.0.0.1:{port}/mcp", 0.5)
        assert time.monotonic() - started < 2


def test_a_failed_initialize_is_reported_not_the_stateless_fallbacks_error() -> None:
    """When initialize fails the gate reports that error first, not what the stateless retry then read."""

    async def endpoint(request: Request) -> Response:
        message = await request.json()
        if message.get("method") == "initialize":
            error = {"code": -32603, "message": "crypto is not defined"}
            return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "error": error})
        refused = {"code": -32000, "message": "Bad Request: Server not initialized"}
        return JSONResponse({"jsonrpc": "2.0", "id": None, "error": refused}, status_code=400)

    app = Starlette(routes=[Route("/mcp", endpoint, methods=["POST"])])
    with serve_asgi(app) as port, pytest.raises(GateError) as err:
        gate.wait_until_healthy(f"http://127.0.0.1:{port}/mcp", timeout=0.5, interval=0.1)
    text = str(err.value)
    assert "initialize returned error -32603: crypto is not defined" in text, text
    assert text.index("crypto is not defined") < text.find("Server not initialized") or (
        "Server not initialized" not in text
    )


@pytest.mark.parametrize("kept", [6, 20, 39])
def test_a_secret_cut_off_in_the_gates_error_is_masked_all_the_same(kept: int) -> None:
    """The gate quotes a server's error cut at 160 characters, and output is masked after that: a
    server placing its secret across the cut showed all of it but its last characters to the pusher."""
    from pipeline.masking import Masker

    secret = "Zq8v3LrT0pWmX2cN7bKd4HfYs9AeUg5J1oViEtRn"  # 40 characters
    # "-32000: " and the filler fill the 160 characters the excerpt keeps up to `kept` of the secret
    message = "x" * (160 - len("-32000: ") - kept) + secret
    body = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": message}}
    app = Starlette(routes=[Route("/mcp", lambda r: JSONResponse(body), methods=["POST"])])
    with serve_asgi(app) as port, pytest.raises(GateError) as err:
        gate.wait_until_healthy(f"http://127.0.0.1:{port}/mcp", timeout=0.5, interval=0.1)
    assert secret[:kept] in str(err.value)  # the cut is where the test put it
    shown = Masker([secret])(str(err.value))
    assert secret[:kept] not in shown, shown


def test_an_answer_nested_past_the_parsers_depth_is_not_mcp() -> None:
    """A server answering JSON nested too deep for the parser (RecursionError) fails the gate
    with NotMCP, as any answer that is not JSON does."""
    deep = b"[" * 100_000
    with pytest.raises(NotMCP):
        gate._find_response("application/json", deep, 1)
    with pytest.raises(NotMCP):
        gate._find_response("text/event-stream", b"data: " + deep + b"\n\n", 1)


def _dripping_server(head: bytes) -> tuple[socket.socket, threading.Event]:
    """A server on 127.0.0.1 that sends `head`, then one more byte every 50 ms, to every client."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(head)
            while not stop.is_set():
                try:
                    conn.sendall(b"a")
                except OSError:
                    return
                time.sleep(0.05)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, stop


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nX-Slow: ", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"],
    ids=["head", "body"],
)
def test_a_server_dripping_its_answer_is_cut_at_the_handshakes_timeout(head: bytes) -> None:
    """An answer sent a byte at a time, each byte within the socket's timeout, ends the handshake at
    its timeout in all: a header line or a body read per read only would hold the gate (or the
    monitor's probe, which probes every server in turn) for an hour."""
    listener, stop = _dripping_server(head)
    started = time.monotonic()
    try:
        with pytest.raises((OSError, http.client.HTTPException, NotMCP)):
            gate.handshake(f"http://127.0.0.1:{listener.getsockname()[1]}/mcp", 0.5)
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        listener.close()


def test_optional_lists_the_gate_cannot_read_leave_the_kind_out() -> None:
    """A server offering resources whose resources/list is over max_handshake still passes the gate,
    its resources unknown (None), its prompts listed; only the tool contract reads them."""

    async def endpoint(request: Request) -> Response:
        message = await request.json()
        if "id" not in message:
            return Response(status_code=202)
        method, answer_id = message["method"], message["id"]
        if method == "initialize":
            capabilities: dict[str, Any] = {"tools": {}, "resources": {}, "prompts": {}}
            info = {
                "protocolVersion": "2025-11-25",
                "capabilities": capabilities,
                "serverInfo": {"name": "s"},
            }
            return JSONResponse({"jsonrpc": "2.0", "id": answer_id, "result": info})
        lists: dict[str, dict[str, Any]] = {
            "tools/list": {"tools": [{"name": "t", "inputSchema": {"type": "object"}}]},
            "prompts/list": {"prompts": [{"name": "p"}]},
            "resources/list": {
                "resources": [{"uri": f"file:///{i}", "name": "x" * 100} for i in range(2000)]
            },
        }
        return JSONResponse({"jsonrpc": "2.0", "id": answer_id, "result": lists[method]})

    app = Starlette(routes=[Route("/mcp", endpoint, methods=["POST", "DELETE"])])
    with serve_asgi(app) as port:
        url = f"http://127.0.0.1:{port}/mcp"
        result = gate.wait_until_healthy(url, timeout=5, interval=0.1, max_bytes=100_000, surface=True)
    assert [t["name"] for t in result.tools] == ["t"]
    assert result.prompts == [{"name": "p"}] and result.resources is None
