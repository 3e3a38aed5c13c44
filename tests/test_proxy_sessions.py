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

from pipeline.proxy.router import Upstream
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
        assert rig.router.swap({"x": b}) == {"x": a}
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
    assert not rig.router.is_retired_session(session_id)
    async with httpx2.AsyncClient() as http:
        after = await http.post(
            rig.url("x"),
            headers={**ACCEPT_BOTH, "mcp-session-id": session_id},
            content=json.dumps(jsonrpc("tools/list")),
        )
    assert after.status_code == 404, "the ended session is the upstream's to refuse, and it does"


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
