"""End to end: a server's container reaches no other server, no service of the host, and the outside
only when its manifest says `run.network: egress` (never link-local); a granted host service only.

Real pushes into a real serve, real containers; connections are made from inside the deployed
containers (`docker exec`) to stand-ins the test creates (tests/support/netns.py): listeners on
the host's side of each server's network, on a dummy interface's address, and in a network
namespace routed via the host (with a link-local address standing for cloud metadata).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.dockerhost import DockerHost
from tests.support.loopback import free_port
from tests.support.netns import (
    MARK,
    dummy_address,
    granted_service,
    host_listener,
    outside,
    probe_from,
    probe_from_host,
)
from tests.support.provider import Provider, Workspace, running_provider

pytestmark = pytest.mark.docker

OPEN = "open:" + MARK.decode()
DUMMY_ADDRESS = "198.51.100.1"  # TEST-NET-2: on a dummy interface of the host, no bridge's


def _container(provider: Provider, server: str) -> Any:
    ids = provider.running(server)
    assert len(ids) == 1, f"{server}: expected one running container, found {ids}"
    return provider.docker.client.containers.get(ids[0])


def _network(container: Any) -> dict[str, Any]:
    networks: dict[str, Any] = container.attrs["NetworkSettings"]["Networks"]
    assert len(networks) == 1, f"{container.name} is on {sorted(networks)}"
    return dict(next(iter(networks.values())))


def _deploy(workspace: Workspace, *servers: tuple[str, str, Any]) -> None:
    for fixture, name, change in servers:
        workspace.put(fixture, name=name, manifest=change)
    workspace.commit("isolation fixtures")
    push = workspace.push()
    assert push.ok, push.output


@pytest.fixture(scope="module")
def pair(provider: Provider, workspace: Workspace) -> tuple[str, str]:
    """Two plain servers, A and B, live on the module's provider."""
    workspace.sync()
    a, b = provider.name("echo-a"), provider.name("echo-b")
    _deploy(workspace, ("echo", a, None), ("echo", b, None))
    return a, b


def test_a_server_cannot_reach_another_servers_container(provider: Provider, pair: tuple[str, str]) -> None:
    """A's container cannot connect to B's container (it could on Docker's default bridge), while the
    proxy still reaches both."""
    a, b = pair
    target = f"{_network(_container(provider, b))['IPAddress']}:8080"
    assert probe_from(_container(provider, a), [target])[target].startswith("closed")
    assert probe_from_host([target])[target].startswith("open")
    assert provider.call(a, "greet", {"name": "Ada"})["greeting"] == "hello, Ada"
    assert provider.call(b, "greet", {"name": "Ada"})["greeting"] == "hello, Ada"


def test_a_server_cannot_reach_the_host(provider: Provider, pair: tuple[str, str]) -> None:
    """Host listeners on A's own gateway, on B's gateway and on another host address are closed to A."""
    a, b = pair
    port = free_port()
    gateway_a = _network(_container(provider, a))["Gateway"]
    gateway_b = _network(_container(provider, b))["Gateway"]
    targets = [f"{gateway_a}:{port}", f"{gateway_b}:{port}", f"{DUMMY_ADDRESS}:{port}"]
    with (
        dummy_address(DUMMY_ADDRESS),
        host_listener(gateway_a, port),
        host_listener(DUMMY_ADDRESS, port),
        host_listener(gateway_b, port) if gateway_b != gateway_a else contextlib.nullcontext(),
    ):
        assert probe_from_host(targets) == dict.fromkeys(targets, OPEN)
        seen = probe_from(_container(provider, a), targets)
    assert all(v.startswith("closed") for v in seen.values()), seen


def test_no_server_publishes_a_port(provider: Provider, pair: tuple[str, str]) -> None:
    """`docker port` is empty for every server container: the proxy reaches them on their networks."""
    for server in pair:
        container = _container(provider, server)
        assert not any(container.attrs["NetworkSettings"]["Ports"].values()), container.attrs[
            "NetworkSettings"
        ]
        assert not container.attrs["HostConfig"].get("PortBindings")


# egress and host services -----------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[dict[str, Any]]:
    """A provider whose deploy.yaml grants a host service (a listener on the host's 127.0.0.1) to
    server `relayed`; server `egress` asks for egress. The firewall opens the service's port."""
    tag = secrets.token_hex(3)
    relayed, egress = f"iso-relayed-{tag}", f"iso-egress-{tag}"
    root = tmp_path_factory.mktemp("served")
    with (
        granted_service(relayed) as service,
        running_provider(root, docker_host, extra_config=service.config) as provider,
    ):
        provider.names.update({relayed, egress})
        workspace = provider.clone(tmp_path_factory.mktemp("clone") / "work")

        def use_service(data: dict[str, Any]) -> None:
            data["run"]["host_services"] = ["standin"]

        def use_egress(data: dict[str, Any]) -> None:
            data["run"]["network"] = "egress"

        _deploy(workspace, ("echo", relayed, use_service), ("echo", egress, use_egress))
        yield {"provider": provider, "relayed": relayed, "egress": egress, "port": service.port}


def test_a_host_service_reaches_only_the_server_granted_it(served: dict[str, Any]) -> None:
    """The granted server reaches a host 127.0.0.1 listener by the service's name; another server
    reaches it neither at its own gateway nor at the granted server's."""
    provider: Provider = served["provider"]
    port = served["port"]
    relayed, other = _container(provider, served["relayed"]), _container(provider, served["egress"])
    with host_listener("127.0.0.1", port):
        assert probe_from(relayed, [f"standin:{port}"]) == {f"standin:{port}": OPEN}
        targets = [f"{_network(other)['Gateway']}:{port}", f"{_network(relayed)['Gateway']}:{port}"]
        seen = probe_from(other, targets)
    assert all(v.startswith("closed") for v in seen.values()), seen
    assert provider.call(served["relayed"], "greet", {"name": "Ada"})["greeting"] == "hello, Ada"


def test_egress_reaches_outside_but_never_link_local_and_internal_reaches_nothing(
    served: dict[str, Any],
) -> None:
    """An egress server reaches an address outside the VM (a namespace routed via the host) but not a
    link-local one there; an internal server reaches neither; the host reaches both."""
    provider: Provider = served["provider"]
    egress, internal = _container(provider, served["egress"]), _container(provider, served["relayed"])
    with outside(free_port()) as there:
        out, metadata = f"{there.address}:{there.port}", f"{there.link_local}:{there.port}"
        assert probe_from_host([out, metadata]) == {out: OPEN, metadata: OPEN}
        seen = probe_from(egress, [out, metadata])
        assert seen[out] == OPEN and seen[metadata].startswith("closed"), seen
        assert probe_from(internal, [out])[out].startswith("closed")
    other = f"{_network(internal)['IPAddress']}:8080"
    assert probe_from(egress, [other])[other].startswith("closed")
