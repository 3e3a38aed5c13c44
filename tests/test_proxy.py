"""The proxy as MCP clients and servers see it: both eras, headers, status codes, SSE streaming.

Every test runs the real proxy (`proxy_routes(proxy.handle)` under uvicorn) in front of real SDK
servers or raw recording upstreams on 127.0.0.1. Sessions and swaps are in
test_proxy_sessions.py, keys and limits in test_proxy_access.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from pipeline.proxy.access import OPEN_ACCESS
from tests.support.loopback import free_port
from tests.support.proxy_rig import (
    ACCEPT_BOTH,
    KEEPALIVE,
    LEGACY,
    MODERN,
    Recorder,
    Rig,
    connect,
    eventually,
    jsonrpc,
    raw_upstream,
    running_proxy,
    sdk_upstream,
    text_of,
    upstream,
)


@pytest.fixture(params=["front", "asgi"])
def rig(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A proxy with open access (no projects), reached as the provider serves it (front.py's fast
    path) or through ASGI (the way in for what the fast path leaves alone)."""
    with running_proxy(tmp_path, front=request.param == "front") as running:
        yield running


def _no_redirects(responses: list[httpx2.Response]) -> None:
    statuses = [r.status_code for r in responses]
    assert statuses, "the client made no HTTP request"
    assert not [s for s in statuses if 300 <= s < 400], f"redirect seen: {statuses}"


# both eras through the SDK client ----------------------------------------------------------------
@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
async def test_session_era_client_gets_a_session_id_and_reuses_it(
    rig: Rig, json_response: bool, slash: str
) -> None:
    """A legacy-mode SDK client initializes through the proxy, gets a session id and sends it back."""
    with sdk_upstream("x", "A", json_response=json_response) as a:
        rig.router.swap({"x": a})
        responses: list[httpx2.Response] = []
        async with connect(rig.url("x", slash), mode="legacy", statuses=responses) as client:
            assert client.protocol_version == LEGACY
            assert text_of(await client.call_tool("echo", {"text": "hi"})) == "hi"
            assert text_of(await client.call_tool("whoami")) == "A"
            issued = responses[0].headers["mcp-session-id"]
            assert rig.router.session(issued) is not None
            assert rig.router.sessions_on("A") == 1
        _no_redirects(responses)
        later = [r.request.headers.get("mcp-session-id") for r in responses[1:]]
        assert later and all(sid == issued for sid in later), later
        expected = "application/json" if json_response else "text/event-stream"
        assert responses[0].headers["content-type"].startswith(expected)


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
async def test_stateless_era_client_negotiates_2026_without_sessions(
    rig: Rig, json_response: bool, slash: str
) -> None:
    """An auto-mode SDK client negotiates 2026-07-28 with a stateless server; no session id is used."""
    with sdk_upstream("x", "S", stateless=True, json_response=json_response) as s:
        rig.router.swap({"x": s})
        responses: list[httpx2.Response] = []
        async with connect(rig.url("x", slash), mode="auto", statuses=responses) as client:
            assert client.protocol_version == MODERN
            assert text_of(await client.call_tool("echo", {"text": "hi"})) == "hi"
        _no_redirects(responses)
        assert all("mcp-session-id" not in r.request.headers for r in responses)
        assert all(r.request.headers.get("mcp-protocol-version") == MODERN for r in responses)
        assert rig.router.sessions_on("S") == 0


async def test_sdk_server_with_dns_rebinding_guard_answers_through_the_proxy(rig: Rig) -> None:
    """An SDK server that only accepts Host 127.0.0.1:<port> answers through the proxy (no 421)."""
    with sdk_upstream("x", "P", protect=True) as guarded:
        rig.router.swap({"x": guarded})
        responses: list[httpx2.Response] = []
        async with connect(rig.url("x"), mode="legacy", statuses=responses) as client:
            assert text_of(await client.call_tool("whoami")) == "P"
        assert 421 not in [r.status_code for r in responses]
        async with httpx2.AsyncClient() as http:
            direct = await http.post(
                guarded.base_url,
                headers={**ACCEPT_BOTH, "host": "evil.example"},
                content=json.dumps(jsonrpc("tools/list")),
            )
        assert direct.status_code == 421, "the guard is on, so the Host the proxy sets is what passes"


# headers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_mcp_headers_reach_the_upstream_unchanged(rig: Rig, method: str) -> None:
    """MCP headers arrive upstream byte for byte; the client's Authorization does not; Host is loopback."""
    sent = {
        "Mcp-Session-Id": "sess-123",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "echo",
        "Last-Event-ID": "evt-42",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "Authorization": "Bearer client-secret-token",
    }
    recorder = Recorder()
    with raw_upstream("x", recorder) as raw:
        rig.router.swap({"x": raw})
        rig.router.open_session("sess-123", raw, OPEN_ACCESS)  # as if `raw` had issued it
        async with httpx2.AsyncClient() as http:
            body = json.dumps(jsonrpc("tools/call", {"name": "echo"})) if method == "POST" else None
            reply = await http.request(method, rig.url("x"), headers=sent, content=body)
        assert reply.status_code == 200
        (seen,) = recorder.seen
        for name, value in sent.items():
            if name != "Authorization":
                assert seen.headers.get(name.lower()) == value, name
        assert "authorization" not in seen.headers
        assert seen.headers["host"] == f"127.0.0.1:{raw.port}"
        assert seen.method == method
        assert seen.body == (body.encode() if body else b"")


async def test_path_below_the_server_and_query_reach_the_upstream(rig: Rig) -> None:
    """`/mcp/x/a/b?q=1&r=2` is forwarded to the upstream's `<path>/a/b?q=1&r=2`."""
    recorder = Recorder()
    with raw_upstream("x", recorder) as raw:
        rig.router.swap({"x": raw})
        async with httpx2.AsyncClient() as http:
            reply = await http.get(rig.url("x", "/a/b?q=1&r=2"))
        assert reply.status_code == 200
        assert (recorder.seen[0].path, recorder.seen[0].query) == ("/mcp/a/b", "q=1&r=2")


async def test_forwarded_response_headers_appear_once(rig: Rig) -> None:
    """Each response header of an SSE answer appears once (no second Date, Server or X-Accel-Buffering)."""
    with sdk_upstream("x", "A") as a:
        rig.router.swap({"x": a})
        init = jsonrpc(
            "initialize",
            {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        )
        async with httpx2.AsyncClient() as http:
            reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=json.dumps(init))
        names = [name.lower() for name, _ in reply.headers.multi_items()]
        assert reply.status_code == 200
        assert sorted(n for n in set(names) if names.count(n) > 1) == []


async def test_cookies_never_cross_the_proxy(rig: Rig) -> None:
    """The browser's cookies (the admin cookie among them) never reach a server, and a server's
    Set-Cookie never reaches the client: the proxy's origin is the provider's own."""

    async def answer(request: Request) -> Response:
        reply = Response(b'{"jsonrpc": "2.0", "id": 1, "result": {}}', media_type="application/json")
        reply.set_cookie("central_mcp_admin", "planted-by-the-server", path="/")
        reply.headers.append("Set-Cookie2", "old=1")
        return reply

    recorder = Recorder(answer)
    with raw_upstream("x", recorder) as raw:
        rig.router.swap({"x": raw})
        async with httpx2.AsyncClient() as http:
            reply = await http.post(
                rig.url("x"),
                headers={**ACCEPT_BOTH, "cookie": "central_mcp_admin=the-admin-token; other=1"},
                content=json.dumps(jsonrpc("tools/list")),
            )
    assert reply.status_code == 200
    assert "cookie" not in recorder.seen[0].headers
    assert "the-admin-token" not in json.dumps(recorder.seen[0].headers)
    assert "set-cookie" not in reply.headers and "set-cookie2" not in reply.headers


ORIGIN_WIDE = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",  # pins https on every subdomain
    "nel": '{"report_to": "spy", "max_age": 31536000, "success_fraction": 1.0, "include_subdomains": true}',
    "report-to": '{"group": "spy", "max_age": 31536000, "endpoints": [{"url": "https://spy.example/r"}]}',
    "reporting-endpoints": 'spy="https://spy.example/r"',
    "alt-svc": 'h2="spy.example:443"; ma=31536000',
    "service-worker-allowed": "/",
}


@pytest.mark.parametrize("name", sorted(ORIGIN_WIDE))
async def test_a_server_sets_no_policy_for_the_providers_whole_origin(rig: Rig, name: str) -> None:
    """Like Set-Cookie and Clear-Site-Data, headers a browser applies to the whole origin (HSTS, network
    error logging that reports every URL of the origin, the pages' ?token= included, to a host of the
    server's choosing; another service for the origin; a service worker's scope) never come from a
    server."""

    async def answer(request: Request) -> Response:
        reply = Response(b'{"jsonrpc": "2.0", "id": 1, "result": {}}', media_type="application/json")
        reply.headers[name] = ORIGIN_WIDE[name]
        return reply

    with raw_upstream("x", Recorder(answer)) as raw:
        rig.router.swap({"x": raw})
        async with httpx2.AsyncClient() as http:
            reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=json.dumps(jsonrpc("ping")))
    assert reply.status_code == 200
    assert name not in reply.headers


@pytest.mark.parametrize(
    "media_type",
    [
        "text/html; charset=utf-8",
        "image/svg+xml",
        "text/plain",
        "Application/JSON",
        None,
        # A browser reads a comma-separated Content-Type as a list and takes its last type (the Fetch
        # standard's "extract a MIME type"): these are HTML to it, whatever their first type says.
        "application/json, text/html",
        "application/json;charset=utf-8,text/html",
        "text/event-stream, text/html",
    ],
)
async def test_relayed_non_mcp_content_is_sandboxed(rig: Rig, media_type: str | None) -> None:
    """An answer that is neither JSON nor an event stream (an HTML page, an SVG, no type at all) comes
    with nosniff and a CSP sandbox, so it cannot act on the provider's origin."""

    async def answer(request: Request) -> Response:
        reply = Response(b"<script>fetch('/deploys.json')</script>", status_code=200)
        if media_type is not None:
            reply.headers["content-type"] = media_type
        return reply

    with raw_upstream("x", Recorder(answer)) as raw:
        rig.router.swap({"x": raw})
        async with httpx2.AsyncClient() as http:
            reply = await http.get(rig.url("x", "/page"))
    assert reply.status_code == 200
    assert reply.headers["x-content-type-options"] == "nosniff"
    csp = reply.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp


async def test_mcp_answers_carry_no_sandbox_headers(rig: Rig) -> None:
    """JSON and event-stream answers are relayed as they are: no headers added to the hot path."""
    with sdk_upstream("x", "S", stateless=True, json_response=True) as s:
        rig.router.swap({"x": s})
        async with httpx2.AsyncClient() as http:
            reply = await http.post(
                rig.url("x"),
                headers={**ACCEPT_BOTH, "mcp-protocol-version": LEGACY},
                content=json.dumps(jsonrpc("tools/list")),
            )
    assert reply.status_code == 200
    assert "content-security-policy" not in reply.headers


def _raw_request(port: int, target: str) -> tuple[int, bytes]:
    """Send `GET <target>` byte for byte (HTTP clients normalise dot segments away); return the
    status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize(
    "path",
    [
        "/mcp/x/../y",
        "/mcp/x/..",
        "/mcp/x/a/./b",
        "/mcp/x/..%2f..%2fy",
        "/mcp/x/%2e%2e/y",
        "/mcp/x/%2E%2e%2Fy",
        "/mcp/x/.%2e/y",
        "/mcp/x/..%5cy",
        "/mcp/x/a\\..\\y",
        "/mcp/x/%252e%252e/y",
        "/mcp/x/..;/y",
        "/mcp/../x",
        "/mcp/%2e%2e/x",
    ],
)
async def test_dot_segments_are_refused_with_400_and_never_forwarded(rig: Rig, path: str) -> None:
    """A path below `/mcp/<server>` with a dot segment — raw, percent-encoded, double-encoded or
    with backslashes — answers 400 naming the path; the upstream sees nothing."""
    recorder = Recorder()
    with raw_upstream("x", recorder) as raw:
        rig.router.swap({"x": raw})
        status, body = await asyncio.to_thread(_raw_request, rig.port, path)
    assert status == 400, body
    assert "dot segment" in json.loads(body)["error"]
    assert recorder.seen == []


async def test_dots_inside_a_segment_are_forwarded(rig: Rig) -> None:
    """Dots that are not whole segments (`a..b`, `.well-known`) are ordinary path characters."""
    recorder = Recorder()
    with raw_upstream("x", recorder) as raw:
        rig.router.swap({"x": raw})
        status, _ = await asyncio.to_thread(_raw_request, rig.port, "/mcp/x/.well-known/a..b")
    assert status == 200
    assert recorder.seen[0].path == "/mcp/.well-known/a..b"


# status codes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [202, 400, 401, 403, 404, 405])
async def test_upstream_status_and_body_pass_through_unchanged(rig: Rig, status: int) -> None:
    """A 202/400/401/403/404/405 from the upstream reaches the client with its body and headers."""
    body = (
        b""
        if status == 202
        else json.dumps(
            {"jsonrpc": "2.0", "id": 7, "error": {"code": -32600, "message": f"upstream said {status}"}}
        ).encode()
    )

    async def answer(request: Request) -> Response:
        extra = (
            {"WWW-Authenticate": 'Bearer resource_metadata="http://127.0.0.1/.well-known"'}
            if status == 401
            else {}
        )
        return Response(body, status_code=status, media_type="application/json", headers=extra)

    with raw_upstream("x", Recorder(answer)) as raw:
        rig.router.swap({"x": raw})
        async with httpx2.AsyncClient() as http:
            reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=b"{}")
    assert (reply.status_code, reply.content) == (status, body)
    assert reply.headers["content-type"] == "application/json"
    if status == 401:
        assert reply.headers["www-authenticate"].startswith("Bearer resource_metadata=")


@pytest.mark.parametrize(
    ("stateless", "method", "headers", "body", "status"),
    [
        (False, "POST", ACCEPT_BOTH, jsonrpc("tools/list"), 400),  # no session id
        (False, "PUT", ACCEPT_BOTH, None, 405),
        (True, "DELETE", ACCEPT_BOTH, None, 405),
        (True, "POST", ACCEPT_BOTH, {"jsonrpc": "2.0", "method": "notifications/initialized"}, 202),
        (False, "POST", ACCEPT_BOTH, "not json", 400),
    ],
    ids=["missing-session", "put", "stateless-delete", "notification", "parse-error"],
)
async def test_sdk_server_answers_reach_the_client_as_if_direct(
    rig: Rig, stateless: bool, method: str, headers: dict[str, str], body: object, status: int
) -> None:
    """What an SDK server answers directly (status and body) is what the client gets through the proxy."""
    with sdk_upstream("x", "A", stateless=stateless) as a:
        rig.router.swap({"x": a})
        content = body if isinstance(body, str) else json.dumps(body) if body is not None else None
        async with httpx2.AsyncClient() as http:
            direct = await http.request(method, a.base_url, headers=headers, content=content)
            proxied = await http.request(method, rig.url("x"), headers=headers, content=content)
    assert direct.status_code == status
    assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content)
    assert proxied.headers["content-type"] == direct.headers["content-type"]


async def test_unknown_session_id_gets_404_and_never_reaches_the_upstream(rig: Rig) -> None:
    """A session id the proxy never saw issued (a guess, or one from before a restart that was not
    saved) answers 404 with the JSON-RPC error that tells clients to initialize again."""
    recorder = Recorder()
    with raw_upstream("x", recorder) as raw:
        rig.router.swap({"x": raw})
        async with httpx2.AsyncClient() as http:
            reply = await http.post(
                rig.url("x"),
                headers={**ACCEPT_BOTH, "mcp-session-id": "guessed"},
                content=json.dumps(jsonrpc("tools/list")),
            )
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == -32001
    assert recorder.seen == []


async def test_unknown_server_gets_404_naming_it(rig: Rig) -> None:
    """A server the proxy has never heard of answers 404 with a JSON body that names it."""
    async with httpx2.AsyncClient() as http:
        reply = await http.post(rig.url("nosuch"), headers=ACCEPT_BOTH, content=b"{}")
    assert reply.status_code == 404
    assert "'nosuch'" in reply.json()["error"]


async def test_known_server_without_upstream_gets_503_with_retry_after(rig: Rig) -> None:
    """A configured server with no healthy upstream answers 503 with Retry-After and its name."""
    rig.router.replace_all([], known=["x"])
    async with httpx2.AsyncClient() as http:
        reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=b"{}")
    assert reply.status_code == 503
    assert int(reply.headers["retry-after"]) > 0
    assert "'x'" in reply.json()["error"]


async def test_unreachable_upstream_gets_502_with_a_jsonrpc_error_naming_the_server(rig: Rig) -> None:
    """An upstream whose port is closed answers 502 with a JSON-RPC error that names the server."""
    rig.router.swap({"x": upstream("x", free_port(), "gone")})
    async with httpx2.AsyncClient() as http:
        reply = await http.post(rig.url("x"), headers=ACCEPT_BOTH, content=json.dumps(jsonrpc("tools/list")))
    assert reply.status_code == 502
    error = reply.json()
    assert error["jsonrpc"] == "2.0" and error["id"] is None
    assert "'x'" in error["error"]["message"]
    assert rig.router.inflight("gone") == 0


# SSE -----------------------------------------------------------------------------------------------
def _sse_upstream(*parts: bytes | float) -> Recorder:
    """A raw upstream answering an event stream of `parts`: bytes are sent, floats are pauses."""

    async def events() -> AsyncIterator[bytes]:
        for part in parts:
            if isinstance(part, float):
                await asyncio.sleep(part)
            else:
                yield part

    async def answer(request: Request) -> Response:
        return StreamingResponse(events(), media_type="text/event-stream")

    return Recorder(answer)


async def _timed_chunks(url: str) -> tuple[httpx2.Response, list[tuple[float, bytes]]]:
    """POST to `url` and return the response with each body chunk's arrival time (s after send)."""
    chunks: list[tuple[float, bytes]] = []
    async with httpx2.AsyncClient(timeout=30) as http:
        started = time.monotonic()
        async with http.stream("POST", url, headers=ACCEPT_BOTH, content=b"{}") as reply:
            async for chunk in reply.aiter_raw():
                chunks.append((time.monotonic() - started, chunk))
    return reply, chunks


async def test_sse_events_reach_the_client_as_they_are_sent(rig: Rig) -> None:
    """The first event arrives before the upstream sends the second; the stream says X-Accel-Buffering: no."""
    first, second = b'event: message\ndata: {"n": 1}\n\n', b'event: message\ndata: {"n": 2}\n\n'
    with raw_upstream("x", _sse_upstream(first, 1.5, second)) as raw:
        rig.router.swap({"x": raw})
        reply, chunks = await _timed_chunks(rig.url("x"))
    assert reply.headers["x-accel-buffering"] == "no"
    body = b"".join(c for _, c in chunks)
    assert body.replace(b": keep-alive\n\n", b"") == first + second
    arrived_first = next(t for t, c in chunks if b'"n": 1' in c)
    arrived_last = chunks[-1][0]
    assert arrived_first < 0.7, f"first event took {arrived_first:.2f}s: buffered"
    assert arrived_last >= 1.5 and arrived_last - arrived_first > 1.2


async def test_quiet_stream_gets_keepalive_comments_at_the_configured_interval(rig: Rig) -> None:
    """A stream quiet for 1.5 s carries `: keep-alive` comments every KEEPALIVE seconds, between events."""
    first, second = b"data: 1\n\n", b"data: 2\n\n"
    with raw_upstream("x", _sse_upstream(first, 1.5, second)) as raw:
        rig.router.swap({"x": raw})
        _, chunks = await _timed_chunks(rig.url("x"))
    comments = [t for t, c in chunks if c == b": keep-alive\n\n"]
    assert len(comments) >= 3, chunks
    gaps = [b - a for a, b in itertools.pairwise(comments)]
    assert all(KEEPALIVE * 0.8 <= gap <= KEEPALIVE * 3 for gap in gaps), gaps
    body = b"".join(c for _, c in chunks)
    assert body.startswith(first) and body.endswith(second)


async def test_keepalive_comments_never_split_an_event(rig: Rig) -> None:
    """An upstream pausing in the middle of an event gets no comment injected inside it."""
    with raw_upstream("x", _sse_upstream(b"event: message\n", 1.0, b"data: whole\n\n")) as raw:
        rig.router.swap({"x": raw})
        _, chunks = await _timed_chunks(rig.url("x"))
    assert b"".join(c for _, c in chunks) == b"event: message\ndata: whole\n\n"


async def test_progress_notifications_stream_before_the_result(rig: Rig) -> None:
    """An SDK tool's progress notifications reach the SDK client while the call is still running."""
    with sdk_upstream("x", "A") as a:
        rig.router.swap({"x": a})
        arrived: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            arrived.append(time.monotonic())

        async with connect(rig.url("x"), mode="legacy") as client:
            started = time.monotonic()
            result = await client.call_tool(
                "slow", {"seconds": 1.5, "steps": 3}, progress_callback=on_progress
            )
            finished = time.monotonic()
    assert text_of(result) == "A"
    assert len(arrived) == 3
    assert arrived[0] - started < 1.0 and finished - arrived[0] > 0.8, (started, arrived, finished)


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_long_quiet_call_is_not_cut(rig: Rig, json_response: bool) -> None:
    """A 3 s tool call that sends nothing meanwhile completes through the proxy, SSE or JSON."""
    with sdk_upstream("x", "A", json_response=json_response) as a:
        rig.router.swap({"x": a})
        async with connect(rig.url("x"), mode="legacy") as client:
            started = time.monotonic()
            result = await client.call_tool("slow", {"seconds": 3.0, "steps": 1})
    assert text_of(result) == "A"
    assert time.monotonic() - started >= 3.0


async def test_long_call_stream_carries_keepalives_to_a_raw_client(rig: Rig) -> None:
    """The raw SSE answer of a 3 s tools/call carries keep-alive comments and ends with the result."""
    with sdk_upstream("x", "S", stateless=True) as s:
        rig.router.swap({"x": s})
        call = jsonrpc("tools/call", {"name": "slow", "arguments": {"seconds": 3.0, "steps": 1}})
        headers = {**ACCEPT_BOTH, "mcp-protocol-version": LEGACY}
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=KEEPALIVE * 4)) as http:
            reply = await http.post(rig.url("x"), headers=headers, content=json.dumps(call))
    assert reply.status_code == 200
    assert reply.text.count(": keep-alive") >= 5
    assert '"text":"S"' in reply.text.replace(" ", "")


async def test_upstream_failing_mid_stream_ends_the_client_stream_cleanly(rig: Rig) -> None:
    """An upstream breaking off an SSE answer mid-body ends the client's stream; nothing stays in flight."""

    async def events() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        await asyncio.sleep(0.2)
        raise RuntimeError("the upstream dies mid-stream")

    async def answer(request: Request) -> Response:
        return StreamingResponse(events(), media_type="text/event-stream")

    with raw_upstream("x", Recorder(answer), container_id="dying") as raw:
        rig.router.swap({"x": raw})
        reply, chunks = await _timed_chunks(rig.url("x"))
    assert reply.status_code == 200
    assert b"".join(c for _, c in chunks).startswith(b"data: 1\n\n")
    assert await eventually(lambda: rig.router.inflight("dying") == 0)
