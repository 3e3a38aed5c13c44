"""Zero downtime without Docker: 8 SDK clients hammer tools/call while the route is swapped 4 times.

Each swap does what a deploy does after its health gate: start a new upstream, `router.swap`, then
`router.drain` the old one, `router.retire` it and stop it. No request may fail, and every upstream
must have answered some. In the session era each client opens short sessions (initialize, a few
calls, DELETE), so sessions opened before a swap finish on the old upstream while it drains.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.proxy.router import Upstream
from tests.support.proxy_rig import Rig, connect, running_proxy, sdk_upstream, text_of

WORKERS = 8
DURATION = 5.0
SWAPS = 4
CALLS_PER_SESSION = 5
DRAIN_REQUEST_TIMEOUT = 5.0
DRAIN_SESSION_TIMEOUT = 10.0


@dataclass
class Tally:
    """What the clients saw: answers per upstream label, and every failure."""

    answers: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    mixed_sessions: int = 0


class Fleet:
    """The upstreams of server `x`, started and stopped from the deploy thread."""

    def __init__(self, stateless: bool) -> None:
        self.stateless = stateless
        self._stacks: dict[str, ExitStack] = {}
        self._lock = threading.Lock()

    def start(self, label: str) -> Upstream:
        """Serve a new SDK upstream named `label`."""
        stack = ExitStack()
        started = stack.enter_context(sdk_upstream("x", label, stateless=self.stateless))
        with self._lock:
            self._stacks[label] = stack
        return started

    def stop(self, label: str) -> None:
        """Stop one upstream."""
        with self._lock:
            stack = self._stacks.pop(label)
        stack.close()

    def close(self) -> None:
        """Stop every upstream still running."""
        for label in list(self._stacks):
            self.stop(label)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A proxy with open access."""
    with running_proxy(tmp_path) as running:
        yield running


def _deploy_repeatedly(
    rig: Rig, fleet: Fleet, first: Upstream, interval: float, finished: threading.Event
) -> list[tuple[str, bool]]:
    """Swap `x` to a new upstream SWAPS times, `interval` apart; return (old label, drained) per swap."""
    drained: list[tuple[str, bool]] = []
    live = first
    try:
        for number in range(1, SWAPS + 1):
            time.sleep(interval)
            candidate = fleet.start(f"u{number}")
            rig.router.swap({"x": candidate})
            emptied = rig.router.drain(live.container_id, DRAIN_REQUEST_TIMEOUT, DRAIN_SESSION_TIMEOUT)
            rig.router.retire(live.container_id)
            fleet.stop(live.container_id)
            drained.append((live.container_id, emptied))
            live = candidate
        time.sleep(interval)  # the last upstream serves alone for a while too
    finally:
        finished.set()
    return drained


async def _stateless_worker(url: str, finished: threading.Event, tally: Tally) -> None:
    """One auto-mode client calling whoami until the deploys are over."""
    async with connect(url, mode="auto") as client:
        while not finished.is_set():
            try:
                tally.answers[text_of(await client.call_tool("whoami"))] += 1
            except Exception as exc:  # a failed call is what this test counts
                tally.failures.append(repr(exc))


async def _session_worker(url: str, finished: threading.Event, tally: Tally) -> None:
    """One legacy-mode client opening short sessions until the deploys are over."""
    while not finished.is_set():
        try:
            async with connect(url, mode="legacy") as client:
                labels = [text_of(await client.call_tool("whoami")) for _ in range(CALLS_PER_SESSION)]
            tally.answers.update(labels)
            tally.mixed_sessions += len(set(labels)) > 1
        except Exception as exc:  # a failed session is what this test counts
            tally.failures.append(repr(exc))


@pytest.mark.parametrize("era", ["stateless", "session"])
async def test_clients_see_no_failure_while_the_route_is_swapped_repeatedly(rig: Rig, era: str) -> None:
    """8 clients calling through 4 swap/drain/retire/stop cycles see zero failures; every upstream answers."""
    fleet = Fleet(stateless=era == "stateless")
    try:
        first = fleet.start("u0")
        rig.router.swap({"x": first})
        tally, finished = Tally(), threading.Event()
        worker = _stateless_worker if era == "stateless" else _session_worker
        deploys = asyncio.to_thread(_deploy_repeatedly, rig, fleet, first, DURATION / (SWAPS + 1), finished)
        workers = asyncio.gather(*(worker(rig.url("x"), finished, tally) for _ in range(WORKERS)))
        drained, _ = await asyncio.gather(deploys, workers)
    finally:
        fleet.close()
    assert tally.failures == [], f"{len(tally.failures)} failures, first: {tally.failures[:3]}"
    assert sorted(tally.answers) == [f"u{n}" for n in range(SWAPS + 1)], tally.answers
    assert all(emptied for _, emptied in drained), drained
    assert tally.mixed_sessions == 0, "a session moved between upstreams"
    assert sum(tally.answers.values()) >= WORKERS * 10, tally.answers
