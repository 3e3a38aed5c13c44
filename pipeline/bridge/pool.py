"""Started stdio processes waiting for a session (the warm pool), under a per-container cap.

A cold start of a Python stdio server is ~450 ms of imports; a process started ahead of time has
done them when its session's `initialize` arrives. Every process, waiting or serving, counts
toward `max_processes`; a program that keeps dying is restarted with growing back-off.
"""

from __future__ import annotations

import asyncio

from .child import Child
from .child import _log as log
from .hub import Hub

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
START_WAIT = 10.0  # seconds a new session waits for that process (it may be backing off)
START_POLL = 0.005  # seconds between looks at a process being started for the pool


class CapacityError(Exception):
    """Every process this container may run is in use."""


class Pool:
    """Processes for new sessions: `size` started ahead, at most `cap` alive in all."""

    def __init__(self, command: tuple[str, ...], env: dict[str, str], cap: int, size: int) -> None:
        self.command = list(command)
        self.env = env
        self.cap = cap
        self.size = min(size, cap)
        self.idle: list[Hub] = []
        self.live = 0  # processes started and not yet ended or released, waiting ones included
        self.starting = 0
        self.failures = 0
        self.restarts = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def take(self) -> Hub:
        """A started process for a new session: a waiting one, else a cold start under the cap."""
        waited = 0.0
        while self._filling_last_place() and waited < START_WAIT:
            await asyncio.sleep(START_POLL)  # the last place under the cap is being filled: take it
            waited += START_POLL
        while self.idle:
            hub = self.idle.pop(0)
            if hub.alive:
                self.refill()
                return hub
            self.live -= 1
        if self.live + self.starting >= self.cap:
            raise CapacityError(
                f"this server runs at most {self.cap} processes at once (run.max_processes) and all "
                "are serving sessions; end a session (DELETE) or try again later"
            )
        hub = await self.start_hub()
        self.refill()
        return hub

    async def start_hub(self) -> Hub:
        """Start one process (counted as live)."""
        self.starting += 1
        try:
            child = Child(self.command, self.env, lambda c, m: None, lambda c, r: None)
            hub = Hub(child)
            await child.start()
        finally:
            self.starting -= 1
        self.live += 1
        return hub

    def release(self, hub: Hub) -> None:
        """A session's process is ending: it no longer counts, and the pool may start another."""
        self.live -= 1
        if not hub.alive and hub.child.pid:
            self.restarts += 1
        self.refill()

    def succeeded(self) -> None:
        """A process answered initialize: the program works, back-off starts over."""
        self.failures = 0

    def backoff(self) -> float:
        """Seconds to wait before starting a process that keeps failing; grows with each failure."""
        self.failures += 1
        return float(min(BACKOFF_MAX, BACKOFF_START * 2 ** (self.failures - 1)))

    def refill(self) -> None:
        """Start waiting processes until `size` wait or the cap is reached."""
        while len(self.idle) + self.starting < self.size and self.live + self.starting < self.cap:
            task = asyncio.get_running_loop().create_task(self._add())
            self.starting += 1  # counted now so the loop ends; _add moves it to live
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """End every waiting process."""
        self.size = 0
        for task in list(self._tasks):
            task.cancel()
        for hub in self.idle:
            await hub.child.stop()
        self.idle = []

    def _filling_last_place(self) -> bool:
        return not self.idle and self.starting > 0 and self.live + self.starting >= self.cap

    async def _add(self) -> None:
        delay = min(BACKOFF_MAX, BACKOFF_START * 2 ** (self.failures - 1)) if self.failures else 0.0
        try:
            await asyncio.sleep(delay)
            self.starting -= 1
            hub = await self.start_hub()
        except OSError as exc:
            log(f"could not start run.command {self.command}: {exc}")
            self.failures += 1
            return
        hub.child.on_exit = lambda child, reason: self._died(hub, reason)
        self.idle.append(hub)

    def _died(self, hub: Hub, reason: str) -> None:
        """A waiting process ended before any session took it: count it, start another later."""
        Hub.on_exit(hub, hub.child, reason)
        if hub in self.idle:
            self.idle.remove(hub)
            self.live -= 1
            self.restarts += 1
            self.failures += 1
            self.refill()
