"""Usage per API key and server (requests, errors, latency), counted in memory, saved in batches."""

from __future__ import annotations

import threading

from pipeline.metrics import Metrics
from pipeline.proxy.access import Caller
from pipeline.store import Store


class Usage:
    """Counts proxy requests; `flush` adds the counts to SQLite and starts over."""

    def __init__(self, store: Store, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self._counts: dict[tuple[str, str, str], list[float]] = {}
        self._totals: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def count(self, caller: Caller, server: str, status: int, seconds: float) -> None:
        """Count one finished request (5xx answers count as errors)."""
        project = caller.project.name if caller.project else ""
        error = 1 if status >= 500 else 0
        with self._lock:
            row = self._counts.setdefault((caller.key_id, project, server), [0, 0, 0.0])
            row[0] += 1
            row[1] += error
            row[2] += seconds * 1000.0
            requests, errors = self._totals.get(server, (0, 0))
            self._totals[server] = (requests + 1, errors + error)
        if self.metrics is not None:
            self.metrics.traffic.add(server, status, project, seconds)

    def totals(self, server: str) -> tuple[int, int]:
        """Requests and errors (5xx) of `server` since the process started."""
        with self._lock:
            return self._totals.get(server, (0, 0))

    def flush(self) -> int:
        """Save and reset the counters; return how many rows were written."""
        with self._lock:
            counts, self._counts = self._counts, {}
        rows = [(k, p, s, int(v[0]), int(v[1]), v[2]) for (k, p, s), v in counts.items()]
        if rows:
            self.store.add_usage(rows)
        return len(rows)
