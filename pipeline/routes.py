"""The route table: server name → the live upstream. Immutable, replaced in one assignment."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Upstream:
    """One running release of a server that the proxy may forward to."""

    server: str
    release: int
    container_id: str
    host: str
    port: int
    path: str

    @property
    def base_url(self) -> str:
        """The upstream's MCP endpoint URL."""
        return f"http://{self.host}:{self.port}{self.path}"


class Router:
    """Holds the current route table and counts in-flight requests per upstream (for drains)."""

    def __init__(self) -> None:
        self._table: Mapping[str, Upstream] = MappingProxyType({})
        self._swap_lock = threading.Lock()
        self._inflight: dict[str, int] = {}
        self._count_lock = threading.Lock()

    @property
    def table(self) -> Mapping[str, Upstream]:
        """The current table (never mutated; a swap replaces it)."""
        return self._table

    def get(self, server: str) -> Upstream | None:
        """Return the live upstream of `server`, or None."""
        return self._table.get(server)

    def swap(self, changes: Mapping[str, Upstream | None]) -> dict[str, Upstream]:
        """Apply changes (None removes a server) in one step; return the upstreams replaced."""
        with self._swap_lock:
            table = dict(self._table)
            replaced = {name: table[name] for name in changes if name in table}
            for name, upstream in changes.items():
                if upstream is None:
                    table.pop(name, None)
                else:
                    table[name] = upstream
            self._table = MappingProxyType(table)
        return replaced

    def replace_all(self, upstreams: Iterable[Upstream]) -> None:
        """Replace the whole table (start-up reconciliation)."""
        with self._swap_lock:
            self._table = MappingProxyType({u.server: u for u in upstreams})

    def enter(self, upstream: Upstream) -> None:
        """Count a request that started on `upstream`."""
        with self._count_lock:
            self._inflight[upstream.container_id] = self._inflight.get(upstream.container_id, 0) + 1

    def leave(self, upstream: Upstream) -> None:
        """Count a request that ended on `upstream`."""
        with self._count_lock:
            left = self._inflight.get(upstream.container_id, 1) - 1
            if left <= 0:
                self._inflight.pop(upstream.container_id, None)
            else:
                self._inflight[upstream.container_id] = left

    def inflight(self, container_id: str) -> int:
        """Return how many requests are running on a container."""
        with self._count_lock:
            return self._inflight.get(container_id, 0)

    def drain(self, container_id: str, timeout: float,
              sleep: Callable[[float], None] = time.sleep) -> bool:
        """Wait until no request runs on the container or `timeout` passes; True if drained."""
        deadline = time.monotonic() + timeout
        while self.inflight(container_id) > 0:
            if time.monotonic() >= deadline:
                return False
            sleep(0.05)
        return True


async def async_drain(router: Router, container_id: str, timeout: float) -> bool:
    """The drain, awaitable."""
    return await asyncio.to_thread(router.drain, container_id, timeout)
