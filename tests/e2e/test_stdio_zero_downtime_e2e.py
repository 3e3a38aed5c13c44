"""Zero downtime for a stdio server in per-session mode: 20 SDK clients, 3 redeploys, no failure.

The headline test of test_zero_downtime_e2e.py, with the streamer's tools served by a stdio
program behind the provider's bridge (tests/fixtures/servers/stdio-streamer): every session is a
process of its own, taken from the warm pool and ended with the session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dockerhost import DockerHost
from tests.e2e.test_zero_downtime_e2e import (
    CLIENTS,
    REDEPLOYS,
    SERVING_SECONDS,
    WIND_DOWN_TIMEOUT,
    Tally,
    _fast,
)
from tests.e2e.test_zero_downtime_e2e import _session_client as session_client
from tests.support.provider import Provider, Push, Workspace, running_provider
from tests.support.proxy_rig import connect

pytestmark = pytest.mark.docker


@pytest.fixture
def provider(tmp_path: Path, docker_host: DockerHost) -> Iterator[Provider]:
    """A real serve process with the harness's timeouts."""
    with running_provider(tmp_path / "vm", docker_host) as running:
        yield running


def _push_release(workspace: Workspace, server: str | None, release: str) -> tuple[str, Push]:
    name = workspace.put("stdio-streamer", name=server, env={"RELEASE": release})
    workspace.commit(f"stdio-streamer {release}")
    return name, workspace.push()


async def test_twenty_clients_of_a_per_session_stdio_server_see_no_failure_across_three_redeploys(
    provider: Provider, tmp_path: Path
) -> None:
    """20 SDK clients in short sessions (a process each), streaming and not, see no failed call,
    HTTP error or broken session while 3 pushes redeploy the stdio server."""
    workspace = provider.clone(tmp_path / "work")
    server, first = _push_release(workspace, None, "v1")
    assert first.ok, first.output
    url = f"{provider.base}/mcp/{server}"
    tally, finished = Tally(), asyncio.Event()
    live_since = {"v1": time.monotonic()}
    clients = [asyncio.create_task(session_client(url, finished, tally)) for _ in range(CLIENTS)]
    pushes: list[Push] = []
    try:
        for number in range(2, REDEPLOYS + 2):
            await asyncio.sleep(SERVING_SECONDS)
            _, push = await asyncio.to_thread(_push_release, workspace, server, f"v{number}")
            assert push.ok, push.output
            live_since[f"v{number}"] = time.monotonic()
            pushes.append(push)
        await asyncio.sleep(SERVING_SECONDS)
    finally:
        finished.set()
        await asyncio.wait_for(asyncio.gather(*clients), WIND_DOWN_TIMEOUT)
    print(
        f"\nstdio zero-downtime e2e: {sum(tally.calls.values())} calls ({tally.streamed} streamed) in "
        f"{tally.sessions} sessions (a process each) by {CLIENTS} clients; per release "
        f"{dict(sorted(tally.calls.items()))}; failed calls {len(tally.failed_calls)}, failed HTTP "
        f"{len(tally.failed_http)}, broken sessions {len(tally.broken_sessions)}; pushes took "
        + ", ".join(f"{p.seconds:.1f}s" for p in pushes)
    )
    assert tally.failed_calls == [], tally.failed_calls[:5]
    assert tally.failed_http == [], tally.failed_http[:5]
    assert tally.broken_sessions == [], tally.broken_sessions[:5]
    assert sorted(tally.calls) == sorted(live_since), f"a release served no call: {tally.calls}"
    async with connect(url, mode="legacy") as client:
        assert await _fast(client, tally) == f"v{REDEPLOYS + 1}"
