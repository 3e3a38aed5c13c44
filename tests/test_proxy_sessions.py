"""Sessions across swaps: a session stays on the upstream that issued it until it ends or is retired.

Two real SDK servers A and B (their `whoami` tool answers "A" / "B") sit behind the real proxy; the
test swaps, drains and retires them with the Router exactly as a deploy does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.responses import Response

from pipeline.proxy.router import Upstream
from pipeline.proxy.sessions import Session, SessionTable
from pipeline.store import SessionRow
from tests.support.loopback import free_port, serve_asgi
from tests.support.proxy_rig import (
    ACCEPT_BOTH,
    LEGACY,
    Recorder,
    Rig,
    connect,
    eventually,
    jsonrpc,
    raw_upstream,
    running_proxy,
    sdk_app,
    sdk_upstream,
    text_of,
)

SESSION_GONE = -32001
Pair = tuple[Upstream, Upstream]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A proxy with open access (no projects)."""
    with running_proxy(tmp_path) as running:
        yield running


@pytest.fixture
def a_and_b(rig: Rig) -> Iterator[tuple[Upstream, Upstream]]:
    """Two session-era SDK servers for `x`; A is live."""
    with sdk_upstream("x", "A") as a, sdk_upstream("x", "B") as b:
        rig.router.swap({"x": a})
        yield a, b


async def _whoami(client: Client) -> str:
    return text_of(await client.call_tool("whoami"))


async def _raw_session(http: httpx2.AsyncClient, url: str) -> str:
    """Open a session with a raw initialize + initialized; return its id."""
    init = jsonrpc(
        "initialize",
        {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    )
    reply = await http.post(url, headers=ACCEPT_BOTH, content=json.dumps(init))
    session_id = reply.headers["mcp-session-id"]
    headers = {**ACCEPT_BOTH, "mcp-session-id": session_id, "mcp-protocol-version": LEGACY}
    note = await http.post(
        url, headers=headers, content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    )
    assert note.status_code == 202
    return session_id


async def test_session_stays_on_the_upstream_that_issued_it_after_a_swap(rig: Rig, a_and_b: Pair) -> None:
    """After a swap the old session's calls still reach A while new clients, of either era, reach B."""
    a, b = a_and_b
    async with connect(rig.url("x"), mode="legacy") as old:
        assert await _whoami(old) == "A"
        assert {n: g.first for n, g in rig.router.swap({"x": b}).items()} == {"x": a}
        assert await _whoami(old) == "A"
        async with connect(rig.url("x"), mode="legacy") as new:
            assert await _whoami(new) == "B"
        async with connect(rig.url("x"), mode="auto") as modern:
            assert await _whoami(modern) == "B"
        assert await _whoami(old) == "A"
        assert rig.router.sessions_on("A") == 1


async def test_retired_upstreams_sessions_answer_404_and_the_sdk_client_raises(
    rig: Rig, a_and_b: Pair
) -> None:
    """After retire(A) A's session id answers HTTP 404; the SDK client raises and does not re-initialize.

    The SDK client turns the 404's JSON-RPC error body into an MCPError for the call; it does not
    start a new session by itself, so the application must open a new Client (which reaches B).
    """
    _, b = a_and_b
    responses: list[httpx2.Response] = []
    async with connect(rig.url("x"), mode="legacy", statuses=responses) as old:
        assert await _whoami(old) == "A"
        session_id = responses[0].headers["mcp-session-id"]
        rig.router.swap({"x": b})
        assert rig.router.retire("A") == 1
        assert rig.router.sessions_on("A") == 0
        async with httpx2.AsyncClient() as http:
            raw = await http.post(
                rig.url("x"),
                headers={**ACCEPT_BOTH, "mcp-session-id": session_id},
                content=json.dumps(jsonrpc("tools/list")),
            )
        assert raw.status_code == 404
        assert raw.json()["error"]["code"] == SESSION_GONE
        with pytest.raises(MCPError) as raised:
            await _whoami(old)
        assert raised.value.error.code == SESSION_GONE
        initializes = [r for r in responses if b'"initialize"' in r.request.content]
        assert len(initializes) == 1, "the SDK client sent no second initialize"
    async with connect(rig.url("x"), mode="legacy") as fresh:
        assert await _whoami(fresh) == "B"


async def test_retire_closes_the_open_streams_of_the_retired_upstream(rig: Rig, a_and_b: Pair) -> None:
    """An open GET event stream of a session on A ends promptly when A is retired."""
    _, b = a_and_b
    async with httpx2.AsyncClient(timeout=30) as http:
        session_id = await _raw_session(http, rig.url("x"))
        headers = {
            "accept": "text/event-stream",
            "mcp-session-id": session_id,
            "mcp-protocol-version": LEGACY,
        }
        async with http.stream("GET", rig.url("x"), headers=headers) as stream:
            assert stream.status_code == 200
            rig.router.swap({"x": b})
            await asyncio.sleep(0.5)
            assert rig.router.inflight("A") == 1
            retired_at = time.monotonic()
            rig.router.retire("A")
            async for _ in stream.aiter_raw():
                pass
            closed_after = time.monotonic() - retired_at
    assert closed_after < 1.0
    assert await eventually(lambda: rig.router.inflight("A") == 0)


async def test_delete_ends_the_session(rig: Rig, a_and_b: Pair) -> None:
    """The SDK client's DELETE on exit ends its session: the router forgets it, A holds none."""
    responses: list[httpx2.Response] = []
    async with connect(rig.url("x"), mode="legacy", statuses=responses) as client:
        assert await _whoami(client) == "A"
        assert rig.router.sessions_on("A") == 1
        session_id = responses[0].headers["mcp-session-id"]
    assert [r.status_code for r in responses if r.request.method == "DELETE"] == [200]
    assert rig.router.sessions_on("A") == 0
    assert rig.router.session(session_id) is None
    async with httpx2.AsyncClient() as http:
        after = await http.post(
            rig.url("x"),
            headers={**ACCEPT_BOTH, "mcp-session-id": session_id},
            content=json.dumps(jsonrpc("tools/list")),
        )
    assert after.status_code == 404, "an ended session id answers 404"


async def test_session_id_on_another_servers_path_gets_404(rig: Rig, a_and_b: Pair) -> None:
    """A session issued by server x presented on /mcp/y answers 404, not y's answer."""
    with sdk_upstream("y", "Y") as y:
        rig.router.swap({"y": y})
        async with httpx2.AsyncClient() as http:
            session_id = await _raw_session(http, rig.url("x"))
            reply = await http.post(
                rig.url("y"),
                headers={**ACCEPT_BOTH, "mcp-session-id": session_id},
                content=json.dumps(jsonrpc("tools/list")),
            )
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == SESSION_GONE


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_call_in_flight_during_a_swap_completes_on_the_old_upstream(rig: Rig, mode: str) -> None:
    """A slow call that started on A before the swap returns A's answer; drain(A) returns only after
    A has answered it (the client's own finish comes later: it still has to read and parse the answer)."""
    calls: list[str] = []
    ended: list[float] = []
    with (
        sdk_upstream("x", "A", stateless=mode == "auto", calls=calls, ended=ended) as a,
        sdk_upstream("x", "B", stateless=mode == "auto") as b,
    ):
        rig.router.swap({"x": a})
        async with connect(rig.url("x"), mode=mode) as client:
            call = asyncio.create_task(client.call_tool("slow", {"seconds": 2.0, "steps": 2}))
            while "slow" not in calls:
                await asyncio.sleep(0.02)
            rig.router.swap({"x": b})
            draining = asyncio.create_task(asyncio.to_thread(_timed_drain, rig, "A"))
            async with connect(rig.url("x"), mode=mode) as other:
                assert await _whoami(other) == "B"
            assert text_of(await call) == "A"
        emptied, drained_at = await draining
    assert emptied
    assert len(ended) == 1
    assert drained_at >= ended[0], "drain returned while the call was still running"


def _timed_drain(rig: Rig, container_id: str) -> tuple[bool, float]:
    emptied = rig.router.drain(container_id, 10.0, 10.0)
    return emptied, time.monotonic()


async def test_drain_waits_for_open_sessions_until_they_end(rig: Rig, a_and_b: Pair) -> None:
    """Draining A times out while a session is open on it and succeeds once the client has ended it."""
    _, b = a_and_b
    async with connect(rig.url("x"), mode="legacy") as client:
        assert await _whoami(client) == "A"
        rig.router.swap({"x": b})
        assert not await asyncio.to_thread(rig.router.drain, "A", 0.2, 0.5)
        assert await _whoami(client) == "A"
    assert await asyncio.to_thread(rig.router.drain, "A", 2.0, 2.0)


async def test_request_routed_before_a_swap_keeps_its_upstream_until_answered(rig: Rig) -> None:
    """A request whose body is still arriving at swap time is answered, not sent to a stopped upstream."""
    with ExitStack() as keep, ExitStack() as old:
        a = old.enter_context(raw_upstream("x", Recorder(), container_id="A"))
        b = keep.enter_context(raw_upstream("x", Recorder(), container_id="B"))
        rig.router.swap({"x": a})
        body = json.dumps(jsonrpc("tools/list")).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", rig.port)
        writer.write(
            b"POST /mcp/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        await writer.drain()
        await asyncio.sleep(0.3)  # the proxy has authorized and routed the request; it awaits the body
        rig.router.swap({"x": b})

        def drain_retire_stop() -> bool:
            drained = rig.router.drain("A", 5.0, 5.0)
            rig.router.retire("A")
            old.close()
            return drained

        deploy = asyncio.create_task(asyncio.to_thread(drain_retire_stop))
        await asyncio.sleep(0.5)
        writer.write(body)
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        await deploy
    assert status_line.startswith(b"HTTP/1.1 200"), status_line


# idle sessions ----------------------------------------------------------------------------------
IDLE_TIMEOUT = 0.5


@pytest.fixture
def expiring(tmp_path: Path) -> Iterator[Rig]:
    """A proxy whose sessions expire after IDLE_TIMEOUT with no request and no open stream."""
    with running_proxy(tmp_path, session_idle_timeout=IDLE_TIMEOUT) as running:
        yield running


def _issuing_recorder(session_id: str) -> Recorder:
    """A raw upstream that issues `session_id` to a request without one and answers DELETE with 200."""

    async def answer(request: Request) -> Response:
        if request.method == "DELETE":
            return Response(status_code=200)
        issued = {} if request.headers.get("mcp-session-id") else {"mcp-session-id": session_id}
        body = b'{"jsonrpc": "2.0", "id": 1, "result": {}}'
        return Response(body, media_type="application/json", headers=issued)

    return Recorder(answer)


async def test_idle_session_expires_and_is_ended_on_its_container(expiring: Rig) -> None:
    """A session with no request for the idle timeout is forgotten, its container gets a DELETE for it
    (clients such as mcp-remote never send one), and its id answers 404 from then on."""
    recorder = _issuing_recorder("s-1")
    with raw_upstream("x", recorder, container_id="R") as raw:
        expiring.router.swap({"x": raw})
        async with httpx2.AsyncClient() as http:
            init = await http.post(expiring.url("x"), headers=ACCEPT_BOTH, content=b"{}")
            assert init.headers["mcp-session-id"] == "s-1"
            used = await http.post(
                expiring.url("x"), headers={**ACCEPT_BOTH, "mcp-session-id": "s-1"}, content=b"{}"
            )
            assert used.status_code == 200
            assert expiring.router.sessions_on("R") == 1
            assert await eventually(lambda: expiring.router.session("s-1") is None, IDLE_TIMEOUT * 4)
            assert await eventually(lambda: any(s.method == "DELETE" for s in recorder.seen))
            deletes = [s for s in recorder.seen if s.method == "DELETE"]
            assert [(d.path, d.headers["mcp-session-id"]) for d in deletes] == [("/mcp", "s-1")]
            seen = len(recorder.seen)
            after = await http.post(
                expiring.url("x"), headers={**ACCEPT_BOTH, "mcp-session-id": "s-1"}, content=b"{}"
            )
    assert after.status_code == 404
    assert after.json()["error"]["code"] == SESSION_GONE
    assert len(recorder.seen) == seen, "the expired session's request was not forwarded"
    assert expiring.router.sessions_on("R") == 0


async def test_a_server_cannot_grow_the_session_table_with_huge_session_ids(rig: Rig) -> None:
    """A session id is visible ASCII (the spec) and short: a server issuing a 60 KiB one on every
    answer made the proxy hold (and save) 60 KiB per request until the idle timeout, an hour of a
    key's requests some GiB. Such an id is neither tracked nor relayed; the answer still is."""
    counter = iter(range(1_000_000))

    async def answer(request: Request) -> Response:
        issued = f"{next(counter):08d}".encode() + b"s" * (60 * 1024)
        return Response(
            b'{"jsonrpc": "2.0", "id": 1, "result": {}}',
            media_type="application/json",
            headers={"mcp-session-id": issued.decode()},
        )

    with raw_upstream("x", Recorder(answer), container_id="R") as raw:
        rig.router.swap({"x": raw})
        async with httpx2.AsyncClient() as http:
            for _ in range(20):
                reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=b"{}")
                assert reply.status_code == 200
                assert "mcp-session-id" not in reply.headers
    assert rig.router.sessions_on("R") == 0


async def test_expired_session_is_ended_on_a_container_reached_at_its_network_address(
    expiring: Rig,
) -> None:
    """A container is reached at its address on its own network, not at 127.0.0.1, and an SDK server's
    DNS-rebinding guard answers 421 to any Host but a loopback one: the DELETE that ends an expired
    session carries the same loopback Host as every forwarded request, so the session really ends."""
    port = free_port()
    with serve_asgi(sdk_app("A", protect=True), port, host="127.0.0.2"):
        upstream = Upstream("x", 1, "A", "127.0.0.2", port, "/mcp")  # as a container on its network
        expiring.router.swap({"x": upstream})
        async with httpx2.AsyncClient(timeout=30) as http:
            session_id = await _raw_session(http, expiring.url("x"))
            assert await eventually(lambda: expiring.router.session(session_id) is None, IDLE_TIMEOUT * 4)
            headers = {
                **ACCEPT_BOTH,
                "host": upstream.authority,
                "mcp-session-id": session_id,
                "mcp-protocol-version": LEGACY,
            }

            async def ended_on_the_container() -> bool:
                direct = await http.post(
                    upstream.base_url, headers=headers, content=json.dumps(jsonrpc("tools/list"))
                )
                return direct.status_code == 404

            deadline = time.monotonic() + 5
            while not await ended_on_the_container():
                assert time.monotonic() < deadline, "the container still holds the expired session"
                await asyncio.sleep(0.1)


async def test_session_with_an_open_stream_does_not_expire(expiring: Rig) -> None:
    """A session whose GET event stream stays open for several idle timeouts is kept and keeps working;
    once the stream closes it expires like any other."""
    with sdk_upstream("x", "A") as a:
        expiring.router.swap({"x": a})
        async with httpx2.AsyncClient(timeout=30) as http:
            session_id = await _raw_session(http, expiring.url("x"))
            headers = {
                "accept": "text/event-stream",
                "mcp-session-id": session_id,
                "mcp-protocol-version": LEGACY,
            }
            async with http.stream("GET", expiring.url("x"), headers=headers) as stream:
                assert stream.status_code == 200
                await asyncio.sleep(IDLE_TIMEOUT * 4)
                assert expiring.router.session(session_id) is not None
                call = await http.post(
                    expiring.url("x"),
                    headers={**ACCEPT_BOTH, "mcp-session-id": session_id, "mcp-protocol-version": LEGACY},
                    content=json.dumps(jsonrpc("tools/list")),
                )
                assert call.status_code == 200
            assert await eventually(lambda: expiring.router.session(session_id) is None, IDLE_TIMEOUT * 4)


# the session table ------------------------------------------------------------------------------
def _session(session_id: str, container_id: str = "c1", key_id: str = "k1") -> Session:
    return Session(session_id, "x", container_id, key_id)


def test_busy_sessions_never_expire_and_idle_ones_expire_in_the_order_they_went_idle() -> None:
    """Expiry ends only the sessions idle since before the cut-off; a busy one is skipped whatever its age."""
    table = SessionTable()
    old, busy, recent = _session("old"), _session("busy"), _session("recent")
    table.open(old, now=1.0)
    table.open(busy, now=0.0)
    table.open(recent, now=5.0)
    table.busy(busy)
    assert [s.id for s in table.end_idle_since(4.0)] == ["old"]
    assert old.ended and table.get("old") is None
    table.rest(busy, now=6.0)
    assert [s.id for s in table.end_idle_since(5.5)] == ["recent"]
    assert [s.id for s in table.end_idle_since(6.0)] == ["busy"]
    assert table.on("c1") == 0


def test_session_changes_are_journaled_once_per_id_in_their_last_state() -> None:
    """take_changes gives each session once, opened or ended as it is now; restored ones are not journaled."""
    table = SessionTable()
    table.restore([SessionRow("kept", "x", "c0", "k0")], now=0.0)
    table.open(_session("a"), now=0.0)
    table.open(_session("b"), now=0.0)
    table.end("a")
    table.end("kept")
    opened, ended = table.take_changes()
    assert opened == [SessionRow("b", "x", "c1", "k1")]
    assert sorted(ended) == ["a", "kept"]
    assert table.take_changes() == ([], [])


def test_restore_keeps_only_sessions_of_live_containers(rig: Rig, a_and_b: Pair) -> None:
    """At start-up the router takes back stored sessions of live containers and names the others."""
    a, _ = a_and_b
    restored, gone = rig.router.restore_sessions(
        [SessionRow("on-a", "x", a.container_id, "k1"), SessionRow("on-old", "x", "stopped", "k1")]
    )
    assert (restored, gone) == (1, ["on-old"])
    found = rig.router.session("on-a")
    assert found is not None and found.key_id == "k1"
    assert rig.router.session("on-old") is None
