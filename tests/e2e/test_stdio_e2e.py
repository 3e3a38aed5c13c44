"""End to end: a pushed stdio server with its own Dockerfile deploys through `git push`, behind
the provider's bridge, and answers the Python SDK client and the TypeScript SDK client (npm)
through /mcp/<name> with a project key.

Real pushes into a real serve and the real Docker engine: each MCP session gets its own process
(its own HOME under /tmp), state does not cross sessions, a 2026-era client falls back to the
session era (the negotiated version is asserted), and a stdio program that exits at once fails
the gate with the bridge's error in the deploy log while the live release keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from pipeline.dockerhost import LABEL_SERVER, DockerHost
from tests.support import ts_sdk
from tests.support.provider import Provider, running_provider

pytestmark = pytest.mark.docker

PROJECTS = "projects: [{name: web}]\n"
SESSION_ERA = "2025-11-25"


@dataclass
class Site:
    """The provider, its live stdio server and a key of project `web`."""

    provider: Provider
    server: str
    key: str

    def url(self) -> str:
        """The server's proxy URL."""
        return f"{self.provider.base}/mcp/{self.server}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Site]:
    """A provider with project `web`, the stdio fixture live, a key of `web`."""
    with running_provider(tmp_path_factory.mktemp("stdio"), docker_host, extra_config=PROJECTS) as provider:
        workspace = provider.clone(tmp_path_factory.mktemp("clone") / "work")
        server = workspace.put("stdio")
        workspace.commit("a stdio server")
        push = workspace.push()
        assert push.ok, push.output
        assert "adding the stdio bridge" in push.output
        made = provider.cli("keys", "create", "web")
        assert made.returncode == 0, made.stderr
        yield Site(provider, server, made.stdout.strip())


async def _session(site: Site, calls: list[tuple[str, dict[str, Any]]]) -> tuple[str, list[Any]]:
    """Open one SDK session with the key; make the calls; return the negotiated version and results."""
    headers = {"authorization": f"Bearer {site.key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(site.url(), http_client=http)) as client,
    ):
        results = []
        for tool, args in calls:
            result = await client.call_tool(tool, args)
            assert not result.is_error, result.content
            results.append((result.structured_content or {}).get("result"))
        return str(client.protocol_version), results


def test_a_pushed_stdio_server_answers_the_sdk_client_with_a_key(site: Site) -> None:
    """The SDK client (which probes the 2026 era first) negotiates the session era with the
    bridge and calls a tool of the stdio program through /mcp/<name>."""
    version, [echoed] = asyncio.run(_session(site, [("echo", {"text": "through the bridge"})]))
    assert version == SESSION_ERA
    assert echoed == "through the bridge"


def test_the_typescript_sdk_client_lists_and_calls_through_the_bridge(
    site: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The official TypeScript SDK client (npm) negotiates the session era with a key, lists the
    stdio program's tools and calls one."""
    ts_sdk.require()
    script = ts_sdk.install(tmp_path_factory.getbasetemp() / "ts-sdk")
    found = ts_sdk.call(script, site.url(), site.key, "echo", {"text": "from typescript"})
    assert found["protocolVersion"] == SESSION_ERA
    assert {"echo", "remember", "recall"} <= set(found["tools"])
    assert found["result"]["content"][0]["text"] == "from typescript"


def test_the_servers_own_image_is_not_left_behind_untagged(site: Site) -> None:
    """After the bridge layer is built under the release's tag, no untagged image of the server is
    left (retention finds images by tag, so one would never be removed)."""
    filters = {"dangling": True, "label": f"{LABEL_SERVER}={site.server}"}
    assert site.provider.docker.client.images.list(filters=filters) == []


def test_the_registry_says_how_the_stdio_server_is_served(site: Site) -> None:
    """The registry's live state names the sharing, the cap, the warm pool and the session era."""
    status, _, body = site.provider.get("/registry.json")
    assert status == 200, body
    [entry] = [e for e in json.loads(body)["servers"] if e["server"]["name"].endswith(f"/{site.server}")]
    [live] = entry["_meta"].values()
    assert live["stdio"] == {
        "sessions": "per-session",
        "maxProcesses": 4,
        "warmProcesses": 1,
        "eras": ["session"],
    }


def test_each_session_gets_its_own_process_and_state(site: Site) -> None:
    """Two sessions run in two processes with their own HOME under /tmp; what one remembers the
    other does not see."""

    async def both() -> tuple[list[Any], list[Any]]:
        first = await _session(site, [("remember", {"item": "a"}), ("recall", {}), ("pid", {})])
        second = await _session(site, [("recall", {}), ("pid", {})])
        return first[1], second[1]

    (count, seen_a, who_a), (seen_b, who_b) = asyncio.run(both())
    assert (count, seen_a, seen_b) == (1, ["a"], [])
    pid_a, home_a, cwd_a = who_a.split()
    pid_b, home_b, _ = who_b.split()
    assert pid_a != pid_b and home_a != home_b
    assert home_a.startswith("/tmp/session-") and cwd_a == home_a


def test_a_stdio_program_that_exits_fails_the_gate_and_the_live_release_keeps_serving(site: Site) -> None:
    """A new release whose program exits at once is rejected at the gate with the bridge's error
    named in the push output; the live release still answers."""
    workspace = site.provider.clone(site.provider.root / "clone-bad")

    def hostile(data: dict[str, Any]) -> None:
        data["run"]["command"] = ["python3", "/app/server.py", "--hostile", "exit"]
        data["health"] = {"timeout": "10s", "interval": "200ms"}

    workspace.put("stdio", name=site.server, manifest=hostile)
    workspace.commit("a stdio program that exits")
    push = workspace.push()
    assert not push.ok, push.output
    assert "exited with code 3" in push.output
    _, [echoed] = asyncio.run(_session(site, [("echo", {"text": "still here"})]))
    assert echoed == "still here"
