"""One stdio MCP program: started without a shell, fed JSON-RPC lines, its lines read back, bounded.

The process is confined (sandbox.py) to writing under its own directory. stdout carries only
the protocol: a line longer than the cap, or more non-JSON lines than the junk budget, ends the
process (its callers get a JSON-RPC error through `on_exit`). stderr is inherited, so it lands
in the container's log and never in the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from . import sandbox, stats

MAX_LINE_BYTES = 4 * 1024 * 1024  # of one JSON-RPC message on stdout
MAX_UNREAD_BYTES = 16 * 1024 * 1024  # written to stdin and not yet read by the program
JUNK_BUDGET = 20  # non-JSON stdout lines tolerated (logged) before the process is ended
STOP_GRACE = 2.0  # seconds between closing stdin / SIGTERM and SIGKILL
WORK_ROOT = "/tmp"  # the container's writable tmpfs
SESSION_HOME = "$HOME"  # an env value `$HOME` or `$HOME/...` names the session's own HOME (or in it)

Message = dict[str, Any]


class Child:
    """A started stdio program with its own HOME and working directory under WORK_ROOT."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        on_message: Callable[[Child, Message], None],
        on_exit: Callable[[Child, str], None],
        work_root: str = WORK_ROOT,
    ) -> None:
        self.command = command
        self.env = env
        self.on_message = on_message
        self.on_exit = on_exit
        self.work_root = work_root
        self.process: asyncio.subprocess.Process | None = None
        self.home = ""
        self.junk = 0
        self.closed = False
        self._reader: asyncio.Task[None] | None = None
        self._out: list[bytes] = []

    async def start(self) -> None:
        """Start the program; raise OSError when it cannot be started."""
        self.home = tempfile.mkdtemp(prefix="session-", dir=self.work_root)
        env = {**session_env(self.env, self.home), "HOME": self.home, "TMPDIR": self.home}
        confine = None
        try:
            confine = sandbox.ruleset(self.home, self.work_root)
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # the container's log
                cwd=self.home,
                env=env,
                limit=MAX_LINE_BYTES,
                start_new_session=True,
                preexec_fn=None if confine is None else sandbox.restrictor(confine),
            )
        except OSError:
            shutil.rmtree(self.home, ignore_errors=True)
            raise
        except subprocess.SubprocessError as exc:  # the process could not confine itself
            shutil.rmtree(self.home, ignore_errors=True)
            raise OSError(f"could not confine the process to {self.home}: {exc}") from exc
        finally:
            if confine is not None:
                os.close(confine)
        stats.COUNTS.started += 1
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def pid(self) -> int:
        """The process id (0 before start)."""
        return self.process.pid if self.process else 0

    def send(self, message: Message) -> None:
        """Write one message as a line to the program's stdin."""
        if self.closed or self.process is None or self.process.stdin is None:
            raise ConnectionError("the server process has ended")
        if self.process.stdin.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            raise ConnectionError(
                f"the server has not read the last {MAX_UNREAD_BYTES} bytes sent to its stdin"
            )
        # Written once per turn of the event loop: one pipe write (and one wake-up of the program)
        # for every message that became ready in that turn.
        self._out.append(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.process is not None and self.process.stdin is not None and not self.closed:
            self.process.stdin.write(b"".join(out))

    async def stop(self) -> None:
        """End the program: close stdin, then SIGTERM, then SIGKILL; remove its directory."""
        self.closed = True
        process = self.process
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE / 2)
            except TimeoutError:
                _signal(process, "terminate")
                try:
                    await asyncio.wait_for(process.wait(), STOP_GRACE / 2)
                except TimeoutError:
                    _signal(process, "kill")
                    await process.wait()
        shutil.rmtree(self.home, ignore_errors=True)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        reason = ""
        while not reason:
            try:
                line = await stdout.readline()
            except ValueError:  # asyncio's LimitOverrunError surfaces as ValueError from readline
                reason = f"the server wrote a stdout line over {MAX_LINE_BYTES} bytes"
                break
            if not line:
                code = await self.process.wait()
                reason = f"the server process exited with code {code}"
                break
            reason = self._line(line)
        stats.COUNTS.ended(not self.closed, f"pid {self.pid}: {reason}")
        if not self.closed:
            self.closed = True
            _log(f"pid {self.pid}: {reason}")
            _signal(self.process, "kill")
            self.on_exit(self, reason)

    def _line(self, line: bytes) -> str:
        """Deliver one stdout line; return a reason to end the process, or ''."""
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if isinstance(message, dict):
            try:
                self.on_message(self, message)
            except Exception as exc:  # a bug of ours drops one message, never the process's reader
                _log(f"pid {self.pid}: could not route {str(message)[:200]}: {exc!r}")
            return ""
        if not line.strip():
            return ""
        self.junk += 1
        _log(f"pid {self.pid}: not JSON-RPC on stdout: {line[:200]!r}")
        if self.junk > JUNK_BUDGET:
            return f"the server wrote more than {JUNK_BUDGET} lines that are not JSON-RPC to stdout"
        return ""


def _signal(process: asyncio.subprocess.Process, how: str) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate() if how == "terminate" else process.kill()


def _log(text: str) -> None:
    sys.stderr.write(f"central-mcp bridge: {text}\n")
    sys.stderr.flush()


def session_env(env: dict[str, str], home: str) -> dict[str, str]:
    """`env` with a leading SESSION_HOME of a value (alone or before `/`) replaced by `home`: a
    program that keeps state in a file named by its environment keeps it per session."""
    return {
        k: home + v[len(SESSION_HOME) :] if v == SESSION_HOME or v.startswith(SESSION_HOME + "/") else v
        for k, v in env.items()
    }


def base_env() -> dict[str, str]:
    """The environment a program starts with: the container's, without the bridge's own settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CENTRAL_MCP_BRIDGE_")}
