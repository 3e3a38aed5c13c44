"""Servers from published packages, no Dockerfile, deployed by a real `git push`: the host downloads
the package (bounded, scripts off), the build has no network, the gate, the swap, the proxy and the
registry treat it like any server. The stdio ones run behind the provider's bridge (its layer over
the package's image, the package's argv recorded in it) and answer the SDK client through
/mcp/<name> with a project key; per-session mode gives each MCP session its own process and HOME."""

from __future__ import annotations

import asyncio
import json
import shutil
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from pipeline.dockerhost import LABEL_SERVER, DockerHost
from pipeline.packages import image
from pipeline.stdio import PROGRAM_FILE
from tests.support.provider import Provider, Workspace, running_provider, wait_for

pytestmark = pytest.mark.docker
TIME = "pypi:mcp-server-time==2026.10.19"
EVERYTHING_NAME = "@modelcontextprotocol/server-everything"
EVERYTHING_VERSION = "2026.8.31"
EVERYTHING = f"npm:{EVERYTHING_NAME}@{EVERYTHING_VERSION}"
EVERYTHING_HTTP_PORT = 3001  # server-everything's own streamable-HTTP mode listens here
MEMORY = "npm:@modelcontextprotocol/server-memory@2026.8.31"
# server-memory keeps its graph next to its own script unless told: a read-only root refuses that,
# and the file would be shared by every session of the container; `$HOME` is the session's own.
MEMORY_ENV = {"MEMORY_FILE_PATH": "$HOME/memory.jsonl"}
PROJECTS = "projects: [{name: web}]\n"
RESTART_TIMEOUT = 60  # a loaded 2-core VM starts the bridge and its warm process slowly
SJ_TIMEZONE = "Asia/Tokyo"


def _folder(ws: Workspace, server: str, file: str, data: dict[str, Any]) -> None:
    """servers/<server>/<file> holding `data` (YAML for a manifest, JSON for server.json), nothing else."""
    folder = ws.root / "servers" / server
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2) if file.endswith(".json") else yaml.safe_dump(data, sort_keys=False)
    (folder / file).write_text(text)


def _manifest(server: str, package: str, transport: str, run: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": server,
        "version": "1.0.0",
        "description": f"{package}, built by the provider",
        "transport": transport,
        "build": {"package": package},
        "run": run,
        "health": {"timeout": "60s"},
    }


def _registry_entry(provider: Provider, server: str) -> dict[str, Any]:
    status, _, body = provider.get("/registry.json")
    assert status == 200, body
    entries = [e["server"] for e in json.loads(body)["servers"] if e["server"]["name"].endswith("/" + server)]
    assert len(entries) == 1, body
    entry: dict[str, Any] = entries[0]
    return entry


def test_an_npm_package_and_a_server_json_deploy_by_push_with_no_dockerfile(
    provider: Provider, synced: Workspace, node_base_image: str, docker_host: DockerHost
) -> None:
    """server-everything (its own streamable-HTTP mode) from an mcp-server.yaml with build.package, and
    again from an official server.json: one push makes both live, the SDK client lists and calls their
    tools through /mcp/<name>, their images carry the package, and the registry lists each package."""
    by_manifest = provider.name("everything")
    _folder(
        synced,
        by_manifest,
        "mcp-server.yaml",
        _manifest(
            by_manifest,
            EVERYTHING,
            "streamable-http",
            {"port": EVERYTHING_HTTP_PORT, "args": ["streamableHttp"]},
        ),
    )
    by_server_json = provider.name("everything-sj")
    package = {
        "registryType": "npm",
        "registryBaseUrl": "https://registry.npmjs.org",
        "identifier": EVERYTHING_NAME,
        "version": EVERYTHING_VERSION,
        "transport": {"type": "streamable-http", "url": f"http://localhost:{EVERYTHING_HTTP_PORT}/mcp"},
        "packageArguments": [{"type": "positional", "value": "streamableHttp"}],
        "environmentVariables": [{"name": "LOG_LEVEL", "default": "info"}],
    }
    server_json = {
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": f"io.github.test/{by_server_json}",
        "description": "server-everything, described by its server.json",
        "version": "1.0.0",
        "packages": [package],
    }
    _folder(synced, by_server_json, "server.json", server_json)
    synced.commit("add two package servers")
    push = synced.push()
    assert push.ok, push.output
    assert f"{by_manifest}: r1 is live" in push.output and f"{by_server_json}: r1 is live" in push.output
    fetched = (f"{EVERYTHING}: downloading on the host", f"{EVERYTHING}: cached")  # the cache is the run's
    assert any(line in push.output for line in fetched), push.output
    for server in (by_manifest, by_server_json):
        assert "echo" in provider.tool_names(server)
        labels = docker_host.image_labels(f"central-mcp-server/{server}:r1-{provider.instance}")
        assert labels.get(image.LABEL_PACKAGE) == EVERYTHING
        [listed] = _registry_entry(provider, server)["packages"]
        assert (listed["registryType"], listed["identifier"], listed["version"]) == (
            "npm",
            EVERYTHING_NAME,
            EVERYTHING_VERSION,
        )
    cached = provider.state / "packages" / "npm" / EVERYTHING_NAME / EVERYTHING_VERSION
    assert (cached / "staged.json").is_file()  # one download served both builds


def test_a_range_is_refused_before_anything_is_downloaded(provider: Provider, synced: Workspace) -> None:
    """A push whose package asks for a range is rejected by check, naming $.build.package, and no
    download starts."""
    server = provider.name("ranged")
    package = "pypi:mcp-server-time>=2026.1"
    _folder(synced, server, "mcp-server.yaml", _manifest(server, package, "streamable-http", {"port": 8080}))
    synced.commit("a ranged package")
    push = synced.push()
    assert not push.ok
    assert "$.build.package" in push.output and "asks for a range of versions" in push.output
    assert "downloading on the host" not in push.output and ": cached (" not in push.output  # no fetch


@dataclass
class Keyed:
    """A provider with project `web`, time/, everything/, memory/ and a server.json's time live over
    stdio, a key of `web`."""

    provider: Provider
    time: str
    everything: str
    memory: str
    time_sj: str
    memory_as_is: str
    key: str
    push_output: str
    workspace: Workspace

    def url(self, server: str) -> str:
        """The server's proxy URL."""
        return f"{self.provider.base}/mcp/{server}"


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory,
    docker_host: DockerHost,
    node_base_image: str,
    package_cache: Path,
) -> Iterator[Keyed]:
    """One push of three stdio package servers (PyPI and npm) to a provider that wants project keys."""
    root = tmp_path_factory.mktemp("keyed")
    with running_provider(root, docker_host, extra_config=PROJECTS, package_cache=package_cache) as provider:
        ws = provider.clone(tmp_path_factory.mktemp("keyed-clone") / "work")
        time_server, everything = provider.name("time"), provider.name("everything-stdio")
        memory = provider.name("memory")
        _folder(ws, time_server, "mcp-server.yaml", _manifest(time_server, TIME, "stdio", {"port": 8080}))
        _folder(ws, everything, "mcp-server.yaml", _manifest(everything, EVERYTHING, "stdio", {"port": 8080}))
        run = {"port": 8080, "sessions": "per-session", "env": MEMORY_ENV}
        _folder(ws, memory, "mcp-server.yaml", _manifest(memory, MEMORY, "stdio", run))
        time_sj = provider.name("time-sj")
        _folder(ws, time_sj, "server.json", _time_server_json(time_sj))
        as_is = provider.name("memory-as-is")
        _folder(ws, as_is, "mcp-server.yaml", _manifest(as_is, MEMORY, "stdio", {"port": 8080}))
        ws.commit("add time, everything, memory (twice) and a server.json's time over stdio")
        push = ws.push()
        assert push.ok, push.output
        made = provider.cli("keys", "create", "web")
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        yield Keyed(provider, time_server, everything, memory, time_sj, as_is, key, push.output, ws)


def _time_server_json(server: str) -> dict[str, Any]:
    """An official server.json for mcp-server-time over stdio, with a named package argument."""
    name, version = TIME.removeprefix("pypi:").split("==")
    package = {
        "registryType": "pypi",
        "identifier": name,
        "version": version,
        "transport": {"type": "stdio"},
        "packageArguments": [{"type": "named", "name": "--local-timezone", "value": SJ_TIMEZONE}],
    }
    return {
        "$schema": "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json",
        "name": f"io.github.test/{server}",
        "description": "mcp-server-time, described by its server.json",
        "version": "1.0.0",
        "packages": [package],
    }


async def _sessions(
    keyed: Keyed, server: str, calls: list[list[tuple[str, dict[str, Any]]]]
) -> list[list[CallToolResult]]:
    """Open one SDK session with the key per list of calls, all at once; make the calls in rounds
    (the first call of every session, then the second...); return each session's results."""
    headers = {"authorization": f"Bearer {keyed.key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        clients = [Client(streamable_http_client(keyed.url(server), http_client=http)) for _ in calls]
        opened = [await client.__aenter__() for client in clients]
        try:
            results: list[list[CallToolResult]] = [[] for _ in calls]
            for round_ in range(max(len(c) for c in calls)):
                for i, session_calls in enumerate(calls):
                    if round_ < len(session_calls):
                        tool, args = session_calls[round_]
                        result = await opened[i].call_tool(tool, args)
                        assert not result.is_error, f"{tool}: {result.content}"
                        results[i].append(result)
            return results
        finally:
            for client in reversed(clients):
                await client.__aexit__(None, None, None)


def _text(result: CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


def test_time_and_everything_over_stdio_deploy_by_push_and_answer_through_the_proxy(
    keyed: Keyed, docker_host: DockerHost
) -> None:
    """time/ (pypi mcp-server-time) and everything/ (npm server-everything), both stdio: one push
    builds both images with no network, the bridge layer over each records the package's argv, and
    the SDK client calls a tool of each through /mcp/<name> with a project key."""
    out = keyed.push_output
    for server in (keyed.time, keyed.everything, keyed.memory):
        assert f"{server}: r1 is live" in out and f"{server}: adding the stdio bridge" in out
    [[now]] = asyncio.run(_sessions(keyed, keyed.time, [[("get_current_time", {"timezone": "UTC"})]]))
    assert json.loads(_text(now))["timezone"] == "UTC"
    [[echoed]] = asyncio.run(_sessions(keyed, keyed.everything, [[("echo", {"message": "via bridge"})]]))
    assert "via bridge" in _text(echoed)
    tag = f"central-mcp-server/{keyed.time}:r1-{keyed.provider.instance}"
    program = docker_host.client.containers.run(
        tag, entrypoint=["cat", PROGRAM_FILE], remove=True, network_mode="none"
    )
    assert json.loads(program) == ["/opt/server/bin/mcp-server-time"]
    assert docker_host.image_labels(tag).get(image.LABEL_PACKAGE) == TIME
    filters = {"dangling": True, "label": f"{LABEL_SERVER}={keyed.time}"}
    assert docker_host.client.images.list(filters=filters) == []  # the package's own image went
    for server in (keyed.time, keyed.everything):  # served under the hardened container's rules
        [container] = keyed.provider.running(server)
        attrs = docker_host.client.containers.get(container).attrs
        assert attrs["Config"]["User"] == "65534:65534" and attrs["HostConfig"]["ReadonlyRootfs"]
        assert "/tmp" in attrs["HostConfig"]["Tmpfs"]


def test_a_server_json_stdio_package_runs_with_its_package_arguments(keyed: Keyed) -> None:
    """A server.json's stdio package takes the same path: its packageArguments follow the entry
    command in the recorded program (mcp-server-time names its --local-timezone in a tool's input schema)."""
    tools = asyncio.run(_tools(keyed, keyed.time_sj))
    assert SJ_TIMEZONE in tools["get_current_time"]
    [[now]] = asyncio.run(_sessions(keyed, keyed.time_sj, [[("get_current_time", {"timezone": "UTC"})]]))
    assert json.loads(_text(now))["timezone"] == "UTC"


async def _tools(keyed: Keyed, server: str) -> dict[str, str]:
    """The tools of `server` by name, each as its JSON text, listed with the key."""
    headers = {"authorization": f"Bearer {keyed.key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(keyed.url(server), http_client=http)) as client,
    ):
        return {tool.name: tool.model_dump_json() for tool in (await client.list_tools()).tools}


def test_a_package_keeps_its_program_across_a_restart(keyed: Keyed) -> None:
    """The program is in the image, so a container started again from it (as a restart, start-up
    reconciliation or a rollback does) serves with nothing re-staged."""
    [container] = keyed.provider.running(keyed.time)
    keyed.provider.docker.client.containers.get(container).restart(timeout=5)
    _wait_answering(keyed, keyed.time, "the restarted bridge")


def _wait_answering(keyed: Keyed, server: str, what: str) -> None:
    """Wait until a session of `server` gets the current time."""
    wait_for(f"{what} to answer", lambda: not _failure(keyed, server), RESTART_TIMEOUT, 0.5)


def _failure(keyed: Keyed, server: str) -> str:
    """Why a session of `server` did not get the current time ("" when it did)."""
    try:
        [[now]] = asyncio.run(_sessions(keyed, server, [[("get_current_time", {"timezone": "UTC"})]]))
    except Exception as exc:  # the SDK raises exception groups while the port is closed
        return "".join(traceback.format_exception(exc))[-3000:]
    return "" if json.loads(_text(now))["timezone"] == "UTC" else _text(now)


def test_memory_per_session_keeps_each_sessions_graph_to_itself(keyed: Keyed) -> None:
    """server-memory (npm) in per-session mode: an entity created in one session is in that
    session's graph and not in another's open at the same time, nor in a later session's."""
    entity = {"name": "alice", "entityType": "person", "observations": ["likes tea"]}
    first, second = asyncio.run(
        _sessions(
            keyed,
            keyed.memory,
            [
                [("create_entities", {"entities": [entity]}), ("read_graph", {})],
                [("read_graph", {}), ("read_graph", {})],
            ],
        )
    )
    assert "alice" in _text(first[1])
    assert "alice" not in _text(second[0]) and "alice" not in _text(second[1])
    [[later]] = asyncio.run(_sessions(keyed, keyed.memory, [[("read_graph", {})]]))
    assert "alice" not in _text(later)


def test_a_package_cannot_write_into_its_own_files(keyed: Keyed) -> None:
    """The root is read-only for a package too: server-memory with no MEMORY_FILE_PATH writes next
    to its script, and create_entities answers that error (EROFS) without harming the session."""
    headers = {"authorization": f"Bearer {keyed.key}"}

    async def attempt() -> tuple[CallToolResult, CallToolResult]:
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            Client(streamable_http_client(keyed.url(keyed.memory_as_is), http_client=http)) as client,
        ):
            entity = {"name": "bob", "entityType": "person", "observations": []}
            created = await client.call_tool("create_entities", {"entities": [entity]})
            return created, await client.call_tool("read_graph", {})

    created, graph = asyncio.run(attempt())
    assert created.is_error and "EROFS" in _text(created)
    assert "/opt/server/node_modules/@modelcontextprotocol/server-memory/" in _text(created)
    assert not graph.is_error and "bob" not in _text(graph)


def test_rollback_and_reconciliation_start_a_package_from_its_image_alone(keyed: Keyed) -> None:
    """With the package cache gone, `rollback` makes r1 of time/ live again and start-up
    reconciliation restarts its removed container, both from the image alone: nothing is
    downloaded or staged again, and it answers each time."""
    p, ws = keyed.provider, keyed.workspace
    ws.sync()
    run = {"port": 8080, "args": ["--local-timezone", "Europe/Paris"]}
    _folder(ws, keyed.time, "mcp-server.yaml", _manifest(keyed.time, TIME, "stdio", run))
    ws.commit("time r2: another local zone")
    push = ws.push()
    assert push.ok and f"{keyed.time}: r2 is live" in push.output, push.output
    assert "Europe/Paris" in asyncio.run(_tools(keyed, keyed.time))["get_current_time"]
    cache = p.state / "packages"
    if cache.is_symlink():  # the run's shared download cache: this provider loses its link only
        cache.unlink()
    else:
        shutil.rmtree(cache)

    back = p.cli("rollback", keyed.time, "r1")

    assert back.returncode == 0, back.stdout + back.stderr
    assert "downloading" not in back.stdout and not cache.exists()
    assert "Europe/Paris" not in asyncio.run(_tools(keyed, keyed.time))["get_current_time"]
    assert not (failure := _failure(keyed, keyed.time)), failure
    p.kill()
    for container in p.running(keyed.time):
        p.docker.client.containers.get(container).remove(force=True)

    p.start()

    _wait_answering(keyed, keyed.time, "the reconciled time server")
    assert not cache.exists() and "downloading" not in p.serve_log()
