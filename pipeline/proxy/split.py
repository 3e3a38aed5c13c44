"""A canary split: a server's stable release and a candidate release side by side, the candidate
taking `percent` of new sessions and of requests outside any session, and both releases' figures
(requests, failures, latencies) for the step under way.

The pick is a weighted turn, not a coin: of every 100 new requests exactly `percent` go to the
candidate, so a step's share is what it says even with little traffic. Figures are counted on the
event loop's thread (one request each as it ends); the rollout reads a step's figures after it has
started a new one, so no lock is needed.
"""

from __future__ import annotations

import itertools
from typing import Any

from pipeline.proxy.targets import TargetGroup

MAX_SAMPLES = 20_000  # latencies kept per release per step: bounded, whatever the traffic
RPC_ERROR_MARKS = (b'"isError":true', b'"isError": true', b'"error":{', b'"error": {')


class Figures:
    """One release's requests, failures and latencies in one step."""

    __slots__ = ("failed", "latencies", "requests", "rpc_errors")

    def __init__(self) -> None:
        self.requests = 0
        self.failed = 0  # 5xx, plus JSON-RPC errors in 200 answers (the canary's only)
        self.rpc_errors = 0
        self.latencies: list[float] = []

    def observe(self, failed: bool, rpc_error: bool, seconds: float) -> None:
        """Count one request that ended."""
        self.requests += 1
        self.failed += failed or rpc_error
        self.rpc_errors += rpc_error
        if len(self.latencies) < MAX_SAMPLES:
            self.latencies.append(seconds)

    @property
    def error_rate(self) -> float:
        """The failed share of the requests (0 with none)."""
        return self.failed / self.requests if self.requests else 0.0

    @property
    def p99(self) -> float:
        """The 99th percentile latency in seconds (0 with none)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def as_json(self) -> dict[str, Any]:
        """The figures as the deploy page shows them."""
        return {
            "requests": self.requests,
            "failed": self.failed,
            "rpc_errors": self.rpc_errors,
            "error_rate": round(self.error_rate, 4),
            "p99_ms": round(self.p99 * 1000, 1),
        }


class Split:
    """A canary release beside a server's stable one: its share of new traffic and both releases'
    figures for the current step."""

    def __init__(self, stable: int, canary: TargetGroup, percent: int) -> None:
        self.stable = stable
        self.canary = canary
        self.percent = percent
        self.turns = itertools.count()
        self.figures: dict[int, Figures] = {stable: Figures(), canary.release: Figures()}

    def choose(self, stable: TargetGroup) -> TargetGroup:
        """The group a new session or stateless request goes to: exactly `percent` in 100 the canary."""
        percent = self.percent
        return self.canary if (next(self.turns) * percent) % 100 < percent else stable

    def observe(self, release: int, failed: bool, rpc_error: bool, seconds: float) -> None:
        """Count a request that ended on one of the two releases (others are not judged)."""
        figures = self.figures.get(release)
        if figures is not None:
            figures.observe(failed, rpc_error, seconds)

    def next_step(self, percent: int) -> dict[int, Figures]:
        """Start a step at `percent` with fresh figures; return the last step's."""
        last = self.figures
        self.figures = {self.stable: Figures(), self.canary.release: Figures()}
        self.percent = percent
        return last


def rpc_failed(body: bytes) -> bool:
    """Whether an answer (a JSON body or event-stream chunk) carries a JSON-RPC error or a tool
    result marked isError."""
    return any(mark in body for mark in RPC_ERROR_MARKS)
