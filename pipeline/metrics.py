"""Prometheus metrics of one provider, in their own registry (several apps can share a process)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DEPLOY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    """Every metric the provider exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.deploys = Counter(
            "central_mcp_deploys_total",
            "Finished deploys by status and source",
            ["status", "source"],
            registry=r,
        )
        self.deploy_seconds = Histogram(
            "central_mcp_deploy_duration_seconds", "Deploy duration", buckets=DEPLOY_BUCKETS, registry=r
        )
        self.build_seconds = Histogram(
            "central_mcp_build_duration_seconds",
            "Image build duration",
            ["server"],
            buckets=DEPLOY_BUCKETS,
            registry=r,
        )
        self.traffic = ProxyTraffic()
        r.register(self.traffic)
        self.probe_failures = Counter(
            "central_mcp_probe_failures_total", "Failed health probes", ["server"], registry=r
        )
        self.restarts = Counter(
            "central_mcp_restarts_total", "Containers replaced by the restart policy", ["server"], registry=r
        )
        self.stdio_processes = Gauge(
            "central_mcp_stdio_processes",
            "A stdio server's processes as its live container's bridge reports them: running now, "
            "started and exited on their own (crashed) since the container started",
            ["server", "state"],
            registry=r,
        )
        self.idle = Gauge(
            "central_mcp_idle_servers", "Live servers scaled to zero (stopped until a request)", registry=r
        )
        self.wakes = Counter(
            "central_mcp_wakes_total",
            "Idle servers started by a request, by outcome",
            ["server", "outcome"],
            registry=r,
        )
        self.live = Gauge("central_mcp_live_releases", "Servers with a live release", registry=r)
        self.watch_rollbacks = Counter(
            "central_mcp_watch_rollbacks_total",
            "Automatic rollbacks in the post-deploy watch window",
            ["server"],
            registry=r,
        )

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)


class ProxyTraffic:
    """Proxied requests by server, status and project, and upstream latency by server.

    The proxy adds to plain counters on every request (`add`); Prometheus reads them when it
    scrapes (`collect`). A prometheus_client Counter and Histogram cost ~3 µs per request in the
    proxy's hot path, more than the rest of its bookkeeping together (bench/README.md).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int, str], int] = {}
        self._latency: dict[str, list[float]] = {}  # per server: a count per bucket, +Inf last; then the sum

    def add(self, server: str, status: int, project: str, seconds: float) -> None:
        """Count one proxied request."""
        bucket = bisect_left(LATENCY_BUCKETS, seconds)  # the first bound >= seconds ("le")
        key = (server, status, project)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            row = self._latency.get(server)
            if row is None:
                row = self._latency[server] = [0] * (len(LATENCY_BUCKETS) + 2)
            row[bucket] += 1
            row[-1] += seconds

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (what the registry checks names against)."""
        yield from self._families({}, {})

    def collect(self) -> Iterator[Metric]:
        """The counters as Prometheus metric families."""
        with self._lock:
            requests = dict(self._requests)
            latency = {server: list(row) for server, row in self._latency.items()}
        yield from self._families(requests, latency)

    @staticmethod
    def _families(
        requests: dict[tuple[str, int, str], int], latency: dict[str, list[float]]
    ) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "central_mcp_proxy_requests", "Proxied requests", labels=("server", "status", "project")
        )
        for (server, status, project), count in sorted(requests.items()):
            counter.add_metric([server, str(status), project], count)
        yield counter
        histogram = HistogramMetricFamily(
            "central_mcp_upstream_latency_seconds",
            "Time from routing to the end of the relayed answer",
            labels=("server",),
        )
        bounds = [repr(float(bound)) for bound in LATENCY_BUCKETS] + ["+Inf"]  # prometheus_client's spelling
        for server, row in sorted(latency.items()):
            cumulative: float = 0
            buckets: list[tuple[str, float]] = []
            for bound, hits in zip(bounds, row[:-1], strict=True):
                cumulative += hits
                buckets.append((bound, cumulative))
            histogram.add_metric([server], buckets, sum_value=row[-1])
        yield histogram
