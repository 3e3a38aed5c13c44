"""The stdio bridge as a real process on a loopback port, serving the stdio fixture server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.loopback import free_port

STDIO_SERVER = Path(__file__).resolve().parent.parent / "fixtures" / "servers" / "stdio" / "server.py"
START_TIMEOUT = 10.0


def fixture_command(*extra: str) -> list[str]:
    """The argv of the stdio fixture server under this interpreter."""
    return [sys.executable, str(STDIO_SERVER), *extra]


@contextmanager
def running_bridge(*options: str, command: list[str] | None = None, log: Path | None = None) -> Iterator[str]:
    """Start `python -m pipeline.bridge OPTIONS -- COMMAND` on a free port; yield its MCP URL."""
    port = free_port()
    argv = [sys.executable, "-m", "pipeline.bridge", f"--port={port}", "--host=127.0.0.1", *options, "--"]
    stderr = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([*argv, *(command or fixture_command())], stderr=stderr)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            assert proc.poll() is None, f"the bridge exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the bridge did not listen"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            stderr.close()  # type: ignore[union-attr]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
