"""Server networks: subnet allocation from the pool, names, and (on the real engine) create, reuse, prune."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest

from pipeline.config.settings import HostService, NetworkConfig, Settings
from pipeline.dockerhost import LABEL_INSTANCE, DockerHost
from pipeline.errors import DockerError, NetworkError
from pipeline.hostrelay import HostRelays
from pipeline.network import Networks, bridge_name, free_subnet, network_name

POOL = ipaddress.IPv4Network("10.213.0.0/16")


def test_the_first_subnet_clear_of_every_used_one_is_taken() -> None:
    """Subnets used by any network (another instance's, Docker's own) are skipped, overlaps included."""
    used = ["10.213.0.0/28", "10.213.0.16/29", "172.17.0.0/16", "fd00::/64"]
    assert free_subnet(POOL, 28, used) == ipaddress.IPv4Network("10.213.0.32/28")


def test_a_full_pool_says_how_to_widen_it() -> None:
    """When every subnet is taken the error names the pool and the setting to change."""
    with pytest.raises(NetworkError, match=r"10.213.0.0/16 is full .*network.pool"):
        free_subnet(POOL, 17, ["10.213.0.0/17", "10.213.128.0/17"])


def test_names_fit_docker_and_the_kernel() -> None:
    """Network names carry instance and server; bridge names fit 15 characters and start with cmcp."""
    name = network_name("abcd1234", "x" * 63, egress=True)
    assert name == f"cmcp-abcd1234-{'x' * 63}.egress"
    assert len(bridge_name(name)) == 15 and bridge_name(name).startswith("cmcp")
    assert bridge_name(name) != bridge_name(network_name("abcd1234", "x" * 63, egress=False))


@pytest.fixture
def networks(docker_host: DockerHost, instance_label: str) -> Iterator[Networks]:
    """Networks of a test instance on the real engine, removed afterwards."""
    settings = Settings(
        config_path=Path("deploy.yaml"),
        state_dir=Path(".central-mcp"),
        network=NetworkConfig(),
        host_services=(HostService("svc", "127.0.0.1", 1, ("granted",)),),
    )
    yield Networks(docker_host, settings, instance_label, HostRelays(settings.network))
    for network in docker_host.networks({LABEL_INSTANCE: instance_label}):
        docker_host.remove_network(str(network["Name"]))


@pytest.mark.docker
def test_a_network_is_created_once_in_the_pool_and_pruned_when_unused(networks: Networks) -> None:
    """ensure() makes an internal network with a /28 of the pool, returns the same one again, and
    prune() removes it once no container uses it."""
    net = networks.ensure("svc", egress=False)
    assert net.subnet.prefixlen == 28 and net.subnet.subnet_of(POOL)
    assert net.gateway == str(net.subnet.network_address + 1)
    assert networks.ensure("svc", egress=False) == net
    attrs = networks.docker.network(net.name)
    assert attrs is not None and attrs["Internal"] is True
    assert attrs["Options"]["com.docker.network.bridge.name"] == net.bridge
    egress = networks.ensure("svc", egress=True)
    assert egress.subnet != net.subnet and not egress.subnet.overlaps(net.subnet)
    assert sorted(networks.prune({})) == sorted([net.name, egress.name])
    assert networks.docker.network(net.name) is None


@pytest.mark.docker
def test_a_host_service_not_granted_to_the_server_is_refused(networks: Networks) -> None:
    """Joining names only granted services; another server naming one gets a NetworkError saying so."""
    assert [s.name for s in networks.granted("granted", ["svc"])] == ["svc"]
    with pytest.raises(NetworkError, match="does not grant host service 'svc'"):
        networks.granted("other", ["svc"])
    with pytest.raises(NetworkError, match="'nope'"):
        networks.granted("granted", ["nope"])


@pytest.mark.docker
def test_a_server_named_like_another_servers_egress_network_gets_a_network_of_its_own(
    networks: Networks,
) -> None:
    """Server `svc` with egress and server `svc-egress` without (both valid DNS labels) never share a
    network: sharing one, `svc-egress` would reach `svc`'s container directly, past the proxy, and
    get `svc`'s route out of the VM."""
    egress = networks.ensure("svc", egress=True)
    internal = networks.ensure("svc-egress", egress=False)
    assert internal.name != egress.name and internal.bridge != egress.bridge
    assert not internal.subnet.overlaps(egress.subnet)
    attrs = networks.docker.network(internal.name)
    assert attrs is not None and attrs["Internal"] is True
    assert network_name("i", "svc", egress=True) != network_name("i", "svc-egress", egress=False)


class _RacyEngine:
    """The network calls of DockerHost, in memory; the first two lookups meet at a barrier, so two
    threads both find the network missing before either makes it."""

    def __init__(self) -> None:
        self.made: dict[str, dict[str, object]] = {}
        self.creates = 0
        self.meet = threading.Barrier(2)
        self.lookups = 0
        self.lock = threading.Lock()

    def network(self, name: str) -> dict[str, object] | None:
        with self.lock:
            self.lookups += 1
            first_two = self.lookups <= 2
            found = self.made.get(name)
        if first_two:
            self.meet.wait(5)
        return found

    def subnets(self) -> list[str]:
        return [str(n["IPAM"]["Config"][0]["Subnet"]) for n in self.made.values()]  # type: ignore[index]

    def create_network(self, name: str, subnet: str, gateway: str, **_: object) -> dict[str, object]:
        self.creates += 1
        if name in self.made:
            raise DockerError(f"create network {name}: Docker engine said network {name} already exists")
        self.made[name] = {"Name": name, "IPAM": {"Config": [{"Subnet": subnet, "Gateway": gateway}]}}
        return self.made[name]


def test_two_threads_ensuring_one_network_make_it_once() -> None:
    """A deploy makes its networks ahead while a server's start may ask for the same one: the second
    caller finds the network made while it waited for the create lock instead of making it again."""
    engine = _RacyEngine()
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path(".central-mcp"))
    networks = Networks(cast(DockerHost, engine), settings, "abcd1234", HostRelays(settings.network))
    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(lambda _: networks.ensure("svc", egress=False), range(2)))
    assert found[0] == found[1]
    assert engine.creates == 1
