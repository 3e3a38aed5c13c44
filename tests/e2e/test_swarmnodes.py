"""The two-node harness itself: a worker in its own network namespace joins the engine's swarm, runs a
task, is reached over an overlay, dies with kill() and is marked down by the manager (host firewall on);
and `ensure_swarm` against real engines: init of a bare one, refusal of a worker."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import docker.errors
import docker.types
import pytest

from pipeline import baseimage, engine
from pipeline.dockerhost import DockerHost
from pipeline.errors import EngineUnavailable
from tests.support.swarmnodes import WorkerNode, require_manager

PORT = 8000
SERVE = [
    "python3",
    "-m",
    "http.server",
    str(PORT),
    "--directory",
    "/etc",
]  # GET /hostname: the task's hostname
TASK_TIMEOUT = 60.0
DOWN_TIMEOUT = 60.0  # measured: ~11-13 s after kill(), with the default 5 s heartbeat as with 1 s
STOP_GRACE_NS = 1_000_000_000  # python as PID 1 ignores SIGTERM: SIGKILL after 1 s
PROBE = """
import json, sys, urllib.request
out = {}
for addr in sys.argv[1:]:
    try:
        out[addr] = urllib.request.urlopen(f"http://{addr}:%d/hostname", timeout=%s).read().decode().strip()
    except Exception as exc:
        out[addr] = "error:" + type(exc).__name__
print(json.dumps(out))
"""


@pytest.fixture
def manager(docker_host: DockerHost) -> DockerHost:
    """The real engine, which must be a swarm manager."""
    require_manager(docker_host)
    return docker_host


@pytest.fixture
def worker(manager: DockerHost) -> Iterator[WorkerNode]:
    """A worker node with the base image loaded, closed (no trace) after."""
    with WorkerNode(manager) as node:
        node.load([str(manager.client.images.get(baseimage.BASE_IMAGE).id)])
        yield node


@pytest.mark.docker
def test_a_killed_worker_stops_answering_and_the_manager_marks_it_down(
    manager: DockerHost, worker: WorkerNode
) -> None:
    """Two replicas land one per node, both answer over the overlay, and after kill() the worker's
    task is silent and its node goes down within the bound."""
    tag = secrets.token_hex(3)
    net = manager.client.networks.create(f"cmsw-test-{tag}", driver="overlay", attachable=True)
    net_id, net_name = str(net.id), str(net.name)
    service = None
    try:
        image = manager.client.images.get(baseimage.BASE_IMAGE).id
        service = manager.client.services.create(  # type: ignore[no-untyped-call]  # untyped in the stubs
            image,  # by ID: no node pulls from a registry
            SERVE,
            name=f"cmsw-test-{tag}",
            networks=[net_id],
            mode=docker.types.ServiceMode("replicated", replicas=2),
            maxreplicas=1,
            stop_grace_period=STOP_GRACE_NS,
        )
        tasks = _running_tasks(service, 2)
        assert {task["NodeID"] for task in tasks} == {
            manager.client.info()["Swarm"]["NodeID"],
            worker.node_id,
        }
        addresses = {task["NodeID"]: _overlay_address(task, net_id) for task in tasks}
        hostnames = {task["NodeID"]: task["Status"]["ContainerStatus"]["ContainerID"][:12] for task in tasks}
        answers = _probe(manager, net_name, list(addresses.values()))
        assert {answers[addresses[node]] for node in addresses} == set(hostnames.values())

        worker.kill()
        killed_at = time.monotonic()
        while worker.manager_state() != "down":
            assert time.monotonic() - killed_at < DOWN_TIMEOUT, (
                "the manager never marked the killed node down"
            )
            time.sleep(0.2)
        took = time.monotonic() - killed_at
        print(f"killed node marked down after {took:.1f}s")
        after = _probe(manager, net_name, [addresses[worker.node_id]])
        assert after[addresses[worker.node_id]].startswith("error:")
    finally:
        if service is not None:
            service.remove()
            _wait_gone(manager, service.name)
        _remove_network(manager, net)


@pytest.mark.docker
def test_swarm_init_makes_a_bare_engine_a_manager_once(manager: DockerHost) -> None:
    """ensure_swarm inits a real engine outside any swarm (the namespace's), then leaves it as it is."""
    with WorkerNode(manager, join=False) as node:
        assert node.client is not None
        bare = DockerHost(node.client)
        said: list[str] = []
        info = engine.ensure_swarm(bare, said.append, node.address)
        state = node.client.info()["Swarm"]
        assert state["LocalNodeState"] == "active" and state["ControlAvailable"]
        assert info.node_id == state["NodeID"] and info.advertise_addr == node.address
        node.client.swarm.reload()
        assert node.client.swarm.attrs["DefaultAddrPool"] == [engine.DEFAULT_SWARM_POOL]
        assert node.client.swarm.attrs["SubnetSize"] == engine.SWARM_SUBNET_SIZE
        assert f"docker swarm join --token {info.worker_token} {node.address}:2377" in said[-2]
        again: list[str] = []
        assert engine.ensure_swarm(bare, again.append, node.address) == info
        assert "this engine is already a swarm manager: left as it is" in again


@pytest.mark.docker
def test_swarm_init_refuses_a_worker(worker: WorkerNode) -> None:
    """A worker engine is told to run it on a manager, and stays a worker."""
    assert worker.client is not None
    with pytest.raises(EngineUnavailable, match="this engine is a swarm worker"):
        engine.ensure_swarm(DockerHost(worker.client), lambda line: None)
    assert worker.manager_state() == "ready"


def _running_tasks(service: Any, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TASK_TIMEOUT
    while True:
        tasks = [t for t in service.tasks() if t["Status"]["State"] == "running"]
        if len(tasks) == count:
            return tasks
        assert time.monotonic() < deadline, f"tasks not running: {[t['Status'] for t in service.tasks()]}"
        time.sleep(0.3)


def _overlay_address(task: dict[str, Any], network_id: str) -> str:
    for attachment in task.get("NetworksAttachments") or []:
        if attachment["Network"]["ID"] == network_id:
            address: str = attachment["Addresses"][0].split("/")[0]
            return address
    raise AssertionError(f"task {task['ID']} has no address on {network_id}")


def _probe(manager: DockerHost, network: str, addresses: list[str]) -> dict[str, str]:
    """GET /hostname of each address from a plain container on the manager, attached to the overlay."""
    code = PROBE % (PORT, 3)
    output = manager.client.containers.run(
        baseimage.BASE_IMAGE, ["python3", "-c", code, *addresses], network=network, remove=True
    )
    result: dict[str, str] = json.loads(output.decode().strip().splitlines()[-1])
    return result


def _wait_gone(manager: DockerHost, service: str) -> None:
    """Until the manager's own task containers of `service` are gone (service removal is asynchronous)."""
    deadline = time.monotonic() + TASK_TIMEOUT
    labels: dict[str, str | list[str] | bool] = {"label": f"com.docker.swarm.service.name={service}"}
    while manager.client.containers.list(all=True, filters=labels):
        assert time.monotonic() < deadline, f"the tasks of {service} outlived its removal"
        time.sleep(0.3)


def _remove_network(manager: DockerHost, net: Any) -> None:
    deadline = time.monotonic() + TASK_TIMEOUT
    while True:
        try:
            net.remove()
            return
        except docker.errors.APIError:
            assert time.monotonic() < deadline, f"network {net.name} still in use"
            time.sleep(0.5)
