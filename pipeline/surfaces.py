"""Releases' kept lists (tools, prompts, resources), read for the tool contract's three readers:
a deploy comparing its candidate with the live release, `central-mcp diff` comparing two releases,
and `central-mcp check --against URL` comparing a checkout with what a running provider has live
(its admin API `GET /api/contract`, which answers `live_json`).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from pipeline import checks, contract
from pipeline.config.checkspec import CONTRACT_WARN
from pipeline.config.manifest import Manifest
from pipeline.contract import Surface
from pipeline.errors import DeployError, ServeError
from pipeline.store import Release, Store

CONTRACT_PATH = "/api/contract"
FETCH_TIMEOUT = 30.0
MAX_LIVE_BYTES = 64 * 1024 * 1024  # every live release's lists, as the admin API answers them
GOOD = ("live", "previous", "retired", "rolled-back")  # releases that were live once


def of_release(store: Store, release: Release) -> Surface:
    """A release's lists as kept; its tools alone for a release older than the lists' table."""
    kept = store.surface(release.server, release.number)
    return Surface.from_json(kept) if kept is not None else Surface(tools=release.tools)


def pair(store: Store, server: str, first: str | None, second: str | None) -> tuple[Release, Release]:
    """The two releases `central-mcp diff` compares: rA and rB, or rA and the live one, or the one
    live before the live one and the live one."""
    found = store.releases(server)
    if not found:
        raise DeployError(f"no releases of {server!r}; see `central-mcp status`")
    live = next((r for r in found if r.status == "live"), None)
    newer = _named(found, second, server) if second else live
    if newer is None:
        raise DeployError(
            f"{server} has no live release; name two releases: `central-mcp diff {server} rA rB`"
        )
    older = _named(found, first, server) if first else _before(found, newer)
    return older, newer


def live_json(store: Store) -> dict[str, Any]:
    """What `GET /api/contract` answers: each live release, its version, contract mode and lists."""
    return {
        "servers": {
            r.server: {
                "release": r.number,
                "version": r.version,
                "contract": r.manifest.get("contract", "enforce"),
                **of_release(store, r).as_json(),
            }
            for r in store.live_releases()
        }
    }


def fetch_live(url: str, token: str, timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    """GET a running provider's live lists (admin token as a Bearer header), bounded in size and time."""
    parts = urlsplit(url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServeError(f"--against {url!r} is not an http(s) URL of a provider")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = kind(parts.hostname, parts.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", parts.path + CONTRACT_PATH, headers=headers)
        response = conn.getresponse()
        raw = response.read(MAX_LIVE_BYTES + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise ServeError(f"cannot read {url}{CONTRACT_PATH}: {exc}") from exc
    finally:
        conn.close()
    if response.status == 401:
        raise ServeError(f"{url} wants its admin token: set CENTRAL_MCP_ADMIN_TOKEN in the environment")
    if response.status != 200 or len(raw) > MAX_LIVE_BYTES:
        raise ServeError(f"{url}{CONTRACT_PATH} answered {response.status} ({len(raw)} bytes)")
    try:
        found: dict[str, Any] = json.loads(raw)
    except ValueError as exc:
        raise ServeError(f"{url}{CONTRACT_PATH} did not answer JSON: {exc}") from exc
    return found


def foresee(
    manifests: Sequence[Manifest], live: Mapping[str, Any], given: Mapping[str, Surface], message: str = ""
) -> tuple[list[str], bool]:
    """What a push of `manifests` would meet against `live` (fetch_live's answer): one line per
    finding, and whether a refusal is certain (only where `given` holds a server's new lists)."""
    listed = live.get("servers")
    servers: dict[str, Any] = listed if isinstance(listed, dict) else {}
    lines: list[str] = []
    refused = False
    for m in manifests:
        entry = servers.get(m.name)
        if not isinstance(entry, dict):
            lines.append(f"{m.name}: not live there: a new server, nothing to compare")
            continue
        old = Surface.from_json(entry)
        lines.append(_outlook(m, entry, old))
        lines += _check_findings(m, old)
        if m.name in given:
            found, refusal = _given(m, entry, old, given[m.name], message)
            lines += found
            refused = refused or refusal
    named = {m.name for m in manifests}
    gone = sorted(set(servers) - named)
    lines += [f"{name}: live there but not in this checkout: a push would remove it" for name in gone]
    return lines, refused


def _outlook(m: Manifest, entry: Mapping[str, Any], old: Surface) -> str:
    version = str(entry.get("version", ""))
    tools = sorted(str(t.get("name")) for t in old.tools or [])
    live = f"live r{entry.get('release')} v{version} ({len(tools)} tool(s))"
    head = f"{m.name}: {live}, this checkout v{m.version}"
    if m.contract == CONTRACT_WARN:
        return f"{head}: contract: warn, a breaking change is shown, not refused"
    if contract.is_major_bump(version, m.version):
        return f"{head}: a major bump, a breaking change is accepted"
    listed = ", ".join(tools[:20]) + (", …" if len(tools) > 20 else "")
    return (
        f"{head}: not a major bump, so removing or narrowing any of {listed or 'its tools'} will be refused "
        f"(unless the commit message has {contract.ALLOW_BREAKING})"
    )


def _check_findings(m: Manifest, old: Surface) -> list[str]:
    """The manifest's checks against the live tools: a tool it lacks, arguments its schema refuses."""
    schemas = {str(t.get("name")): t.get("inputSchema") for t in old.tools or []}
    known = [c for c in m.checks if c.tool in schemas]
    lines = [
        f"{m.name}: {c.describe()} calls a tool the live release lacks (this push must add it)"
        for c in m.checks
        if c.tool not in schemas
    ]
    pairs = [(s if isinstance(s := schemas[c.tool], dict) else {}, c.arguments) for c in known]
    for c, problem in zip(known, checks.validate_arguments(pairs) if pairs else [], strict=True):
        if problem:
            lines.append(f"{m.name}: {c.describe()}: the live inputSchema refuses its arguments: {problem}")
    return lines


def _given(
    m: Manifest, entry: Mapping[str, Any], old: Surface, new: Surface, message: str
) -> tuple[list[str], bool]:
    differences = contract.diff(old, new)
    lines = [f"{m.name}:   {d.render()}" for d in differences] or [f"{m.name}:   no change to the contract"]
    refused = contract.refusal(
        differences, m.name, (str(entry.get("version", "")), m.version), m.contract, message
    )
    if refused is not None:
        lines.append(f"{m.name}: a push would be refused: {refused}")
    return lines, refused is not None


def _named(found: Sequence[Release], name: str, server: str) -> Release:
    number = name.lower().lstrip("r")
    match = next((r for r in found if number.isdigit() and r.number == int(number)), None)
    if match is None:
        raise DeployError(f"{server} has no release {name}; see `central-mcp releases {server}`")
    return match


def _before(found: Sequence[Release], newer: Release) -> Release:
    older = next((r for r in found if r.number < newer.number and r.status in GOOD), None)
    if older is None:
        raise DeployError(f"{newer.server} {newer.name} is its first release: nothing to compare it with")
    return older
