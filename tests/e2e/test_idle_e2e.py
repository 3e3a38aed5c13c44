"""Scale to zero end to end: a real serve, git push, Docker and SDK clients.

A `scale: {min: 0}` server stops after its idle_after; probes leave it stopped; the first requests
afterwards (ten at once, a session-era client, a stateless one) share one container start and are
all answered; fifty idle servers leave no container running.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from pipeline.dockerhost import LABEL_INSTANCE, LABEL_SERVER, DockerHost
from pipeline.proxy.upstreams import MODERN_META
from tests.support.provider import Provider, Workspace, running_provider, wait_for
from tests.support.proxy_rig import LEGACY, MODERN, connect, text_of

pytestmark = pytest.mark.docker

IDLE_AFTER = 2.0
IDLE_CONFIG = """\
idle: {after: 1h, check_interval: 0.5s, wake_timeout: 30s, retry_after: 1s}
monitor: {probe_interval: 1s, probe_timeout: 2s, failure_threshold: 2}
"""
STOP_SLACK = 10.0  # the idle job's interval, the drain and the container's SIGTERM
FIRST_REQUESTS = 10
FLEET = 50


def scaled_to_zero(data: dict[str, Any]) -> None:
    """A manifest change: stop the server after IDLE_AFTER without use."""
    data["scale"] = {"min": 0, "idle_after": f"{IDLE_AFTER:g}s"}


@pytest.fixture(scope="module")
def idle_provider(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Provider]:
    """A serve process that looks for idle servers twice a second and probes every second."""
    root = tmp_path_factory.mktemp("idle-e2e")
    with running_provider(root, docker_host, IDLE_CONFIG, proxy={"deploy_timeout": "10m"}) as running:
        yield running


@pytest.fixture(scope="module")
def idle_workspace(idle_provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The developer's clone of the idle provider's repo."""
    return idle_provider.clone(tmp_path_factory.mktemp("idle-clone") / "work")


def wait_idle(provider: Provider, server: str, timeout: float = IDLE_AFTER + STOP_SLACK) -> None:
    """Wait until `server` has no container at all (stopped and removed)."""
    wait_for(f"{server} to scale to zero", lambda: not provider.containers(server), timeout)


def starts(provider: Provider, server: str, since: float) -> int:
    """How many containers of `server` Docker started since `since` (its event stream)."""
    events = provider.docker.client.events(
        since=int(since),
        until=int(time.time()) + 1,
        decode=True,
        filters={
            "event": "start",
            "label": [f"{LABEL_INSTANCE}={provider.instance}", f"{LABEL_SERVER}={server}"],
        },
    )
    return sum(1 for _ in events)


def server_meta(provider: Provider, server: str) -> dict[str, Any]:
    """The server's `_meta` entry in /registry.json."""
    status, _, body = provider.get("/registry.json")
    assert status == 200, body
    for entry in json.loads(body)["servers"]:
        if entry["server"]["name"].endswith(f"/{server}"):
            meta: dict[str, Any] = next(iter(entry["_meta"].values()))
            return meta
    raise AssertionError(f"{server} is not in /registry.json: {body}")


async def call_greet(url: str, name: str, mode: str = "auto") -> str:
    """Greet through the proxy with the SDK client; return the greeting."""
    async with connect(url, mode=mode) as client:
        result = await client.call_tool("greet", {"name": name})
        assert not result.is_error, result.content
        return str((result.structured_content or {})["greeting"])


def test_idle_server_stops_stays_stopped_under_probes_and_ten_first_requests_share_one_start(
    idle_provider: Provider, idle_workspace: Workspace
) -> None:
    """A min-0 server stops after idle_after, shows `idle`, probes never start it; ten concurrent
    first requests then cause exactly one container start and all ten are answered."""
    server = idle_workspace.put("echo", env={"GREETING": "awake"}, manifest=scaled_to_zero)
    idle_workspace.commit("an echo server that scales to zero")
    push = idle_workspace.push()
    assert push.ok, push.output
    wait_idle(idle_provider, server)
    assert "idle" in server_meta(idle_provider, server)["health"]
    quiet_since = time.time()
    time.sleep(3.0)  # three probe intervals and six idle sweeps
    assert not idle_provider.containers(server), "a probe or the idle job started the idle server"
    assert starts(idle_provider, server, quiet_since) == 0

    async def first_requests() -> list[str]:
        url = f"{idle_provider.base}/mcp/{server}"
        return await asyncio.gather(*(call_greet(url, f"n{i}") for i in range(FIRST_REQUESTS)))

    woke = time.time()
    answers = asyncio.run(first_requests())
    assert answers == [f"awake, n{i}" for i in range(FIRST_REQUESTS)]
    assert len(idle_provider.running(server)) == 1
    assert starts(idle_provider, server, woke - 1) == 1
    assert "idle" not in server_meta(idle_provider, server)["health"]
    wait_idle(idle_provider, server)  # and it goes back to sleep


def test_session_era_client_and_stateless_request_each_wake_an_idle_server(
    idle_provider: Provider, idle_workspace: Workspace
) -> None:
    """An SDK client pinned to the session era (initialize) wakes a sessionful idle server; a raw
    stateless-era POST (no session, MCP-Protocol-Version 2026-07-28) wakes an idle echo server."""
    idle_workspace.sync()
    streamer = idle_workspace.put("streamer", env={"RELEASE": "sleepy"}, manifest=scaled_to_zero)
    echo = idle_workspace.put("echo", name=idle_provider.name("echo-modern"), manifest=scaled_to_zero)
    idle_workspace.commit("a sessionful and a stateless server that scale to zero")
    push = idle_workspace.push()
    assert push.ok, push.output
    wait_idle(idle_provider, streamer)
    wait_idle(idle_provider, echo)

    async def session_era() -> str:
        async with connect(f"{idle_provider.base}/mcp/{streamer}", mode="legacy") as client:
            assert client.protocol_version == LEGACY
            return text_of(await client.call_tool("whoami", {}))

    assert "sleepy" in asyncio.run(session_era())
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "greet", "arguments": {"name": "x"}, "_meta": MODERN_META},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": MODERN,
        "mcp-method": "tools/call",
        "mcp-name": "greet",
        "content-type": "application/json",
    }
    answer = httpx2.post(f"{idle_provider.base}/mcp/{echo}", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert "hello, x" in answer.text
    assert len(idle_provider.running(echo)) == 1


def test_an_idle_server_stays_idle_across_a_provider_restart_and_wakes_after_it(
    idle_provider: Provider, idle_workspace: Workspace
) -> None:
    """A serve that stops and starts again (start-up reconciliation) leaves an idle server stopped
    and shown idle; its first request afterwards starts it."""
    idle_workspace.sync()
    server = idle_workspace.put("echo", name=idle_provider.name("echo-restart"), manifest=scaled_to_zero)
    idle_workspace.commit("an echo server that stays idle across a restart")
    push = idle_workspace.push()
    assert push.ok, push.output
    wait_idle(idle_provider, server)
    idle_provider.stop()
    idle_provider.start()
    time.sleep(2.0)  # two probe intervals
    assert not idle_provider.containers(server), "the restarted provider started the idle server"
    assert "idle" in server_meta(idle_provider, server)["health"]
    assert asyncio.run(call_greet(f"{idle_provider.base}/mcp/{server}", "again")) == "hello, again"


def test_fifty_idle_servers_leave_no_container_running(
    idle_provider: Provider, idle_workspace: Workspace
) -> None:
    """Fifty min-0 servers, each gated when deployed, all stop: none of this instance's containers
    of them runs, and /registry.json shows each idle."""
    idle_workspace.sync()
    fleet = [
        idle_workspace.put("echo", name=idle_provider.name(f"z{i:02d}"), manifest=scaled_to_zero)
        for i in range(FLEET)
    ]
    for server in fleet:  # the same build context for all fifty: their images share cached layers
        (idle_workspace.root / "servers" / server / ".dockerignore").write_text("mcp-server.yaml\n")
    idle_workspace.commit("fifty servers that scale to zero")
    push = idle_workspace.push()
    assert push.ok, push.output
    wanted = set(fleet)

    def none_running() -> bool:
        found = idle_provider.docker.containers({LABEL_INSTANCE: idle_provider.instance})
        return not any(c.labels.get(LABEL_SERVER) in wanted for c in found)

    wait_for("fifty servers to scale to zero", none_running, IDLE_AFTER + STOP_SLACK * 3)
    assert all("idle" in server_meta(idle_provider, s)["health"] for s in fleet)


def test_the_aggregate_keeps_listing_an_idle_server_and_a_call_through_it_wakes_the_server(
    idle_provider: Provider, idle_workspace: Workspace
) -> None:
    """`/mcp` lists an idle server's tools as they were (listing never wakes it); calling one
    through `/mcp` starts it and answers."""
    idle_workspace.sync()
    server = idle_workspace.put("echo", name=idle_provider.name("echo-agg"), manifest=scaled_to_zero)
    idle_workspace.commit("an echo server behind the aggregate that scales to zero")
    push = idle_workspace.push()
    assert push.ok, push.output
    tool = f"{server}__greet"

    async def tools() -> list[str]:
        async with connect(f"{idle_provider.base}/mcp", mode="legacy") as client:
            return [t.name for t in (await client.list_tools()).tools]

    assert tool in asyncio.run(tools())  # its lists are fetched while it runs
    wait_idle(idle_provider, server)
    assert tool in asyncio.run(tools())
    assert not idle_provider.containers(server), "listing through /mcp woke the idle server"

    async def call() -> str:
        async with connect(f"{idle_provider.base}/mcp", mode="legacy") as client:
            result = await client.call_tool(tool, {"name": "agg"})
            assert not result.is_error, result.content
            return str((result.structured_content or {})["greeting"])

    assert asyncio.run(call()) == "hello, agg"
    assert len(idle_provider.running(server)) == 1
