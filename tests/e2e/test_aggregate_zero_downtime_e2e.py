"""Zero downtime on `/mcp`: 20 SDK clients call tools of 3 real servers through one endpoint while
3 `git push` redeploys swap every server, one of them changing a server's tool set.

The headline test of test_zero_downtime_e2e.py, on the aggregate: a real `serve` with a project key
runs the `streamer` fixture (stateful sessions, a streamed `slow_count`) and the `echo` fixture
twice (stateless; the second copy, `greeter`, gains a `farewell` tool in the middle push). Every
answer names the server and release that gave it, so a call answered by the wrong server fails.
Clients of three kinds: session-era clients holding one session through every push (they must hear
tools/list_changed and then call the new tool), session-era clients in one-round sessions, and
2026-07-28 clients (no session; they list again each round). The second test shortens the session
drain so that a held session crosses its deadline: the aggregate moves it to the new release unseen.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, Push, Workspace, running_provider, wait_for
from tests.support.proxy_rig import LEGACY, MODERN, connect, text_of

pytestmark = pytest.mark.docker

HELD, SHORT, STATELESS = 8, 8, 4  # 20 clients: sessions through every push, one-round sessions, 2026-07-28
REDEPLOYS = 3
CHANGING_PUSH = 2  # the redeploy that gives `greeter` its `farewell` tool
SERVING_SECONDS = 3.0  # how long each release serves alone before the next push
STREAM_STEPS, STREAM_DELAY = 3, 0.2  # a streamed call: ~0.6 s, one progress notification per step
CALL_TIMEOUT = 30.0  # a call that takes longer counts as failed instead of hanging the test
WIND_DOWN_TIMEOUT = 60.0
REMOVAL_TIMEOUT = 30.0
SESSION_DRAIN_TIMEOUT = 3.0  # the drain-deadline test's proxy.session_drain_timeout
MOVE_TIMEOUT = 20.0  # how long after the push the held session must have moved
CALL_INTERVAL = 0.2
# A load test, not a rate-limit test: 20 clients share the key, far past the default 600 a minute.
PROJECTS = "projects: [{name: web, rate_limit: {per_minute: 100000, burst: 10000}}]\n"
NEW_TOOL = "farewell"


class CallFailed(Exception):
    """A tool call answered, but not as it should have (an error, the wrong server, missing progress)."""


@dataclass
class Tally:
    """Everything the clients saw: calls per (server, release), sessions, notifications, failures."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    new_tool_calls: int = 0
    streamed: int = 0
    sessions: int = 0
    heard_change: int = 0
    failed_calls: list[str] = field(default_factory=list)
    failed_http: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    saw_new_tool_after: int = 0


@dataclass(frozen=True)
class Fleet:
    """The three servers, the aggregate's URL and the project key's headers."""

    url: str
    headers: dict[str, str]
    streamer: str
    echo: str
    greeter: str

    @property
    def base_tools(self) -> set[str]:
        """The namespaced tools every release offers."""
        return {
            f"{self.streamer}__whoami",
            f"{self.streamer}__slow_count",
            f"{self.echo}__greet",
            f"{self.greeter}__greet",
        }

    @property
    def new_tool(self) -> str:
        """The tool the changing push adds."""
        return f"{self.greeter}__{NEW_TOOL}"


@pytest.fixture
def provider(tmp_path: Path, docker_host: DockerHost) -> Iterator[Provider]:
    """A real serve with project `web` (every server); per test, so no other module's containers
    share the cores."""
    with running_provider(tmp_path / "vm", docker_host, extra_config=PROJECTS) as running:
        yield running


def _push_release(workspace: Workspace, fleet: Fleet, release: str, farewell: bool) -> Push:
    """Put all three servers answering `<server>@<release>` (greeter with `farewell` if asked); push."""
    workspace.put("streamer", name=fleet.streamer, env={"RELEASE": f"{fleet.streamer}@{release}"})
    workspace.put("echo", name=fleet.echo, env={"GREETING": f"{fleet.echo}@{release}"})
    extra = {"FAREWELL": "1"} if farewell else {}
    workspace.put("echo", name=fleet.greeter, env={"GREETING": f"{fleet.greeter}@{release}", **extra})
    workspace.commit(f"all three at {release}")
    return workspace.push()


async def _call(client: Client, tool: str, tally: Tally) -> str:
    """Call `tool` (a `<server>__<tool>` name); fail unless that server answered; count and return its
    release."""
    server, _, plain = tool.partition("__")
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    streamed = plain == "slow_count"
    result = await client.call_tool(
        tool,
        {"n": STREAM_STEPS, "delay": STREAM_DELAY}
        if streamed
        else ({} if plain == "whoami" else {"name": "Ada"}),
        read_timeout_seconds=CALL_TIMEOUT,
        progress_callback=on_progress if streamed else None,
    )
    if result.is_error:
        raise CallFailed(f"{tool} answered an error: {result.content}")
    structured: dict[str, Any] = dict(result.structured_content or {})
    answer = str(structured["greeting"]) if "greeting" in structured else text_of(result)
    answered_by, _, rest = answer.partition("@")
    if answered_by != server:
        raise CallFailed(f"{tool} was answered by {answered_by!r}: {answer!r}")
    if streamed:
        if steps != [float(step) for step in range(1, STREAM_STEPS + 1)]:
            raise CallFailed(f"{tool} streamed progress {steps}, not 1..{STREAM_STEPS}")
        tally.streamed += 1
    tally.new_tool_calls += plain == NEW_TOOL
    release = rest.partition(",")[0]
    tally.calls[server, release] += 1
    return release


async def _listed(client: Client, fleet: Fleet) -> list[str]:
    """The aggregate's tools; fail if one is missing or foreign."""
    names = {tool.name for tool in (await client.list_tools()).tools}
    if not fleet.base_tools <= names <= fleet.base_tools | {fleet.new_tool}:
        raise CallFailed(f"tools/list gave {sorted(names)}")
    return sorted(names)


async def _round(client: Client, tools: list[str], tally: Tally) -> dict[str, str]:
    """Call every tool once; return {tool: release}; a failure is recorded with the tool's name and raised."""
    releases: dict[str, str] = {}
    for tool in tools:
        try:
            releases[tool] = await _call(client, tool, tally)
        except Exception as exc:  # a failed call is what this test counts
            tally.failed_calls.append(f"{tool}: {exc!r}")
            raise
    return releases


async def _client(
    fleet: Fleet,
    mode: str,
    tally: Tally,
    run: Callable[[Client, asyncio.Event], Awaitable[None]],
) -> None:
    """Open one connection in `mode`, assert the negotiated version, and `run` it; record HTTP errors."""
    responses: list[httpx2.Response] = []
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if "ToolListChanged" in type(getattr(message, "root", message)).__name__:
            changed.set()

    try:
        async with connect(
            fleet.url, mode=mode, headers=fleet.headers, statuses=responses, message_handler=on_message
        ) as client:
            expected = LEGACY if mode == "legacy" else MODERN
            if client.protocol_version != expected:
                raise CallFailed(f"negotiated {client.protocol_version}, not {expected}")
            tally.sessions += 1
            await run(client, changed)
    except Exception as exc:  # a broken connection is what this test counts
        tally.broken.append(f"{mode}: {exc!r}")
    finally:
        tally.failed_http += [
            f"{r.request.method} → {r.status_code}" for r in responses if r.status_code >= 400
        ]


async def _held(fleet: Fleet, finished: asyncio.Event, tally: Tally) -> None:
    """One session through every push: list again on list_changed only; its stateful server's answers
    all come from the release its upstream session opened on; at the end the new tool is there."""

    async def run(client: Client, changed: asyncio.Event) -> None:
        tools = await _listed(client, fleet)
        pinned: set[str] = set()
        while not finished.is_set():
            if changed.is_set():
                changed.clear()
                tally.heard_change += 1
                tools = await _listed(client, fleet)
            pinned.add((await _round(client, tools, tally))[f"{fleet.streamer}__whoami"])
        if len(pinned) != 1:
            raise CallFailed(f"one session's {fleet.streamer} answered from releases {sorted(pinned)}")
        if fleet.new_tool in await _listed(client, fleet):
            tally.saw_new_tool_after += 1
            await _round(client, [fleet.new_tool], tally)

    await _client(fleet, "legacy", tally, run)


async def _short(fleet: Fleet, finished: asyncio.Event, tally: Tally) -> None:
    """One-round sessions (initialize → list → every tool → DELETE) until told to stop."""

    async def run(client: Client, changed: asyncio.Event) -> None:
        await _round(client, await _listed(client, fleet), tally)

    while not finished.is_set():
        await _client(fleet, "legacy", tally, run)


async def _stateless(fleet: Fleet, finished: asyncio.Event, tally: Tally) -> None:
    """A 2026-07-28 client: list and call every tool each round; at the end the new tool is there."""

    async def run(client: Client, changed: asyncio.Event) -> None:
        while not finished.is_set():
            await _round(client, await _listed(client, fleet), tally)
        if fleet.new_tool in await _listed(client, fleet):
            tally.saw_new_tool_after += 1

    await _client(fleet, "auto", tally, run)


async def test_twenty_clients_on_the_aggregate_see_no_failure_across_three_redeploys(
    provider: Provider, tmp_path: Path
) -> None:
    """20 clients of both eras calling 3 servers' tools through /mcp: 0 failed calls across 3 pushes,
    every answer from the right server, and the held sessions hear of and use the new tool."""
    workspace = provider.clone(tmp_path / "work")
    made = provider.cli("keys", "create", "web")
    assert made.returncode == 0, made.stderr
    fleet = Fleet(
        f"{provider.base}/mcp",
        {"authorization": f"Bearer {made.stdout.strip()}"},
        provider.name("streamer"),
        provider.name("echo"),
        provider.name("greeter"),
    )
    first = _push_release(workspace, fleet, "v1", farewell=False)
    assert first.ok, first.output
    tally, finished = Tally(), asyncio.Event()
    kinds = [_held] * HELD + [_short] * SHORT + [_stateless] * STATELESS
    clients = [asyncio.create_task(kind(fleet, finished, tally)) for kind in kinds]
    pushes: list[Push] = []
    started = time.monotonic()
    try:
        for number in range(2, REDEPLOYS + 2):
            await asyncio.sleep(SERVING_SECONDS)
            farewell = number - 1 >= CHANGING_PUSH
            push = await asyncio.to_thread(_push_release, workspace, fleet, f"v{number}", farewell)
            assert push.ok, push.output
            pushes.append(push)
        await asyncio.sleep(SERVING_SECONDS)
    finally:
        finished.set()
        await asyncio.wait_for(asyncio.gather(*clients), WIND_DOWN_TIMEOUT)
    print(
        f"\naggregate zero-downtime e2e: {sum(tally.calls.values())} calls ({tally.streamed} streamed, "
        f"{tally.new_tool_calls} to the new tool) in {tally.sessions} connections by {len(kinds)} clients "
        f"over {time.monotonic() - started:.1f}s; per server and release "
        f"{dict(sorted(tally.calls.items()))}; "
        f"list_changed heard {tally.heard_change} times; failed calls {len(tally.failed_calls)}, failed "
        f"HTTP requests {len(tally.failed_http)}, broken connections {len(tally.broken)}; pushes took "
        + ", ".join(f"{p.seconds:.1f}s" for p in pushes)
    )
    assert tally.failed_calls == [], tally.failed_calls[:5]
    assert tally.failed_http == [], tally.failed_http[:5]
    assert tally.broken == [], tally.broken[:5]
    releases = [f"v{number}" for number in range(1, REDEPLOYS + 2)]
    servers = (fleet.streamer, fleet.echo, fleet.greeter)
    unserved = [(s, r) for s in servers for r in releases if not tally.calls[s, r]]
    assert unserved == [], f"a release served no call: {tally.calls}"
    # Once per held session: only the changing push changed the tool set.
    assert tally.heard_change == HELD, f"{tally.heard_change} list_changed heard by {HELD} held sessions"
    assert tally.saw_new_tool_after == HELD + STATELESS, tally.saw_new_tool_after
    assert tally.new_tool_calls > HELD, tally.new_tool_calls
    for server in servers:
        await asyncio.to_thread(
            wait_for,
            f"{server}'s old releases to drain and be removed",
            lambda server=server: len(provider.containers(server)) == 1,  # type: ignore[misc]
            REMOVAL_TIMEOUT,
        )


async def test_a_held_session_moves_to_the_new_release_at_the_session_drain_deadline(
    tmp_path: Path, docker_host: DockerHost
) -> None:
    """Past the session drain deadline the aggregate opens the client's session with the stateful
    server again on the live release: calls answered v1 then v2, none failed, the old container goes."""
    with running_provider(
        tmp_path / "vm",
        docker_host,
        extra_config=PROJECTS,
        proxy={"session_drain_timeout": f"{SESSION_DRAIN_TIMEOUT:.0f}s"},
    ) as provider:
        workspace = provider.clone(tmp_path / "work")
        made = provider.cli("keys", "create", "web")
        assert made.returncode == 0, made.stderr
        streamer = provider.name("streamer")
        workspace.put("streamer", name=streamer, env={"RELEASE": f"{streamer}@v1"})
        workspace.commit("v1")
        assert (first := workspace.push()).ok, first.output
        tool, answers = f"{streamer}__whoami", []
        async with connect(
            f"{provider.base}/mcp", headers={"authorization": f"Bearer {made.stdout.strip()}"}
        ) as client:
            answers.append(text_of(await client.call_tool(tool)))
            workspace.put("streamer", name=streamer, env={"RELEASE": f"{streamer}@v2"})
            workspace.commit("v2")
            push = await asyncio.to_thread(workspace.push)
            assert push.ok, push.output
            swapped = time.monotonic()
            while answers[-1].endswith("@v1") and time.monotonic() < swapped + MOVE_TIMEOUT:
                await asyncio.sleep(CALL_INTERVAL)
                result = await client.call_tool(tool, read_timeout_seconds=CALL_TIMEOUT)
                assert not result.is_error, result.content
                answers.append(text_of(result))
            moved = time.monotonic() - swapped
        assert answers[-1] == f"{streamer}@v2", answers[-5:]
        assert answers[1].endswith("@v1") and moved >= SESSION_DRAIN_TIMEOUT - 1, (moved, answers[:3])
        print(
            f"\nsession drain e2e: the held session moved to v2 {moved:.1f}s after the push, "
            f"{len(answers)} calls"
        )
        await asyncio.to_thread(
            wait_for,
            "the old release's container to go",
            lambda: len(provider.containers(streamer)) == 1,
            REMOVAL_TIMEOUT,
        )
