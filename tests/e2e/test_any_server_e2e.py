"""End to end, issue 13's headline: any MCP server — a PyPI package over stdio, an npm package over
stdio and a remote — deployed by one `git push`, then reached through /mcp/<name> with a project key
by the official Python SDK client and the official TypeScript SDK client, in every protocol era the
provider offers for that kind.

`time/` is `pypi:mcp-server-time`, `everything/` is `npm:@modelcontextprotocol/server-everything`,
both stdio behind the provider's bridge, which offers the session era only (a 2026-07-28
`server/discover` is answered -32022, so a probing client falls back to `initialize`). `weather/` is
a remote: the SDK server standing in for it (tests/support/remote.py, TLS with a CA made here, a
secret header from the VM's store) speaks both eras, and the proxy passes either through. Every
test asserts the protocol version the client ended with, so a run of one era cannot pass for another.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from pipeline.dockerhost import DockerHost
from tests.support import ts_sdk
from tests.support.provider import Provider, VMSecrets, running_provider
from tests.support.remote import TOKEN, StandIn, stand_in

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]  # the first test also builds both packages

TIME_NAME, TIME_VERSION = "mcp-server-time", "2026.10.19"
EVERYTHING_NAME, EVERYTHING_VERSION = "@modelcontextprotocol/server-everything", "2026.8.31"
PACKAGES = {
    "time": f"pypi:{TIME_NAME}=={TIME_VERSION}",
    "everything": f"npm:{EVERYTHING_NAME}@{EVERYTHING_VERSION}",
}
SECRET = "WEATHER_TOKEN"
SESSION_ERA = "2025-11-25"  # the session era's last version: what `initialize` settles on
STATELESS_ERA = "2026-07-28"  # the stateless era: `server/discover`, no session
UNSUPPORTED_VERSION = -32022  # the bridge's answer to a stateless-era request
PROJECTS = "projects: [{name: web}]\n"
CALLS: dict[str, tuple[str, dict[str, Any]]] = {  # kind → a tool call every client makes
    "time": ("get_current_time", {"timezone": "UTC"}),
    "everything": ("echo", {"message": "any server"}),
    "weather": ("echo", {"text": "any server"}),
}
# The version each client mode must end with, per kind: stdio offers the session era only; the remote
# (an SDK server) speaks both, so a probing client gets the stateless era from it.
OFFERED = {"time": SESSION_ERA, "everything": SESSION_ERA, "weather": STATELESS_ERA}


@dataclass
class Site:
    """The provider after the one push: the server name of each kind, a key of project `web`."""

    provider: Provider
    remote: StandIn
    servers: dict[str, str]  # kind → per-run server name
    key: str
    push_output: str

    def url(self, kind: str) -> str:
        """The proxy URL of the server of `kind`."""
        return f"{self.provider.base}/mcp/{self.servers[kind]}"


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    docker_host: DockerHost,
    node_base_image: str,
    package_cache: Path,
) -> Iterator[Site]:
    """One push of time/, everything/ and weather/ into a provider that trusts the stand-in's CA."""
    root = tmp_path_factory.mktemp("any-server")
    with stand_in(root) as remote:
        config = PROJECTS + f"remotes: {{allow_hosts: [localhost], ca_file: {remote.cert.ca_file}}}\n"
        config += "monitor: {probe_interval: 1h}\n"  # no probe among the requests a test reads back
        vm = VMSecrets(store={SECRET: TOKEN}, grants=(SECRET,))
        proxy = {"deploy_timeout": "5m"}
        with running_provider(
            root / "vm", docker_host, config, proxy=proxy, vm=vm, package_cache=package_cache
        ) as provider:
            workspace = provider.clone(root / "work")
            servers = {kind: provider.name(kind) for kind in CALLS}
            for kind, server in servers.items():
                folder = workspace.root / "servers" / server
                folder.mkdir(parents=True)
                text = yaml.safe_dump(_manifest(kind, server, remote), sort_keys=False)
                (folder / "mcp-server.yaml").write_text(text)
            workspace.commit("time, everything and weather: two packages over stdio and a remote")
            push = workspace.push()
            assert push.ok, push.output
            made = provider.cli("keys", "create", "web")
            assert made.returncode == 0, made.stderr
            yield Site(provider, remote, servers, made.stdout.strip(), push.output)


def _manifest(kind: str, server: str, remote: StandIn) -> dict[str, Any]:
    """The mcp-server.yaml of the server of `kind`, as its owner writes it."""
    head = {"name": server, "version": "1.0.0", "description": f"{kind}, from issue 13's headline test"}
    if kind == "weather":
        remote_spec = {"url": remote.url(), "headers": {"Authorization": {"secret": SECRET}}}
        return head | {"transport": "streamable-http", "remote": remote_spec, "health": {"timeout": "5s"}}
    run: dict[str, Any] = {"port": 8080}
    if kind == "time":
        run["args"] = ["--local-timezone", "UTC"]
    return head | {
        "transport": "stdio",
        "build": {"package": PACKAGES[kind]},
        "run": run,
        "health": {"timeout": "60s"},
    }


def _answered(kind: str, text: str) -> None:
    """The call's text is what the server of `kind` answers to CALLS[kind]."""
    if kind == "time":
        assert json.loads(text)["timezone"] == "UTC", text
    elif kind == "everything":
        assert text == "Echo: any server", text
    else:
        assert text == "any server", text


async def _python(site: Site, kind: str, mode: str) -> tuple[str, list[str], str]:
    """One Python SDK client of `mode` with the key: list tools, make CALLS[kind]; return the
    negotiated version, the tool names and the call's text."""
    tool, args = CALLS[kind]
    headers = {"authorization": f"Bearer {site.key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(site.url(kind), http_client=http), mode=mode) as client,
    ):
        tools = [t.name for t in (await client.list_tools()).tools]
        result = await client.call_tool(tool, args)
        assert not result.is_error, result.content
        text = getattr(result.content[0], "text", "")
        return str(client.protocol_version), tools, text


def test_one_push_made_all_three_live(site: Site) -> None:
    """The one push built both packages on the host (no package code run there), gated the remote
    over TLS, and made each server's first release live."""
    for server in site.servers.values():
        assert f"{server}: r1 is live" in site.push_output, site.push_output
    assert not site.provider.containers(site.servers["weather"])  # a remote runs nothing here
    assert site.provider.running(site.servers["time"]) and site.provider.running(site.servers["everything"])


@pytest.mark.parametrize("kind", list(CALLS))
@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_the_python_sdk_client_lists_and_calls_each_kind_in_each_era(
    site: Site, kind: str, mode: str
) -> None:
    """The Python SDK client with a key lists and calls a tool of each server: `legacy` mode ends in
    the session era everywhere; `auto` mode probes 2026-07-28 first and ends in the stateless era on
    the remote and, refused by the bridge, falls back to the session era on a stdio server."""
    version, tools, text = asyncio.run(_python(site, kind, mode))
    assert version == (SESSION_ERA if mode == "legacy" else OFFERED[kind])
    assert CALLS[kind][0] in tools
    _answered(kind, text)


def test_a_python_client_pinned_to_the_stateless_era_reaches_the_remote(site: Site) -> None:
    """A client that speaks only 2026-07-28 (mode pinned, no probe, no fallback) calls the remote;
    the remote itself saw every request of it in that era, with no session."""
    before = len(site.remote.app.seen)
    version, _, text = asyncio.run(_python(site, "weather", STATELESS_ERA))
    assert version == STATELESS_ERA
    _answered("weather", text)
    seen = [dict(pairs) for pairs in site.remote.app.seen[before:]]
    assert seen and all(h.get("mcp-protocol-version") == STATELESS_ERA for h in seen), seen
    assert not any("mcp-session-id" in h for h in seen), seen


@pytest.mark.parametrize("kind", ["time", "everything"])
def test_a_stdio_server_refuses_a_client_pinned_to_the_stateless_era(site: Site, kind: str) -> None:
    """A stdio server offers the session era only: a client pinned to 2026-07-28 is refused with
    -32022 (unsupported protocol version), a clear error rather than a hang."""
    with pytest.raises((MCPError, ExceptionGroup)) as failed:  # the SDK's task groups may wrap it
        asyncio.run(_python(site, kind, STATELESS_ERA))
    [refused] = _leaves(failed.value)
    assert isinstance(refused, MCPError), refused
    assert refused.code == UNSUPPORTED_VERSION, refused
    assert SESSION_ERA in refused.data["supported"] and refused.data["requested"] == STATELESS_ERA


@pytest.mark.parametrize("kind", list(CALLS))
@pytest.mark.parametrize("mode", [ts_sdk.V1, ts_sdk.LEGACY, ts_sdk.AUTO])
def test_the_typescript_sdk_client_lists_and_calls_each_kind_in_each_era(
    site: Site, tmp_path_factory: pytest.TempPathFactory, kind: str, mode: str
) -> None:
    """The official TypeScript SDK client with a key lists and calls a tool of each server: 1.x and
    v2 in legacy mode hold a session in the session era; v2 in auto mode ends in the stateless era
    (no session) on the remote and falls back to a session-era session on a stdio server."""
    ts_sdk.require(mode)
    script = ts_sdk.install(tmp_path_factory.getbasetemp() / "ts-sdk")
    tool, args = CALLS[kind]
    found = ts_sdk.call(script, site.url(kind), site.key, tool, args, mode)
    expected = OFFERED[kind] if mode == ts_sdk.AUTO else SESSION_ERA
    assert found["protocolVersion"] == expected, found
    assert found["era"] == ("modern" if expected == STATELESS_ERA else "legacy"), found
    assert (found["session"] is None) == (expected == STATELESS_ERA), found  # sessions are the old era's
    assert tool in found["tools"]
    _answered(kind, found["result"]["content"][0]["text"])


@pytest.mark.parametrize("kind", list(CALLS))
def test_a_typescript_client_pinned_to_the_stateless_era_gets_it_only_where_offered(
    site: Site, tmp_path_factory: pytest.TempPathFactory, kind: str
) -> None:
    """The v2 TypeScript client pinned to 2026-07-28 (no probe, no fallback) calls the remote with no
    session; a stdio server refuses it with -32022 naming the session-era versions."""
    ts_sdk.require(STATELESS_ERA)
    script = ts_sdk.install(tmp_path_factory.getbasetemp() / "ts-sdk")
    tool, args = CALLS[kind]
    done = ts_sdk.run(script, site.url(kind), site.key, tool, args, STATELESS_ERA)
    if OFFERED[kind] == STATELESS_ERA:
        assert done.returncode == 0, done.stderr[-2000:]
        found = json.loads(done.stdout.strip().splitlines()[-1])
        assert (found["protocolVersion"], found["era"], found["session"]) == (STATELESS_ERA, "modern", None)
        _answered(kind, found["result"]["content"][0]["text"])
    else:
        assert done.returncode != 0, done.stdout
        assert "UnsupportedProtocolVersionError" in done.stderr, done.stderr[-2000:]
        assert f"code: {UNSUPPORTED_VERSION}" in done.stderr and f"'{SESSION_ERA}'" in done.stderr


def test_the_remote_got_the_secret_header_never_the_clients_key(site: Site) -> None:
    """Every request the remote received carried the VM's secret header and never a project key;
    the secret shows in no push output or deploy log."""
    assert site.remote.app.seen, "the remote was never reached"
    assert all(values == [TOKEN] for values in site.remote.app.values("authorization"))
    deploy = site.provider.last_deploy_id()
    assert TOKEN not in site.push_output and TOKEN not in site.provider.log(deploy)


@pytest.mark.parametrize("kind", list(CALLS))
def test_without_a_key_no_kind_answers(site: Site, kind: str) -> None:
    """The project key is what lets the clients in: without one every kind answers 401, and
    nothing reaches the remote."""
    seen = len(site.remote.app.seen)
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": SESSION_ERA,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    status, _, body = site.provider.post(f"/mcp/{site.servers[kind]}", initialize)
    assert status == 401, body
    assert len(site.remote.app.seen) == seen


def test_the_registry_lists_all_three_truthfully(site: Site) -> None:
    """registry.json lists each server under our URL: the packages the stdio servers run, the
    session era they offer, and the remote with neither its own URL nor its secret."""
    status, _, body = site.provider.get("/registry.json")
    assert status == 200, body
    assert site.remote.url() not in body and f":{site.remote.port}/" not in body and TOKEN not in body
    entries = {
        kind: [e for e in json.loads(body)["servers"] if e["server"]["name"].endswith(f"/{server}")]
        for kind, server in site.servers.items()
    }
    assert all(len(found) == 1 for found in entries.values()), body
    for kind, [entry] in entries.items():
        [remote] = entry["server"]["remotes"]
        assert (remote["type"], remote["url"]) == ("streamable-http", site.url(kind)), remote
        [live] = entry["_meta"].values()
        assert (live["status"], live["release"]) == ("live", "r1"), live
        assert CALLS[kind][0] in [tool["name"] for tool in live["tools"]]
        assert ("stdio" in live) == (kind != "weather"), live
    assert _package(entries["time"][0]) == ("pypi", TIME_NAME, TIME_VERSION, "stdio")
    assert _package(entries["everything"][0]) == ("npm", EVERYTHING_NAME, EVERYTHING_VERSION, "stdio")
    assert "packages" not in entries["weather"][0]["server"]
    for kind in ("time", "everything"):
        [live] = entries[kind][0]["_meta"].values()
        assert live["stdio"]["eras"] == ["session"]


def _leaves(error: BaseException) -> list[BaseException]:
    """`error` itself, or the exceptions inside it when it is a group (and inside the groups it holds)."""
    if not isinstance(error, BaseExceptionGroup):
        return [error]
    return [leaf for inner in error.exceptions for leaf in _leaves(inner)]


def _package(entry: dict[str, Any]) -> tuple[str, str, str, str]:
    """The one package a registry entry lists: registry type, identifier, version, transport."""
    [package] = entry["server"]["packages"]
    return package["registryType"], package["identifier"], package["version"], package["transport"]["type"]
