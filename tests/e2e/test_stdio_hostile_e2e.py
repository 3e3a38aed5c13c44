"""End to end: hostile stdio programs pushed as servers, and the probes' count of stdio processes.

Real pushes into a real serve and the real Docker engine. A program that prints junk, never
answers initialize, floods stdout with one endless line, or floods it with notification lines is
rejected at the gate with the bridge's reason in the pusher's output, and the live release keeps
serving. A program that answers the handshake and then replies to tools/call with junk gets its
caller a JSON-RPC error naming that, the next session gets a new process, and the monitor's probe
reads the bridge's process counts (the exit included) into /healthz, the registry and /metrics.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client, MCPError

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, running_provider, wait_for

pytestmark = pytest.mark.docker

# Every probe of a per-session stdio server starts a process (the SDK's imports: ~1 s of CPU, so
# ~2 s at the fixture's 0.5 CPU): probing every second would take all of it.
MONITOR = "monitor: {probe_interval: 3s, probe_timeout: 5s}\n"
JUNK = "more than 20 lines that are not JSON-RPC"
HEALTH = {"timeout": "16s", "interval": "200ms"}  # the bridge's init timeout is 3/4 of it: 12s


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[tuple[Provider, str]]:
    """A provider probing every 3 s, with the stdio fixture live as r1."""
    with running_provider(tmp_path_factory.mktemp("hostile"), docker_host, MONITOR) as provider:
        work = provider.clone(provider.root / "work")
        server = work.put("stdio")
        work.commit("a good stdio server")
        push = work.push()
        assert push.ok, push.output
        yield provider, server


def _echo(provider: Provider, server: str, text: str) -> Any:
    return provider.call(server, "echo", {"text": text})["result"]


@pytest.mark.parametrize(
    ("fixture", "argv", "reason"),
    [
        ("stdio", ["--hostile", "junk"], JUNK),
        ("stdio", ["--hostile", "mute"], "did not answer initialize within 12s"),
        ("stdio", ["--hostile", "flood"], "wrote a stdout line over 4194304 bytes"),
        ("stdio-hostile", ["lines"], "did not answer initialize within 12s"),
    ],
    ids=["junk", "mute", "flood-one-line", "flood-lines"],
)
def test_a_hostile_program_is_rejected_at_the_gate_and_the_live_release_keeps_serving(
    live: tuple[Provider, str], fixture: str, argv: list[str], reason: str
) -> None:
    """The push of a new release whose program misbehaves before the handshake is rejected, the
    bridge's reason in the pusher's output; r1 still answers."""
    provider, server = live
    work = provider.clone(provider.root / f"work-{argv[-1]}")

    def hostile(data: dict[str, Any]) -> None:
        data["run"]["command"] = ["python3", "/app/server.py", *argv]
        data["health"] = HEALTH

    work.put(fixture, name=server, manifest=hostile)
    work.commit(f"a stdio program that misbehaves: {argv[-1]}")
    push = work.push()
    assert not push.ok, push.output
    assert "failed the MCP health gate" in push.output and reason in push.output, push.output
    assert "the live release keeps serving" in push.output
    assert _echo(provider, server, "still here") == "still here"
    assert provider.releases(server)["r1"] == "live"


def test_junk_in_reply_to_a_call_is_an_error_to_its_caller_and_is_counted(live: tuple[Provider, str]) -> None:
    """A program that passes the gate and answers tools/call with junk: the caller gets a JSON-RPC
    error naming it (at once, not at a timeout); a new session gets a new process; the probes show
    the exit in /healthz, the registry's health and /metrics; the other stdio server is untouched."""
    provider, good = live
    work = provider.clone(provider.root / "work-garbage")
    bad = work.put("stdio-hostile")
    work.commit("a stdio program that answers calls with junk")
    push = work.push()
    assert push.ok, push.output

    async def call_twice() -> list[str]:
        errors = []
        for _ in range(2):  # the second session meets a new process
            async with Client(f"{provider.base}/mcp/{bad}") as client:
                assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
                with pytest.raises(MCPError) as caught:
                    await asyncio.wait_for(client.call_tool("echo", {}), 20)
                errors.append(str(caught.value))
        return errors

    errors = asyncio.run(call_twice())
    assert all(JUNK in e for e in errors), errors

    def counted() -> bool:
        seen = json.loads(provider.get("/healthz")[2]).get("stdio", {}).get(bad, {})
        return int(seen.get("exited", 0)) >= 2

    wait_for("the probe's count of exited processes", counted, 30)
    processes = json.loads(provider.get("/healthz")[2])["stdio"]
    assert JUNK in processes[bad]["lastExit"] and processes[bad]["isolation"].startswith("landlock ABI")
    assert processes[good]["exited"] == 0 and processes[good]["started"] >= 1
    [entry] = [
        e
        for e in json.loads(provider.get("/registry.json")[2])["servers"]
        if e["server"]["name"].endswith(bad)
    ]
    [meta] = entry["_meta"].values()
    assert "stdio processes:" in meta["health"] and JUNK in meta["health"]
    metrics = provider.get("/metrics")[2]
    assert f'central_mcp_stdio_processes{{server="{bad}",state="exited"}}' in metrics
    assert _echo(provider, good, "untouched") == "untouched"
