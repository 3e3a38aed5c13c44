"""Smoke-check benchmark: what the tool contract and the smoke checks add to one gate.

Starts an SDK server (tests/support/loopback.py's `mcp_app`, session era, SSE answers) in its own
process on a loopback port and times, interleaved, N runs of: the handshake as before
(`gate.handshake`), the handshake that also lists prompts and resources (`surface=True`, what the
gate does now), validating one check's arguments in the provider (a schema without a regular
expression) and in the bounded child (a schema with one), and one check's own session and call
(what a health probe runs). Usage: `python bench/checks_bench.py [-n 30]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gate_bench import _wait_up  # noqa: E402
from pipeline import checks, gate  # noqa: E402
from pipeline.config.checkspec import Check, Expect  # noqa: E402
from tests.support.loopback import free_port  # noqa: E402

SERVER = """
import sys, uvicorn
sys.path.insert(0, {root!r})
from tests.support.loopback import mcp_app
uvicorn.run(mcp_app("bench"), host="127.0.0.1", port={port}, log_level="error")
"""
CHECK = Check("echoes", "echo", {"text": "bench"}, Expect(contains="bench"), 5.0, True)


def main() -> None:
    """Print the median milliseconds of each step over N interleaved runs."""
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30, help="runs of each step")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(root=str(ROOT), port=port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        _wait_up(url)
        tools = gate.handshake(url, 10).tools
        schema = next(t["inputSchema"] for t in tools if t["name"] == CHECK.tool)
        pair = [(schema, CHECK.arguments)]
        steps: dict[str, Callable[[], object]] = {
            "handshake (tools/list only, as before)": lambda: gate.handshake(url, 10),
            "handshake + prompts/list + resources/list": lambda: gate.handshake(url, 10, surface=True),
            "validate a check's arguments here": lambda: checks.validate_arguments(pair),
            "validate them in the child (a schema w/ pattern)": lambda: checks._validate_in_child(pair),
            "one check: its session and tools/call": lambda: checks.run(
                url, [CHECK], tools, validate=lambda pairs: [""] * len(pairs)
            ),
        }
        times = _interleaved(steps, args.n)
        print(f"median ms over {args.n} interleaved runs (after 3 warm-ups):")
        for label, found in times.items():
            print(f"  {label:<46} {statistics.median(found):7.2f} ms")
    finally:
        server.terminate()
        server.wait(10)


def _interleaved(steps: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Run every step in turn, `runs` times, so that a slow spell on the machine hits all alike."""
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(runs):
        for label, step in steps.items():
            started = time.perf_counter()
            step()
            times[label].append((time.perf_counter() - started) * 1000)
    return times


if __name__ == "__main__":
    main()
