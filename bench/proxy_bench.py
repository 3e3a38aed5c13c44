"""Proxy benchmark: req/s and p50/p99 latency of a small MCP `tools/call` POST on loopback.

Targets, for each upstream (an SDK stateless JSON server, and a raw Starlette JSON echo that
isolates proxy overhead): the upstream directly, central-mcp's proxy (open, and with a project
key), and nginx as a reverse proxy (buffering off, HTTP/1.1 keep-alive pool). Every server is its
own process under uvicorn (nginx: its own master + 1 worker); the load is aiohttp with C
connections for a fixed time after a warm-up. Not a test: run it by hand (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "proxy_runner.py"
DEFAULT_DURATION = 5.0
DEFAULT_WARMUP = 1.0
DEFAULT_CONCURRENCY = (16, 64)
START_TIMEOUT = 20.0
MODERN = "2026-07-28"
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream",
           "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "echo"}
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "echo", "arguments": {"text": "hi"},
    "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
              "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
              "io.modelcontextprotocol/clientCapabilities": {}}}}).encode()
Target = tuple[str, dict[str, str]]  # URL, request headers
NGINX_CONF = """
daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream mcp_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
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
}}
"""


@dataclass
class Result:
    """One measured run."""

    upstream: str
    target: str
    concurrency: int
    seconds: float
    errors: int
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0 if ordered else float("nan")


def main(argv: list[str]) -> None:
    """Start the upstreams, the proxies and nginx; measure each; print the table and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(DEFAULT_CONCURRENCY))
    parser.add_argument("--upstreams", nargs="+", choices=["sdk", "echo"], default=["sdk", "echo"])
    parser.add_argument("--nginx-workers", type=int, default=1, help="1 matches the one uvicorn process")
    args = parser.parse_args(argv)
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx_bin).exists():
        raise SystemExit("nginx is not installed; on Debian: apt-get install -y nginx")
    print(f"# {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{args.duration:g}s per run after {args.warmup:g}s warm-up, loopback only", flush=True)
    results: list[Result] = []
    for kind in args.upstreams:
        with _targets(kind, nginx_bin, args.nginx_workers) as targets:
            for concurrency in args.concurrency:
                for target, (url, headers) in targets.items():
                    result = asyncio.run(_load(kind, target, url, headers, concurrency,
                                               args.duration, args.warmup))
                    results.append(result)
                    print(_row(result), flush=True)
    print()
    print(_table(results))
    print()
    print(_ratios(results))


@contextmanager
def _targets(kind: str, nginx_bin: str, nginx_workers: int) -> Iterator[dict[str, Target]]:
    """Run the upstream `kind`, two central-mcp proxies and nginx in front of it; yield their URLs."""
    with ExitStack() as stack:
        up, open_proxy, keyed_proxy, nginx = (_free_port() for _ in range(4))
        stack.enter_context(_process([sys.executable, str(RUNNER), kind, "--port", str(up)], up))
        proxy = [sys.executable, str(RUNNER), "proxy", "--upstream-port", str(up), "--port"]
        stack.enter_context(_process([*proxy, str(open_proxy)], open_proxy))
        keyed = stack.enter_context(_process([*proxy, str(keyed_proxy), "--key"], keyed_proxy))
        key = keyed.stdout.readline().strip() if keyed.stdout else ""
        stack.enter_context(_nginx(nginx_bin, nginx, up, nginx_workers))
        yield {
            "direct": (f"http://127.0.0.1:{up}/mcp", HEADERS),
            "central-mcp": (f"http://127.0.0.1:{open_proxy}/mcp/bench", HEADERS),
            "central-mcp+key": (f"http://127.0.0.1:{keyed_proxy}/mcp/bench",
                                {**HEADERS, "authorization": f"Bearer {key}"}),
            "nginx": (f"http://127.0.0.1:{nginx}/mcp/bench", HEADERS),
        }


@contextmanager
def _process(command: list[str], port: int) -> Iterator[subprocess.Popen[str]]:
    """Run a child process until the block ends; wait until it listens on `port`."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
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
def _nginx(nginx_bin: str, port: int, upstream_port: int, workers: int) -> Iterator[None]:
    """Run nginx in the foreground with its own config and temp dirs on a loopback port."""
    with tempfile.TemporaryDirectory(prefix="proxy-bench-nginx-") as tmp:
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream_port=upstream_port, workers=workers))
        with _process([nginx_bin, "-p", tmp, "-e", f"{tmp}/error.log", "-c", str(conf)], port):
            yield


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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _load(kind: str, target: str, url: str, headers: dict[str, str], concurrency: int,
                duration: float, warmup: float) -> Result:
    """`concurrency` connections POST the request back to back; latencies after the warm-up count."""
    result = Result(kind, target, concurrency, duration, 0)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        measure_from, stop_at = started + warmup, started + warmup + duration

        async def worker() -> None:
            while (sent := time.perf_counter()) < stop_at:
                try:
                    async with session.post(url, data=BODY, headers=headers) as reply:
                        body = await reply.read()
                        ok = reply.status == 200 and b'"hi"' in body
                except aiohttp.ClientError:
                    ok = False
                done = time.perf_counter()
                if sent >= measure_from and done <= stop_at:
                    if ok:
                        result.latencies.append(done - sent)
                    else:
                        result.errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


def _row(r: Result) -> str:
    return (f"{r.upstream:<5} {r.target:<16} C={r.concurrency:<3} {r.rps:>8.0f} req/s  "
            f"p50 {r.percentile(0.50):>7.2f} ms  p99 {r.percentile(0.99):>7.2f} ms  errors {r.errors}")


def _table(results: list[Result]) -> str:
    lines = ["| upstream | target | C | req/s | p50 ms | p99 ms | errors |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.upstream} | {r.target} | {r.concurrency} | {r.rps:.0f} | {r.percentile(0.5):.2f} | "
              f"{r.percentile(0.99):.2f} | {r.errors} |" for r in results]
    return "\n".join(lines)


def _ratios(results: list[Result]) -> str:
    by = {(r.upstream, r.target, r.concurrency): r for r in results}
    lines = ["| upstream | C | central-mcp/nginx req/s | central-mcp/nginx p50 | central-mcp/direct req/s |",
             "|---|---:|---:|---:|---:|"]
    for (kind, target, concurrency), ours in by.items():
        if target != "central-mcp":
            continue
        nginx, direct = by[(kind, "nginx", concurrency)], by[(kind, "direct", concurrency)]
        lines.append(f"| {kind} | {concurrency} | {ours.rps / nginx.rps:.2f} | "
                     f"{ours.percentile(0.5) / nginx.percentile(0.5):.2f} | {ours.rps / direct.rps:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
