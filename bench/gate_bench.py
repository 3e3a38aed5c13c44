"""Gate benchmark: one MCP handshake with the official SDK client vs gate.py's own client.

Starts an SDK server (tests/support/loopback.py's `mcp_app`) in its own process on a loopback port, once
per server mode, and times N full handshakes with each client: `initialize` →
`notifications/initialized` → `tools/list` (the SDK's `mcp.Client`, each handshake in a fresh
`asyncio.run` as a synchronous gate would call it) against `pipeline.gate.handshake`. Also times
the import of each client in a fresh interpreter. Usage: `python bench/gate_bench.py [-n 50]`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import gate  # noqa: E402
from tests.support.loopback import free_port  # noqa: E402

MODES = {
    "session, SSE answers": (False, False),
    "session, JSON answers": (False, True),
    "stateless, SSE answers (the echo fixture)": (True, False),
}
SERVER = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from tests.support.loopback import mcp_app
uvicorn.run(mcp_app("bench", stateless={stateless}, json_response={json_response}),
            host="127.0.0.1", port={port}, log_level="error")
"""
IMPORTS = {
    "pipeline.gate (hand-written client)": "import pipeline.gate",
    "mcp.Client + streamable_http_client": (
        "import mcp; from mcp import Client; from mcp.client.streamable_http import streamable_http_client"
    ),
}


def main() -> None:
    """Print handshake medians per client and server mode, then the import times."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50, help="handshakes per client and mode")
    args = parser.parse_args()
    print(f"median ms per handshake over {args.n} runs (after 3 warm-ups), interleaved:")
    for mode, (stateless, json_response) in MODES.items():
        port = free_port()
        code = SERVER.format(root=str(ROOT), stateless=stateless, json_response=json_response, port=port)
        server = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}/mcp"
            _wait_up(url)
            own, sdk = _compare(url, args.n)
            print(f"  {mode:<44} hand-written {own:6.2f} ms   SDK {sdk:6.2f} ms   ({sdk / own:.1f}x)")
        finally:
            server.terminate()
            server.wait(10)
    print("\nimport time in a fresh process (median of 5):")
    for label, statement in IMPORTS.items():
        print(f"  {label:<44} {_import_ms(statement):7.1f} ms")


def _compare(url: str, runs: int) -> tuple[float, float]:
    """Interleave the two clients so that a slow spell on the machine hits both alike."""
    own: list[float] = []
    sdk: list[float] = []

    def timed(handshake: Callable[[], object], into: list[float]) -> None:
        started = time.perf_counter()
        handshake()
        into.append((time.perf_counter() - started) * 1000)

    for _ in range(3):
        gate.handshake(url, 10)
        asyncio.run(_sdk_handshake(url))
    for _ in range(runs):
        timed(lambda: gate.handshake(url, 10), own)
        timed(lambda: asyncio.run(_sdk_handshake(url)), sdk)
    return statistics.median(own), statistics.median(sdk)


async def _sdk_handshake(url: str) -> tuple[str, str, list[object]]:
    from mcp import Client

    async with Client(url) as client:
        tools: list[object] = []
        cursor: str | None = None
        while True:
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                return str(client.protocol_version), client.server_info.name, tools


def _import_ms(statement: str) -> float:
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(5)
    ]
    return statistics.median(runs) * 1000


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench server at {url} did not start")


if __name__ == "__main__":
    main()
