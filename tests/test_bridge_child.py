"""pipeline/bridge/child.py with real processes: stdout read into one buffer and cut into lines,
whatever the program's writes look like, and bounded (line length, junk)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from pipeline.bridge import child as child_module
from pipeline.bridge.child import Child, Message, base_env

SPLIT = r"""
import sys, time
out = sys.stdout
out.write('{"jsonrpc":"2.0","id":1,'); out.flush(); time.sleep(0.05)
out.write('"result":{}}\n{"jsonrpc":"2.0","id":2,"result":{}}\n{"jsonrpc"'); out.flush(); time.sleep(0.05)
out.write(':"2.0","id":3,"result":{"text":"' + "y" * 200000 + '"}}\n'); out.flush()
"""
LONG = r"""
import sys, time
sys.stdout.write('{"id":1,"x":"' + "a" * 600); sys.stdout.flush(); time.sleep(0.05)
sys.stdout.write("a" * 600 + '"}\n'); sys.stdout.flush(); sys.stdin.read()
"""
JUNK = r"""
import sys
sys.stdout.write("".join(f"junk {i}\n" for i in range(30))); sys.stdout.flush(); sys.stdin.read()
"""


def _run(program: str, tmp_path: Path) -> tuple[list[Message], list[str]]:
    """Start `python -c program`, collect what it delivers until it ends (or 10 s)."""
    messages: list[Message] = []
    reasons: list[str] = []

    async def run() -> None:
        ended = asyncio.Event()

        def on_exit(child: Child, reason: str) -> None:
            reasons.append(reason)
            ended.set()

        child = Child(
            [sys.executable, "-c", program],
            base_env(),
            lambda c, m: messages.append(m),
            on_exit,
            work_root=str(tmp_path),
        )
        await child.start()
        try:
            await asyncio.wait_for(ended.wait(), 10)
        finally:
            await child.stop()

    asyncio.run(run())
    return messages, reasons


def test_lines_split_across_writes_and_several_in_one_write_are_each_delivered(tmp_path: Path) -> None:
    """A message cut over three writes, two messages in one write, one over the read size: each
    arrives whole, in order; then the exit is reported with its code."""
    messages, reasons = _run(SPLIT, tmp_path)
    assert [m["id"] for m in messages] == [1, 2, 3]
    assert messages[2]["result"]["text"] == "y" * 200000
    assert reasons == ["the server process exited with code 0"]


def test_a_line_over_the_cap_ends_the_process_even_when_it_arrives_in_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1.2 kB line written in two pieces, under a 1 kB cap: the process is ended, saying why."""
    monkeypatch.setattr(child_module, "MAX_LINE_BYTES", 1000)
    messages, reasons = _run(LONG, tmp_path)
    assert messages == []
    assert reasons == ["the server wrote a stdout line over 1000 bytes"]


def test_a_line_under_the_cap_arriving_in_pieces_is_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same line under a 2 kB cap is one message."""
    monkeypatch.setattr(child_module, "MAX_LINE_BYTES", 2000)

    async def run() -> list[Message]:
        got: list[Message] = []
        child = Child([sys.executable, "-c", LONG], base_env(), lambda c, m: got.append(m), lambda c, r: None)
        child.work_root = str(tmp_path)
        await child.start()
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.05)
        await child.stop()
        return got

    assert [m["id"] for m in asyncio.run(run())] == [1]


def test_junk_past_the_budget_in_one_write_ends_the_process(tmp_path: Path) -> None:
    """30 lines that are not JSON-RPC, written at once: ended once the budget of 20 is spent."""
    messages, reasons = _run(JUNK, tmp_path)
    assert messages == []
    assert reasons == ["the server wrote more than 20 lines that are not JSON-RPC to stdout"]


ECHO = r"""
import sys
for line in sys.stdin:
    sys.stdout.write(line); sys.stdout.flush()
"""


def test_a_line_held_for_a_busy_program_is_written_within_the_hold(tmp_path: Path) -> None:
    """A busy program's lines wait to share a write, but never past HOLD: a program that writes
    nothing meanwhile (say, it waits for this very line) still gets it."""

    async def run() -> tuple[list[Message], float]:
        got: list[Message] = []
        child = Child([sys.executable, "-c", ECHO], base_env(), lambda c, m: got.append(m), lambda c, r: None)
        child.work_root = str(tmp_path)
        child.busy = lambda: True
        await child.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        child.send({"jsonrpc": "2.0", "id": 1, "method": "ping"})
        child.send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
        while len(got) < 2 and loop.time() - started < 10:
            await asyncio.sleep(0.005)
        took = loop.time() - started
        await child.stop()
        return got, took

    got, took = asyncio.run(run())
    assert [m["id"] for m in got] == [1, 2]
    assert took < 5


DEEP = r"""
import sys
sys.stdout.write("[" * 100000 + "\n" + '{"jsonrpc":"2.0","id":7,"result":{}}\n'); sys.stdout.flush()
"""


def test_a_line_nested_past_the_parsers_depth_is_junk_and_the_next_line_is_delivered(
    tmp_path: Path,
) -> None:
    """A stdout line json cannot parse for its depth (RecursionError) counts as junk; the answer
    after it in the same write still arrives."""
    messages, _ = _run(DEEP, tmp_path)
    assert messages == [{"jsonrpc": "2.0", "id": 7, "result": {}}]
