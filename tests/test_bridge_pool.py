"""pipeline/bridge/pool.py: warm processes, the per-container cap, and back-off, with `cat` as the
program (a real process that starts in a millisecond and never answers)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from pipeline.bridge.pool import BACKOFF_MAX, CapacityError, Pool

CAT = shutil.which("cat") or "/bin/cat"


async def _settle(pool: Pool, idle: int) -> None:
    for _ in range(200):
        if len(pool.idle) == idle and pool.starting == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the pool did not settle at {idle} waiting: {len(pool.idle)}")


def test_the_cap_counts_waiting_and_serving_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With cap 2 and a pool of 1: one waits; two sessions take both; a third is refused naming the
    cap; a released one makes room, and the pool refills only under the cap."""
    monkeypatch.setattr("pipeline.bridge.child.WORK_ROOT", str(tmp_path))

    async def run() -> None:
        pool = Pool((CAT,), dict(os.environ), cap=2, size=1)
        pool.refill()
        await _settle(pool, 1)
        first = await pool.take()
        second = await pool.take()
        assert pool.live == 2 and pool.idle == []
        with pytest.raises(CapacityError, match=r"at most 2 processes at once \(run.max_processes\)"):
            await pool.take()
        pool.release(first)
        await first.child.stop()
        await _settle(pool, 1)
        assert pool.live == 2
        for hub in (second, *pool.idle):
            await hub.child.stop()
        await pool.close()

    asyncio.run(run())


def test_back_off_grows_and_is_capped() -> None:
    """Each failure doubles the wait before the next start, up to BACKOFF_MAX; success resets it."""
    pool = Pool((CAT,), {}, cap=1, size=0)
    waits = [pool.backoff() for _ in range(10)]
    assert waits[:3] == [0.5, 1.0, 2.0] and waits[-1] == BACKOFF_MAX
    pool.succeeded()
    assert pool.backoff() == 0.5
