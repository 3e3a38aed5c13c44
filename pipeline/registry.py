"""What projects read: /registry.json (official MCP registry shape), /mcp.json, client configs.

/mcp.json and the client configs offer one entry by default, AGGREGATE_ENTRY at `/mcp`: the
project's aggregate endpoint, where its key reaches every tool it may use as `<server>__<tool>`;
`per_server` gives one entry per server at `/mcp/<server>` instead. The registry names the
aggregate endpoint in its metadata and each tool's aggregate name beside it.

Built from the live releases only, so the registry never lists what is not live, and from
manifests and tool lists, which hold no secret values. Written atomically after every
committed swap, and served with an ETag.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline import stdio
from pipeline.config.settings import Project, Settings
from pipeline.packages import spec as package_spec
from pipeline.proxy.catalog import public_name
from pipeline.store import Release

SERVER_SCHEMA = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
# Our own _meta key: the official "io.modelcontextprotocol.registry/official" is the official
# registry's to write. Its times follow that block's names and format (RFC 3339): publishedAt
# is when the release was built (first published), updatedAt when it was last made live.
META_KEY = "io.central-mcp/live"
KEY_ENV = "CENTRAL_MCP_API_KEY"
FORMATS = ("vscode", "cursor", "claude-code", "claude-desktop")
AGGREGATE_ENTRY = "central-mcp"  # the one entry a project's client config holds by default
AGGREGATE_KEY = "io.central-mcp/aggregate"


def visible(releases: list[Release], project: Project | None) -> list[Release]:
    """The live releases a project may use (all of them when no project is given)."""
    if project is None:
        return releases
    return [
        r
        for r in releases
        if project.may_use(r.server) and ("all" in _access(r) or project.name in _access(r))
    ]


def public(releases: list[Release]) -> list[Release]:
    """The live releases anyone may see without a key: those whose manifest allows `all`."""
    return [r for r in releases if "all" in _access(r)]


def registry(
    settings: Settings,
    releases: list[Release],
    health: dict[str, str] | None = None,
    project: Project | None = None,
) -> dict[str, Any]:
    """The registry document: {"servers": [{"server": ..., "_meta": ...}], "metadata": {"count": N,
    AGGREGATE_KEY: the aggregate endpoint (and the project whose key asked)}}."""
    entries = [
        {"server": server_json(settings, r), "_meta": {META_KEY: _live_meta(r, health or {}, project)}}
        for r in sorted(releases, key=lambda r: r.server)
    ]
    aggregate = {"url": aggregate_endpoint(settings), **({"project": project.name} if project else {})}
    return {"servers": entries, "metadata": {"count": len(entries), AGGREGATE_KEY: aggregate}}


def server_json(settings: Settings, release: Release) -> dict[str, Any]:
    """One server.json (2025-12-11) for a live release: its endpoint here, and the package it runs."""
    manifest = release.manifest
    packages = _packages(settings, manifest)
    return {
        "$schema": SERVER_SCHEMA,
        "name": f"{settings.namespace}/{release.server}",
        "description": str(manifest.get("description", release.server))[:100],
        "version": release.version,
        "remotes": [
            {
                "type": "streamable-http",
                "url": endpoint(settings, release.server),
                "headers": [
                    {
                        "name": "Authorization",
                        "description": "Bearer <project API key>",
                        "isRequired": True,
                        "isSecret": True,
                    }
                ],
            }
        ],
        **({"packages": packages} if packages else {}),
    }


def _packages(settings: Settings, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The published package a release was built from (build.package), as server.json lists one."""
    text = (manifest.get("build") or {}).get("package")
    if not isinstance(text, str) or not text:
        return []
    spec = package_spec.parse(text)
    index = (
        settings.packages.pypi_index
        if spec.registry is package_spec.Registry.PYPI
        else settings.packages.npm_registry
    )
    url = urlsplit(index)
    run = manifest.get("run") or {}
    entry: dict[str, Any] = {
        "registryType": str(spec.registry),
        "registryBaseUrl": f"{url.scheme}://{url.hostname}" + (f":{url.port}" if url.port else ""),
        "identifier": spec.name,
        "version": spec.version,
        "transport": {"type": "stdio"}
        if manifest.get("transport") == "stdio"
        else {
            "type": "streamable-http",
            "url": f"http://localhost:{run.get('port')}{run.get('path', '/mcp')}",
        },
    }
    if run.get("args") and not run.get("command"):
        entry["packageArguments"] = [{"type": "positional", "value": str(a)} for a in run["args"]]
    return [entry]


def mcp_json(
    settings: Settings, releases: list[Release], *, keyed: bool = True, per_server: bool = False
) -> dict[str, Any]:
    """The generic `mcpServers` file that projects drop into their client config: the aggregate
    entry, or (`per_server`) one entry per server."""
    return {
        "mcpServers": {
            name: {"type": "http", "url": url, **_headers(f"Bearer ${{{KEY_ENV}}}", keyed)}
            for name, url in entries(settings, releases, per_server)
        }
    }


def entries(settings: Settings, releases: list[Release], per_server: bool) -> list[tuple[str, str]]:
    """(name, URL) of each entry a client config holds: the aggregate's, or each server's."""
    if not per_server:
        return [(AGGREGATE_ENTRY, aggregate_endpoint(settings))]
    return [(r.server, endpoint(settings, r.server)) for r in sorted(releases, key=lambda r: r.server)]


def client_config(
    settings: Settings, releases: list[Release], fmt: str, *, keyed: bool = True, per_server: bool = False
) -> dict[str, Any]:
    """A ready-to-paste config for one client: vscode, cursor, claude-code or claude-desktop.

    `keyed` False (deploy.yaml lists no projects, so /mcp/* takes no key) leaves the key out;
    `per_server` lists each server instead of the aggregate endpoint.
    """
    urls = dict(entries(settings, releases, per_server))
    if fmt == "vscode":
        inputs = [
            {
                "type": "promptString",
                "id": "central-mcp-key",
                "description": "central-mcp project API key",
                "password": True,
            }
        ]
        servers = {
            n: {"type": "http", "url": url, **_headers("Bearer ${input:central-mcp-key}", keyed)}
            for n, url in urls.items()
        }
        return {"inputs": inputs, "servers": servers} if keyed else {"servers": servers}
    if fmt == "cursor":
        return {
            "mcpServers": {
                n: {"url": url, **_headers(f"Bearer ${{env:{KEY_ENV}}}", keyed)} for n, url in urls.items()
            }
        }
    if fmt == "claude-code":
        return mcp_json(settings, releases, keyed=keyed, per_server=per_server)
    if fmt == "claude-desktop":
        return {"mcpServers": {n: _mcp_remote(url, keyed) for n, url in urls.items()}}
    raise ValueError(f"unknown client format {fmt!r}; use one of {', '.join(FORMATS)}")


def _headers(authorization: str, keyed: bool) -> dict[str, Any]:
    return {"headers": {"Authorization": authorization}} if keyed else {}


def _mcp_remote(url: str, keyed: bool) -> dict[str, Any]:
    """Claude Desktop's entry: the `mcp-remote` bridge to an HTTP endpoint."""
    if not keyed:
        return {"command": "npx", "args": ["-y", "mcp-remote", url]}
    return {
        "command": "npx",
        "args": ["-y", "mcp-remote", url, "--header", "Authorization:${AUTH_HEADER}"],
        "env": {"AUTH_HEADER": f"Bearer <{KEY_ENV}>"},
    }


def endpoint(settings: Settings, server: str) -> str:
    """The public MCP endpoint of a server."""
    return f"{settings.base_url}/mcp/{server}"


def aggregate_endpoint(settings: Settings) -> str:
    """The public aggregate endpoint: every server a project's key reaches, behind one URL."""
    return f"{settings.base_url}/mcp"


def etag(document: dict[str, Any]) -> tuple[bytes, str]:
    """The document's canonical bytes and a strong ETag for them."""
    body = json.dumps(document, indent=2, sort_keys=False).encode() + b"\n"
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def write_files(settings: Settings, releases: list[Release]) -> Path:
    """Write registry.json and mcp.json atomically (temp file + rename) into the output dir."""
    out = settings.registry_dir or settings.state_dir / "registry"
    out.mkdir(parents=True, exist_ok=True)
    for name, document in (
        ("registry.json", registry(settings, releases)),
        ("mcp.json", mcp_json(settings, releases)),
    ):
        body, _ = etag(document)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
        os.replace(tmp, out / name)
    return out


def rfc3339(timestamp: float) -> str:
    """A Unix time as the official registry writes times: RFC 3339 in UTC (`2026-11-26T16:16:55.123Z`)."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _access(release: Release) -> tuple[str, ...]:
    return tuple(release.manifest.get("access", ("all",)))


def _live_meta(release: Release, health: dict[str, str], project: Project | None) -> dict[str, Any]:
    return {
        "status": release.status,
        "release": release.name,
        "commit": release.commit_sha,
        "publishedAt": rfc3339(release.created_at),
        "updatedAt": rfc3339(release.live_at or release.created_at),
        "health": health.get(release.server, "passed MCP health gate"),
        **({"stdio": offered} if (offered := stdio.offer(release.manifest)) else {}),
        "tools": [
            {
                "name": t.get("name"),
                "description": t.get("description", ""),
                "inputSchema": t.get("inputSchema", {}),
                **_aggregate_name(release.server, t, project),
            }
            for t in release.tools
        ],
    }


def _aggregate_name(server: str, tool: dict[str, Any], project: Project | None) -> dict[str, str]:
    """A tool's name on the aggregate endpoint, unless the project's selection leaves it out."""
    name = str(tool.get("name", ""))
    if not name or (project is not None and not project.may_call(server, name)):
        return {}
    return {"aggregateName": public_name(server, name)}
