"""Canary rollouts against the real engine, real git pushes and real MCP clients: a healthy canary
walks its steps and is promoted with no failed call; a canary whose tool fails a third of its calls is
rolled back at its first step with the numbers, the stable release failing nothing; a session opened
on the stable release stays there; `central-mcp promote` / `rollback` end a running canary.

The `canary` fixture's tools answer "$RELEASE@<hostname>"; its `work` tool fails every FAIL_EVERY-th
call (a tool error: a 200 answer whose result has isError).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, Push, Workspace, running_provider, wait_for
from tests.support.proxy_rig import connect, text_of

pytestmark = pytest.mark.docker

CLIENTS = 16
WORK_CALLS = 2
PROMOTE_TIMEOUT = 60.0
SHORT_STEPS = {
    "steps": [10, 50, 100],
    "step_interval": "1s",
    "min_requests": 5,
    "on_insufficient": "promote",
    "margins": {"max_p99_ratio": 20},  # a new container's first calls on two busy cores are slow
}
LONG_STEP = {"steps": [10, 100], "step_interval": "20s", "min_requests": 20, "on_insufficient": "rollback"}
BY_HAND = {"steps": [10, 100], "step_interval": "1s", "min_requests": 1000000, "on_insufficient": "wait"}


def _rollout(rollout: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A manifest change that makes the server roll out as a canary."""

    def change(data: dict[str, Any]) -> None:
        data["rollout"] = {"strategy": "canary", **rollout}

    return change


def _push(
    workspace: Workspace, release: str, server: str | None, rollout: dict[str, Any], fail_every: int = 0
) -> tuple[str, Push]:
    env = {"RELEASE": release, "FAIL_EVERY": str(fail_every)}
    name = workspace.put("canary", name=server, env=env, manifest=_rollout(rollout))
    workspace.commit(f"canary {release}")
    return name, workspace.push()


@dataclass
class Load:
    """What short-session clients saw: new sessions per release (with when), calls and failures."""

    sessions: list[tuple[float, str]] = field(default_factory=list)  # (opened at, release)
    calls: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # per release: tool errors and exceptions
    errors: list[str] = field(default_factory=list)

    def share(self, release: str, since: float, until: float) -> tuple[int, float]:
        """New sessions opened in [since, until] and the share `release` took, in percent."""
        window = [r for t, r in self.sessions if since <= t <= until]
        return len(window), 100.0 * sum(r == release for r in window) / max(1, len(window))


async def _sessions(url: str, load: Load, stop: asyncio.Event) -> None:
    """Open short sessions until `stop`: whoami, then `work` calls; count per release."""
    while not stop.is_set():
        release = ""
        try:
            async with connect(url) as client:
                release = text_of(await client.call_tool("whoami", read_timeout_seconds=30)).partition("@")[0]
                load.sessions.append((time.monotonic(), release))
                for _ in range(WORK_CALLS):
                    result = await client.call_tool("work", read_timeout_seconds=30)
                    load.calls[release] += 1
                    if result.is_error:
                        load.failed[release] += 1
        except Exception as exc:  # counted against the release the session was on
            load.failed[release or "?"] += 1
            load.errors.append(f"{release}: {exc!r}"[:200])


async def _under_load(url: str, during: Callable[[], Any]) -> tuple[Load, Any, float, float]:
    """Run `during` (blocking, on a thread) while CLIENTS clients open sessions; return what they saw,
    its result, and when it started and ended."""
    load, stop = Load(), asyncio.Event()
    clients = [asyncio.create_task(_sessions(url, load, stop)) for _ in range(CLIENTS)]
    try:
        await asyncio.sleep(1.0)
        started = time.monotonic()
        result = await asyncio.to_thread(during)
        ended = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    return load, result, started, ended


def _phase(provider: Provider, deploy_id: int) -> str:
    canary = provider.deploy(deploy_id).get("canary") or {}
    return str(canary.get("phase", ""))


async def _release_now(url: str) -> str:
    async with connect(url) as client:
        return text_of(await client.call_tool("whoami")).partition("@")[0]


@pytest.fixture
def provider(tmp_path: Path, docker_host: DockerHost) -> Iterator[Provider]:
    """A serve process whose old releases drain within seconds."""
    with running_provider(tmp_path / "vm", docker_host, proxy={"session_drain_timeout": "5s"}) as running:
        yield running


@pytest.fixture
def workspace(provider: Provider, tmp_path: Path) -> Workspace:
    """The developer's clone of the VM's repo."""
    return provider.clone(tmp_path / "work")


async def test_a_healthy_canary_walks_its_steps_and_is_promoted_with_no_failed_call(
    provider: Provider, workspace: Workspace
) -> None:
    """v2 as a canary: the push returns after the first step, saying the rollout continues and where
    to watch it; 10% and 50% pass, 100 promotes; no client call fails; a session opened on v1 before
    the canary stays on v1 (the same container) throughout."""
    server, first = _push(workspace, "v1", None, SHORT_STEPS)
    assert first.ok, first.output
    url = f"{provider.base}/mcp/{server}"
    async with connect(url) as pinned:
        before = text_of(await pinned.call_tool("whoami"))
        assert before.startswith("v1@")

        def rollout() -> tuple[Push, list[str]]:
            _, push = _push(workspace, "v2", server, SHORT_STEPS)
            assert push.ok, push.output
            wait_for("the canary's end", lambda: _phase(provider, push.deploy_id) != "running", 60)
            canary = provider.deploy(push.deploy_id)["canary"]
            assert canary["phase"] == "promoted", canary
            return push, []

        load, (push, _), _, _ = await _under_load(url, rollout)
        assert text_of(await pinned.call_tool("whoami")) == before  # never moved
    print(f"\nhealthy canary: sessions {Counter(r for _, r in load.sessions)}; calls {dict(load.calls)}")
    assert "the rollout continues" in push.output and f"/deploys/{push.deploy_id}" in push.output
    record = provider.deploy(push.deploy_id)
    assert [h["step"] for h in record["canary"]["history"]] == [10, 50]
    assert load.failed == Counter(), load.errors[:5]
    assert load.calls["v1"] and load.calls["v2"]
    assert await _release_now(url) == "v2"
    assert provider.releases(server)["r2"] == "live"


async def test_a_failing_canary_is_rolled_back_at_its_first_step_and_stable_fails_nothing(
    provider: Provider, workspace: Workspace
) -> None:
    """v2 fails a third of its `work` calls: rolled back at 10% with both error rates in the reason (the
    push refused); of the new sessions during the step its share is within 5 points of 10; calls on v1
    never fail; v2 is then gone and v1 takes everything."""
    server, first = _push(workspace, "v1", None, LONG_STEP)
    assert first.ok, first.output
    url = f"{provider.base}/mcp/{server}"

    def bad() -> Push:
        return _push(workspace, "v2", server, LONG_STEP, fail_every=3)[1]

    load, push, _, ended = await _under_load(url, bad)
    assert not push.ok, push.output
    assert "canary r2 rolled back: at 10%: error rate" in push.output, push.output
    opened = [t for t, r in load.sessions if r == "v2"]
    count, share = load.share("v2", min(opened), ended)
    print(
        f"\nfailing canary: {count} new sessions during its step, v2 took {share:.1f}%; "
        f"calls {dict(load.calls)}; failed {dict(load.failed)}"
    )
    assert count >= 200, count
    assert abs(share - 10) <= 5, share
    assert load.failed["v1"] == 0 and load.failed["?"] == 0, load.errors[:5]
    assert load.failed["v2"] > 0
    assert await _release_now(url) == "v1"
    assert provider.releases(server)["r2"] == "rolled-back"
    wait_for("the canary's container to go", lambda: len(provider.containers(server)) == 1, 30)


async def test_promote_and_rollback_end_a_running_canary(provider: Provider, workspace: Workspace) -> None:
    """A canary waiting for traffic that never comes: `central-mcp promote` makes it live at once;
    the next one, `central-mcp rollback`, takes it out and the promoted release keeps serving."""
    server, first = _push(workspace, "v1", None, BY_HAND)
    assert first.ok, first.output
    url = f"{provider.base}/mcp/{server}"
    _, second = _push(workspace, "v2", server, BY_HAND)
    assert second.ok and "the rollout continues" in second.output, second.output
    promoted = provider.cli("promote", server)
    assert promoted.returncode == 0 and "promoted" in promoted.stdout, promoted.stdout + promoted.stderr
    assert await _release_now(url) == "v2"
    _, third = _push(workspace, "v3", server, BY_HAND)
    assert third.ok, third.output
    assert _phase(provider, third.deploy_id) == "running"
    rolled = provider.cli("rollback", server)
    assert rolled.returncode == 0 and "rolled-back" in rolled.stdout, rolled.stdout + rolled.stderr
    assert await _release_now(url) == "v2"
    releases = provider.releases(server)
    assert (releases["r2"], releases["r3"]) == ("live", "rolled-back"), releases
    again = provider.cli("promote", server)
    assert again.returncode != 0 and "no canary under way" in again.stderr


async def test_a_newer_push_supersedes_a_running_canary(provider: Provider, workspace: Workspace) -> None:
    """A push while v2 is a canary rolls v2 back first (the reason says which deploy superseded it); v3
    then stands beside v1, the release that was stable all along, and promoting it makes it live."""
    server, first = _push(workspace, "v1", None, BY_HAND)
    assert first.ok, first.output
    _, second = _push(workspace, "v2", server, BY_HAND)
    assert second.ok, second.output
    _, third = _push(workspace, "v3", server, BY_HAND)
    assert third.ok, third.output
    assert (
        f"superseded by deploy #{third.deploy_id}" in (provider.deploy(second.deploy_id)["canary"]["reason"])
    )
    canary = provider.deploy(third.deploy_id)["canary"]
    assert (canary["phase"], canary["stable"]["release"], canary["canary"]["release"]) == ("running", 1, 3)
    releases = provider.releases(server)
    assert (releases["r1"], releases["r2"]) == ("live", "rolled-back"), releases
    promoted = provider.cli("promote", server)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert await _release_now(f"{provider.base}/mcp/{server}") == "v3"
