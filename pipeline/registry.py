"""What projects read: /registry.json (official MCP registry shape), /mcp.json, client configs.

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
from pipeline.store import Release

SERVER_SCHEMA = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
# Our own _meta key: the official "io.modelcontextprotocol.registry/official" is the official
# registry's to write. Its times follow that block's names and format (RFC 3339): publishedAt
# is when the release was built (first published), updatedAt when it was last made live.
META_KEY = "io.central-mcp/live"
KEY_ENV = "CENTRAL_MCP_API_KEY"
FORMATS = ("vscode", "cursor", "claude-code", "claude-desktop")


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
    settings: Settings, releases: list[Release], health: dict[str, str] | None = None
) -> dict[str, Any]:
    """The registry document: {"servers": [{"server": ..., "_meta": ...}], "metadata": {"count": N}}."""
    entries = [
        {"server": server_json(settings, r), "_meta": {META_KEY: _live_meta(r, health or {})}}
        for r in sorted(releases, key=lambda r: r.server)
    ]
    return {"servers": entries, "metadata": {"count": len(entries)}}


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


def mcp_json(settings: Settings, releases: list[Release], *, keyed: bool = True) -> dict[str, Any]:
    """The generic `mcpServers` file that projects drop into their client config."""
    return {
        "mcpServers": {
            r.server: {
                "type": "http",
                "url": endpoint(settings, r.server),
                **_headers(f"Bearer ${{{KEY_ENV}}}", keyed),
            }
            for r in sorted(releases, key=lambda r: r.server)
        }
    }


def client_config(
    settings: Settings, releases: list[Release], fmt: str, *, keyed: bool = True
) -> dict[str, Any]:
    """A ready-to-paste config for one client: vscode, cursor, claude-code or claude-desktop.

    `keyed` False (deploy.yaml lists no projects, so /mcp/* takes no key) leaves the key out.
    """
    names = sorted(r.server for r in releases)
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
            n: {
                "type": "http",
                "url": endpoint(settings, n),
                **_headers("Bearer ${input:central-mcp-key}", keyed),
            }
            for n in names
        }
        return {"inputs": inputs, "servers": servers} if keyed else {"servers": servers}
    if fmt == "cursor":
        return {
            "mcpServers": {
                n: {"url": endpoint(settings, n), **_headers(f"Bearer ${{env:{KEY_ENV}}}", keyed)}
                for n in names
            }
        }
    if fmt == "claude-code":
        return mcp_json(settings, releases, keyed=keyed)
    if fmt == "claude-desktop":
        return {"mcpServers": {n: _mcp_remote(endpoint(settings, n), keyed) for n in names}}
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


def _live_meta(release: Release, health: dict[str, str]) -> dict[str, Any]:
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
            }
            for t in release.tools
        ],
    }
