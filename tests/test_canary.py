"""Canary rollouts with a real Router and fake traffic: the split's share, sessions that never move,
the verdict's numbers, and a rollout walking its steps to promotion or rollback."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from pipeline.canary import Canaries, Canary, Phase, Steps, Verdict, judge
from pipeline.config.rolloutspec import OnInsufficient, Rollout, Strategy
from pipeline.errors import DeployError
from pipeline.proxy.router import Router, TargetState, Upstream
from pipeline.proxy.split import Figures, rpc_failed

STABLE = Upstream("svc", 1, "c1", "127.0.0.1", 5001, "/mcp")
CANARY = Upstream("svc", 2, "c2", "127.0.0.1", 5002, "/mcp")
FAST = Rollout(Strategy.CANARY, (10, 50, 100), step_interval=0.1, min_requests=5, max_waits=2)


def _router() -> Router:
    router = Router()
    router.swap({"svc": STABLE})
    return router


def _figures(requests: int, failed: int = 0, seconds: float = 0.01) -> Figures:
    figures = Figures()
    for i in range(requests):
        figures.observe(i < failed, False, seconds)
    return figures


def test_the_canary_takes_exactly_its_share_of_new_requests() -> None:
    """At 10% the canary gets 20 of 200 new picks; at 50%, 100 of 200."""
    router = _router()
    split = router.start_split("svc", [CANARY], 10)
    picks = [router.pick("svc") for _ in range(200)]
    assert sum(t is not None and t.upstream.release == 2 for t in picks) == 20
    split.next_step(50)
    picks = [router.pick("svc") for _ in range(200)]
    assert sum(t is not None and t.upstream.release == 2 for t in picks) == 100


def test_a_session_started_on_stable_stays_there_during_the_canary() -> None:
    """A session issued by the stable release is routed to it at every step, and after a rollback."""
    router = _router()
    session = router.open_session("s1", STABLE, "k")
    router.start_split("svc", [CANARY], 50)
    target = router.target_of(session)
    assert target is not None and target.upstream == STABLE
    router.end_split("svc", promote=False)
    target = router.target_of(session)
    assert target is not None and target.upstream == STABLE and target.state is TargetState.HEALTHY


def test_promotion_makes_the_canary_live_and_the_stable_release_drains() -> None:
    """end_split(promote) swaps the canary in (its counts kept); the stable targets drain."""
    router = _router()
    router.start_split("svc", [CANARY], 50)
    old = router.end_split("svc", promote=True)
    assert old is not None and old.release == 1
    assert old.targets[0].state is TargetState.DRAINING
    assert router.groups["svc"].release == 2 and not router.splits


def test_a_rollback_drains_the_canary_and_the_stable_release_keeps_everything() -> None:
    """end_split(rollback) leaves the table as it was; every new pick goes to stable."""
    router = _router()
    router.start_split("svc", [CANARY], 50)
    gone = router.end_split("svc", promote=False)
    assert gone is not None and gone.targets[0].state is TargetState.DRAINING
    assert {router.pick("svc").upstream.release for _ in range(10)} == {1}  # type: ignore[union-attr]


def test_the_verdict_names_the_numbers() -> None:
    """Too many failures and too slow roll back, with both releases' figures; too few requests wait."""
    verdict, why = judge(_figures(100, 1), _figures(20, 6), FAST)
    assert verdict is Verdict.ROLLBACK and "30.0% (6/20)" in why and "1.0% (1/100)" in why
    verdict, why = judge(_figures(100), _figures(20, seconds=0.5), FAST)
    assert verdict is Verdict.ROLLBACK and "p99 500 ms" in why and "10 ms" in why
    assert judge(_figures(100), _figures(4), FAST)[0] is Verdict.WAIT
    assert judge(_figures(100, 2), _figures(20, 1), FAST)[0] is Verdict.NEXT


def test_json_rpc_errors_are_found_in_answers() -> None:
    """A JSON-RPC error or a tool result with isError counts; a plain result does not."""
    assert rpc_failed(b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}')
    assert rpc_failed(b'data: {"jsonrpc":"2.0","id":1,"error":{"code":-32603}}\n\n')
    assert not rpc_failed(b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":false}}')


class Traffic:
    """Requests ending on both releases every few milliseconds, the canary's failing `bad` of 10."""

    def __init__(self, canary: Canary, bad: int = 0) -> None:
        self.canary, self.bad, self.stop = canary, bad, threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            split = self.canary.split
            split.observe(1, False, False, 0.01)
            split.observe(2, i % 10 < self.bad, False, 0.01)
            i += 1
            time.sleep(0.002)


@pytest.fixture
def said() -> list[str]:
    return []


def _canary(said: list[str], rollout: Rollout = FAST) -> Canary:
    router = _router()
    split = router.start_split("svc", [CANARY], rollout.steps[0])
    steps = Steps("svc", 7, 1, 2, rollout)
    return Canary(
        split,
        steps,
        lambda: said.append("promote"),
        lambda why: said.append(f"rollback: {why}"),
        lambda _: None,
    )


@pytest.fixture
def traffic() -> Iterator[list[Traffic]]:
    running: list[Traffic] = []
    yield running
    for t in running:
        t.stop.set()


def _run(canary: Canary, traffic: list[Traffic], bad: int = 0) -> None:
    feed = Traffic(canary, bad)
    traffic.append(feed)
    threading.Thread(target=feed.run, daemon=True).start()
    canary.run()


def test_a_healthy_canary_walks_its_steps_and_is_promoted(said: list[str], traffic: list[Traffic]) -> None:
    """10% then 50% are judged within the margins; reaching 100 promotes, once."""
    canary = _canary(said)
    _run(canary, traffic)
    assert said == ["promote"] and canary.steps.phase is Phase.PROMOTED
    assert [h["step"] for h in canary.steps.history] == [10, 50]
    assert canary.view()["step"] == 100


def test_a_failing_canary_is_rolled_back_at_its_first_step_with_the_numbers(
    said: list[str], traffic: list[Traffic]
) -> None:
    """A canary failing 3 calls in 10 is rolled back at 10%, the reason naming both error rates."""
    canary = _canary(said)
    _run(canary, traffic, bad=3)
    assert canary.steps.phase is Phase.ROLLED_BACK and len(said) == 1
    assert re.match(
        r"rollback: at 10%: error rate [23]\d\.\d% \(\d+/\d+\) against the stable release's 0\.0%", said[0]
    )


def test_too_little_traffic_waits_then_the_manifest_rule_decides(said: list[str]) -> None:
    """With no requests a step waits max_waits intervals more, then on_insufficient decides."""
    canary = _canary(said)
    started = time.monotonic()
    canary.run()
    assert said[0].startswith("rollback: the canary answered 0 request(s)") and "after 2 more" in said[0]
    assert time.monotonic() - started >= 3 * FAST.step_interval
    said.clear()
    _canary(said, replace(FAST, on_insufficient=OnInsufficient.PROMOTE, max_waits=0)).run()
    assert said == ["promote"]


def test_promote_and_rollback_said_by_hand_end_a_running_canary(said: list[str]) -> None:
    """Canaries.say promotes or rolls back the running canary at once and waits until it has; with
    none under way it is an error naming the server."""
    canaries = Canaries()
    slow = replace(FAST, step_interval=30.0)
    canary = _canary(said, slow)
    canaries.start(canary)
    assert canaries.running("svc") is canary and canaries.of_deploy(7) is canary
    canaries.say("svc", "promote")
    assert said == ["promote"] and canary.steps.reason == "promote said by hand at 10%"
    canary.done.wait(5)
    time.sleep(0.05)
    assert canaries.running("svc") is None
    other = _canary(said, slow)
    canaries.start(other)
    canaries.say("svc", "rollback")
    assert said[-1] == "rollback: rollback said by hand at 10%"
    time.sleep(0.05)
    with pytest.raises(DeployError, match="'svc' has no canary under way"):
        canaries.say("svc", "promote")
