"""pipeline/deploylog.py: a deploy's events reach live readers even when they cannot be saved."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from pipeline.deploylog import DeployLog
from pipeline.secrets import Masker
from pipeline.store import Store


class FullDisk(Store):
    """A real Store whose event writes fail, as on a full disk."""

    def add_event(self, deploy_id: int, seq: int, kind: str, text: str) -> None:
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
