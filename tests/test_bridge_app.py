"""pipeline/bridge/app.py in-process over real loopback HTTP, in front of the real stdio fixture
server: an answer written straight from the program's output, and the cases that leave that path
(a slow answer becomes a stream, a timeout, a client that goes away, pipelined calls)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pipeline.bridge import app as app_module
from pipeline.bridge import wire
from pipeline.bridge.app import Bridge, Config
from tests.support.bridge import fixture_command

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def _serve(test: Callable[[Bridge, int], Awaitable[Any]], **config: Any) -> Any:
    """Run a shared-mode bridge in this loop; call `test(bridge, port)`."""

    async def run() -> Any:
        bridge = Bridge(Config(tuple(fixture_command()), sessions="shared", **config))
        server = await wire.serve("127.0.0.1", 0, bridge.handle)
        watch = asyncio.get_running_loop().create_task(bridge.watch_shared())
        try:
            return await asyncio.wait_for(test(bridge, server.sockets[0].getsockname()[1]), 30)
        finally:
            server.close()
            watch.cancel()
            await bridge.drain()

    return asyncio.run(run())


def _post(message: dict[str, Any], session: str = "") -> bytes:
    body = json.dumps(message).encode()
    sid = f"Mcp-Session-Id: {session}\r\n" if session else ""
    return (
        f"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{sid}"
        f"Accept: application/json, text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in head[1:] if x)}
    if headers.get("transfer-encoding") == "chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return int(head[0].split()[1]), headers, bytes(body)
    return int(head[0].split()[1]), headers, await reader.readexactly(int(headers["content-length"]))


async def _session(port: int) -> tuple[Conn, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_post(INIT))
    _, headers, _ = await _answer(reader)
    session = headers["mcp-session-id"]
    writer.write(_post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session))
    assert (await _answer(reader))[0] == 202
    return (reader, writer), session


def _call(request_id: Any, tool: str, **arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


def test_pipelined_calls_on_one_connection_are_answered_in_order_under_their_own_ids() -> None:
    """Three calls written at once (ids a string, an int, a float) come back in order, each
    answer carrying the client's id as sent."""

    async def test(bridge: Bridge, port: int) -> list[tuple[Any, Any]]:
        (reader, writer), session = await _session(port)
        ids: list[Any] = ["x", 7, 2.5]
        writer.write(b"".join(_post(_call(i, "echo", text=f"t{i}"), session) for i in ids))
        found = []
        for _ in ids:
            _, _, body = await _answer(reader)
            answer = json.loads(body)
            found.append((answer["id"], answer["result"]["structuredContent"]["result"]))
        writer.close()
        return found

    assert _serve(test) == [("x", "tx"), (7, "t7"), (2.5, "t2.5")]


def test_an_answer_slower_than_keepalive_arrives_on_a_stream_after_a_ping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No answer within KEEPALIVE: the answer becomes an event stream that starts with a comment
    and ends with the answer under the client's id."""
    monkeypatch.setattr(app_module, "KEEPALIVE", 0.1)

    async def test(bridge: Bridge, port: int) -> tuple[str, bytes]:
        (reader, writer), session = await _session(port)
        writer.write(_post(_call("s", "slow", steps=40), session))
        _, headers, body = await _answer(reader)
        writer.close()
        return headers["content-type"], body

    kind, body = _serve(test)
    assert kind == "text/event-stream"
    assert body.startswith(b": ping\n\n")
    last = json.loads(body.rsplit(b"data: ", 1)[1])
    assert (last["id"], last["result"]["structuredContent"]["result"]) == ("s", "done 40")


def test_a_call_past_the_call_timeout_gets_an_error_and_is_cancelled_in_the_program() -> None:
    """call_timeout 0.2 s, a 0.5 s tool: the client gets -32000 naming the timeout; the call is
    no longer tracked (the program was told to cancel it)."""

    async def test(bridge: Bridge, port: int) -> tuple[dict[str, Any], int]:
        (reader, writer), session = await _session(port)
        writer.write(_post(_call(3, "slow", steps=50), session))
        _, _, body = await _answer(reader)
        writer.close()
        assert bridge.shared is not None
        return json.loads(body), len(bridge.shared.calls)

    answer, tracked = _serve(test, call_timeout=0.2)
    assert answer["id"] == 3
    assert answer["error"]["code"] == -32000
    assert "no answer within 0.2s" in answer["error"]["message"]
    assert tracked == 0


def test_a_client_that_goes_away_before_its_answer_frees_its_call() -> None:
    """The connection is reset while the program works: the call is dropped at once (and the
    program told to cancel it), not when the answer comes; the session goes on working. (A
    client that only half-closes still gets its answer written, as before.)"""

    async def test(bridge: Bridge, port: int) -> tuple[int, int, str]:
        (reader, writer), session = await _session(port)
        writer.write(_post(_call(1, "slow", steps=100), session))
        await asyncio.sleep(0.2)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
        writer.close()
        await asyncio.sleep(0.2)
        assert bridge.shared is not None
        tracked = len(bridge.shared.calls) + len(bridge.sessions[session].calls)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_post(_call(2, "echo", text="still"), session))
        _, _, body = await _answer(reader)
        writer.close()
        return tracked, json.loads(body)["id"], json.loads(body)["result"]["structuredContent"]["result"]

    assert _serve(test) == (0, 2, "still")


def test_a_body_nested_past_the_parsers_depth_is_a_parse_error_and_the_connection_goes_on() -> None:
    """`[` * 100000 is a 400 parse error (json raises RecursionError for it, not ValueError), and
    the same connection's next call is answered."""

    async def test(bridge: Bridge, port: int) -> tuple[int, int, Any]:
        (reader, writer), session = await _session(port)
        body = b"[" * 100_000
        writer.write(
            f"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Mcp-Session-Id: {session}\r\n"
            f"Accept: application/json, text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, _, answer = await _answer(reader)
        writer.write(_post(_call(2, "echo", text="after"), session))
        after, _, text = await _answer(reader)
        writer.close()
        return status, json.loads(answer)["error"]["code"], (after, json.loads(text)["id"])

    assert _serve(test) == (400, app_module.PARSE_ERROR, (200, 2))
