"""A manifest's `rollout:` — how a new release goes live: all at once (the default swap) or as a
canary that takes a growing share of new traffic, judged against the stable release at each step.

The schema says its shape; `problems` says what it cannot (steps rising to 100); `parse` turns
validated data (a manifest's, or a stored release's) into a frozen Rollout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pipeline.config import yamlsrc
from pipeline.config.units import parse_duration
from pipeline.errors import Problem

DEFAULT_STEPS = (10, 50, 100)
DEFAULT_STEP_INTERVAL = 60.0
DEFAULT_MAX_ERROR_RATE_INCREASE = 0.05  # the canary's failed share may exceed the stable's by 5 points
DEFAULT_MAX_P99_RATIO = 2.0  # the canary's p99 latency may be up to twice the stable's
DEFAULT_MIN_REQUESTS = 20  # the canary's requests in a step before it is judged
DEFAULT_MAX_WAITS = 5  # a step short of traffic waits this many intervals more, then the rule decides


class Strategy(StrEnum):
    """How a release goes live."""

    SWAP = "swap"  # all at once (the default)
    CANARY = "canary"


class OnInsufficient(StrEnum):
    """What a canary step that never saw min_requests does once its waits are spent."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    WAIT = "wait"  # wait on, until promote or rollback is said by hand


@dataclass(frozen=True)
class Rollout:
    """A manifest's `rollout`; the default is the all-at-once swap."""

    strategy: Strategy = Strategy.SWAP
    steps: tuple[int, ...] = DEFAULT_STEPS
    step_interval: float = DEFAULT_STEP_INTERVAL
    max_error_rate_increase: float = DEFAULT_MAX_ERROR_RATE_INCREASE
    max_p99_ratio: float = DEFAULT_MAX_P99_RATIO
    min_requests: int = DEFAULT_MIN_REQUESTS
    max_waits: int = DEFAULT_MAX_WAITS
    on_insufficient: OnInsufficient = OnInsufficient.ROLLBACK

    @property
    def canary(self) -> bool:
        """Whether the release goes live as a canary."""
        return self.strategy is Strategy.CANARY


SWAP = Rollout()


def parse(data: Mapping[str, Any]) -> Rollout:
    """The `rollout` of validated manifest data (a stored release's manifest too)."""
    raw = data.get("rollout") or {}
    if not raw:
        return SWAP
    margins = raw.get("margins") or {}
    return Rollout(
        strategy=Strategy(raw.get("strategy", Strategy.SWAP)),
        steps=tuple(int(s) for s in raw.get("steps", DEFAULT_STEPS)),
        step_interval=parse_duration(raw.get("step_interval", DEFAULT_STEP_INTERVAL)),
        max_error_rate_increase=float(
            margins.get("max_error_rate_increase", DEFAULT_MAX_ERROR_RATE_INCREASE)
        ),
        max_p99_ratio=float(margins.get("max_p99_ratio", DEFAULT_MAX_P99_RATIO)),
        min_requests=int(raw.get("min_requests", DEFAULT_MIN_REQUESTS)),
        max_waits=int(raw.get("max_waits", DEFAULT_MAX_WAITS)),
        on_insufficient=OnInsufficient(raw.get("on_insufficient", OnInsufficient.ROLLBACK)),
    )


def problems(doc: yamlsrc.Document) -> list[Problem]:
    """What the schema cannot say: a canary's steps rise and end at 100; a remote server has no
    containers to run side by side."""
    raw = doc.data.get("rollout")
    if not isinstance(raw, Mapping) or raw.get("strategy") != Strategy.CANARY:
        return []
    name = doc.data.get("name")
    if "remote" in doc.data:
        return [
            doc.problem(
                ("rollout",), f"server {name!r} is remote: it has no release to canary", "remove rollout"
            )
        ]
    steps = raw.get("steps", list(DEFAULT_STEPS))
    if not isinstance(steps, list) or not all(isinstance(s, int) for s in steps):
        return []
    if steps != sorted(set(steps)) or steps[-1:] != [100]:
        return [
            doc.problem(
                ("rollout", "steps"),
                f"server {name!r} has rollout.steps {steps}: they must rise, each once, and end at 100",
                "e.g. steps: [10, 50, 100]",
            )
        ]
    return []
