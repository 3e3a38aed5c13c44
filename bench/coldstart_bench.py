"""Cold-start benchmark: a server scaled to zero, stopped → its first answer, with the SDK client.

Starts a real `central-mcp serve` (its own state dir, deploy.yaml and bare repo, as the e2e tests do),
pushes the echo test fixture with `scale: {min: 0, idle_after: 1s}`, then N times: waits until the
server has no container, and times one SDK client (`mcp.Client`) connecting through the proxy and
calling `greet`. Prints each run, the median and the goal (<= 1.5 s), and where the time went, read
from the serve log's `woken in` lines: container created and started (docker run, its network and
address), the MCP gate (the process starting in the container, then the handshake), routing; the rest
is the client's own handshake and call. Usage: `python bench/coldstart_bench.py [-n 10]`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp import Client  # noqa: E402

from pipeline.dockerhost import DockerHost  # noqa: E402
from tests.support.provider import Provider, running_provider, wait_for  # noqa: E402

GOAL = 1.5
CONFIG = "idle: {after: 1h, check_interval: 0.2s, wake_timeout: 30s}\n"
WOKEN = re.compile(
    r"woken in (?P<total>[\d.]+)s \(container created and started (?P<container>[\d.]+)s, "
    r"process listening (?P<process>[\d.]+)s, MCP gate (?P<gate>[\d.]+)s, routed (?P<routed>[\d.]+)s\)"
)


def scaled(data: dict[str, Any]) -> None:
    """Make the fixture scale to zero one second after its last request."""
    data["scale"] = {"min": 0, "idle_after": "1s"}


async def first_answer(url: str) -> float:
    """Seconds from a new SDK client's first byte to `greet`'s answer."""
    started = time.perf_counter()
    async with Client(url) as client:
        result = await client.call_tool("greet", {"name": "cold"})
    assert not result.is_error, result.content
    return time.perf_counter() - started


def woken(provider: Provider) -> list[dict[str, float]]:
    """The serve log's wake timings, oldest first."""
    text = (provider.root / "serve.log").read_text(errors="replace")
    return [{k: float(v) for k, v in m.groupdict().items()} for m in WOKEN.finditer(text)]


def main() -> None:
    """Run N cold starts; print each, the median against the goal, and the breakdown."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=10, help="cold starts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_provider(Path(tmp), DockerHost(), CONFIG) as provider:
        workspace = provider.clone(Path(tmp) / "work")
        server = workspace.put("echo", manifest=scaled)
        workspace.commit("echo, scaled to zero")
        push = workspace.push()
        assert push.ok, push.output
        url = f"{provider.base}/mcp/{server}"
        totals = []
        for run in range(args.n):
            wait_for("the server to scale to zero", lambda: not provider.containers(server), 60)
            time.sleep(0.5)  # the removal's own work off the CPU
            seconds = asyncio.run(first_answer(url))
            totals.append(seconds)
            print(f"run {run + 1}: stopped -> first answer {seconds:.3f} s", flush=True)
        parts = woken(provider)[-args.n :]
    median = statistics.median(totals)
    verdict = "met" if median <= GOAL else "NOT met"
    spread = f"min {min(totals):.3f}, max {max(totals):.3f}"
    print(f"\nmedian of {args.n}: {median:.3f} s ({spread}); goal <= {GOAL} s: {verdict}")
    if parts:
        print("where it went (medians, seconds):")
        for key, label in (
            ("container", "container created and started (docker run, network, address)"),
            ("process", "the server's process starts and listens (imports, app)"),
            ("gate", "MCP gate (the handshake, once listening)"),
            ("routed", "store and route"),
            ("total", "server side, all"),
        ):
            print(f"  {label:<64} {statistics.median(p[key] for p in parts):.3f}")
        rest = median - statistics.median(p["total"] for p in parts)
        print(f"  {'the client: connect, initialize/discover, call (the rest)':<64} {rest:.3f}")


if __name__ == "__main__":
    main()
