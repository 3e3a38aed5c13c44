"""The official TypeScript SDK client (`@modelcontextprotocol/sdk` from npm), run by node in tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

TS_SDK = "@modelcontextprotocol/sdk@1.32.2"
CLIENT_SCRIPT = Path(__file__).resolve().parent / "ts_client.mjs"
INSTALL_TIMEOUT = 300
CALL_TIMEOUT = 60


def install(into: Path) -> Path:
    """npm-install the SDK into `into` (lifecycle scripts off) next to a copy of the client script;
    return the script's path. Skipped by the caller when node is missing."""
    into.mkdir(parents=True, exist_ok=True)
    if not (into / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        subprocess.run(
            ["npm", "install", "--prefix", str(into), "--ignore-scripts", "--no-audit", "--no-fund", TS_SDK],
            check=True,
            capture_output=True,
            timeout=INSTALL_TIMEOUT,
        )
    script = into / CLIENT_SCRIPT.name
    shutil.copyfile(CLIENT_SCRIPT, script)
    return script


def call(script: Path, url: str, key: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """Connect with the TypeScript SDK, list tools and call `tool`; return what the script printed."""
    done = subprocess.run(
        ["node", str(script), url, key, tool, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found
