"""Zero downtime against real deploys: session-era SDK clients keep working through `git push` redeploys.

A real `central-mcp serve` deploys the streamer fixture (stateful sessions; a fast `whoami` and a
`slow_count` that streams progress, both answering the release's $RELEASE) into the real Docker
engine, and clients speak to it through the proxy with the official SDK client while the test pushes
new releases. The router-level version, without Docker, is test_zero_downtime.py.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, Push, Workspace, running_provider, wait_for
from tests.support.proxy_rig import ACCEPT_BOTH, LEGACY, connect, jsonrpc, text_of
from tests.support.swarmview import ENGINES, engine_of

pytestmark = pytest.mark.docker

CLIENTS = 20
REDEPLOYS = 3
SERVING_SECONDS = 3.0  # how long each release serves alone before the next push
STREAM_STEPS, STREAM_DELAY = 4, 0.5  # a streamed call: ~2 s, one progress notification per step
CALL_TIMEOUT = 30.0  # a call that takes longer counts as failed instead of hanging the test
WIND_DOWN_TIMEOUT = 60.0
REMOVAL_TIMEOUT = 30.0
SESSION_DRAIN_TIMEOUT = 3.0
LONG_CALL_STEPS, LONG_CALL_DELAY = 120, 0.5  # a 60 s call: far longer than the drain deadline
CUT_GRACE = 5.0  # how long after the deadline the cut call may take to end
SESSION_GONE = -32001


class CallFailed(Exception):
    """A tool call answered, but not as it should have (an error result or missing progress)."""


@dataclass
class Tally:
    """Everything the clients saw: calls per release, sessions, and every failure."""

    calls: Counter[str] = field(default_factory=Counter)
    streamed: int = 0
    sessions: int = 0
    spans: list[tuple[str, float, float]] = field(default_factory=list)  # (release, opened, closed)
    failed_calls: list[str] = field(default_factory=list)
    failed_http: list[str] = field(default_factory=list)
    broken_sessions: list[str] = field(default_factory=list)

    def outlived(self, live_since: dict[str, float]) -> int:
        """How many sessions kept working on their release after the next release went live."""
        order = sorted(live_since, key=live_since.__getitem__)
        successor = dict(itertools.pairwise(order))
        return sum(
            1
            for release, _, closed in self.spans
            if release in successor and closed > live_since[successor[release]]
        )


# Per test, not per module as in conftest.py: the next test starts its own provider, and this one's
# containers must not share the two cores with it.
@pytest.fixture
def provider(request: pytest.FixtureRequest, tmp_path: Path, docker_host: DockerHost) -> Iterator[Provider]:
    """A real serve process with the harness's timeouts (sessions may drain for 10 minutes), on the
    engine the test is parametrized with (plain by default)."""
    engine = engine_of(request, docker_host)
    with running_provider(tmp_path / "vm", docker_host, engine=engine) as running:
        yield running


@pytest.fixture
def workspace(provider: Provider, tmp_path: Path) -> Workspace:
    """The developer's clone of the VM's repo."""
    return provider.clone(tmp_path / "work")


def _push_release(workspace: Workspace, server: str | None, release: str) -> tuple[str, Push]:
    """Put the streamer fixture with RELEASE=`release`, commit and push; return its name and the push."""
    name = workspace.put("streamer", name=server, env={"RELEASE": release})
    workspace.commit(f"streamer {release}")
    return name, workspace.push()


def _logged(provider: Provider, deploy_id: int, text: str) -> bool:
    """Whether the deploy's log holds `text` (old releases are drained after the deploy has ended)."""
    return text in provider.log(deploy_id)


async def _fast(client: Client, tally: Tally) -> str:
    """One `whoami` call; return the release that answered."""
    result = await client.call_tool("whoami", read_timeout_seconds=CALL_TIMEOUT)
    if result.is_error:
        raise CallFailed(f"whoami answered an error: {result.content}")
    return text_of(result)


async def _streamed(client: Client, tally: Tally) -> str:
    """One ~2 s `slow_count` call whose every progress notification must arrive; return the release."""
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    result = await client.call_tool(
        "slow_count",
        {"n": STREAM_STEPS, "delay": STREAM_DELAY},
        read_timeout_seconds=CALL_TIMEOUT,
        progress_callback=on_progress,
    )
    if result.is_error:
        raise CallFailed(f"slow_count answered an error: {result.content}")
    if steps != [float(step) for step in range(1, STREAM_STEPS + 1)]:
        raise CallFailed(f"slow_count streamed progress {steps}, not 1..{STREAM_STEPS}")
    tally.streamed += 1
    return text_of(result)


SESSION_PLAN = (_fast, _streamed, _fast)


async def _session_client(url: str, finished: asyncio.Event, tally: Tally) -> None:
    """Open short sessions (initialize → fast, streamed, fast → DELETE) until told to stop."""
    while not finished.is_set():
        responses: list[httpx2.Response] = []
        releases: list[str] = []
        opened = time.monotonic()
        try:
            async with connect(url, mode="legacy", statuses=responses) as client:
                tally.sessions += 1
                for call in SESSION_PLAN:
                    try:
                        releases.append(await call(client, tally))
                    except Exception as exc:  # a failed call is what this test counts
                        tally.failed_calls.append(f"{call.__name__}: {exc!r}")
                        raise
        except Exception as exc:  # a broken session is what this test counts
            tally.broken_sessions.append(repr(exc))
            continue
        finally:
            tally.failed_http += [
                f"{r.request.method} → {r.status_code}" for r in responses if r.status_code >= 400
            ]
        tally.calls.update(releases)
        if len(set(releases)) != 1:
            tally.broken_sessions.append(f"one session answered by several releases: {releases}")
            continue
        tally.spans.append((releases[0], opened, time.monotonic()))


@pytest.mark.parametrize("provider", ENGINES, indirect=True)
async def test_twenty_session_clients_see_no_failure_across_three_redeploys(
    provider: Provider, workspace: Workspace
) -> None:
    """20 SDK clients in short sessions, streaming and not, see no failure while 3 pushes redeploy."""
    server, first = _push_release(workspace, None, "v1")
    assert first.ok, first.output
    url = f"{provider.base}/mcp/{server}"
    tally, finished = Tally(), asyncio.Event()
    live_since = {"v1": time.monotonic()}
    pushes: list[Push] = []
    clients = [asyncio.create_task(_session_client(url, finished, tally)) for _ in range(CLIENTS)]
    started = time.monotonic()
    try:
        for number in range(2, REDEPLOYS + 2):
            await asyncio.sleep(SERVING_SECONDS)
            _, push = await asyncio.to_thread(_push_release, workspace, server, f"v{number}")
            assert push.ok, push.output
            live_since[f"v{number}"] = time.monotonic()  # the push returns after the swap
            pushes.append(push)
        await asyncio.sleep(SERVING_SECONDS)
    finally:
        finished.set()
        await asyncio.wait_for(asyncio.gather(*clients), WIND_DOWN_TIMEOUT)
    outlived = tally.outlived(live_since)
    print(
        f"\nzero-downtime e2e: {sum(tally.calls.values())} calls ({tally.streamed} streamed with "
        f"progress) in {tally.sessions} sessions by {CLIENTS} clients over "
        f"{time.monotonic() - started:.1f}s; per release {dict(sorted(tally.calls.items()))}; "
        f"{outlived} sessions finished on their release after the next went live; failed calls "
        f"{len(tally.failed_calls)}, failed HTTP requests {len(tally.failed_http)}, broken sessions "
        f"{len(tally.broken_sessions)}; pushes took " + ", ".join(f"{p.seconds:.1f}s" for p in pushes)
    )
    assert tally.failed_calls == [], tally.failed_calls[:5]
    assert tally.failed_http == [], tally.failed_http[:5]
    assert tally.broken_sessions == [], tally.broken_sessions[:5]
    assert sorted(tally.calls) == sorted(live_since), f"a release served no call: {tally.calls}"
    assert tally.streamed > 0 and outlived > 0, (tally.streamed, outlived)
    await asyncio.to_thread(
        wait_for,
        "the old releases' containers to drain and be removed",
        lambda: len(provider.containers(server)) == 1,
        REMOVAL_TIMEOUT,
    )
    for push in pushes:
        # "drained" or, when an ended session's GET stream was still open, "drain deadline passed":
        # either way every call above succeeded and the old container was stopped and removed.
        logged = functools.partial(_logged, provider, push.deploy_id, ", stopped and removed")
        await asyncio.to_thread(
            wait_for, f"deploy {push.deploy_id} to log that its old release drained", logged, REMOVAL_TIMEOUT
        )
    async with connect(url, mode="legacy") as client:
        assert await _fast(client, tally) == f"v{REDEPLOYS + 1}"


async def test_a_call_running_at_the_session_drain_deadline_ends_cleanly(
    tmp_path: Path, docker_host: DockerHost
) -> None:
    """A call streaming past the session drain deadline ends with an error; its session then answers 404."""
    with running_provider(
        tmp_path / "vm", docker_host, proxy={"session_drain_timeout": f"{SESSION_DRAIN_TIMEOUT:.0f}s"}
    ) as provider:
        workspace = provider.clone(tmp_path / "work")
        server, first = _push_release(workspace, None, "v1")
        assert first.ok, first.output
        url = f"{provider.base}/mcp/{server}"
        responses: list[httpx2.Response] = []
        streamed_at: list[float] = []  # when each progress notification arrived

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            streamed_at.append(time.monotonic())

        async with connect(url, mode="legacy", statuses=responses) as client:
            assert text_of(await client.call_tool("whoami")) == "v1"
            session_id = responses[0].headers["mcp-session-id"]
            call = asyncio.create_task(
                client.call_tool(
                    "slow_count",
                    {"n": LONG_CALL_STEPS, "delay": LONG_CALL_DELAY},
                    progress_callback=on_progress,
                )
            )
            while not streamed_at:
                await asyncio.sleep(0.05)
            _, push = await asyncio.to_thread(_push_release, workspace, server, "v2")
            swapped = time.monotonic()  # the push returns after the swap, so the deadline is no later
            assert push.ok, push.output
            with pytest.raises(MCPError) as cut:
                await asyncio.wait_for(call, SESSION_DRAIN_TIMEOUT + CUT_GRACE)
            ended = time.monotonic() - swapped
        assert cut.value.error.code == CONNECTION_CLOSED, cut.value  # the stream ended; nothing hung
        assert any(at > swapped for at in streamed_at), "the call stopped streaming at the swap"
        assert len(streamed_at) < LONG_CALL_STEPS
        async with httpx2.AsyncClient(timeout=10) as http:
            stale = await http.post(
                url,
                content=json.dumps(jsonrpc("tools/list")),
                headers={**ACCEPT_BOTH, "mcp-session-id": session_id, "mcp-protocol-version": LEGACY},
            )
        assert stale.status_code == 404, stale.text
        assert stale.json()["error"]["code"] == SESSION_GONE
        async with connect(url, mode="legacy") as fresh:
            assert text_of(await fresh.call_tool("whoami")) == "v2"
        print(
            f"\ndrain deadline e2e: the cut call ended {ended:.1f}s after the push returned "
            f"(deadline {SESSION_DRAIN_TIMEOUT:.0f}s), after {len(streamed_at)} progress notifications"
        )
        wait_for(
            "the deploy to log the cut session",
            functools.partial(_logged, provider, push.deploy_id, "drain deadline passed (1 session(s)"),
            REMOVAL_TIMEOUT,
        )
