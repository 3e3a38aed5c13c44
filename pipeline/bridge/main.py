"""The bridge's command line: `bridge [options] -- PROGRAM ARGS...`; SIGTERM drains and exits."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from . import wire
from .app import Bridge, Config
from .child import _log as log


def parse(argv: Sequence[str]) -> Config:
    """Read the options and the program's argv (after `--`)."""
    args = list(argv)
    if "--" not in args or args.index("--") == len(args) - 1:
        raise SystemExit("central-mcp bridge: give the stdio program after `--`")
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="central-mcp-bridge")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--path", default="/mcp")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--sessions", choices=("per-session", "shared"), default="per-session")
    parser.add_argument("--max-processes", type=int, default=16)
    parser.add_argument("--pool", type=int, default=1)
    parser.add_argument("--idle-timeout", type=float, default=1800.0)
    parser.add_argument("--init-timeout", type=float, default=20.0)
    parser.add_argument("--call-timeout", type=float, default=600.0)
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    o = parser.parse_args(args[:split])
    return Config(
        tuple(args[split + 1 :]),
        o.port,
        o.path,
        o.host,
        o.sessions,
        max(1, o.max_processes),
        max(0, o.pool),
        o.idle_timeout,
        o.init_timeout,
        o.call_timeout,
        o.drain_timeout,
    )


async def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    bridge = Bridge(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await wire.serve(config.host, config.port, bridge.handle)
    bridge.start()
    tasks = [loop.create_task(bridge.reap())]
    if config.sessions == "shared":
        tasks.append(loop.create_task(bridge.watch_shared()))
    log(f"serving {list(config.command)} ({config.sessions}) on {config.host}:{config.port}{config.path}")
    await stop.wait()
    log("draining")
    server.close()
    for task in tasks:
        task.cancel()
    await bridge.drain()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point."""
    asyncio.run(run(parse(sys.argv[1:] if argv is None else argv)))
