"""stdio bridge benchmark: tools/call through our bridge, mcp-proxy and supergateway, and natively.

One run, side by side, on loopback: the same `echo` tool of the stdio fixture server
(tests/fixtures/servers/stdio/server.py, the official SDK) served
- natively over streamable HTTP by the SDK (`--http`, JSON answers): the reference;
- by our bridge (pipeline/bridge) in per-session mode (a process per session) and shared mode;
- by `mcp-proxy` (PyPI) and `supergateway` (npm, `--stateful`) bridging the same stdio program;
- directly over stdio (C=1 only): what any bridge adds on top of the program itself.
Each client is a session-era session (initialize, initialized, then tools/call in a loop) on its own
keep-alive connection; C=16 is 16 sessions at once. The load is a raw asyncio HTTP/1.1 client.

Last, what offering only the session era costs a 2026-07-28 client: its answered discover probe.
Then per-session start-up: the time from POST initialize to the answer of the first tools/call of a
new session, with our bridge's warm pool (`--pool=1`) and without it (cold), for `mcp-server-time`
(PyPI, `get_current_time`) and the fixture; supergateway `--stateful` (a process per session) too.

mcp-proxy and supergateway are installed into throwaway directories (`--tools DIR`, default
/tmp/stdio-bench), never as project dependencies:
    python3 -m venv /tmp/stdio-bench/venv && /tmp/stdio-bench/venv/bin/pip install mcp-proxy mcp-server-time
    npm install --prefix /tmp/stdio-bench/npm supergateway --ignore-scripts
Not a test: run by hand, `python bench/stdio_bench.py` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parent / "tests" / "fixtures" / "servers" / "stdio" / "server.py"
ERA = "2025-11-25"
START_TIMEOUT = 30.0
CALL = {"name": "echo", "arguments": {"text": "hello"}}
NATIVE = "native SDK (HTTP)"
WARM_UP = 1.0  # seconds each load session calls before its calls are timed
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PIDS: dict[str, int] = {}  # url → pid of the server serving it
TIME_CALL = {"name": "get_current_time", "arguments": {"timezone": "UTC"}}


def main() -> None:
    """Run every target at C=1 and C=16, then the start-up figures; print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tools", type=Path, default=Path("/tmp/stdio-bench"))
    parser.add_argument("--sessions", type=int, default=12, help="new sessions timed per start-up figure")
    parser.add_argument("--only", default="", help="comma-separated target names (native always runs)")
    parser.add_argument("--load-only", action="store_true", help="skip the start-up and era figures")
    args = parser.parse_args()
    program = [sys.executable, str(FIXTURE)]
    targets = _targets(args.tools, program)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")} | {NATIVE}
        targets = {name: start for name, start in targets.items() if name in wanted}
    results: dict[str, dict[int, list[tuple[float, float]]]] = {name: {1: [], 16: []} for name in targets}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for _ in range(args.rounds):  # interleaved, so a noisy moment hurts every target alike
        for name, start in targets.items():
            with start() as url:
                for concurrency in (1, 16):
                    rps, p50, used = asyncio.run(_load(url, concurrency, args.duration, CALL, _PIDS[url]))
                    results[name][concurrency].append((rps, p50))
                    if concurrency == 16:
                        cpu[name].append(used)
    direct = _direct_stdio(program, args.duration)
    ceiling, ceiling_cpu = _direct_stdio_throughput(program, args.duration)
    _print_load(results, direct)
    print(
        f"direct stdio, 16 calls in flight on one process (no HTTP, no bridge): {ceiling:.0f} calls/s, "
        f"the program using {ceiling_cpu:.0f} µs of CPU per call"
    )
    _print_cpu(cpu)
    if not args.load_only:
        _print_startup(args.tools, program, args.sessions)
        _print_era_cost(program, args.sessions)


def _targets(tools: Path, program: list[str]) -> dict[str, Any]:
    venv, npm = tools / "venv" / "bin", tools / "npm" / "node_modules" / ".bin"
    return {
        NATIVE: lambda: _server(lambda port: [*program, "--http", str(port)]),
        "ours per-session": lambda: _bridge(program, "--sessions=per-session", "--max-processes=20"),
        "ours shared": lambda: _bridge(program, "--sessions=shared"),
        "mcp-proxy": lambda: _server(
            lambda port: [
                str(venv / "mcp-proxy"),
                "--port",
                str(port),
                "--log-level",
                "WARNING",
                "--",
                *program,
            ]
        ),
        "supergateway": lambda: _server(
            lambda port: [
                str(npm / "supergateway"),
                "--stdio",
                " ".join(program),
                "--outputTransport",
                "streamableHttp",
                "--stateful",
                "--port",
                str(port),
                "--logLevel",
                "none",
            ]
        ),
    }


@contextmanager
def _bridge(program: list[str], *options: str) -> Iterator[str]:
    with _server(
        lambda port: (
            [
                sys.executable,
                "-m",
                "pipeline.bridge",
                f"--port={port}",
                "--host=127.0.0.1",
                *options,
                "--",
                *program,
            ]
        )
    ) as url:
        yield url


@contextmanager
def _server(argv_for: Any) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        argv_for(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=HERE.parent
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        _PIDS[url] = proc.pid
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                asyncio.run(_session_start(port, None))
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{argv_for(port)[0]} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class Conn:
    """One keep-alive HTTP/1.1 connection speaking JSON-RPC POSTs (JSON or SSE answers)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.session = ""
        self.ids = 0

    async def open(self) -> None:
        """Connect."""
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, message: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        """POST one message; return status, headers and body (an SSE body whole)."""
        body = json.dumps(message).encode()
        head = (
            f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: {ERA}\r\n"
            + (f"Mcp-Session-Id: {self.session}\r\n" if self.session else "")
            + f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if headers.get("transfer-encoding") == "chunked":
            data = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip() or b"0", 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                data += await self.reader.readexactly(size + 2)
            return int(lines[0].split()[1]), headers, bytes(data)
        length = int(headers.get("content-length", "0"))
        return int(lines[0].split()[1]), headers, await self.reader.readexactly(length)

    async def call(self, method: str, params: dict[str, Any]) -> bytes:
        """A request; raise unless it was answered with a result."""
        self.ids += 1
        status, headers, body = await self.post(
            {"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params}
        )
        if status != 200 or b'"result"' not in body:
            raise RuntimeError(f"{method}: {status} {body[:200]!r}")
        self.session = headers.get("mcp-session-id", self.session)
        return body

    def close(self) -> None:
        """Close the connection."""
        self.writer.close()


async def _session_start(port: int, call: dict[str, Any] | None) -> float:
    """Open a session; return seconds from initialize to the first tools/call answer."""
    conn = Conn(port)
    await conn.open()
    started = time.perf_counter()
    params = {"protocolVersion": ERA, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
    await conn.call("initialize", params)
    await conn.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
    if call is not None:
        await conn.call("tools/call", call)
    took = time.perf_counter() - started
    if conn.session:
        await _delete(conn)
    conn.close()
    return took


async def _delete(conn: Conn) -> None:
    conn.writer.write(
        b"DELETE /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        + f"Mcp-Session-Id: {conn.session}\r\n\r\n".encode()
    )
    raw = await conn.reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(v)
            for k, _, v in (x.partition(":") for x in raw.decode().split("\r\n"))
            if k.lower() == "content-length"
        ),
        0,
    )
    await conn.reader.readexactly(length)


async def _load(
    url: str, concurrency: int, duration: float, call: dict[str, Any], pid: int = 0
) -> tuple[float, float, tuple[float, float]]:
    """`concurrency` sessions calling for `duration` seconds; return calls/s, p50 ms, and the CPU
    µs per call of the server process `pid` and of its descendants (the programs) meanwhile."""
    port = int(url.split(":")[2].split("/")[0])
    latencies: list[float] = []
    window: list[tuple[float, dict[int, float]]] = []

    async def sample() -> None:  # CPU within the timed window: after the warm-up, before DELETEs
        await asyncio.sleep(WARM_UP + 0.1)
        window.append((time.perf_counter(), _cpu_tree(pid)))
        await asyncio.sleep(duration - 0.2)
        window.append((time.perf_counter(), _cpu_tree(pid)))

    async def worker() -> None:
        conn = Conn(port)
        await conn.open()
        params = {"protocolVersion": ERA, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
        await conn.call("initialize", params)
        await conn.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        warm = time.perf_counter() + WARM_UP
        stop = warm + duration
        while (now := time.perf_counter()) < stop:
            await conn.call("tools/call", call)
            if now > warm:
                latencies.append(time.perf_counter() - now)
        if conn.session:
            await _delete(conn)
        conn.close()

    sampler = asyncio.get_running_loop().create_task(sample())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    used = (0.0, 0.0)
    if len(window) == 2 and pid:
        (started, before), (ended, after) = window
        calls = len(latencies) / duration * (ended - started)
        spent = {p: after.get(p, before[p]) - before[p] for p in before}
        own = spent.pop(pid, 0.0)
        used = (own / calls * 1e6, sum(spent.values()) / calls * 1e6)
    sampler.cancel()
    return len(latencies) / duration, statistics.median(latencies) * 1000, used


def _cpu_tree(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of `pid` and of each of its descendants alive now (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    tree, frontier = {pid}, {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    return {p: times[p] for p in tree if p in times}


def _direct_stdio(program: list[str], duration: float) -> float:
    """p50 ms of tools/call written straight to the program's stdin (no HTTP at all), C=1."""
    proc = subprocess.Popen(program, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin and proc.stdout

    def rpc(message: dict[str, Any]) -> None:
        proc.stdin.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    params = {"protocolVersion": ERA, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
    rpc({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})
    proc.stdout.readline()
    rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})
    latencies = []
    stop = time.perf_counter() + duration
    i = 0
    while time.perf_counter() < stop:
        i += 1
        started = time.perf_counter()
        rpc({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": CALL})
        proc.stdout.readline()
        latencies.append(time.perf_counter() - started)
    proc.kill()
    return statistics.median(latencies[50:]) * 1000


def _direct_stdio_throughput(program: list[str], duration: float, in_flight: int = 16) -> tuple[float, float]:
    """calls/s of one program fed straight on stdin with `in_flight` calls outstanding: the most
    any bridge that shares one process can reach."""
    proc = subprocess.Popen(program, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin and proc.stdout
    params = {"protocolVersion": ERA, "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
    lines = [
        {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]
    proc.stdin.write(json.dumps(lines[0]).encode() + b"\n")
    proc.stdin.flush()
    proc.stdout.readline()
    proc.stdin.write(json.dumps(lines[1]).encode() + b"\n")

    def call(i: int) -> bytes:
        return (
            json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": CALL}).encode() + b"\n"
        )

    proc.stdin.write(b"".join(call(i) for i in range(1, in_flight + 1)))
    proc.stdin.flush()
    answered, stop = 0, time.perf_counter() + duration
    started, before = time.perf_counter(), _cpu_tree(proc.pid)[proc.pid]
    while time.perf_counter() < stop:
        proc.stdout.readline()
        answered += 1
        proc.stdin.write(call(in_flight + answered))
        proc.stdin.flush()
    took = time.perf_counter() - started
    used = _cpu_tree(proc.pid)[proc.pid] - before
    proc.kill()
    return answered / took, used / answered * 1e6


def _print_load(results: dict[str, dict[int, list[tuple[float, float]]]], direct: float) -> None:
    native = results[NATIVE]
    base_rps = statistics.median(r for r, _ in native[16])
    base_p50 = statistics.median(p for _, p in native[1])
    print(f"\ntools/call echo, medians of rounds; direct stdio p50 at C=1: {direct:.2f} ms")
    print(
        f"{'target':<20} {'C=16 calls/s':>13} {'x native':>9} {'C=1 p50 ms':>11} "
        f"{'+ vs native':>12} {'+ vs stdio':>11}"
    )
    for name, by_c in results.items():
        rps = statistics.median(r for r, _ in by_c[16])
        p50 = statistics.median(p for _, p in by_c[1])
        print(
            f"{name:<20} {rps:>13.0f} {rps / base_rps:>9.2f} {p50:>11.2f} "
            f"{p50 - base_p50:>+12.2f} {p50 - direct:>+11.2f}"
        )


def _print_cpu(cpu: dict[str, list[tuple[float, float]]]) -> None:
    print("\nCPU µs per call at C=16 (medians of rounds): the server process, and its stdio programs")
    for name, used in cpu.items():
        own = statistics.median(u for u, _ in used)
        programs = statistics.median(p for _, p in used)
        split = (
            f"{own:>6.0f} + programs {programs:>4.0f} = {own + programs:>4.0f}"
            if programs
            else f"{own:>6.0f}"
        )
        print(f"  {name:<20} {split}")


def _print_startup(tools: Path, program: list[str], sessions: int) -> None:
    time_server = [str(tools / "venv" / "bin" / "mcp-server-time")]
    npm = tools / "npm" / "node_modules" / ".bin" / "supergateway"
    print("\nper-session start: POST initialize → first tools/call answer, ms (median, max)")
    cases = [
        ("mcp-server-time", time_server, TIME_CALL),
        ("fixture (SDK 2.x)", program, CALL),
    ]
    for label, argv, call in cases:
        for pool in (1, 0):
            with _bridge(argv, "--sessions=per-session", f"--pool={pool}") as url:
                times = _starts(url, call, sessions)
            print(f"  ours {'warm (pool=1)' if pool else 'cold (pool=0)':<14} {label:<18} {_fmt(times)}")
        with _server(
            lambda port, argv=argv: [
                str(npm),
                "--stdio",
                " ".join(argv),
                "--outputTransport",
                "streamableHttp",
                "--stateful",
                "--port",
                str(port),
                "--logLevel",
                "none",
            ]
        ) as url:
            times = _starts(url, call, sessions)
        print(f"  supergateway       {label:<18} {_fmt(times)}")


def _print_era_cost(program: list[str], sessions: int) -> None:
    """What offering only the session era costs a 2026-07-28 client: one more round trip, its
    server/discover probe answered -32022 (then it initializes as any session-era client)."""
    probe = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}

    async def discover(port: int) -> float:
        conn = Conn(port)
        await conn.open()
        started = time.perf_counter()
        status, _, body = await conn.post(probe)
        took = (time.perf_counter() - started) * 1000
        conn.close()
        if status != 400 or b"-32022" not in body:
            raise RuntimeError(f"server/discover: {status} {body[:200]!r}")
        return took

    with _bridge(program, "--sessions=per-session") as url:
        port = int(url.split(":")[2].split("/")[0])
        times = [asyncio.run(discover(port)) for _ in range(max(50, sessions))]
    print(f"\na 2026-07-28 client's server/discover probe, answered -32022, ms (median, max): {_fmt(times)}")


def _starts(url: str, call: dict[str, Any], sessions: int) -> list[float]:
    port = int(url.split(":")[2].split("/")[0])
    times = []
    for _ in range(sessions):
        time.sleep(1.5)  # a new session after a pause: the pool has refilled
        times.append(asyncio.run(_session_start(port, call)) * 1000)
    return times


def _fmt(times: list[float]) -> str:
    return f"{statistics.median(times):7.1f} {max(times):7.1f}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
