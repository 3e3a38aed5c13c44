"""Prometheus metrics of one provider, in their own registry (several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DEPLOY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    """Every metric the provider exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.deploys = Counter("central_mcp_deploys_total", "Finished deploys by status and source",
                               ["status", "source"], registry=r)
        self.deploy_seconds = Histogram("central_mcp_deploy_duration_seconds", "Deploy duration",
                                        buckets=DEPLOY_BUCKETS, registry=r)
        self.build_seconds = Histogram("central_mcp_build_duration_seconds", "Image build duration",
                                       ["server"], buckets=DEPLOY_BUCKETS, registry=r)
        self.requests = Counter("central_mcp_proxy_requests_total", "Proxied requests",
                                ["server", "status", "project"], registry=r)
        self.latency = Histogram("central_mcp_upstream_latency_seconds", "Time to the upstream's answer end",
                                 ["server"], buckets=LATENCY_BUCKETS, registry=r)
        self.probe_failures = Counter("central_mcp_probe_failures_total", "Failed health probes",
                                      ["server"], registry=r)
        self.restarts = Counter("central_mcp_restarts_total", "Containers replaced by the restart policy",
                                ["server"], registry=r)
        self.live = Gauge("central_mcp_live_releases", "Servers with a live release", registry=r)
        self.watch_rollbacks = Counter("central_mcp_watch_rollbacks_total",
                                       "Automatic rollbacks in the post-deploy watch window", ["server"],
                                       registry=r)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
