"""pipeline/bridge against real stdio programs, with the official SDK client over real HTTP.

The bridge runs as its own process (as in a container) in front of the SDK stdio fixture server or
a hostile program; clients negotiate, call, stream progress and answer sampling through it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import CreateMessageRequestParams, CreateMessageResult, TextContent

from tests.support.bridge import fixture_command, running_bridge

SESSION_ERA = "2025-11-25"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": SESSION_ERA,
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


async def _calls(url: str, calls: list[tuple[str, dict[str, Any]]], **client: Any) -> tuple[str, list[Any]]:
    async with Client(url, **client) as session:
        results = []
        for tool, args in calls:
            result = await session.call_tool(tool, args)
            assert not result.is_error, result.content
            results.append((result.structured_content or {}).get("result"))
        return str(session.protocol_version), results


def test_both_client_modes_negotiate_the_session_era() -> None:
    """A legacy client initializes at 2025-11-25; an auto client probes 2026-07-28, is told the
    handshake versions (-32022) and falls back to the same session era."""
    with running_bridge() as url:
        legacy = asyncio.run(_calls(url, [("echo", {"text": "a"})], mode="legacy"))
        auto = asyncio.run(_calls(url, [("echo", {"text": "b"})]))
        probe = httpx2.post(
            url,
            headers={**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "server/discover"},
            content=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}),
        )
    assert legacy == (SESSION_ERA, ["a"])
    assert auto == (SESSION_ERA, ["b"])
    assert probe.status_code == 400
    assert probe.json()["error"]["code"] == -32022
    assert SESSION_ERA in probe.json()["error"]["data"]["supported"]


def test_per_session_processes_are_separate_and_end_with_the_session() -> None:
    """Each session has its own process, HOME and working directory; state stays in its session;
    closing the session (DELETE) ends its process."""
    with running_bridge("--sessions=per-session", "--pool=1") as url:
        _, (count, seen_a, who_a) = asyncio.run(
            _calls(url, [("remember", {"item": "x"}), ("recall", {}), ("pid", {})])
        )
        _, (seen_b, who_b) = asyncio.run(_calls(url, [("recall", {}), ("pid", {})]))
        pid_a, home_a, cwd_a = who_a.split()
        pid_b, home_b, _ = who_b.split()
        assert (count, seen_a, seen_b) == (1, ["x"], [])
        assert pid_a != pid_b and home_a != home_b and cwd_a == home_a
        assert not os.path.exists(f"/proc/{pid_a}"), "the ended session's process still runs"
        assert not os.path.exists(home_a), "the ended session's directory is left"


def test_shared_sessions_share_one_process_and_get_their_own_answers() -> None:
    """In shared mode 12 concurrent sessions, all using JSON-RPC id 1…, each get their own echo back
    from one process: ids never cross."""

    async def many() -> list[tuple[str, list[Any]]]:
        return await asyncio.gather(
            *(
                _calls(url, [("echo", {"text": f"s{i}-{j}"}) for j in range(5)] + [("pid", {})])
                for i in range(12)
            )
        )

    with running_bridge("--sessions=shared") as url:
        found = asyncio.run(many())
    for i, (_, results) in enumerate(found):
        assert results[:5] == [f"s{i}-{j}" for j in range(5)]
    assert len({results[5].split()[0] for _, results in found}) == 1


def test_shared_progress_reaches_only_its_caller() -> None:
    """Two sessions' concurrent long calls each see exactly their own progress notifications."""

    async def slow(url: str, steps: int) -> list[float]:
        seen: list[float] = []

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(total or 0)

        async with Client(url) as session:
            result = await session.call_tool("slow", {"steps": steps}, progress_callback=progress)
            assert (result.structured_content or {}).get("result") == f"done {steps}"
        return seen

    async def both(url: str) -> list[list[float]]:
        return list(await asyncio.gather(slow(url, 5), slow(url, 9)))

    with running_bridge("--sessions=shared") as url:
        five, nine = asyncio.run(both(url))
    assert five == [5.0] * 5
    assert nine == [9.0] * 9


@pytest.mark.parametrize("mode", ["shared", "per-session"])
def test_a_sampling_request_reaches_the_calling_client_and_its_answer_returns(mode: str) -> None:
    """The server's sampling/createMessage during a call goes to the client that made the call;
    the client's answer goes back to the server and into the tool's result."""

    async def sampler(
        context: ClientRequestContext, params: CreateMessageRequestParams
    ) -> CreateMessageResult:
        text = params.messages[0].content
        asked = text.text if isinstance(text, TextContent) else ""
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text=f"answer to {asked}"), model="m"
        )

    async def idle(url: str) -> None:
        async with Client(url) as session:
            await asyncio.sleep(0.5)
            await session.call_tool("echo", {"text": "idle"})

    async def run(url: str) -> list[Any]:
        asking = _calls(url, [("ask", {"question": "q1"})], sampling_callback=sampler)
        (_, results), _ = await asyncio.gather(asking, idle(url))
        return list(results)

    with running_bridge(f"--sessions={mode}") as url:
        assert asyncio.run(run(url)) == ["answer to q1"]


def test_over_the_process_cap_a_new_session_gets_a_clear_error() -> None:
    """With max_processes 1, a second session's initialize is a JSON-RPC error naming the cap, at once."""
    with running_bridge("--max-processes=1", "--pool=0") as url:
        first = httpx2.post(url, headers=ACCEPT, content=json.dumps(INIT), timeout=20)
        second = httpx2.post(url, headers=ACCEPT, content=json.dumps(INIT), timeout=20)
        assert first.status_code == 200 and "mcp-session-id" in first.headers, first.text
        assert second.json()["error"]["code"] == -32005
        assert "at most 1 processes" in second.json()["error"]["message"]
        assert "run.max_processes" in second.json()["error"]["message"]
        httpx2.delete(url, headers={**ACCEPT, "mcp-session-id": first.headers["mcp-session-id"]})
        third = httpx2.post(url, headers=ACCEPT, content=json.dumps(INIT), timeout=20)
        assert "result" in third.json(), third.text


@pytest.mark.parametrize(
    ("hostile", "fragment"),
    [
        ("junk", "more than 20 lines that are not JSON-RPC"),
        ("exit", "exited with code 3"),
        ("mute", "did not answer initialize within 1s"),
        ("flood", "a stdout line over"),
    ],
)
def test_a_hostile_program_gets_its_caller_a_clear_error(hostile: str, fragment: str, tmp_path: Path) -> None:
    """A program that prints junk, exits at once, never answers initialize or floods stdout gets the
    client's initialize a JSON-RPC error saying so, within the init timeout; the bridge keeps serving
    and logs the program's faults to its own stderr."""
    log = tmp_path / "bridge.log"
    command = fixture_command("--hostile", hostile)
    with running_bridge("--init-timeout=1", command=command, log=log) as url:
        for _ in range(2):  # the second session meets a fresh process
            reply = httpx2.post(url, headers=ACCEPT, content=json.dumps(INIT), timeout=20)
            assert reply.status_code == 200
            assert fragment in reply.json()["error"]["message"], reply.text
    assert "central-mcp bridge" in log.read_text()


def test_a_process_that_dies_ends_its_session_and_the_next_session_works() -> None:
    """When a session's process is killed, its next request is 404 (the client initializes again)
    and a new session is served by a new process."""

    async def run(url: str) -> None:
        async with Client(url, mode="legacy") as session:
            who = (await session.call_tool("pid", {})).structured_content or {}
            os.kill(int(str(who["result"]).split()[0]), 9)
            await asyncio.sleep(0.5)
            with pytest.raises(MCPError):
                await session.call_tool("echo", {"text": "x"})
        assert await _calls(url, [("echo", {"text": "again"})]) == (SESSION_ERA, ["again"])

    with running_bridge() as url:
        asyncio.run(run(url))


def test_a_request_for_another_path_or_method_is_refused() -> None:
    """Another path is 404; PUT is 405; a body that is not JSON is 400 with a JSON-RPC parse error;
    an unknown session is 404 (-32001)."""
    with running_bridge() as url:
        assert httpx2.post(url + "x", headers=ACCEPT, content=b"{}").status_code == 404
        assert httpx2.put(url, headers=ACCEPT, content=b"{}").status_code == 405
        bad = httpx2.post(url, headers=ACCEPT, content=b"nope")
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, -32700)
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        gone = httpx2.post(url, headers={**ACCEPT, "mcp-session-id": "nope"}, content=json.dumps(call))
        assert (gone.status_code, gone.json()["error"]["code"]) == (404, -32001)


def test_an_idle_session_ends_with_its_process() -> None:
    """A session with nothing in flight past the idle timeout is ended: its process stops and its
    id answers 404 (the client initializes again)."""
    with running_bridge("--idle-timeout=1", "--pool=0") as url:
        opened = httpx2.post(url, headers=ACCEPT, content=json.dumps(INIT), timeout=20)
        session = {**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"]}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "pid", "arguments": {}}}
        who = httpx2.post(url, headers=session, content=json.dumps(call), timeout=20).json()
        pid = int(who["result"]["structuredContent"]["result"].split()[0])
        time.sleep(3)
        gone = httpx2.post(url, headers=session, content=json.dumps(call), timeout=20)
        assert gone.status_code == 404
        assert not os.path.exists(f"/proc/{pid}"), "the idle session's process still runs"
