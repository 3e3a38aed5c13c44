"""Canary rollouts: a release that passed the gate goes live beside the stable one, taking a rising
share of new sessions and stateless requests, judged against the stable release at each step.

A rollout runs on its own thread: step → wait `step_interval` → judge the step's figures (5xx and
p99 latency for both releases, JSON-RPC errors on the canary's answers only) → next step, or
rollback with the numbers in the reason. A step short of `min_requests` waits up to `max_waits`
intervals more, then `on_insufficient` decides. Reaching 100 promotes: the canary becomes the live
release and the stable one drains as after a swap. `promote`/`rollback` said by hand end it at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.config.rolloutspec import OnInsufficient, Rollout
from pipeline.errors import DeployError
from pipeline.proxy.split import Figures, Split

P99_FLOOR_SECONDS = 0.05  # a canary p99 below this is never too slow (a ratio of two tiny figures is noise)
MAX_FINISHED = 50  # finished rollouts remembered for the deploy pages


class Verdict(StrEnum):
    """What a step's figures say."""

    NEXT = "next"  # within the margins
    ROLLBACK = "rollback"  # outside them
    WAIT = "wait"  # too little traffic to judge


class Phase(StrEnum):
    """Where a rollout stands."""

    RUNNING = "running"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"


def judge(stable: Figures, canary: Figures, rollout: Rollout) -> tuple[Verdict, str]:
    """The verdict on one step's figures, with the numbers that made it."""
    if canary.requests < rollout.min_requests:
        return (
            Verdict.WAIT,
            f"the canary answered {canary.requests} request(s), fewer than {rollout.min_requests}",
        )
    rates = (
        f"error rate {canary.error_rate:.1%} ({canary.failed}/{canary.requests}) against the stable "
        f"release's {stable.error_rate:.1%} ({stable.failed}/{stable.requests})"
    )
    if canary.error_rate - stable.error_rate > rollout.max_error_rate_increase:
        return Verdict.ROLLBACK, f"{rates}: more than {rollout.max_error_rate_increase:.1%} higher"
    latency = f"p99 {canary.p99 * 1000:.0f} ms against the stable release's {stable.p99 * 1000:.0f} ms"
    if stable.requests and canary.p99 > P99_FLOOR_SECONDS and canary.p99 > stable.p99 * rollout.max_p99_ratio:
        return Verdict.ROLLBACK, f"{latency}: more than {rollout.max_p99_ratio:g} times"
    return Verdict.NEXT, f"{rates}; {latency}: within the margins"


@dataclass
class Steps:
    """What a rollout shows: its step, both releases' figures, and how each step ended."""

    server: str
    deploy_id: int
    stable: int
    canary: int
    rollout: Rollout
    phase: Phase = Phase.RUNNING
    percent: int = 0
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)


class Canary:
    """One running canary: walks its steps on its own thread; `say` promotes or rolls back by hand."""

    def __init__(
        self,
        split: Split,
        steps: Steps,
        promote: Callable[[], None],
        rollback: Callable[[str], None],
        log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.split = split
        self.steps = steps
        self._promote, self._rollback, self.log, self.clock = promote, rollback, log, clock
        self._said: str = ""
        self._why: str = ""
        self._wake = threading.Event()
        self.first_step = threading.Event()  # set once the first step is judged (an attached push waits)
        self.done = threading.Event()

    def say(self, command: str, why: str = "") -> None:
        """Promote or roll back by hand (`central-mcp promote|rollback SERVER`), or for `why`."""
        self._said, self._why = command, why
        self._wake.set()

    def view(self) -> dict[str, Any]:
        """The rollout as the deploy pages show it, live."""
        s = self.steps
        figures = {str(k): v.as_json() for k, v in self.split.figures.items()}
        return {
            "server": s.server,
            "phase": s.phase,
            "step": s.percent,
            "steps": list(s.rollout.steps),
            "stable": {"release": s.stable, **figures.get(str(s.stable), {})},
            "canary": {"release": s.canary, **figures.get(str(s.canary), {})},
            "reason": s.reason,
            "history": list(s.history),
        }

    def run(self) -> None:
        """Walk the steps to promotion or rollback; never raises (a failure rolls back)."""
        try:
            self._walk()
        except Exception as exc:  # a bug must not leave a canary half-way: the stable release keeps all
            if self.steps.phase is Phase.RUNNING:
                self._end(Phase.ROLLED_BACK, f"internal error: {exc!r}")
        finally:
            self.first_step.set()
            self.done.set()

    def _walk(self) -> None:
        rollout = self.steps.rollout
        for index, percent in enumerate(rollout.steps):
            if percent >= 100:
                self._end(Phase.PROMOTED, "every step was within the margins")
                return
            self.steps.percent = percent
            if index:
                self.split.next_step(percent)
            self.log(f"{self.steps.server}: canary r{self.steps.canary} takes {percent}% of new traffic")
            verdict, _ = self._step(rollout)
            self.first_step.set()
            if verdict is not Verdict.NEXT:
                return

    def _step(self, rollout: Rollout) -> tuple[Verdict, str]:
        """Wait out one step (longer while traffic is short) and act on its verdict."""
        waits = 0
        while True:
            self._wake.wait(rollout.step_interval)
            if self._said:
                said = self._said
                phase = Phase.PROMOTED if said == "promote" else Phase.ROLLED_BACK
                self._end(phase, self._why or f"{said} said by hand at {self.steps.percent}%")
                return Verdict.ROLLBACK, said
            stable, canary = self.split.figures[self.steps.stable], self.split.figures[self.steps.canary]
            verdict, why = judge(stable, canary, rollout)
            if verdict is Verdict.WAIT and waits < rollout.max_waits:
                waits += 1
                self.first_step.set()  # an attached push waits one interval, not a step short of traffic
                continue
            if verdict is Verdict.WAIT and rollout.on_insufficient is OnInsufficient.WAIT:
                self.first_step.set()
                continue  # on until promote or rollback is said
            self.steps.history.append(
                {"step": self.steps.percent, "verdict": verdict, "why": why, **self._figures()}
            )
            if verdict is Verdict.WAIT:
                promote = rollout.on_insufficient is OnInsufficient.PROMOTE
                why = f"{why} after {waits} more interval(s); on_insufficient: {rollout.on_insufficient}"
                if not promote:
                    self._end(Phase.ROLLED_BACK, why)
                    return Verdict.ROLLBACK, why
                verdict = Verdict.NEXT
            if verdict is Verdict.ROLLBACK:
                self._end(Phase.ROLLED_BACK, f"at {self.steps.percent}%: {why}")
                return verdict, why
            self.log(f"{self.steps.server}: canary step {self.steps.percent}%: {why}")
            return Verdict.NEXT, why

    def _figures(self) -> dict[str, Any]:
        return {str(k): v.as_json() for k, v in self.split.figures.items()}

    def _end(self, phase: Phase, reason: str) -> None:
        self.steps.phase, self.steps.reason = phase, reason
        if phase is Phase.PROMOTED:
            self.steps.percent = 100
            self.log(f"{self.steps.server}: canary r{self.steps.canary} promoted ({reason})")
            self._promote()
        else:
            self.log(f"{self.steps.server}: canary r{self.steps.canary} rolled back: {reason}")
            self._rollback(reason)


class Canaries:
    """The running canaries by server, and the recently finished ones by deploy (for the pages)."""

    def __init__(self) -> None:
        self._running: dict[str, Canary] = {}
        self._by_deploy: dict[int, Canary] = {}
        self._lock = threading.Lock()

    def add(self, canary: Canary) -> None:
        """Count `canary` as running (`start` runs it) and remember it for its deploy's pages."""
        with self._lock:
            self._running[canary.steps.server] = canary
            self._by_deploy[canary.steps.deploy_id] = canary
            while len(self._by_deploy) > MAX_FINISHED:
                self._by_deploy.pop(next(iter(self._by_deploy)))

    def start(self, canary: Canary) -> threading.Thread:
        """Run `canary` on its own thread."""
        self.add(canary)
        thread = threading.Thread(target=self._run, args=(canary,), name=f"canary-{canary.steps.server}")
        thread.daemon = True
        thread.start()
        return thread

    def running(self, server: str) -> Canary | None:
        """The canary of `server` under way, or None."""
        return self._running.get(server)

    def of_deploy(self, deploy_id: int) -> Canary | None:
        """The canary a deploy started (running or finished), or None."""
        return self._by_deploy.get(deploy_id)

    def say(self, server: str, command: str, why: str = "") -> Canary:
        """Promote or roll back the running canary of `server` (by hand, or for `why`); wait until it
        has; return it."""
        canary = self._running.get(server)
        if canary is None:
            raise DeployError(f"server {server!r} has no canary under way: nothing to {command}")
        canary.say(command, why)
        canary.done.wait()
        return canary

    def _run(self, canary: Canary) -> None:
        try:
            canary.run()
        finally:
            with self._lock:
                if self._running.get(canary.steps.server) is canary:
                    del self._running[canary.steps.server]
