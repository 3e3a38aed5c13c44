"""Swarm relay benchmark: what pipeline/swarmrelay.py costs an HTTP keep-alive request, on loopback.

The same small MCP `tools/call` POST as proxy_bench.py, answered by nginx at once (its `static`
upstream), either directly or through the relay program run as its container runs it
(`python3 -c <source>`, configured by RELAY_*, its table set by RelayClient.put). The load is wrk
(one thread, C keep-alive connections), rounds interleaved (direct, relay, direct, ...) so a slow
spell of the machine hits both. Prints per C: req/s (median and range), p50 and p99, the p50 the
relay adds (median of per-round differences), the relay/direct req/s ratio and the relay process's
CPU time per request. Not a test: run by hand, `python bench/relay_bench.py` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_bench import (  # a sibling script, not a package
    BODY,
    HEADERS,
    NGINX_STATIC,
    STATIC_ANSWER,
    WRK_SCRIPT,
    Run,
    _cpu_seconds,
    _free_port,
    _nginx,
    _process,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.swarmrelay import RelayClient, source

DEFAULT_DURATION = 5.0
DEFAULT_ROUNDS = 3
DEFAULT_CONCURRENCY = (1, 16)


def main(argv: list[str]) -> None:
    """Measure direct and relayed requests, interleaved, and print the summary."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_CONCURRENCY))
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds per run")
    parser.add_argument("--python", default="python3", help="the interpreter the relay runs on")
    parser.add_argument(
        "--extra-relay",
        action="append",
        default=[],
        metavar="LABEL=FILE",
        help="also measure another swarmrelay.py (`git show REV:pipeline/swarmrelay.py > FILE`): relay@LABEL",
    )
    args = parser.parse_args(argv)
    wrk, nginx = shutil.which("wrk"), shutil.which("nginx")
    if not (wrk and nginx):
        raise SystemExit("needs wrk and nginx on PATH; on Debian: apt-get install -y wrk nginx")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-bench-")))
        extra = dict(item.split("=", 1) for item in args.extra_relay)
        urls, pids = stack.enter_context(_targets(nginx, args.python, extra))
        script = tmp / "bench.lua"
        script.write_text(WRK_SCRIPT.format(body=BODY.decode(), headers=_header_lines()))
        for name, url in urls.items():  # warm-up, and a check that each answers
            _wrk(wrk, script, url, name, 1, 1, 0)
        runs: list[Run] = []
        for number in range(args.rounds):
            for concurrency in args.concurrency:
                for name, url in urls.items():
                    before = _cpu_seconds(pids[name]) if name in pids else 0.0
                    run = _wrk(wrk, script, url, name, concurrency, args.duration, number)
                    if name in pids:
                        used = _cpu_seconds(pids[name]) - before
                        run = replace(run, cpu_us=used * 1e6 / max(1.0, run.rps * args.duration))
                    print(_row(run), flush=True)
                    runs.append(run)
    print(_summary(runs, args.concurrency, list(urls)))


@contextmanager
def _targets(
    nginx: str, python: str, extra: dict[str, str]
) -> Iterator[tuple[dict[str, str], dict[str, int]]]:
    """nginx answering at once, and each relay in front of it; their URLs, and the relays' pids."""
    with ExitStack() as stack:
        upstream = _free_port()
        stack.enter_context(_nginx(nginx, NGINX_STATIC, upstream, 1, answer=STATIC_ANSWER))
        urls, pids = {"direct": f"http://127.0.0.1:{upstream}/mcp"}, {}
        sources = {"relay": source(), **{f"relay@{k}": Path(v).read_text() for k, v in extra.items()}}
        for name, text in sources.items():
            control, port, token = _free_port(), _free_port(), secrets.token_urlsafe(32)
            env = {**os.environ, "RELAY_TOKEN": token, "RELAY_PEER": "127.0.0.1"}
            child = stack.enter_context(
                _process([python, "-c", text], control, {**env, "RELAY_CONTROL_PORT": str(control)})
            )
            RelayClient("127.0.0.1", control, token, 5.0).put({port: ("localhost", upstream)})
            urls[name], pids[name] = f"http://127.0.0.1:{port}/mcp", child.pid
        yield urls, pids


def _wrk(wrk: str, script: Path, url: str, name: str, concurrency: int, seconds: float, number: int) -> Run:
    command = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
    ]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    requests, micros, connect, read, write, status, timeout, p50, p99 = (int(x) for x in line.split()[1:])
    errors = connect + read + write + status + timeout
    if requests == 0 or errors:
        raise SystemExit(f"{name} at C={concurrency}: {requests} requests, {errors} errors")
    return Run(
        "static", name, concurrency, number, requests / (micros / 1e6), p50 / 1000.0, p99 / 1000.0, errors
    )


def _header_lines() -> str:
    return "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in HEADERS.items())


def _row(run: Run) -> str:
    cpu = f"  relay CPU {run.cpu_us:.1f} µs/req" if run.cpu_us is not None else ""
    return (
        f"round {run.round} C={run.concurrency:<3} {run.target:<6} {run.rps:>9.0f} req/s"
        f"  p50 {run.p50:.3f} ms  p99 {run.p99:.3f} ms{cpu}"
    )


def _summary(runs: list[Run], concurrencies: list[int], targets: list[str]) -> str:
    lines = [
        "",
        "C    target         req/s median (min-max)   p50 ms  p99 ms  x direct  p50 added ms  CPU µs/req",
    ]
    for concurrency in concurrencies:
        by = {
            name: [r for r in runs if r.target == name and r.concurrency == concurrency] for name in targets
        }
        for name in targets:
            group = by[name]
            rps = [r.rps for r in group]
            extra = ""
            if name != "direct":
                pairs = list(zip(by["direct"], group, strict=True))
                ratio = statistics.median(relay.rps / direct.rps for direct, relay in pairs)
                added = statistics.median(relay.p50 - direct.p50 for direct, relay in pairs)
                cpu = statistics.median(r.cpu_us or 0.0 for r in group)
                extra = f"  {ratio:>8.2f}  {added:>+12.3f}  {cpu:>10.1f}"
            lines.append(
                f"{concurrency:<4} {name:<14} {statistics.median(rps):>8.0f} ({min(rps):.0f}-{max(rps):.0f})"
                f"  {statistics.median(r.p50 for r in group):>7.3f}"
                f" {statistics.median(r.p99 for r in group):>7.3f}"
                f"{extra}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
