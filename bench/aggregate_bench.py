"""Aggregate benchmark: `/mcp` beside `/mcp/<server>` in one proxy process, and tools/list over many servers.

`call`: the same `tools/call` to the same stateless SDK server (bench/proxy_runner.py `sdk`), through
`/mcp/bench` (name `echo`) and through `/mcp` (name `bench__echo`), served by one `aggregate` process
(the real Proxy, Router, Gatekeeper, Usage and the Aggregate over them, under front.py as serve.py
runs it). Rounds interleave the two targets; the summary gives `/mcp`'s throughput as a share of
`/mcp/<server>`'s per concurrency and the p50 it adds at C=1 (goals: ≥ 0.9x at C=16, ≤ 0.5 ms).

`list`: tools/list on `/mcp` over `--servers` routes (default 20) to one SDK server with `--tools`
tools (default 20): each route is its own release, so the aggregate fetches 20 lists once and then
answers from its cache (goal: ≤ 20 ms p50). Requests are stateless-era POSTs; the load is wrk.

`--contextforge BIN` (IBM ContextForge's `mcpgateway` from its PyPI package, installed in a venv of
its own) adds it side by side: started on a fresh SQLite database with generated secrets, the same
SDK server registered as its gateway `bench`, a virtual server made of its tools; then the same
tools/call (`bench-echo`, 2025-06-18 headers, an admin JWT) through `/servers/<id>/mcp`, and its
tools/list over that one server. Not a test: run it by hand (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy_bench import (  # a sibling script, not a package
    HEADERS,
    MODERN,
    RUNNER,
    WRK_SCRIPT,
    Run,
    _cpu_seconds,
    _free_port,
    _process,
    _wait_for_port,
)

GOAL_CALL_RATIO = 0.9
GOAL_ADDED_P50_MS = 0.5
GOAL_LIST_P50_MS = 20.0
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
Request = tuple[str, dict[str, str], bytes, bytes]  # URL, headers, body, what a good answer holds


def call(url: str, name: str) -> Request:
    """A tools/call of the bench's echo tool under `name`."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    body["params"] = {"name": name, "arguments": {"text": "hi"}, "_meta": META}  # type: ignore[assignment]
    return url, {**HEADERS, "mcp-name": name}, json.dumps(body).encode(), b'"hi"'


def listing(url: str) -> Request:
    """A tools/list."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    headers = {k: v for k, v in HEADERS.items() if k != "mcp-name"} | {"mcp-method": "tools/list"}
    return url, headers, json.dumps(body).encode(), b'"tools"'


def main(argv: list[str]) -> None:
    """Run the upstream and the aggregate process; measure; print the rounds and the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["call", "list", "both"], default="both")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--tools", type=int, default=20)
    parser.add_argument("--contextforge", metavar="BIN", help="ContextForge's mcpgateway, measured beside")
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("wrk is not installed; on Debian: apt-get install -y wrk")
    runs: list[Run] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        up, port = _free_port(), _free_port()
        sdk = [sys.executable, str(RUNNER), "sdk", "--port", str(up), "--tools", str(args.tools)]
        stack.enter_context(_process(sdk, up))
        command = [sys.executable, str(RUNNER), "aggregate", "--upstream-port", str(up), "--port", str(port)]
        proxy = stack.enter_context(_process([*command, "--servers", str(args.servers)], port))
        base = f"http://127.0.0.1:{port}"
        targets: dict[str, Request] = {}
        if args.part in ("call", "both"):
            targets["/mcp/<server>"] = call(f"{base}/mcp/bench", "echo")
            targets["/mcp"] = call(f"{base}/mcp", "bench__echo")
        if args.part in ("list", "both"):
            targets[f"/mcp tools/list {args.servers}x{args.tools}"] = listing(f"{base}/mcp")
        if args.contextforge:
            forge = stack.enter_context(_contextforge(Path(args.contextforge), tmp, up))
            targets.update({k: v for k, v in forge.items() if args.part == "both" or args.part in k})
        for name, request in targets.items():
            _check(name, request)
            _wrk(wrk, tmp, name, request, max(args.concurrency), 2.0, 0)  # warm-up
        for number in range(1, args.rounds + 1):
            for concurrency in args.concurrency:
                for name, request in targets.items():
                    before = _cpu_seconds(proxy.pid)
                    run = _wrk(wrk, tmp, name, request, concurrency, args.duration, number)
                    answered = run.rps * args.duration
                    used = _cpu_seconds(proxy.pid) - before
                    run = Run(**{**run.__dict__, "cpu_us": used / answered * 1e6 if answered else None})
                    runs.append(run)
                    print(_row(run), flush=True)
    print()
    print(_summary(runs, args))


CF_VERSION = "2025-06-18"  # what ContextForge's streamable HTTP is sent (it answers stateless POSTs)


@contextmanager
def _contextforge(binary: Path, tmp: Path, upstream: int) -> Iterator[dict[str, Request]]:
    """Run ContextForge with the SDK server registered; yield its call and list targets."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp}/contextforge.db",
        "AUTH_REQUIRED": "true",
        "MCPGATEWAY_ADMIN_API_ENABLED": "true",
        "MCPGATEWAY_UI_ENABLED": "false",
        "JWT_SECRET_KEY": secrets.token_hex(32),
        "AUTH_ENCRYPTION_SECRET": secrets.token_hex(32),
        "BASIC_AUTH_PASSWORD": "Aa1!" + secrets.token_hex(12),
        "PLATFORM_ADMIN_PASSWORD": "Aa1!" + secrets.token_hex(12),
        "PLATFORM_ADMIN_EMAIL": "admin@example.com",
        "SSRF_ALLOW_LOCALHOST": "true",
        "ENVIRONMENT": "development",
        "DEV_MODE": "true",
        "CACHE_TYPE": "memory",
        "LOG_LEVEL": "ERROR",
        "PLUGINS_ENABLED": "false",
        "RATE_LIMITING_ENABLED": "false",  # its default (100 MCP requests a minute) would be all it measures
    }
    with (tmp / "contextforge.log").open("w") as log:
        command = [str(binary), "--host", "127.0.0.1", "--port", str(port)]
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp, text=True)
        try:
            _wait_for_port(port, child)
            yield _forge_targets(binary, env, f"http://127.0.0.1:{port}", upstream)
        finally:
            child.terminate()
            child.wait(15)


def _forge_targets(binary: Path, env: dict[str, str], base: str, upstream: int) -> dict[str, Request]:
    """Register the SDK server, make a virtual server of its tools; the requests to measure."""
    maker = [str(binary.parent / "python"), "-m", "mcpgateway.utils.create_jwt_token"]
    made = subprocess.run(
        [*maker, "--username", "admin@example.com", "--admin", "--exp", "600"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    auth = {"authorization": f"Bearer {made.stdout.strip().splitlines()[-1]}"}
    for _ in range(60):  # it listens before its database is ready
        try:
            _admin(base, "GET", "/health", auth)
            break
        except OSError:
            time.sleep(0.5)
    gateway = {"name": "bench", "url": f"http://127.0.0.1:{upstream}/mcp", "transport": "STREAMABLEHTTP"}
    _admin(base, "POST", "/gateways", auth, gateway)
    found = _admin(base, "GET", "/tools", auth)
    tools = found if isinstance(found, list) else found.get("items", [])
    server = _admin(
        base,
        "POST",
        "/servers",
        auth,
        {"server": {"name": "agg", "associated_tools": [t["id"] for t in tools]}},
    )
    url = f"{base}/servers/{server['id']}/mcp"
    headers = {**auth, "content-type": "application/json", "accept": "application/json, text/event-stream"}
    headers["mcp-protocol-version"] = CF_VERSION
    called = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "bench-echo", "arguments": {"text": "hi"}},
    }
    listed = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return {
        "contextforge call": (url, headers, json.dumps(called).encode(), b'"hi"'),
        f"contextforge list 1x{len(tools)}": (url, headers, json.dumps(listed).encode(), b'"tools"'),
    }


def _admin(base: str, method: str, path: str, headers: dict[str, str], body: Any = None) -> Any:
    """One request to ContextForge's admin API; its JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    sent = urllib.request.Request(
        base + path, data=data, method=method, headers={**headers, "content-type": "application/json"}
    )
    with urllib.request.urlopen(sent, timeout=60) as reply:
        return json.loads(reply.read())


def _check(name: str, request: Request) -> None:
    """One request before measuring: it must answer 200 with what a good answer holds."""
    url, headers, body, good = request
    sent = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(sent, timeout=30) as reply:
        answer = reply.read()
    if reply.status != 200 or good not in answer:
        raise SystemExit(f"{name} at {url} answered {reply.status}: {answer[:300]!r}")


def _wrk(
    wrk: str, tmp: Path, name: str, request: Request, concurrency: int, seconds: float, number: int
) -> Run:
    url, headers, body, _ = request
    script = tmp / f"{abs(hash(name))}.lua"
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script.write_text(WRK_SCRIPT.format(body=body.decode(), headers=lines))
    command = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    requests, micros, connect, read, write, status, timeout, p50, p99 = (int(x) for x in line.split()[1:])
    errors = connect + read + write + status + timeout
    return Run(
        "sdk", name, concurrency, number, (requests - status) / (micros / 1e6), p50 / 1000, p99 / 1000, errors
    )


def _row(r: Run) -> str:
    cpu = f"{r.cpu_us:7.0f} µs" if r.cpu_us is not None else "      -"
    return (
        f"round {r.round} C={r.concurrency:<3} {r.target:<28} {r.rps:9.0f} req/s  p50 {r.p50:7.2f} ms  "
        f"p99 {r.p99:7.2f} ms  errors {r.errors}  proxy CPU/request {cpu}"
    )


def _summary(runs: list[Run], args: argparse.Namespace) -> str:
    """Medians over rounds per target and concurrency; the ratios and the goals."""
    lines = ["# medians over rounds"]
    medians: dict[tuple[str, int], tuple[float, float]] = {}
    for target in dict.fromkeys(r.target for r in runs):
        for c in args.concurrency:
            mine = [r for r in runs if r.target == target and r.concurrency == c]
            if mine:
                medians[target, c] = (
                    statistics.median(r.rps for r in mine),
                    statistics.median(r.p50 for r in mine),
                )
                rps, p50 = medians[target, c]
                lines.append(f"C={c:<3} {target:<28} {rps:9.0f} req/s  p50 {p50:.2f} ms")
    for c in args.concurrency:
        pairs = _pairs(runs, c)
        if pairs:  # medians of per-round ratios, as proxy_bench.py's goals: the rounds interleave
            ratio = statistics.median(ours.rps / theirs.rps for ours, theirs in pairs)
            added = statistics.median(ours.p50 - theirs.p50 for ours, theirs in pairs)
            goal = ""
            if c == 16:
                goal = f"  goal >= {GOAL_CALL_RATIO}x: {_met(ratio >= GOAL_CALL_RATIO)}"
            if c == 1:
                goal = f"  goal added p50 <= {GOAL_ADDED_P50_MS} ms: {_met(added <= GOAL_ADDED_P50_MS)}"
            lines.append(
                f"C={c:<3} /mcp vs /mcp/<server>: {ratio:.2f}x throughput, p50 {added:+.2f} ms{goal}"
            )
    for c in args.concurrency:
        forge, direct = medians.get(("contextforge call", c)), medians.get(("/mcp/<server>", c))
        ours = medians.get(("/mcp", c))
        if forge and direct and ours:
            lines.append(
                f"C={c:<3} contextforge vs /mcp/<server>: {forge[0] / direct[0]:.2f}x throughput, "
                f"p50 {forge[1] - direct[1]:+.2f} ms "
                f"(/mcp: {ours[0] / direct[0]:.2f}x, {ours[1] - direct[1]:+.2f} ms)"
            )
    for (target, c), (_, p50) in medians.items():
        if "tools/list" in target and c == 1:
            met = _met(p50 <= GOAL_LIST_P50_MS)
            lines.append(f"C=1  {target}: p50 {p50:.2f} ms  goal <= {GOAL_LIST_P50_MS:g} ms: {met}")
    return "\n".join(lines)


def _pairs(runs: list[Run], concurrency: int) -> list[tuple[Run, Run]]:
    """(/mcp, /mcp/<server>) runs of the same round at `concurrency`."""
    mine = {(r.target, r.round): r for r in runs if r.concurrency == concurrency}
    rounds = sorted({r.round for r in runs})
    return [
        (mine[("/mcp", n)], mine[("/mcp/<server>", n)])
        for n in rounds
        if ("/mcp", n) in mine and ("/mcp/<server>", n) in mine
    ]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    main(sys.argv[1:])
