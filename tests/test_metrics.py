"""metrics.py: the proxy's request counts and latency histogram, as Prometheus reads them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pipeline.metrics import LATENCY_BUCKETS, Metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(metrics: Metrics, family: str) -> Samples:
    """The family's samples as parsed from the exposition text: (sample name, labels) → value."""
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families[family].samples}


def test_proxied_requests_are_counted_by_server_status_and_project() -> None:
    """Each added request counts once under its server, status and project."""
    metrics = Metrics()
    for status in (200, 200, 502):
        metrics.traffic.add("x", status, "web", 0.01)
    metrics.traffic.add("y", 200, "", 0.01)
    name = "central_mcp_proxy_requests_total"
    assert _samples(metrics, "central_mcp_proxy_requests") == {
        (name, (("project", "web"), ("server", "x"), ("status", "200"))): 2.0,
        (name, (("project", "web"), ("server", "x"), ("status", "502"))): 1.0,
        (name, (("project", ""), ("server", "y"), ("status", "200"))): 1.0,
    }


def test_latency_buckets_are_cumulative_with_le_bounds() -> None:
    """A latency on a bound counts in that bound's bucket; one past the last bound only in +Inf."""
    metrics = Metrics()
    for seconds in (0.0004, 0.001, 0.003, 61.0):
        metrics.traffic.add("x", 200, "", seconds)
    family = "central_mcp_upstream_latency_seconds"
    samples = _samples(metrics, family)
    bucket = {
        dict(labels)["le"]: value for (name, labels), value in samples.items() if name == f"{family}_bucket"
    }
    assert bucket["0.001"] == 2.0
    assert bucket["0.0025"] == 2.0
    assert bucket["0.005"] == 3.0
    assert bucket[repr(float(LATENCY_BUCKETS[-1]))] == 3.0
    assert bucket["+Inf"] == 4.0
    assert len(bucket) == len(LATENCY_BUCKETS) + 1
    assert samples[(f"{family}_count", (("server", "x"),))] == 4.0
    assert abs(samples[(f"{family}_sum", (("server", "x"),))] - 61.0044) < 1e-9
