"""End to end: a project's one endpoint `/mcp` in front of real containers, across a deploy.

A real `serve` with a project whose tool selection denies one tool runs the `echo` and `streamer`
fixtures in Docker. An SDK client with the project's key lists and calls their tools through `/mcp`;
a push that removes `streamer` makes the connected client hear tools/list_changed, its tools vanish
and a call to one is a JSON-RPC error naming the server; `/mcp.json` offers the single entry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, running_provider
from tests.support.proxy_rig import connect, text_of

pytestmark = pytest.mark.docker

PROJECTS = "projects: [{name: web, tools: {deny: ['*:slow_count']}}]\n"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Provider]:
    """A provider whose project `web` may use every server but no `slow_count` tool."""
    with running_provider(
        tmp_path_factory.mktemp("aggregate"), docker_host, extra_config=PROJECTS
    ) as running:
        yield running


async def test_one_endpoint_lists_calls_and_follows_a_deploy(
    provider: Provider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two live servers' tools (less the denied one) behind /mcp with one key; a deploy removing one
    tells the connected client, whose later call to it is refused by name."""
    workspace = provider.clone(tmp_path_factory.mktemp("clone") / "work")
    echo, streamer = workspace.put("echo"), workspace.put("streamer")
    workspace.commit("echo and streamer")
    push = workspace.push()
    assert push.ok, push.output
    made = provider.cli("keys", "create", "web")
    assert made.returncode == 0, made.stderr
    headers = {"authorization": f"Bearer {made.stdout.strip()}"}
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if "ToolListChanged" in type(getattr(message, "root", message)).__name__:
            changed.set()

    async with connect(f"{provider.base}/mcp", headers=headers, message_handler=on_message) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {f"{echo}__greet", f"{streamer}__whoami"}
        greeted = await client.call_tool(f"{echo}__greet", {"name": "e2e"})
        assert json.loads(text_of(greeted))["greeting"] == "hello, e2e"
        workspace.remove(streamer)
        workspace.commit("streamer goes")
        push = await asyncio.to_thread(workspace.push)
        assert push.ok, push.output
        await asyncio.wait_for(changed.wait(), 30)
        assert {t.name for t in (await client.list_tools()).tools} == {f"{echo}__greet"}
        with pytest.raises(MCPError, match=f"no live server '{streamer}'"):
            await client.call_tool(f"{streamer}__whoami")
    status, _, body = provider.get("/mcp.json")
    assert status == 200
    assert json.loads(body)["mcpServers"] == {
        "central-mcp": {
            "type": "http",
            "url": f"{provider.base}/mcp",
            "headers": {"Authorization": "Bearer ${CENTRAL_MCP_API_KEY}"},
        }
    }


async def test_what_a_server_sends_outside_a_call_reaches_an_sdk_client_on_mcp(
    provider: Provider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A container that speaks on its own: after resources/subscribe through /mcp, its
    resources/updated reach the SDK client under the aggregate's URI, and its own tools/list_changed
    reaches the client, whose next tools/list shows the tool the server gained."""
    workspace = provider.clone(tmp_path_factory.mktemp("clone") / "work")
    notifier = workspace.put("notifier")
    workspace.commit("notifier")
    push = workspace.push()
    assert push.ok, push.output
    made = provider.cli("keys", "create", "web")
    assert made.returncode == 0, made.stderr
    headers = {"authorization": f"Bearer {made.stdout.strip()}"}
    updated: list[str] = []
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if "ResourceUpdated" in type(root).__name__:
            updated.append(str(root.params.uri))
        elif "ToolListChanged" in type(root).__name__:
            changed.set()

    async with connect(f"{provider.base}/mcp", headers=headers, message_handler=on_message) as client:
        assert f"{notifier}__extra" not in {t.name for t in (await client.list_tools()).tools}
        await asyncio.sleep(0.3)  # the client's GET stream is open
        uri = f"central-mcp://{notifier}/note://readme"
        await client.subscribe_resource(uri)
        await asyncio.wait_for(changed.wait(), 15)
        for _ in range(100):
            if len(updated) >= 3:
                break
            await asyncio.sleep(0.1)
        assert len(updated) >= 3 and set(updated) == {uri}
        assert f"{notifier}__extra" in {t.name for t in (await client.list_tools()).tools}
        assert text_of(await client.call_tool(f"{notifier}__extra")) == "extra"


async def test_a_reload_that_changes_a_projects_tools_reaches_connected_clients(
    provider: Provider, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`central-mcp reload` with `web` denying `greet` too: the connected SDK client hears
    tools/list_changed at once and its next tools/list lacks the tool (deploy.yaml restored after)."""
    workspace = provider.clone(tmp_path_factory.mktemp("clone") / "work")
    echo = workspace.put("echo")
    workspace.commit("echo")
    push = workspace.push()
    assert push.ok, push.output
    made = provider.cli("keys", "create", "web")
    assert made.returncode == 0, made.stderr
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if "ToolListChanged" in type(getattr(message, "root", message)).__name__:
            changed.set()

    before = provider.config.read_text()
    headers = {"authorization": f"Bearer {made.stdout.strip()}"}
    try:
        async with connect(f"{provider.base}/mcp", headers=headers, message_handler=on_message) as client:
            assert f"{echo}__greet" in {t.name for t in (await client.list_tools()).tools}
            await asyncio.sleep(0.3)  # the client's GET stream is open
            provider.config.write_text(
                before.replace("deny: ['*:slow_count']", "deny: ['*:slow_count', '*:greet']")
            )
            done = await asyncio.to_thread(provider.cli, "reload")
            assert done.returncode == 0, done.stderr
            await asyncio.wait_for(changed.wait(), 10)
            assert f"{echo}__greet" not in {t.name for t in (await client.list_tools()).tools}
    finally:
        provider.config.write_text(before)
        provider.cli("reload")
