"""The official TypeScript SDK client, run by node in tests: `@modelcontextprotocol/sdk` 1.x (session era
only) and its v2 successor `@modelcontextprotocol/client`, which negotiates the 2026-07-28 era on request."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

TS_SDK = "@modelcontextprotocol/sdk@1.32.2"
TS_CLIENT_V2 = "@modelcontextprotocol/client@2.4.0"
V2_NODE = 20  # the v2 client's `engines.node`
PACKAGES = (TS_SDK, TS_CLIENT_V2)
V1 = "v1"  # the 1.x client: initialize, no version negotiation
LEGACY = "legacy"  # the v2 client, versionNegotiation mode 'legacy' (its default)
AUTO = "auto"  # the v2 client, mode 'auto': server/discover first, initialize when refused
CLIENT_SCRIPT = Path(__file__).resolve().parent / "ts_client.mjs"
INSTALL_TIMEOUT = 300
CALL_TIMEOUT = 60


def missing(mode: str = V1) -> str:
    """Why the client of `mode` cannot run here ('' when it can): no node or npm, or a node too old."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are not installed: `apt-get install nodejs npm`"
    if mode == V1:
        return ""
    version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout
    major = int(version.strip().lstrip("v").split(".")[0] or 0)
    return "" if major >= V2_NODE else f"{TS_CLIENT_V2} needs node >= {V2_NODE}, this is {version.strip()}"


def require(mode: str = V1) -> None:
    """Skip the calling test when the client of `mode` cannot run here; in CI, fail it instead."""
    reason = missing(mode)
    if reason and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"in CI the TypeScript client must run: {reason}")
    if reason:
        pytest.skip(reason)


def install(into: Path) -> Path:
    """npm-install the SDK into `into` (lifecycle scripts off) next to a copy of the client script;
    return the script's path. Skipped by the caller when node is missing."""
    into.mkdir(parents=True, exist_ok=True)
    if not all((into / "node_modules" / package.rsplit("@", 1)[0]).is_dir() for package in PACKAGES):
        argv = ["npm", "install", "--prefix", str(into), "--ignore-scripts", "--no-audit", "--no-fund"]
        subprocess.run(
            [*argv, *PACKAGES],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT,
        )
    script = into / CLIENT_SCRIPT.name
    shutil.copyfile(CLIENT_SCRIPT, script)
    return script


def call(script: Path, url: str, key: str, tool: str, args: dict[str, Any], mode: str = V1) -> dict[str, Any]:
    """Connect with the TypeScript SDK client of `mode`, list tools and call `tool`; return what the
    script printed: protocolVersion, era ('legacy' or 'modern'), session, tools, result."""
    done = run(script, url, key, tool, args, mode)
    assert done.returncode == 0, done.stderr[-2000:]
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def run(
    script: Path, url: str, key: str, tool: str, args: dict[str, Any], mode: str = V1
) -> subprocess.CompletedProcess[str]:
    """Run the client script of `mode` (V1, LEGACY, AUTO, or a version to pin); return how it ended."""
    return subprocess.run(
        ["node", str(script), url, key, tool, json.dumps(args), mode],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        check=False,
    )
