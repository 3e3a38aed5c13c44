"""A running deploy's log: events stored in SQLite as they happen and followed live."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.secrets import Masker
from pipeline.store import Store


@dataclass(frozen=True)
class Event:
    """One line of a deploy's output: a step header, a log line, a result, or the end."""

    seq: int
    ts: float
    kind: str
    text: str


class DeployLog:
    """Writes a deploy's events (masked) and lets readers wait for new ones."""

    def __init__(self, store: Store, deploy_id: int, masker: Masker | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.deploy_id = deploy_id
        self.masker = masker or Masker(())
        self.clock = clock
        self.events: list[Event] = []
        self.finished = False
        self.steps: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def emit(self, kind: str, text: str) -> None:
        """Record one event and wake the readers."""
        text = self.masker(text)
        with self._cond:
            event = Event(len(self.events) + 1, self.clock(), kind, text)
            self.events.append(event)
            self.store.add_event(self.deploy_id, event.seq, kind, text)
            self._cond.notify_all()

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
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def wait(self, after: int, timeout: float) -> tuple[list[Event], bool]:
        """Return events after seq `after` (waiting up to `timeout` for one) and whether it ended."""
        with self._cond:
            if len(self.events) <= after and not self.finished:
                self._cond.wait(timeout)
            return self.events[after:], self.finished


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
