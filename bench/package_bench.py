"""What a server from a published package costs: the host download (cold, then cached), the offline
build, and the built image's first MCP answer on stdio in a hardened container.

    .venv/bin/python bench/package_bench.py [--rounds 3]

Downloads go to PyPI/npm (the packages' real registries); everything else stays on this machine. Each
round uses a fresh cache (a cold download), fetches again (the cache), builds with `network: none`
with a nonce in the first stage (so BuildKit's cache cannot answer), then times `docker run -i` from
start to the `initialize` answer. Images are tagged `central-mcp-bench/*` and removed at the end.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.settings import Packages
from pipeline.dockerhost import DockerHost
from pipeline.packages import fetch, image, spec

PACKAGES = ("pypi:mcp-server-time==2026.10.19", "npm:@modelcontextprotocol/server-everything@2026.8.31")
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "b", "version": "1"},
    },
}
HARDENED = ["--network", "none", "--read-only", "--user", "65534:65534", "--tmpfs", "/tmp", "-e", "HOME=/tmp"]


def main() -> None:
    """Measure each package `--rounds` times and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    host = DockerHost()
    tags: list[str] = []
    try:
        for text in PACKAGES:
            rows = [_round(host, spec.parse(text), tags) for _ in range(rounds)]
            medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
            print(text, " ".join(f"{key}={value:.2f}s" for key, value in medians.items()))
    finally:
        for tag in tags:
            host.remove_image(tag)


def _round(host: DockerHost, package: spec.PackageSpec, tags: list[str]) -> dict[str, float]:
    bounds = Packages()
    with tempfile.TemporaryDirectory(prefix="package-bench-") as tmp:
        started = time.monotonic()
        staged = fetch.fetch(package, bounds, Path(tmp), lambda line: None)
        cold = time.monotonic() - started
        started = time.monotonic()
        fetch.fetch(package, bounds, Path(tmp), lambda line: None)
        cached = time.monotonic() - started
        tag = f"central-mcp-bench/{package.unscoped}:{secrets.token_hex(4)}"
        tags.append(tag)
        text = image.dockerfile(staged, bounds)
        first = "FROM ${BASE_IMAGE} AS install" if "AS install" in text else "FROM ${BASE_IMAGE}"
        text = text.replace(first, f"{first}\nENV BENCH_NONCE={secrets.token_hex(8)}", 1)
        started = time.monotonic()
        host.build(tag, staged.root, text, [], image.build_args(staged, bounds), {}, lambda line: None,
                   network="none", timeout=600)  # fmt: skip
        built = time.monotonic() - started
    return {"download": cold, "cached": cached, "build": built, "first_answer": _first_answer(tag)}


def _first_answer(tag: str) -> float:
    """Seconds from `docker run -i` to the server's answer to initialize."""
    started = time.monotonic()
    proc = subprocess.Popen(
        ["docker", "run", "--rm", "-i", *HARDENED, tag],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(INITIALIZE) + "\n")
    proc.stdin.flush()
    for line in proc.stdout:
        if '"id":1' in line.replace(" ", ""):
            break
    elapsed = time.monotonic() - started
    proc.stdin.close()
    proc.wait(30)
    return elapsed


if __name__ == "__main__":
    main()
