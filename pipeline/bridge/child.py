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
HOLD = 0.0005  # seconds a line for a busy program may wait for others to share its write
READ_CHUNK = 64 * 1024  # bytes read from the program's stdout at once, into one reused buffer
JUNK_BUDGET = 20  # non-JSON stdout lines tolerated (logged) before the process is ended
STOP_GRACE = 2.0  # seconds between closing stdin / SIGTERM and SIGKILL
WORK_ROOT = "/tmp"  # the container's writable tmpfs
WORK_ROOT_ENV = "CENTRAL_MCP_BRIDGE_WORK_ROOT"  # another work root: a bridge run on a host (tests)
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
        work_root: str = "",
    ) -> None:
        self.command = command
        self.env = env
        self.on_message = on_message
        self.on_exit = on_exit
        self.work_root = work_root or os.environ.get(WORK_ROOT_ENV) or WORK_ROOT
        self.process: asyncio.subprocess.Process | None = None
        self.home = ""
        self.junk = 0
        self.closed = False
        self._stdout = -1  # the read end of the program's stdout (non-blocking), -1 once closed
        self._partial = bytearray()  # the start of a line not yet ended
        self._ended: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._held: asyncio.TimerHandle | None = None
        self.busy: Callable[[], bool] = lambda: False  # whether the program has calls in flight

    async def start(self) -> None:
        """Start the program; raise OSError when it cannot be started."""
        self.home = tempfile.mkdtemp(prefix="session-", dir=self.work_root)
        env = {**session_env(self.env, self.home), "HOME": self.home, "TMPDIR": self.home}
        # stdout is a pipe of ours read with add_reader into one buffer: asyncio's pipe transport
        # allocates (and maps) a 256 KiB buffer for every read, on every answer.
        read_end, write_end = os.pipe()
        confine = None
        try:
            confine = sandbox.ruleset(self.home, self.work_root)
            self.process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=write_end,
                stderr=None,  # the container's log
                cwd=self.home,
                env=env,
                start_new_session=True,
                preexec_fn=None if confine is None else sandbox.restrictor(confine),
            )
        except OSError:
            os.close(read_end)
            shutil.rmtree(self.home, ignore_errors=True)
            raise
        except subprocess.SubprocessError as exc:  # the process could not confine itself
            os.close(read_end)
            shutil.rmtree(self.home, ignore_errors=True)
            raise OSError(f"could not confine the process to {self.home}: {exc}") from exc
        finally:
            os.close(write_end)
            if confine is not None:
                os.close(confine)
        stats.COUNTS.started += 1
        os.set_blocking(read_end, False)
        self._stdout = read_end
        asyncio.get_running_loop().add_reader(read_end, self._readable)

    @property
    def pid(self) -> int:
        """The process id (0 before start)."""
        return self.process.pid if self.process else 0

    def send(self, message: Message) -> None:
        """Write one message as a line to the program's stdin."""
        if self.closed or self.process is None or self.process.stdin is None:
            raise ConnectionError("the server process has ended")
        if self.process.stdin.transport.get_write_buffer_size() + self._out_bytes > MAX_UNREAD_BYTES:
            raise ConnectionError(
                f"the server has not read the last {MAX_UNREAD_BYTES} bytes sent to its stdin"
            )
        # Written once per turn of the event loop: one pipe write (and one wake-up of the program)
        # for every message that became ready in that turn. While the program works on other calls,
        # a line waits up to HOLD, or until the program next writes (it is about to read then),
        # so that more lines share the write: measured, 10 % less CPU per call in a busy program.
        line = dump(message) + b"\n"
        self._out.append(line)
        self._out_bytes += len(line)
        if len(self._out) == 1:
            loop = asyncio.get_running_loop()
            if self.busy():
                self._held = loop.call_later(HOLD, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None
        if not self._out:
            return
        out, self._out, self._out_bytes = self._out, [], 0
        if self.process is not None and self.process.stdin is not None and not self.closed:
            self.process.stdin.write(b"".join(out))

    async def stop(self) -> None:
        """End the program: close stdin, then SIGTERM, then SIGKILL; remove its directory."""
        if not self.closed and self.process is not None:
            stats.COUNTS.ended(False, f"pid {self.pid}: stopped by the bridge")
        self.closed = True
        self._close_stdout()
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

    def _readable(self) -> None:
        """Read what the program wrote and deliver each whole line (in this callback, no task)."""
        try:
            count = os.readv(self._stdout, [_SCRATCH])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            count = 0
        if count == 0:
            self._close_stdout()
            self._ended = asyncio.get_running_loop().create_task(self._exited())
            return
        reason = self._lines(_SCRATCH, count)
        if self._held is not None:
            self._flush()  # the program just answered: it is about to read
        if reason:
            self._close_stdout()
            self._end(reason)

    def _lines(self, data: bytearray, size: int) -> str:
        """Deliver the whole lines in data[:size] (after what was left over); return a reason to end."""
        start, view = 0, memoryview(data)
        while start < size:
            end = data.find(b"\n", start, size)
            if end < 0:
                if len(self._partial) + size - start > MAX_LINE_BYTES:
                    return f"the server wrote a stdout line over {MAX_LINE_BYTES} bytes"
                self._partial += view[start:size]
                return ""
            if self._partial:
                self._partial += view[start : end + 1]
                line, self._partial = bytes(self._partial), bytearray()
            else:
                line = bytes(view[start : end + 1])
            if len(line) > MAX_LINE_BYTES + 1:
                return f"the server wrote a stdout line over {MAX_LINE_BYTES} bytes"
            reason = self._line(line)
            if reason:
                return reason
            start = end + 1
        return ""

    def _close_stdout(self) -> None:
        if self._stdout >= 0:
            asyncio.get_running_loop().remove_reader(self._stdout)
            os.close(self._stdout)
            self._stdout = -1

    async def _exited(self) -> None:
        assert self.process is not None
        code = await self.process.wait()
        self._end(f"the server process exited with code {code}")

    def _end(self, reason: str) -> None:
        assert self.process is not None
        if not self.closed:
            stats.COUNTS.ended(True, f"pid {self.pid}: {reason}")
            self.closed = True
            _log(f"pid {self.pid}: {reason}")
            _signal(self.process, "kill")
            self.on_exit(self, reason)

    def _line(self, line: bytes) -> str:
        """Deliver one stdout line; return a reason to end the process, or ''."""
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):  # nested past the parser's depth
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


_SCRATCH = bytearray(READ_CHUNK)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per message


def dump(message: Message) -> bytes:
    """One message as compact JSON bytes."""
    return _ENCODE(message).encode()


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
