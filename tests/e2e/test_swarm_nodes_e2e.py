"""Two real nodes: the provider on the Swarm engine spreads a server's two replicas over this engine
(the manager) and a worker node (a second dockerd in its own network namespace, tests/support/
swarmnodes.py); the worker dies under load, its replica is replaced, and no session on the
manager's replica breaks.

The image reaches the worker the way it would reach another VM: the provider copies it to the node
listed in deploy.yaml `swarm.nodes` (here its unix socket; ssh:// on real VMs) and the services name
it by image ID, so the worker never pulls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.config.settings import ENGINE_SWARM
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_SERVER, DockerHost
from tests.e2e.test_replicas_e2e import FAST_MONITOR, Load, _push, _sessions
from tests.support.provider import Provider, Workspace, running_provider, wait_for
from tests.support.swarmnodes import WorkerNode, require_manager
from tests.support.swarmview import SwarmView

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

SESSIONS = 8
LOAD_SECONDS = 2.0
REPLACE_TIMEOUT = 120.0


@pytest.fixture
def worker(docker_host: DockerHost) -> Iterator[WorkerNode]:
    """A worker node joined to this engine's swarm (a manager: fails in CI, skips elsewhere)."""
    require_manager(docker_host)
    with WorkerNode(docker_host) as node:
        yield node


@pytest.fixture
def provider(tmp_path: Path, docker_host: DockerHost, worker: WorkerNode) -> Iterator[Provider]:
    """A Swarm-engine provider that knows the worker's Docker endpoint."""
    # encrypt: false — IPsec between two network namespaces of one kernel carries nothing here
    # (single-node encrypted overlays work); real VMs keep the default, encrypted overlays.
    nodes = f"swarm: {{start_timeout: 90s, encrypt: false, nodes: {{worker: 'unix://{worker.socket}'}}}}\n"
    with running_provider(
        tmp_path / "vm", docker_host, extra_config=FAST_MONITOR + nodes, engine=ENGINE_SWARM
    ) as running:
        yield running


@pytest.fixture
def workspace(provider: Provider, tmp_path: Path) -> Workspace:
    """The developer's clone of the VM's repo."""
    return provider.clone(tmp_path / "work")


def _placement(provider: Provider, server: str) -> dict[str, str]:
    """service id -> the node its running task is on."""
    api: Any = provider.docker.client.api
    placed: dict[str, str] = {}
    for service in provider.docker.containers({LABEL_INSTANCE: provider.instance, LABEL_SERVER: server}):
        for task in api.tasks(filters={"service": service.id, "desired-state": "running"}):
            if (task.get("Status") or {}).get("State") == "running":
                placed[service.id] = str(task["NodeID"])
    return placed


async def test_a_dead_node_s_replica_is_replaced_and_no_session_on_the_other_node_breaks(
    provider: Provider, workspace: Workspace, worker: WorkerNode
) -> None:
    """2 replicas, one per node; the worker is killed under load: the manager's replica answers every
    call, the dead one is replaced on the manager, and both replicas serve afterwards."""
    server, push = _push(workspace, "replica", "v1", min=2, max=2)
    assert push.ok, push.output
    manager_id = str(provider.docker.client.info()["Swarm"]["NodeID"])
    placed = _placement(provider, server)
    assert sorted(placed.values()) == sorted([manager_id, worker.node_id]), placed
    assert isinstance(provider.docker, SwarmView)
    survivor = next(provider.docker.hostname(s) for s, n in placed.items() if n == manager_id)
    doomed = next(provider.docker.hostname(s) for s, n in placed.items() if n == worker.node_id)

    load, stop = Load(), asyncio.Event()
    url = f"{provider.base}/mcp/{server}"
    clients = [asyncio.create_task(_sessions(url, load, stop, tool="whoami")) for _ in range(SESSIONS)]
    try:
        await asyncio.sleep(LOAD_SECONDS)
        assert {survivor, doomed} <= set(load.calls), load.calls  # both nodes served before the kill
        await asyncio.to_thread(worker.kill)
        await asyncio.to_thread(
            wait_for,
            "the manager to mark the worker down",
            lambda: worker.manager_state() == "down",
            REPLACE_TIMEOUT,
        )
        await asyncio.to_thread(
            wait_for,
            "two running replicas again, both on the manager",
            lambda: list(_placement(provider, server).values()) == [manager_id, manager_id],
            REPLACE_TIMEOUT,
        )
        before = sum(load.calls.values())
        await asyncio.sleep(LOAD_SECONDS)
        assert sum(load.calls.values()) > before, "no call was answered after the replacement"
    finally:
        stop.set()
        await asyncio.gather(*clients)
    on_survivor = [what for host, what in load.failures if host == survivor]
    print(
        f"\ntwo nodes: calls {dict(load.calls)}; failures on the surviving node {len(on_survivor)}, "
        f"on the dead one {sum(1 for h, _ in load.failures if h == doomed)}, "
        f"before a session had a replica {sum(1 for h, _ in load.failures if not h)}"
    )
    assert on_survivor == [], on_survivor[:3]
    replacements = set(load.calls) - {survivor, doomed}
    assert replacements, f"no call reached a replacement replica: {load.calls}"
