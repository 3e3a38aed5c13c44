"""A running deploy's log: events followed live from memory and stored in SQLite in batches.

Live readers (the pusher, the deploy page) read the events in memory, so a line reaches them at
once; the store gets them a batch at a time (every LOG_BATCH_LINES lines, after LOG_BATCH_SECONDS,
and at every step and at the end), one transaction per batch instead of one per line. Output the
provider does not write itself (build output) is capped at `max_lines`: past it one "log
truncated" line is kept, and the pusher sees the same as the page, so the stream and the record
never differ; the provider's own lines (steps, outcomes, the end) are always kept.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pipeline.config.settings import DEFAULT_MAX_LOG_LINES
from pipeline.secrets import Masker
from pipeline.store import Store

log = logging.getLogger("central-mcp.deploylog")

LOG_BATCH_LINES = 500
LOG_BATCH_SECONDS = 0.5


@dataclass(frozen=True)
class Event:
    """One line of a deploy's output: a step header, a log line, a result, or the end."""

    seq: int
    ts: float
    kind: str
    text: str


class DeployLog:
    """Writes a deploy's events (masked) and lets readers wait for new ones."""

    def __init__(
        self,
        store: Store,
        deploy_id: int,
        masker: Masker | None = None,
        clock: Callable[[], float] = time.time,
        max_lines: int = DEFAULT_MAX_LOG_LINES,
        batch_seconds: float = LOG_BATCH_SECONDS,
    ) -> None:
        self.store = store
        self.deploy_id = deploy_id
        self.masker = masker or Masker(())
        self.clock = clock
        self.max_lines = max_lines
        self.batch_seconds = batch_seconds
        self.events: list[Event] = []
        self.finished = False
        self.steps: list[dict[str, Any]] = []
        self._output = 0  # lines of output seen, kept or not
        self._unsaved: list[Event] = []
        self._saved_at = time.monotonic()
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def emit(self, kind: str, text: str) -> None:
        """Record one event, wake the readers, and store what is due."""
        text = self.masker(text)
        with self._lock:
            event = Event(len(self.events) + 1, self.clock(), kind, text)
            self.events.append(event)
            self._unsaved.append(event)
            due = (
                kind != "log"
                or len(self._unsaved) >= LOG_BATCH_LINES
                or time.monotonic() - self._saved_at >= self.batch_seconds
            )
        if due:
            self.save()
        self._wake()

    def line(self, text: str) -> None:
        """A line the provider writes itself (always kept)."""
        self.emit("log", text)

    def output(self, text: str) -> None:
        """A line of output the provider does not control (a build's): kept up to `max_lines`."""
        with self._lock:
            self._output += 1
            seen = self._output
        if seen <= self.max_lines:
            self.emit("log", text)
        elif seen == self.max_lines + 1:
            self.emit(
                "log",
                f"log truncated after {self.max_lines} lines of output (limits.log_lines in deploy.yaml); "
                "the rest is not kept",
            )

    def save(self) -> None:
        """Store the events not stored yet, in one transaction (a failure loses the stored copy only)."""
        with self._lock:
            batch, self._unsaved = self._unsaved, []
            self._saved_at = time.monotonic()
        if not batch:
            return
        try:
            self.store.add_events(self.deploy_id, [(e.seq, e.ts, e.kind, e.text) for e in batch])
        except sqlite3.Error as exc:  # live readers (the pusher) still get every line
            log.warning(
                "deploy #%d: events %d-%d not saved: %s", self.deploy_id, batch[0].seq, batch[-1].seq, exc
            )

    def step(self, name: str) -> StepTimer:
        """Start a named step; use as a context manager to record its duration and outcome."""
        self.emit("step", f"==> {name}")
        return StepTimer(self, name)

    def finish(self, status: str, text: str) -> None:
        """Emit the final event (every event is stored by then); readers stop after it."""
        dropped = self._output - self.max_lines
        if dropped > 0:
            self.line(f"{dropped} more line(s) of output were not kept")
        self.emit("end", f"{status}: {text}")
        with self._lock:
            self.finished = True
        self._wake()

    async def follow(self, after: int) -> AsyncIterator[Event]:
        """Yield events after seq `after` as they come, until the deploy ends (no thread held)."""
        loop = asyncio.get_running_loop()
        waiter = (loop, asyncio.Event())
        with self._lock:
            self._waiters.add(waiter)
        try:
            seen = max(after, 0)
            while True:
                waiter[1].clear()
                with self._lock:
                    events, finished = self.events[seen:], self.finished
                for event in events:
                    yield event
                seen += len(events)
                if finished and seen >= len(self.events):
                    return
                await waiter[1].wait()
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    def _wake(self) -> None:
        with self._lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)


class StepTimer:
    """Times a step and records it on the log's step list."""

    def __init__(self, log: DeployLog, name: str) -> None:
        self.log = log
        self.name = name
        self.started = time.monotonic()

    def __enter__(self) -> StepTimer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        seconds = round(time.monotonic() - self.started, 3)
        status = "ok" if exc_type is None else "failed"
        self.log.steps.append({"name": self.name, "status": status, "seconds": seconds})
        self.log.store.update_deploy(self.log.deploy_id, steps=self.log.steps)
