"""A running deploy's log: events stored in SQLite as they happen and followed live."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from pipeline.secrets import Masker
from pipeline.store import Store

log = logging.getLogger("central-mcp.deploylog")


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
    ) -> None:
        self.store = store
        self.deploy_id = deploy_id
        self.masker = masker or Masker(())
        self.clock = clock
        self.events: list[Event] = []
        self.finished = False
        self.steps: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def emit(self, kind: str, text: str) -> None:
        """Record one event and wake the readers."""
        text = self.masker(text)
        with self._lock:
            event = Event(len(self.events) + 1, self.clock(), kind, text)
            self.events.append(event)
            try:
                self.store.add_event(self.deploy_id, event.seq, kind, text)
            except sqlite3.Error as exc:  # live readers (the pusher) still get every line
                log.warning("deploy #%d: event %d not saved: %s", self.deploy_id, event.seq, exc)
        self._wake()

    def line(self, text: str) -> None:
        """A plain log line."""
        self.emit("log", text)

    def step(self, name: str) -> StepTimer:
        """Start a named step; use as a context manager to record its duration and outcome."""
        self.emit("step", f"==> {name}")
        return StepTimer(self, name)

    def finish(self, status: str, text: str) -> None:
        """Emit the final event; readers stop after it."""
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
