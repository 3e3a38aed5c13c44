"""Replicas against the real engine: a server with `scale: {min: 2}` runs two containers behind the
proxy; sessions never move between them, a killed one is replaced while the other keeps serving,
redeploys drop no call, and autoscaling adds a replica under load and removes it when load stops.

The `replica` fixture's tools answer "$RELEASE@<hostname>" (a container's hostname is its id), and its
`block` tool holds the process for 100 ms, one call at a time.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.dockerhost import DockerHost
from pipeline.errors import DockerError
from tests.e2e.test_zero_downtime_e2e import Tally, _session_client
from tests.support.provider import Provider, Push, Workspace, running_provider, wait_for
from tests.support.proxy_rig import connect, text_of
from tests.support.swarmview import ENGINES, engine_of

pytestmark = pytest.mark.docker

SESSIONS = 8
CALLS_PER_SESSION = 4
REPLACE_TIMEOUT = 60.0
SCALE_TIMEOUT = 60.0
CLIENTS = 20
REDEPLOYS = 3
SERVING_SECONDS = 3.0
WIND_DOWN_TIMEOUT = 60.0
FAST_MONITOR = "monitor: {probe_interval: 1s, probe_timeout: 2s, failure_threshold: 2}\n"
FAST_SCALING = "scale: {interval: 300ms, window: 1s, cooldown: 2s}\n"


def _scaled(**scale: Any) -> Callable[[dict[str, Any]], None]:
    """A manifest change that sets its `scale`."""

    def change(data: dict[str, Any]) -> None:
        data["scale"] = scale

    return change


def _push(
    workspace: Workspace, fixture: str, release: str, server: str | None = None, **scale: Any
) -> tuple[str, Push]:
    name = workspace.put(fixture, name=server, env={"RELEASE": release}, manifest=_scaled(**scale))
    workspace.commit(f"{fixture} {release}")
    return name, workspace.push()


@dataclass
class Load:
    """What short-session clients saw: calls per container, and every failure with its container."""

    calls: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (container or "", what)
    sessions: list[set[str]] = field(default_factory=list)


async def _sessions(url: str, load: Load, stop: asyncio.Event, tool: str = "block") -> None:
    """Open short sessions until `stop`: whoami, then `tool` calls; note which container answered."""
    while not stop.is_set():
        host = ""
        seen: set[str] = set()
        try:
            async with connect(url) as client:
                host = text_of(await client.call_tool("whoami", read_timeout_seconds=30)).partition("@")[2]
                seen.add(host)
                for _ in range(CALLS_PER_SESSION):
                    result = await client.call_tool(tool, read_timeout_seconds=30)
                    if result.is_error:
                        raise RuntimeError(f"{tool} answered an error: {result.content}")
                    answered = text_of(result).partition("@")[2]
                    seen.add(answered)
                    load.calls[answered] += 1
        except Exception as exc:  # counted, with the container the session was on
            load.failures.append((host, repr(exc)[:200]))
            continue
        load.sessions.append(seen)


def _running(provider: Provider, server: str) -> list[str]:
    """The server's running containers (listed again when one goes away while Docker lists them)."""
    for _ in range(5):
        try:
            return provider.running(server)
        except DockerError:
            time.sleep(0.1)
    return provider.running(server)


@pytest.fixture
def provider(request: pytest.FixtureRequest, tmp_path: Path, docker_host: DockerHost) -> Iterator[Provider]:
    """A serve process whose monitor probes every second and autoscales within seconds, on the engine
    the test is parametrized with (plain by default)."""
    engine = engine_of(request, docker_host)
    extra = FAST_MONITOR + FAST_SCALING
    with running_provider(tmp_path / "vm", docker_host, extra_config=extra, engine=engine) as running:
        yield running


@pytest.fixture
def workspace(provider: Provider, tmp_path: Path) -> Workspace:
    """The developer's clone of the VM's repo."""
    return provider.clone(tmp_path / "work")


async def test_two_replicas_share_sessions_and_none_moves(provider: Provider, workspace: Workspace) -> None:
    """A push of a `scale.min: 2` server starts two gated containers; concurrent sessions spread over
    both, and every call of a session is answered by the container that issued it."""
    server, push = _push(workspace, "replica", "v1", min=2, max=2)
    assert push.ok, push.output
    assert "2 replicas passed the gate" in push.output
    running = _running(provider, server)
    assert len(running) == 2
    load, stop = Load(), asyncio.Event()
    url = f"{provider.base}/mcp/{server}"
    clients = [asyncio.create_task(_sessions(url, load, stop)) for _ in range(SESSIONS)]
    await asyncio.sleep(4.0)
    stop.set()
    await asyncio.gather(*clients)
    assert load.failures == []
    assert load.sessions and all(len(seen) == 1 for seen in load.sessions)
    assert {c[:12] for c in running} == set(load.calls), load.calls


async def test_a_killed_replica_is_replaced_and_the_other_never_fails(
    provider: Provider, workspace: Workspace
) -> None:
    """One of two replicas is killed under load: no call on the other fails; the monitor takes the dead
    one out of rotation and starts a gated replacement, which then takes sessions."""
    server, push = _push(workspace, "replica", "v1", min=2, max=2)
    assert push.ok, push.output
    first, second = _running(provider, server)
    load, stop = Load(), asyncio.Event()
    url = f"{provider.base}/mcp/{server}"
    clients = [asyncio.create_task(_sessions(url, load, stop)) for _ in range(SESSIONS)]
    try:
        await asyncio.sleep(2.0)
        subprocess.run(["docker", "kill", second], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + REPLACE_TIMEOUT
        while len(load.calls) < 3 and time.monotonic() < deadline:  # the replacement answers
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    survivor, killed = first[:12], second[:12]
    on_survivor = [f for f in load.failures if f[0] == survivor]
    print(f"\nkilled replica: calls {dict(load.calls)}; failures {load.failures}")
    assert on_survivor == [], on_survivor[:3]
    running = {c[:12] for c in _running(provider, server)}
    assert len(running) == 2 and survivor in running and killed not in running
    assert set(load.calls) == {survivor, killed} | running, load.calls  # the replacement took sessions


async def test_twenty_clients_see_no_failure_across_three_redeploys_of_two_replicas(
    provider: Provider, workspace: Workspace
) -> None:
    """The zero-failed-calls headline for a server with 2 replicas: every redeploy starts and gates two
    new containers, swaps both in, drains both old ones; 20 session clients see no failure."""
    server, first = _push(workspace, "streamer", "v1", min=2, max=2)
    assert first.ok, first.output
    assert len(_running(provider, server)) == 2
    url = f"{provider.base}/mcp/{server}"
    tally, finished = Tally(), asyncio.Event()
    clients = [asyncio.create_task(_session_client(url, finished, tally)) for _ in range(CLIENTS)]
    try:
        for number in range(2, REDEPLOYS + 2):
            await asyncio.sleep(SERVING_SECONDS)
            _, push = await asyncio.to_thread(
                _push, workspace, "streamer", f"v{number}", server, min=2, max=2
            )
            assert push.ok, push.output
        await asyncio.sleep(SERVING_SECONDS)
    finally:
        finished.set()
        await asyncio.wait_for(asyncio.gather(*clients), WIND_DOWN_TIMEOUT)
    print(
        f"\nzero-downtime with 2 replicas: {sum(tally.calls.values())} calls in {tally.sessions} sessions; "
        f"per release {dict(sorted(tally.calls.items()))}; failed calls {len(tally.failed_calls)}, "
        f"failed HTTP {len(tally.failed_http)}, broken sessions {len(tally.broken_sessions)}"
    )
    assert tally.failed_calls == [], tally.failed_calls[:5]
    assert tally.failed_http == [], tally.failed_http[:5]
    assert tally.broken_sessions == [], tally.broken_sessions[:5]
    assert sorted(tally.calls) == [f"v{n}" for n in range(1, REDEPLOYS + 2)], tally.calls
    await asyncio.to_thread(
        wait_for, "the old replicas to drain and go", lambda: len(provider.containers(server)) == 2, 60.0
    )


async def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(
    provider: Provider, workspace: Workspace
) -> None:
    """`scale: {min: 1, max: 2, target_inflight: 1}`: sustained load starts a second replica (gated,
    then in rotation); when the load stops, one replica drains and goes, never below min."""
    server, push = _push(workspace, "replica", "v1", min=1, max=2, target_inflight=1)
    assert push.ok, push.output
    assert len(_running(provider, server)) == 1
    load, stop = Load(), asyncio.Event()
    url = f"{provider.base}/mcp/{server}"
    clients = [asyncio.create_task(_sessions(url, load, stop)) for _ in range(SESSIONS)]
    try:
        await asyncio.to_thread(
            wait_for, "a second replica", lambda: len(_running(provider, server)) == 2, SCALE_TIMEOUT
        )
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert load.failures == [], load.failures[:3]
    assert len(load.calls) == 2, load.calls  # both replicas answered
    await asyncio.to_thread(
        wait_for, "back to one replica", lambda: len(_running(provider, server)) == 1, SCALE_TIMEOUT
    )
    async with connect(url) as client:
        assert text_of(await client.call_tool("whoami")).startswith("v1@")
    time.sleep(1.5)  # a few samples at rest: never below min
    assert len(_running(provider, server)) == 1


@pytest.mark.parametrize("provider", ENGINES, indirect=True)
async def test_a_restarted_serve_finds_its_replicas_again_and_starts_a_missing_one(
    provider: Provider, workspace: Workspace
) -> None:
    """serve killed with two replicas live, one of them removed meanwhile: at start-up the survivor is
    routed again from its labels, a new replica is started, and sessions spread over both."""
    server, push = _push(workspace, "replica", "v1", min=2, max=2)
    assert push.ok, push.output
    first, second = _running(provider, server)
    provider.kill()
    provider.docker.stop_and_remove(second, grace=0)
    provider.start()
    running = _running(provider, server)
    assert len(running) == 2 and first in running and second not in running
    load, stop = Load(), asyncio.Event()
    url = f"{provider.base}/mcp/{server}"
    clients = [asyncio.create_task(_sessions(url, load, stop, tool="whoami")) for _ in range(SESSIONS)]
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*clients)
    assert load.failures == [], load.failures[:3]
    assert set(load.calls) == {provider.docker.hostname(c) for c in running}, load.calls
