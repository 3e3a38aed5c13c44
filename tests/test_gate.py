"""The MCP health gate against real servers on loopback."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pipeline import gate
from pipeline.errors import GateError
from tests.support.clock import FakeClock
from tests.support.loopback import free_port, mcp_app, serve_asgi


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


def test_gate_waits_for_a_server_that_starts_late() -> None:
    """A server that comes up within the deadline passes; the gate retried meanwhile."""
    port = free_port()
    slept: list[float] = []
    with pytest.raises(GateError):
        gate.wait_until_healthy(
            f"http://127.0.0.1:{port}/mcp", timeout=0.35, interval=0.1, sleep=slept.append
        )
    assert len(slept) >= 1
    with serve_asgi(mcp_app(), port=port):
        assert gate.wait_until_healthy(f"http://127.0.0.1:{port}/mcp", timeout=5, interval=0.1).tools


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
