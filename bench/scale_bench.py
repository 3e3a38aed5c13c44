"""Replica benchmark: throughput of a server whose tool blocks, with 1 replica and with 2, side by side.

A real `central-mcp serve` (tests/support/provider.py) deploys the `replica` fixture twice in one push,
into the real Docker engine: once with `scale: {min: 1, max: 1}` and once with `scale: {min: 2, max: 2}`.
Its `block` tool holds its process for 100 ms, one call at a time, so one container answers at most
~10 calls/s whatever the load. C SDK clients (session era, `mcp.Client`) each open a session and call
`block` in a loop through the proxy; the runs are interleaved (1, 2, 1, 2, ...) so a slow spell of the
machine hits both alike. Prints calls/s per run, the medians, and the ratio (goal: >= 1.8 at C=16).

    .venv/bin/python bench/scale_bench.py                 # C=16, 3 rounds of 5 s
    .venv/bin/python bench/scale_bench.py --concurrency 16 32 --rounds 5 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp import Client  # noqa: E402

from pipeline.dockerhost import DockerHost  # noqa: E402
from tests.support.provider import running_provider  # noqa: E402

GOAL = 1.8
GOAL_CONCURRENCY = 16


async def _run(url: str, clients: int, seconds: float) -> tuple[float, Counter[str], int]:
    """C sessions calling `block` for `seconds`: calls/s, calls per container, failed calls."""
    per_container: Counter[str] = Counter()
    failed = 0
    deadline = 0.0

    async def client() -> None:
        nonlocal failed
        async with Client(url) as session:
            while time.monotonic() < deadline:
                try:
                    result = await session.call_tool("block")
                except Exception:  # counted: a bench reports failures, it does not stop on them
                    failed += 1
                    continue
                if result.is_error:
                    failed += 1
                else:
                    per_container[str(result.content[0].text).partition("@")[2]] += 1  # type: ignore[union-attr]

    deadline = time.monotonic() + seconds
    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return sum(per_container.values()) / (time.monotonic() - started), per_container, failed


def main() -> None:
    """Deploy the fixture with 1 and 2 replicas, then measure both, interleaved."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[GOAL_CONCURRENCY])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    docker = DockerHost()
    docker.ping()
    with (
        tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp,
        running_provider(Path(tmp) / "vm", docker) as vm,
    ):
        work = vm.clone(Path(tmp) / "work")
        names = {}
        for replicas in (1, 2):

            def scaled(data: dict[str, object], n: int = replicas) -> None:
                data["scale"] = {"min": n, "max": n}

            names[replicas] = work.put("replica", name=vm.name(f"replica{replicas}"), manifest=scaled)
        work.commit("replica fixture with 1 and 2 replicas")
        push = work.push()
        if not push.ok:
            raise SystemExit(f"the push failed:\n{push.output}")
        results: dict[tuple[int, int], list[float]] = {}
        for round_number in range(1, args.rounds + 1):
            for clients in args.concurrency:
                for replicas in (1, 2):
                    url = f"{vm.base}/mcp/{names[replicas]}"
                    rate, spread, failed = asyncio.run(_run(url, clients, args.duration))
                    results.setdefault((clients, replicas), []).append(rate)
                    print(
                        f"round {round_number} C={clients:<3} replicas={replicas}  {rate:7.1f} calls/s  "
                        f"per container {sorted(spread.values(), reverse=True)}  failed {failed}",
                        flush=True,
                    )
    print("\n| C | 1 replica calls/s | 2 replicas calls/s | ratio |\n|---:|---:|---:|---:|")
    for clients in args.concurrency:
        one = statistics.median(results[(clients, 1)])
        two = statistics.median(results[(clients, 2)])
        print(f"| {clients} | {one:.1f} | {two:.1f} | {two / one:.2f} |")
    if GOAL_CONCURRENCY in args.concurrency:
        ratio = statistics.median(results[(GOAL_CONCURRENCY, 2)]) / statistics.median(
            results[(GOAL_CONCURRENCY, 1)]
        )
        verdict = "met" if ratio >= GOAL else "MISSED"
        print(
            f"\nGoal: [{verdict}] C={GOAL_CONCURRENCY}: 2 replicas / 1 replica calls/s {ratio:.2f} >= {GOAL}"
        )


if __name__ == "__main__":
    main()
