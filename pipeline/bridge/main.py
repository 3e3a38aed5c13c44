"""The bridge's command line: `bridge [options] [-- PROGRAM ARGS...]`; SIGTERM drains and exits.

With no program after `--`, the program is the one recorded in the image's layer: PROGRAM_FILE,
next to this package, a JSON list of strings (pipeline/stdio.py writes it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import wire
from .app import Bridge, Config
from .child import _log as log

PROGRAM_FILE = Path(__file__).resolve().parent.parent / "program.json"
MAX_PROGRAM_BYTES = 64 * 1024


def recorded_program() -> tuple[str, ...]:
    """The program's argv recorded in the image; exit saying what is wrong when there is none."""
    path = PROGRAM_FILE
    try:
        with path.open("rb") as file:
            text = file.read(MAX_PROGRAM_BYTES + 1)
        data = json.loads(text) if len(text) <= MAX_PROGRAM_BYTES else None
    except (OSError, ValueError) as exc:
        message = f"central-mcp bridge: no program after `--` and none readable in {path}: {exc}"
        raise SystemExit(message) from exc
    if not isinstance(data, list) or not data or not data[0] or not all(isinstance(a, str) for a in data):
        raise SystemExit(
            f"central-mcp bridge: {path} must hold a JSON list of strings naming a program "
            f"(at most {MAX_PROGRAM_BYTES} bytes)"
        )
    return tuple(data)


def parse(argv: Sequence[str]) -> Config:
    """Read the options and the program's argv (after `--`)."""
    args = list(argv)
    split = args.index("--") if "--" in args else len(args)
    command = tuple(args[split + 1 :]) or recorded_program()
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
        command,
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
