"""What confining a stdio process with Landlock (pipeline/bridge/sandbox.py) costs per process start.

Starts a program the way the bridge's Child does (asyncio, pipes, its own session, a directory
under a work root) many times, plain and confined (the ruleset built in the parent, then
landlock_restrict_self in a preexec hook, which also keeps subprocess from using vfork), and
prints the median and p90 from start to exit, and the difference. Programs: `/bin/true` (the
start itself) and `python3 -c pass` (a small interpreter start). The bridge starts a session's
process ahead of time (the warm pool), so this is off a new session's path unless the pool is dry.

Not a test: run by hand, `python bench/sandbox_bench.py` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

from pipeline.bridge import sandbox

WAYS = ("plain", "hook", "confined")  # hook: an empty preexec hook (no vfork), nothing confined
PROGRAMS = {"true": ["/bin/true"], "python": [sys.executable, "-S", "-c", "pass"]}


def _nothing() -> None:
    """A preexec hook that does nothing: what losing vfork alone costs."""


async def start_and_wait(argv: list[str], root: str, how: str) -> float:
    """Seconds from starting `argv` (plain, with an empty preexec hook, or confined) to its exit."""
    home = tempfile.mkdtemp(dir=root)
    fd = sandbox.ruleset(home, root) if how == "confined" else None
    hook = None if fd is None else sandbox.restrictor(fd)
    began = time.perf_counter()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=home,
            start_new_session=True,
            preexec_fn=_nothing if how == "hook" else hook,
        )
    finally:
        if fd is not None:
            os.close(fd)
    await process.communicate()
    return time.perf_counter() - began


async def measure(argv: list[str], rounds: int) -> dict[str, list[float]]:
    """`rounds` starts of `argv` each way, the ways alternating (the same load for all), in ms."""
    times: dict[str, list[float]] = {how: [] for how in WAYS}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(rounds):
            for how in WAYS:
                times[how].append(1000 * await start_and_wait(argv, root, how))
    return times


def main() -> None:
    """Measure each program plain and confined and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    if not sandbox.abi():
        raise SystemExit("this kernel offers no Landlock: nothing to measure")
    print(f"{sandbox.status()}, {args.rounds} starts each")
    for name, argv in PROGRAMS.items():
        times = asyncio.run(measure(argv, args.rounds))
        cells = [
            f"{how} p50 {statistics.median(t):6.2f} p90 {statistics.quantiles(t, n=10)[-1]:6.2f}"
            for how, t in times.items()
        ]
        added = statistics.median(times["confined"]) - statistics.median(times["plain"])
        print(f"{name:7} " + " | ".join(cells) + f" ms | confined adds p50 {added:+.2f} ms")


if __name__ == "__main__":
    main()
