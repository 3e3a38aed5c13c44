"""Proxy benchmark: req/s and p50/p99 latency of a small MCP `tools/call` POST on loopback.

For each upstream (`sdk`: an SDK stateless JSON server; `static`: nginx answering a fixed JSON
document, so the numbers show the proxy's own cost; `echo`: a raw Starlette JSON echo) the same
request goes to the targets: the upstream directly, nginx as a reverse proxy in front of it
(buffering off, HTTP/1.1 keep-alive pool) and central-mcp's proxy (optionally also with a project
key, or without front.py's fast path: `central-mcp-asgi`). Every server is its own process: uvicorn
for Python, its own master + 1 worker for nginx.

The load comes from `wrk` (default; a Lua script sets the POST body and the MCP headers) or from
aiohttp (`--load aiohttp`). Rounds are interleaved (direct, nginx, central-mcp, direct, ...) and
the summary takes medians over the rounds. C=1 runs `wrk -c1 -t1` and gives the p50 our proxy adds.
Each run also reads the CPU time the target's processes used (from /proc: utime + stime of the
process and its children) and prints it per answered request: what a request costs the target,
whatever share of the CPUs it got. Not a test: run it by hand (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "proxy_runner.py"
DEFAULT_DURATION = 5.0
DEFAULT_WARMUP = 2.0
DEFAULT_ROUNDS = 5
DEFAULT_CONCURRENCY = (1, 16, 64)
START_TIMEOUT = 20.0
MODERN = "2026-07-28"
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": MODERN,
    "mcp-method": "tools/call",
    "mcp-name": "echo",
}
BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "echo",
            "arguments": {"text": "hi"},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
).encode()
STATIC_ANSWER = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}],"isError":false}}'
UPSTREAMS = ("sdk", "static", "echo")
TARGETS = ("direct", "nginx", "central-mcp", "central-mcp+key", "central-mcp-asgi")
GOAL_SDK_VS_DIRECT = 0.95
GOAL_STATIC_VS_NGINX = 0.3
GOAL_ADDED_P50_MS = 1.0
NGINX_COMMON = """
daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    {body}
}}
"""
NGINX_PROXY = """
    upstream mcp_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /mcp/bench {{
            proxy_pass http://mcp_upstream/mcp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{upstream_port};
            proxy_set_header Authorization "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
"""
# `return` answers any method at once (a plain static file would answer POST with 405).
NGINX_STATIC = """
    server {{
        listen 127.0.0.1:{port};
        location = /mcp {{
            default_type application/json;
            return 200 '{answer}';
        }}
    }}
"""
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK %d %d %d %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""
Target = tuple[str, dict[str, str]]  # URL, request headers


@dataclass(frozen=True)
class Run:
    """One measured run of one target."""

    upstream: str
    target: str
    concurrency: int
    round: int
    rps: float  # successful answers per second
    p50: float  # ms
    p99: float  # ms
    errors: int
    cpu_us: float | None = None  # CPU time of the target's processes per answered request


def main(argv: list[str]) -> None:
    """Start the upstream, the proxies and nginx; measure in interleaved rounds; print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", choices=["wrk", "aiohttp"], default="wrk", help="the load generator")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds measured per run")
    parser.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP,
        help="seconds of load on each target before the first round",
    )
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="interleaved rounds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_CONCURRENCY))
    parser.add_argument("--upstreams", nargs="+", choices=UPSTREAMS, default=["sdk", "static"])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS[:3]))
    parser.add_argument(
        "--extra-proxy",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also measure central-mcp from another checkout DIR (its pipeline/, bench/)",
    )
    parser.add_argument("--nginx-workers", type=int, default=1, help="1 matches the one uvicorn process")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (at most C)")
    args = parser.parse_args(argv)
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx_bin).exists():
        raise SystemExit("nginx is not installed; on Debian: apt-get install -y nginx")
    wrk_bin = shutil.which("wrk") or ""
    if args.load == "wrk" and not wrk_bin:
        raise SystemExit("wrk is not installed; on Debian: apt-get install -y wrk (or use --load aiohttp)")
    if args.load == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
        raise SystemExit("aiohttp is not installed; .venv/bin/pip install -e '.[bench]' (or use --load wrk)")
    extra = dict(item.split("=", 1) for item in args.extra_proxy)
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load {args.load}, {args.rounds} interleaved rounds of {args.duration:g}s per target, "
        f"{args.warmup:g}s warm-up, loopback only",
        flush=True,
    )
    runs: list[Run] = []
    for kind in args.upstreams:
        with ExitStack() as stack:
            targets, pids = stack.enter_context(
                _targets(kind, args.targets, extra, nginx_bin, args.nginx_workers)
            )
            measure = _Measure(kind, args, wrk_bin, Path(stack.enter_context(tempfile.TemporaryDirectory())))
            for name, target in targets.items():
                _check(name, target)
                measure.warm(name, target, max(args.concurrency))
            for number in range(1, args.rounds + 1):
                for concurrency in args.concurrency:
                    for name, target in targets.items():
                        run = measure.run(name, target, concurrency, number, pids[name])
                        runs.append(run)
                        print(_row(run), flush=True)
    print()
    print(_table(runs))
    print()
    print(_ratios(runs))
    print()
    if "central-mcp-asgi" in args.targets:
        print(_fast_path(runs))
        print()
    print(_goals(runs))


class _Measure:
    """Runs one load-generator run against one target."""

    def __init__(self, kind: str, args: argparse.Namespace, wrk_bin: str, tmp: Path) -> None:
        self.kind, self.args, self.wrk_bin, self.tmp = kind, args, wrk_bin, tmp

    def warm(self, name: str, target: Target, concurrency: int) -> None:
        if self.args.warmup > 0:
            self._load(name, target, concurrency, self.args.warmup, 0)

    def run(self, name: str, target: Target, concurrency: int, number: int, pid: int) -> Run:
        before = _cpu_seconds(pid)
        run = self._load(name, target, concurrency, self.args.duration, number)
        used = _cpu_seconds(pid) - before
        answered = run.rps * self.args.duration
        return replace(run, cpu_us=used / answered * 1e6) if answered else run

    def _load(self, name: str, target: Target, concurrency: int, seconds: float, number: int) -> Run:
        if self.args.load == "aiohttp":
            return asyncio.run(_aiohttp_load(self.kind, name, target, concurrency, seconds, number))
        return self._wrk(name, target, concurrency, seconds, number)

    def _wrk(self, name: str, target: Target, concurrency: int, seconds: float, number: int) -> Run:
        url, headers = target
        script = self.tmp / f"{name}.lua"
        if not script.exists():
            lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
            script.write_text(WRK_SCRIPT.format(body=BODY.decode(), headers=lines))
        threads = max(1, min(self.args.wrk_threads, concurrency))
        command = [
            self.wrk_bin,
            f"-t{threads}",
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
            self.kind,
            name,
            concurrency,
            number,
            (requests - status) / (micros / 1e6),
            p50 / 1000.0,
            p99 / 1000.0,
            errors,
        )


def _check(name: str, target: Target) -> None:
    """One request before measuring: the target must answer 200 with the tool's text."""
    url, headers = target
    request = urllib.request.Request(url, data=BODY, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as reply:
        body = reply.read()
    if reply.status != 200 or b'"hi"' not in body:
        raise SystemExit(f"{name} at {url} answered {reply.status}: {body[:200]!r}")


@contextmanager
def _targets(
    kind: str, wanted: list[str], extra: dict[str, str], nginx_bin: str, nginx_workers: int
) -> Iterator[tuple[dict[str, Target], dict[str, int]]]:
    """Run the upstream `kind` and the wanted proxies in front of it; yield their URLs in order and
    the process id of each (`direct`: the upstream's)."""
    with ExitStack() as stack:
        up = _free_port()
        if kind == "static":
            upstream = stack.enter_context(
                _nginx(nginx_bin, NGINX_STATIC, up, nginx_workers, answer=STATIC_ANSWER)
            )
        else:
            command = [sys.executable, str(RUNNER), kind, "--port", str(up)]
            upstream = stack.enter_context(_process(command, up))
        proxy = [sys.executable, str(RUNNER), "proxy", "--upstream-port", str(up), "--port"]
        targets: dict[str, Target] = {}
        pids: dict[str, int] = {}
        for name in wanted:
            port = _free_port()
            url, headers = f"http://127.0.0.1:{port}/mcp/bench", HEADERS
            if name == "direct":
                url, child = f"http://127.0.0.1:{up}/mcp", upstream
            elif name == "nginx":
                child = stack.enter_context(
                    _nginx(nginx_bin, NGINX_PROXY, port, nginx_workers, upstream_port=up)
                )
            elif name == "central-mcp":
                child = stack.enter_context(_process([*proxy, str(port)], port))
            elif name == "central-mcp-asgi":
                child = stack.enter_context(_process([*proxy, str(port), "--asgi"], port))
            else:  # central-mcp+key
                child = stack.enter_context(_process([*proxy, str(port), "--key"], port))
                key = child.stdout.readline().strip() if child.stdout else ""
                headers = {**HEADERS, "authorization": f"Bearer {key}"}
            targets[name], pids[name] = (url, headers), child.pid
        for label, checkout in extra.items():
            port, root = _free_port(), Path(checkout).resolve()
            runner = root / "bench" / "proxy_runner.py"
            command = [sys.executable, str(runner if runner.exists() else RUNNER), *proxy[2:], str(port)]
            child = stack.enter_context(_process(command, port, {**os.environ, "PYTHONPATH": str(root)}))
            targets[f"central-mcp@{label}"] = (f"http://127.0.0.1:{port}/mcp/bench", HEADERS)
            pids[f"central-mcp@{label}"] = child.pid
            if "central-mcp+key" in wanted:  # the keyed path of that checkout too
                port = _free_port()
                env = {**os.environ, "PYTHONPATH": str(root)}
                child = stack.enter_context(_process([*command[:-1], str(port), "--key"], port, env))
                key = child.stdout.readline().strip() if child.stdout else ""
                keyed = {**HEADERS, "authorization": f"Bearer {key}"}
                targets[f"central-mcp+key@{label}"] = (f"http://127.0.0.1:{port}/mcp/bench", keyed)
                pids[f"central-mcp+key@{label}"] = child.pid
        yield targets, pids


@contextmanager
def _process(
    command: list[str], port: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Run a child process until the block ends; wait until it listens on `port`."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent, env=env)
    try:
        _wait_for_port(port, child)
        yield child
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextmanager
def _nginx(
    nginx_bin: str, body: str, port: int, workers: int, **values: object
) -> Iterator[subprocess.Popen[str]]:
    """Run nginx in the foreground with its own config (`body` formatted with `port` and `values`);
    yield its master process (the workers are its children)."""
    with tempfile.TemporaryDirectory(prefix="proxy-bench-nginx-") as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_COMMON.format(tmp=tmp, workers=workers, body=body.format(port=port, **values)))
        with _process([nginx_bin, "-p", tmp, "-e", f"{tmp}/error.log", "-c", str(conf)], port) as master:
            yield master


def _wait_for_port(port: int, child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"{child.args} exited with {child.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{child.args} did not listen on {port} within {START_TIMEOUT:g}s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its living descendants (nginx: master and workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue  # gone meanwhile
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15)
        pending.extend(int(child) for child in children)
    return total


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _aiohttp_load(
    kind: str, name: str, target: Target, concurrency: int, duration: float, number: int
) -> Run:
    """`concurrency` aiohttp connections POST the request back to back for `duration` seconds."""
    import aiohttp  # the bench extra: only this load generator needs it

    url, headers = target
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        stop_at = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while (sent := time.perf_counter()) < stop_at:
                try:
                    async with session.post(url, data=BODY, headers=headers) as reply:
                        body = await reply.read()
                        ok = reply.status == 200 and b'"hi"' in body
                except aiohttp.ClientError:
                    ok = False
                done = time.perf_counter()
                if done <= stop_at:
                    if ok:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    ordered = sorted(latencies) or [float("nan")]

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    return Run(kind, name, concurrency, number, len(latencies) / duration, pick(0.5), pick(0.99), errors)


def _row(r: Run) -> str:
    return (
        f"round {r.round} {r.upstream:<6} {r.target:<18} C={r.concurrency:<3} {r.rps:>8.0f} req/s  "
        f"p50 {r.p50:>7.3f} ms  p99 {r.p99:>7.3f} ms  cpu {_cpu(r.cpu_us):>6} µs/req  errors {r.errors}"
    )


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _groups(runs: list[Run]) -> dict[tuple[str, str, int], list[Run]]:
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.upstream, r.target, r.concurrency), []).append(r)
    return groups


def _table(runs: list[Run]) -> str:
    lines = [
        "| upstream | target | C | req/s (median) | req/s min-max | p50 ms | p99 ms | CPU µs/req | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, target, concurrency), group in sorted(_groups(runs).items(), key=_order):
        rps = [r.rps for r in group]
        cpu = [r.cpu_us for r in group if r.cpu_us is not None]
        lines.append(
            f"| {kind} | {target} | {concurrency} | {statistics.median(rps):.0f} | "
            f"{min(rps):.0f}-{max(rps):.0f} | {statistics.median(r.p50 for r in group):.3f} | "
            f"{statistics.median(r.p99 for r in group):.3f} | "
            f"{_cpu(statistics.median(cpu) if cpu else None)} | {sum(r.errors for r in group)} |"
        )
    return "\n".join(lines)


def _order(item: tuple[tuple[str, str, int], list[Run]]) -> tuple[int, int, int, str]:
    (kind, target, concurrency), _ = item
    rank = TARGETS.index(target) if target in TARGETS else len(TARGETS)
    return UPSTREAMS.index(kind), concurrency, rank, target


def _paired(runs: list[Run], ours: str, theirs: str) -> dict[tuple[str, int], list[tuple[Run, Run]]]:
    """Runs of `ours` and `theirs` from the same round, by upstream and concurrency."""
    by = {(r.upstream, r.target, r.concurrency, r.round): r for r in runs}
    pairs: dict[tuple[str, int], list[tuple[Run, Run]]] = {}
    for r in runs:
        other = by.get((r.upstream, theirs, r.concurrency, r.round))
        if r.target == ours and other is not None:
            pairs.setdefault((r.upstream, r.concurrency), []).append((r, other))
    return pairs


def _ratios(runs: list[Run]) -> str:
    """Per upstream and C: medians over rounds of each round's ratio (or p50 difference)."""
    lines = [
        "| upstream | C | proxy | /direct req/s | /nginx req/s | p50 added over direct ms | "
        "p50 added over nginx ms |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    names = sorted({r.target for r in runs if r.target.startswith("central-mcp")})
    for name in names:
        vs_direct, vs_nginx = _paired(runs, name, "direct"), _paired(runs, name, "nginx")
        for kind, concurrency in sorted(
            vs_direct.keys() | vs_nginx.keys(), key=lambda k: (UPSTREAMS.index(k[0]), k[1])
        ):
            cells = []
            for pairs in (vs_direct.get((kind, concurrency)), vs_nginx.get((kind, concurrency))):
                cells.append(f"{statistics.median(a.rps / b.rps for a, b in pairs):.2f}" if pairs else "-")
            for pairs in (vs_direct.get((kind, concurrency)), vs_nginx.get((kind, concurrency))):
                cells.append(f"{statistics.median(a.p50 - b.p50 for a, b in pairs):+.3f}" if pairs else "-")
            lines.append(f"| {kind} | {concurrency} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fast_path(runs: list[Run]) -> str:
    """Per upstream and C: what front.py's fast path buys over the ASGI way, as medians over rounds
    of each round's central-mcp / central-mcp-asgi ratio (or difference)."""
    lines = [
        "| upstream | C | fast/ASGI req/s | p50 fast - ASGI ms | CPU µs/req ASGI - fast |",
        "|---|---:|---:|---:|---:|",
    ]
    pairs = _paired(runs, "central-mcp", "central-mcp-asgi")
    for (kind, concurrency), pair in sorted(pairs.items(), key=lambda k: (UPSTREAMS.index(k[0][0]), k[0][1])):
        saved = [b.cpu_us - a.cpu_us for a, b in pair if a.cpu_us is not None and b.cpu_us is not None]
        lines.append(
            f"| {kind} | {concurrency} | {statistics.median(a.rps / b.rps for a, b in pair):.2f} | "
            f"{statistics.median(a.p50 - b.p50 for a, b in pair):+.3f} | "
            f"{_cpu(statistics.median(saved) if saved else None)} |"
        )
    return "\n".join(lines)


def _goals(runs: list[Run]) -> str:
    """The issue's goals, checked on this run's medians of per-round ratios."""
    lines = ["Goals (medians of per-round ratios, central-mcp):"]
    vs_direct, vs_nginx = _paired(runs, "central-mcp", "direct"), _paired(runs, "central-mcp", "nginx")
    for (kind, concurrency), pairs in sorted(vs_direct.items()):
        if kind == "sdk" and concurrency > 1:
            ratio = statistics.median(a.rps / b.rps for a, b in pairs)
            lines.append(
                _goal(
                    f"sdk C={concurrency}: central-mcp/direct req/s {ratio:.2f} >= {GOAL_SDK_VS_DIRECT}",
                    ratio >= GOAL_SDK_VS_DIRECT,
                )
            )
    for (kind, concurrency), pairs in sorted(vs_nginx.items()):
        if kind == "static" and concurrency > 1:
            ratio = statistics.median(a.rps / b.rps for a, b in pairs)
            lines.append(
                _goal(
                    f"static C={concurrency}: central-mcp/nginx req/s {ratio:.2f} >= {GOAL_STATIC_VS_NGINX}",
                    ratio >= GOAL_STATIC_VS_NGINX,
                )
            )
    for (kind, concurrency), pairs in sorted(vs_direct.items()):
        if concurrency == 1:
            added = statistics.median(a.p50 - b.p50 for a, b in pairs)
            lines.append(
                _goal(
                    f"{kind} C=1: p50 added over direct {added:.3f} ms <= {GOAL_ADDED_P50_MS} ms",
                    added <= GOAL_ADDED_P50_MS,
                )
            )
    return "\n".join(lines)


def _goal(text: str, met: bool) -> str:
    return f"  [{'met' if met else 'MISSED'}] {text}"


if __name__ == "__main__":
    main(sys.argv[1:])
