"""pipeline/prepare.py: what a deploy records of each server it prepared, and how it schedules them."""

from __future__ import annotations

import contextlib
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from pipeline.config.settings import Settings
from pipeline.plan import Action
from pipeline.prepare import Candidate, Outcome, Preparation
from pipeline.secrets import Masker
from pipeline.states import ServerOutcome


def test_a_failure_reason_is_stored_with_secret_values_masked() -> None:
    """A container that echoes a secret into its gate failure never puts it on the deploy pages."""
    outcome = Outcome(ServerOutcome.FAILED, 2, reason="initialize answered HTTP 500: token=s3cr3t-value")

    stored = outcome.as_json(Masker(["s3cr3t-value"]))

    assert stored == {"outcome": "failed", "release": 2, "reason": "initialize answered HTTP 500: token=****"}


def test_only_gated_and_swapped_servers_carry_timings_and_tools() -> None:
    """The stored shape is the one the pages read: timings and tools only where a gate passed."""
    gated = Outcome(ServerOutcome.SWAPPED, 3, timings={"build": 0.1}, tools=["greet"])
    unchanged = Outcome(ServerOutcome.UNCHANGED, 1)

    assert gated.as_json(str) == {
        "outcome": "swapped",
        "release": 3,
        "timings": {"build": 0.1},
        "tools": ["greet"],
    }
    assert unchanged.as_json(str) == {"outcome": "unchanged", "release": 1}


# scheduling: build slots, start slots, networks made ahead --------------------------------------


class _Log:
    """The two DeployLog calls Preparation.run makes."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def line(self, text: str) -> None:
        self.lines.append(text)


class _Networks:
    """Records the servers whose network was made, and when."""

    def __init__(self, events: list[str], lock: threading.Lock) -> None:
        self.events, self.lock = events, lock

    def ensure(self, server: str, egress: bool) -> None:
        with self.lock:
            self.events.append(f"network {server}")


class _Timeline:
    """A Preparation whose stages only record when they run (each takes `pause` seconds)."""

    def __init__(self, parallel: int, starts: int, servers: int, pause: float = 0.05) -> None:
        self.events: list[str] = []
        self.lock = threading.Lock()
        self.running = {"build": 0, "start": 0}
        self.most = {"build": 0, "start": 0}
        self.pause = pause
        settings = Settings(
            config_path=Path("deploy.yaml"), state_dir=Path("."), build_parallel=parallel, build_starts=starts
        )
        networks = _Networks(self.events, self.lock)
        observe = SimpleNamespace(observe=lambda _: None)
        ctx = SimpleNamespace(
            settings=settings,
            metrics=SimpleNamespace(build_seconds=SimpleNamespace(labels=lambda _: observe)),
            server_networks=lambda: networks,
        )
        prep = Preparation(cast(Any, ctx), 1, cast(Any, _Log()), {}, Path("."), time.monotonic() + 30)
        prep._build = partial(self._stage, "build", "build")  # type: ignore[method-assign]
        prep._start = partial(self._stage, "start", "start")  # type: ignore[method-assign]
        prep._gate = partial(self._stage, "start", "gate")  # type: ignore[method-assign]
        self.prep = prep
        entries = [
            SimpleNamespace(
                action=Action.BUILD,
                spec=SimpleNamespace(
                    server=f"s{i}", number=1, manifest=SimpleNamespace(remote=None, name=f"s{i}", network="")
                ),
            )
            for i in range(servers)
        ]
        self.plan = cast(Any, SimpleNamespace(to_prepare=entries))

    def _stage(self, slot: str, stage: str, c: Candidate) -> None:
        with self.lock:
            self.events.append(f"{stage} {c.name} begins")
            if stage != "gate":
                self.running[slot] += 1
                self.most[slot] = max(self.most[slot], self.running[slot])
        time.sleep(self.pause)
        with self.lock:
            self.events.append(f"{stage} {c.name} ends")
            if stage != "start":
                self.running[slot] -= 1


def test_a_built_server_starts_while_the_next_one_builds() -> None:
    """With one build slot, the second image builds while the first server starts and is gated:
    a gate waiting for a server's start-up no longer holds the builder."""
    timeline = _Timeline(parallel=1, starts=2, servers=2)
    timeline.prep.run(timeline.plan)
    events = timeline.events
    assert events.index("build s1 begins") < events.index("gate s0 ends")
    assert timeline.most == {"build": 1, "start": 2}


def test_builds_and_starts_never_pass_their_limits() -> None:
    """build.parallel bounds the builds and build.starts the servers starting or gated at once."""
    timeline = _Timeline(parallel=2, starts=3, servers=9, pause=0.02)
    candidates = timeline.prep.run(timeline.plan)
    assert len(candidates) == 9
    assert timeline.most == {"build": 2, "start": 3}


def test_every_network_is_made_before_the_builds_end() -> None:
    """The candidates' networks are made while the first images build, not between each server's
    build and its start."""
    timeline = _Timeline(parallel=1, starts=1, servers=3, pause=0.15)
    timeline.prep.run(timeline.plan)
    events = timeline.events
    assert sorted(e for e in events if e.startswith("network")) == [f"network s{i}" for i in range(3)]
    assert max(events.index(f"network s{i}") for i in range(3)) < events.index("build s0 ends")
