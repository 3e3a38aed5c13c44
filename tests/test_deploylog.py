"""pipeline/deploylog.py: a deploy's events reach live readers even when they cannot be saved."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.deploylog import DeployLog
from pipeline.secrets import Masker
from pipeline.store import Store


class FullDisk(Store):
    """A real Store whose event writes fail, as on a full disk."""

    def add_events(self, deploy_id: int, events: Sequence[tuple[int, float, str, str]]) -> None:
        raise sqlite3.OperationalError("database or disk is full")


def test_events_that_cannot_be_saved_still_reach_a_live_reader_and_end_it(tmp_path: Path) -> None:
    """A failing store loses the stored copy, not the pusher's stream: every line and the end arrive."""
    store = FullDisk(tmp_path / "central-mcp.db")
    log = DeployLog(store, 1, Masker(["s3cret"]))

    log.line("building with s3cret")
    log.finish("succeeded", "live: echo r2")

    async def read() -> list[str]:
        return [f"{e.kind}: {e.text}" async for e in log.follow(0)]

    assert asyncio.run(read()) == ["log: building with ****", "end: succeeded: live: echo r2"]
    store.close()


def _commits(store: Store) -> list[int]:
    """A counter of the transactions the store's connection commits (SQLite's own trace)."""
    count = [0]
    store._db.set_trace_callback(lambda sql: count.__setitem__(0, count[0] + (sql == "COMMIT")))
    return count


def test_a_build_printing_30000_lines_is_stored_capped_in_few_transactions(tmp_path: Path) -> None:
    """30,000 lines of build output: the first `max_lines` and one "log truncated" line are kept,
    the provider's own lines after them too, in a few dozen transactions, within a second."""
    store = Store(tmp_path / "central-mcp.db")
    commits = _commits(store)
    log = DeployLog(store, 1, max_lines=10_000)
    started = time.monotonic()

    log.step("build, start and gate 1 server(s)")
    for i in range(30_000):
        log.output(f"srv | line {i}")
    log.line("srv: build ok in 3.00s")
    log.finish("succeeded", "live: srv r1")

    seconds = time.monotonic() - started
    stored = [text for _, _, _, text in store.events(1)]
    assert len(stored) == 1 + 10_000 + 1 + 2 + 1
    assert stored[10_000] == "srv | line 9999"
    assert stored[10_001] == (
        "log truncated after 10000 lines of output (limits.log_lines in deploy.yaml); the rest is not kept"
    )
    assert stored[-3:] == [
        "srv: build ok in 3.00s",
        "20000 more line(s) of output were not kept",
        "succeeded: live: srv r1",
    ]
    assert commits[0] <= 10_000 // 500 + 10, commits[0]
    assert seconds < 5, seconds
    store.close()


def test_a_live_reader_gets_lines_before_they_are_stored(tmp_path: Path) -> None:
    """Lines still waiting for their batch reach a live reader at once; the end stores them all."""
    store = Store(tmp_path / "central-mcp.db")
    log = DeployLog(store, 1, batch_seconds=3600)
    log.line("deploy #1: push")
    log.output("srv | one")
    log.output("srv | two")
    assert store.events(1) == []

    async def first_three() -> list[str]:
        seen = []
        async for event in log.follow(0):
            seen.append(event.text)
            if len(seen) == 3:
                return seen
        return seen

    assert asyncio.run(first_three()) == ["deploy #1: push", "srv | one", "srv | two"]
    log.finish("succeeded", "ok")
    assert [t for _, _, _, t in store.events(1)][-1] == "succeeded: ok" and len(store.events(1)) == 4
    store.close()
