"""Registry documents: the official server.json schema, mcp.json, client configs, filtering, files."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from pipeline import registry
from pipeline.config.settings import Project, Settings
from pipeline.store import Release

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "public"
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
OFFICIAL = json.loads((FIXTURES / "mcp-registry-server.schema-2025-12-11.json").read_text())


def release(server: str, *, access: tuple[str, ...] = ("all",), number: int = 3) -> Release:
    """A live release as the store returns it."""
    manifest = {
        "name": server,
        "version": "1.2.0",
        "description": f"{server} does things",
        "access": list(access),
        "run": {"port": 8080, "secrets": ["API_TOKEN"]},
    }
    tools = [{"name": "search", "description": "Search.", "inputSchema": {"type": "object"}}]
    return Release(
        server=server,
        number=number,
        repo="central-mcp",
        commit_sha="a" * 40,
        fingerprint="f",
        image=f"central-mcp/{server}:r{number}",
        version="1.2.0",
        status="live",
        deploy_id=7,
        container_id="c",
        host_port=1234,
        path="/mcp",
        tools=tools,
        manifest=manifest,
        created_at=1.0,
        live_at=2.0,
    )


SETTINGS = Settings(
    config_path=Path("deploy.yaml"),
    state_dir=Path("/tmp/unused"),
    public_url="https://mcp.example.com",
    namespace="io.github.owner",
    projects=(Project("web", servers=("property-search",)), Project("ops")),
)


def test_every_server_entry_validates_against_the_official_schema() -> None:
    """Each `server` of /registry.json validates against the official 2025-12-11 server.schema.json."""
    doc = registry.registry(SETTINGS, [release("property-search"), release("999x-ray-analyzer")])
    assert doc["metadata"] == {"count": 2, "io.central-mcp/aggregate": {"url": "https://mcp.example.com/mcp"}}
    for entry in doc["servers"]:
        jsonschema.validate(entry["server"], OFFICIAL)
    first = doc["servers"][0]["server"]
    assert first["name"] == "io.github.owner/999x-ray-analyzer"
    header = {
        "name": "Authorization",
        "description": "Bearer <project API key>",
        "isRequired": True,
        "isSecret": True,
    }
    assert first["remotes"] == [
        {
            "type": "streamable-http",
            "url": "https://mcp.example.com/mcp/999x-ray-analyzer",
            "headers": [header],
        }
    ]


def test_live_state_and_tools_are_in_meta() -> None:
    """_meta carries status, release, commit, RFC 3339 publishedAt/updatedAt, health and the tool list."""
    live = dataclasses.replace(release("property-search"), created_at=1764173815.25, live_at=1764174000.0)
    meta = registry.registry(SETTINGS, [live])["servers"][0]["_meta"][registry.META_KEY]
    assert (meta["status"], meta["release"], meta["commit"]) == ("live", "r3", "a" * 40)
    assert meta["publishedAt"] == "2025-11-26T16:16:55.250Z"
    assert meta["updatedAt"] == "2025-11-26T16:20:00.000Z"
    assert "deployed_at" not in meta
    for stamp in (meta["publishedAt"], meta["updatedAt"]):  # RFC 3339 as the official registry reads it
        assert datetime.fromisoformat(stamp).tzinfo == UTC and RFC3339.fullmatch(stamp)
    assert meta["tools"] == [
        {
            "name": "search",
            "description": "Search.",
            "inputSchema": {"type": "object"},
            "aggregateName": "property-search__search",
        }
    ]


def test_mcp_json_offers_the_aggregate_entry_by_default() -> None:
    """mcp.json's default is one entry, the project's aggregate endpoint /mcp, keyed by variable."""
    doc = registry.mcp_json(SETTINGS, [release("property-search"), release("999x-ray-analyzer")])
    assert doc == {
        "mcpServers": {
            "central-mcp": {
                "type": "http",
                "url": "https://mcp.example.com/mcp",
                "headers": {"Authorization": "Bearer ${CENTRAL_MCP_API_KEY}"},
            }
        }
    }


def test_registry_names_the_aggregate_endpoint_and_each_tools_aggregate_name() -> None:
    """The registry's metadata names /mcp and the asking project; a tool carries its aggregate name
    unless the project's selection leaves it out."""
    picky = Project("picky", tools_deny=("property-search:search",))
    doc = registry.registry(SETTINGS, [release("property-search")], project=picky)
    assert doc["metadata"]["io.central-mcp/aggregate"] == {
        "url": "https://mcp.example.com/mcp",
        "project": "picky",
    }
    assert "aggregateName" not in doc["servers"][0]["_meta"]["io.central-mcp/live"]["tools"][0]
    tools = registry.registry(SETTINGS, [release("property-search")])["servers"][0]["_meta"][
        "io.central-mcp/live"
    ]
    assert tools["tools"][0]["aggregateName"] == "property-search__search"


def test_mcp_json_per_server_uses_the_key_variable_not_a_key() -> None:
    """Per server, mcp.json lists http servers whose Authorization header names ${CENTRAL_MCP_API_KEY}."""
    doc = registry.mcp_json(SETTINGS, [release("property-search")], per_server=True)
    assert doc == {
        "mcpServers": {
            "property-search": {
                "type": "http",
                "url": "https://mcp.example.com/mcp/property-search",
                "headers": {"Authorization": "Bearer ${CENTRAL_MCP_API_KEY}"},
            }
        }
    }


def test_a_project_sees_only_the_servers_it_may_use() -> None:
    """A project's view honours both its deploy.yaml server list and each manifest's access list."""
    releases = [
        release("property-search"),
        release("999x-ray-analyzer"),
        release("ops-only", access=("ops",)),
    ]
    web, ops = SETTINGS.projects
    assert [r.server for r in registry.visible(releases, web)] == ["property-search"]
    assert [r.server for r in registry.visible(releases, ops)] == [
        "property-search",
        "999x-ray-analyzer",
        "ops-only",
    ]
    assert len(registry.visible(releases, None)) == 3


@pytest.mark.parametrize("fmt", registry.FORMATS)
def test_client_configs_have_each_clients_shape(fmt: str) -> None:
    """Each client format has the shape its client reads, and never a key value."""
    doc = registry.client_config(SETTINGS, [release("property-search")], fmt, per_server=True)
    text = json.dumps(doc)
    assert "cmcp_" not in text
    if fmt == "vscode":
        assert doc["servers"]["property-search"]["type"] == "http"
        assert doc["inputs"][0]["password"] is True
        assert "${input:central-mcp-key}" in text
    elif fmt == "claude-desktop":
        entry = doc["mcpServers"]["property-search"]
        assert entry["command"] == "npx" and "mcp-remote" in entry["args"]
    else:
        assert doc["mcpServers"]["property-search"]["url"].endswith("/mcp/property-search")


@pytest.mark.parametrize("fmt", registry.FORMATS)
def test_client_configs_offer_the_single_aggregate_entry_by_default(fmt: str) -> None:
    """Each client format holds one entry by default, `central-mcp` at /mcp."""
    doc = registry.client_config(SETTINGS, [release("a"), release("b")], fmt)
    servers = doc["servers"] if fmt == "vscode" else doc["mcpServers"]
    assert list(servers) == ["central-mcp"]
    assert "https://mcp.example.com/mcp" in json.dumps(servers["central-mcp"])
    assert "/mcp/a" not in json.dumps(doc)


def test_unknown_client_format_names_the_choices() -> None:
    """An unknown format is refused with the list of formats."""
    with pytest.raises(ValueError, match="vscode"):
        registry.client_config(SETTINGS, [], "emacs")


def test_etag_changes_with_content_only() -> None:
    """The same document gives the same ETag; a change gives another."""
    one = registry.etag(registry.mcp_json(SETTINGS, [release("a")], per_server=True))
    two = registry.etag(registry.mcp_json(SETTINGS, [release("a")], per_server=True))
    three = registry.etag(registry.mcp_json(SETTINGS, [release("b")], per_server=True))
    assert one == two and one[1] != three[1]


def test_files_are_written_atomically_and_hold_no_secret_names_values(tmp_path: Path) -> None:
    """write_files leaves complete registry.json and mcp.json (no temp files) in the output dir."""
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=tmp_path)
    out = registry.write_files(settings, [release("property-search")])
    assert sorted(p.name for p in out.iterdir()) == ["mcp.json", "registry.json"]
    data = json.loads((out / "registry.json").read_text())
    assert data["metadata"]["count"] == 1
    assert "API_TOKEN" not in (out / "registry.json").read_text()


def _package_release(server: str, build: dict[str, str], run: dict[str, object], transport: str) -> Release:
    r = release(server)
    manifest = {**r.manifest, "transport": transport, "build": build, "run": run}
    return dataclasses.replace(r, manifest=manifest)


def test_a_package_server_lists_its_package_next_to_our_remote() -> None:
    """A server built from build.package lists that package (registry, name, exact version, transport,
    its arguments) beside the remote it is served at, valid against the official schema; the index's
    credentials never show, and a Dockerfile server lists no packages."""
    settings = dataclasses.replace(
        SETTINGS,
        packages=dataclasses.replace(
            SETTINGS.packages, pypi_index="https://user:token@mirror.example/simple"
        ),
    )
    time_server = _package_release(
        "time", {"package": "pypi:mcp-server-time==2026.10.19"}, {"port": 8080, "args": ["--x"]}, "stdio"
    )
    everything = _package_release(
        "everything",
        {"package": "npm:@modelcontextprotocol/server-everything@2026.8.31"},
        {"port": 3001, "path": "/mcp", "args": ["streamableHttp"]},
        "streamable-http",
    )
    document = registry.registry(settings, [time_server, everything, release("plain")])
    entries = {e["server"]["name"].split("/")[1]: e["server"] for e in document["servers"]}
    for entry in entries.values():
        jsonschema.validate(entry, OFFICIAL)
    assert entries["time"]["packages"] == [
        {
            "registryType": "pypi",
            "registryBaseUrl": "https://mirror.example",
            "identifier": "mcp-server-time",
            "version": "2026.10.19",
            "transport": {"type": "stdio"},
            "packageArguments": [{"type": "positional", "value": "--x"}],
        }
    ]
    [npm] = entries["everything"]["packages"]
    assert (npm["registryType"], npm["identifier"], npm["version"]) == (
        "npm",
        "@modelcontextprotocol/server-everything",
        "2026.8.31",
    )
    assert npm["transport"] == {"type": "streamable-http", "url": "http://localhost:3001/mcp"}
    assert entries["time"]["remotes"][0]["url"] == "https://mcp.example.com/mcp/time"
    assert "packages" not in entries["plain"]
    assert "token" not in json.dumps(document)
