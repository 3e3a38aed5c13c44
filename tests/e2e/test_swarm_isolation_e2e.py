"""End to end on the Swarm engine: a server's task reaches no other server's task, not the relay that
joins every overlay, no service of the host, and the outside only with `run.network: egress`.

The plain engine's isolation promises (test_isolation_e2e.py), proven again with `engine: swarm`: one
real serve, one real push of three echo servers (A and C with egress, B internal), and connections
made from INSIDE the deployed task containers (`docker exec` into each service's task on this node)
to the other tasks, to the relay, and to stand-ins the test makes (tests/support/netns.py).

One promise only Swarm can break: its data plane. The host takes VXLAN (udp 4789) from anyone, so a
machine outside the VM can put frames on an unencrypted overlay and reach an internal server's task;
an encrypted overlay (always on a single-node swarm, or with `swarm.encrypt`) lets nothing through.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.config.settings import ENGINE_SWARM
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_NETWORK, LABEL_ROLE, LABEL_SERVER, DockerHost
from pipeline.firewall import SWARM_BRIDGE
from pipeline.swarm import LABEL_RELAY_PORT, RELAY_CONTROL_PORT, RELAY_ROLE
from pipeline.swarmrelay import ROUTES_PATH
from tests.support.loopback import free_port
from tests.support.netns import (
    MARK,
    dummy_address,
    exchange_from,
    exchange_from_host,
    exchange_in,
    host_listener,
    ip,
    outside,
    vxlan_peer,
)
from tests.support.provider import Provider, running_provider

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

ECHO_PORT = 8080
VXLAN_IDS = "com.docker.network.driver.overlay.vxlanid_list"  # an overlay's VNI(s)
DUMMY_ADDRESS = "198.51.100.1"  # TEST-NET-2: on an interface of the host's own, no bridge's
GREETED = "open:eof:" + MARK.decode()  # a stand-in listener's whole answer
BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "iso", "version": "1"},
        },
    }
)
INITIALIZE = (
    "POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    "Accept: application/json, text/event-stream\r\nConnection: close\r\n"
    f"Content-Length: {len(BODY)}\r\n\r\n{BODY}"
).encode()
OUR_ANSWERS = ('"serverInfo"', ROUTES_PATH)  # in an MCP server's initialize answer; in the relay's
DNS_WAIT = 2.0
RESOLVE = """
import json, socket, sys, threading
found = {}
def one(name):
    try:
        found[name] = sorted({i[4][0] for i in socket.getaddrinfo(name, 80, socket.AF_INET)})
    except OSError:
        found[name] = []
threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in json.loads(sys.argv[1])]
for t in threads: t.start()
for t in threads: t.join(float(sys.argv[2]))
print(json.dumps({n: found.get(n, []) for n in json.loads(sys.argv[1])}))
"""


@dataclass(frozen=True)
class Fleet:
    """A Swarm provider and its echo servers: A and C with egress ("" when not deployed), B internal."""

    provider: Provider
    a: str
    b: str
    c: str

    @property
    def api(self) -> Any:
        """The engine's low-level API (services and tasks)."""
        return self.provider.docker.client.api

    def service(self, server: str) -> dict[str, Any]:
        """The one service of `server` (its replica), as the engine inspects it."""
        labels = [f"{LABEL_INSTANCE}={self.provider.instance}", f"{LABEL_SERVER}={server}"]
        found = self.api.services(filters={"label": labels})
        assert len(found) == 1, f"{server}: expected one service, found {[s['Spec']['Name'] for s in found]}"
        return dict(found[0])

    def task(self, server: str) -> Any:
        """The container of `server`'s running task on this node."""
        tasks = self.api.tasks(filters={"service": self.service(server)["ID"], "desired-state": "running"})
        running = [t for t in tasks if t["Status"]["State"] == "running"]
        assert len(running) == 1, f"{server}: expected one running task, found {tasks}"
        return self.provider.docker.client.containers.get(
            running[0]["Status"]["ContainerStatus"]["ContainerID"]
        )

    def overlay(self, server: str) -> str:
        """The name of `server`'s overlay network."""
        return str(self.service(server)["Spec"]["Labels"][LABEL_NETWORK])

    def address(self, server: str) -> str:
        """`server`'s task address on its overlay."""
        return str(self.task(server).attrs["NetworkSettings"]["Networks"][self.overlay(server)]["IPAddress"])

    def gwbridge_address(self, server: str) -> str:
        """`server`'s task address on docker_gwbridge (egress overlays only)."""
        bridge = self.provider.docker.client.networks.get(SWARM_BRIDGE)
        endpoint = bridge.attrs["Containers"][self.task(server).id]
        return str(endpoint["IPv4Address"]).split("/")[0]

    def relay_port(self, server: str) -> int:
        """The relay port that forwards to `server`'s replica."""
        return int(self.service(server)["Spec"]["Labels"][LABEL_RELAY_PORT])

    def relay(self) -> Any:
        """The provider's relay container (on its own bridge and every overlay)."""
        labels = [f"{LABEL_INSTANCE}={self.provider.instance}", f"{LABEL_ROLE}={RELAY_ROLE}"]
        found = self.provider.docker.client.containers.list(filters={"label": labels})
        assert len(found) == 1, f"expected one relay, found {[c.name for c in found]}"
        return found[0]

    def relay_on(self, network: str) -> dict[str, Any]:
        """The relay's endpoint on `network` (its address there, and the gateway on its bridge)."""
        relay = self.relay()
        return dict(relay.attrs["NetworkSettings"]["Networks"][network])

    def relay_bridge(self) -> dict[str, Any]:
        """The relay's endpoint on its own bridge: the address the proxy reaches, the host's gateway."""
        return self.relay_on(str(self.relay().labels[LABEL_NETWORK]))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Fleet]:
    """One Swarm provider; A and C (egress) and B (internal) deployed by one push."""
    with _fleet(tmp_path_factory, docker_host, ("a", True), ("b", False), ("c", True)) as deployed:
        yield deployed


@contextlib.contextmanager
def _fleet(
    tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost, *servers: tuple[str, bool]
) -> Iterator[Fleet]:
    """A Swarm provider with echo servers (letter, egress) deployed by one push."""
    swarm = docker_host.client.info().get("Swarm") or {}
    assert swarm.get("ControlAvailable"), "the Swarm tests need a swarm manager: `central-mcp engine --swarm`"
    root = tmp_path_factory.mktemp("swarm-iso")
    with running_provider(root, docker_host, engine=ENGINE_SWARM) as provider:
        workspace = provider.clone(tmp_path_factory.mktemp("clone") / "work")
        tag = secrets.token_hex(2)
        names = {letter: provider.name(f"iso-{letter}{tag}") for letter, _ in servers}

        def egress(data: dict[str, Any]) -> None:
            data["run"]["network"] = "egress"

        for letter, wants_egress in servers:
            workspace.put("echo", name=names[letter], manifest=egress if wants_egress else None)
        workspace.commit("swarm isolation fixtures")
        push = workspace.push()
        assert push.ok, push.output
        yield Fleet(provider, names.get("a", ""), names["b"], names.get("c", ""))


def _refused(seen: dict[str, str]) -> None:
    """Every target either took no connection or ended it at once without a byte (EOF or reset)."""
    bad = {t: v for t, v in seen.items() if not (v.startswith("closed") or v in ("open:eof:", "open:reset:"))}
    assert not bad, f"answered or held open: {bad} (all: {seen})"


def _unreachable(seen: dict[str, str]) -> None:
    """No target took the connection."""
    assert all(v.startswith("closed") for v in seen.values()), seen


def _not_ours(seen: dict[str, str]) -> None:
    """No target answered as an MCP server or the relay does. From an egress task an address outside
    its overlay leaves the VM like any egress (this VM's outside answers every address: an HTTP 404
    from `keryx`), so "no connection" cannot be asked of it; "not our servers' answer" can."""
    ours = {t: v for t, v in seen.items() if any(mark in v for mark in OUR_ANSWERS)}
    assert not ours, f"reached one of ours: {ours}"


def _resolved(container: Any, names: list[str]) -> dict[str, list[str]]:
    """What each name resolves to inside the container (Docker's embedded DNS), waiting at most
    DNS_WAIT for all; a name that does not resolve in time maps to []."""
    code, output = container.exec_run(["python3", "-c", RESOLVE, json.dumps(names), str(DNS_WAIT)])
    assert code == 0, output
    found: dict[str, list[str]] = json.loads(output.decode().strip().splitlines()[-1])
    return found


def test_a_task_cannot_reach_another_servers_task(fleet: Fleet) -> None:
    """No task reaches another's at its overlay address, nor one egress task the other at its
    docker_gwbridge address (a bridge they share), nor resolves another's service name to its task;
    each task reaches and resolves itself, and the proxy reaches all three."""
    a, b, c = fleet.a, fleet.b, fleet.c
    own = {s: f"{fleet.address(s)}:{ECHO_PORT}" for s in (a, b, c)}
    for server in (a, b, c):  # each target serves MCP at that address: its own task gets the answer
        answer = exchange_from(fleet.task(server), [own[server]], INITIALIZE)[own[server]]
        assert answer.startswith("open:eof:HTTP/1.1 200") and OUR_ANSWERS[0] in answer, answer
    gateways = {s: f"{fleet.gwbridge_address(s)}:{ECHO_PORT}" for s in (a, c)}
    for server, others in ((a, [b, c]), (b, [a, c]), (c, [a, b])):
        task = fleet.task(server)
        seen = exchange_from(task, [own[o] for o in others], INITIALIZE)
        if server == b:
            _unreachable(seen)  # internal: no route off its overlay at all
        else:
            _not_ours(seen)
        _unreachable(exchange_from(task, [gateways[o] for o in others if o in gateways], INITIALIZE))
        names = {fleet.service(o)["Spec"]["Name"]: own[o].split(":")[0] for o in (server, *others)}
        found = _resolved(task, sorted(names))
        mine = fleet.service(server)["Spec"]["Name"]
        assert found[mine] == [names[mine]], found  # its own service name: its own task
        assert not any(names[n] in found[n] for n in names if n != mine), (server, found)
    for server in (a, b, c):
        assert fleet.provider.greeting(server) == "hello, Ada"


def test_a_task_cannot_use_the_relay_that_joins_every_overlay(fleet: Fleet) -> None:
    """From A's (egress) and B's (internal) tasks, the relay's control port and every route port (their
    own and the other's) give no byte back, at the relay's address on their own overlay (the connection
    is ended at once) and at its bridge address; its address on the other's overlay does not answer as
    the relay either. The host, its one peer, gets B's MCP answer and the control port's 404."""
    a, b = fleet.a, fleet.b
    bridge = fleet.relay_bridge()["IPAddress"]
    ports = [RELAY_CONTROL_PORT, fleet.relay_port(a), fleet.relay_port(b)]
    host_view = exchange_from_host([f"{bridge}:{port}" for port in ports], INITIALIZE)
    assert host_view[f"{bridge}:{fleet.relay_port(b)}"].startswith("open:eof:HTTP/1.1 200"), host_view
    assert all(OUR_ANSWERS[0] in host_view[f"{bridge}:{fleet.relay_port(s)}"] for s in (a, b)), host_view
    assert host_view[f"{bridge}:{RELAY_CONTROL_PORT}"].startswith("open:eof:HTTP/1.1 404"), host_view
    assert ROUTES_PATH in host_view[f"{bridge}:{RELAY_CONTROL_PORT}"], host_view
    for server, other in ((a, b), (b, a)):
        on_own = fleet.relay_on(fleet.overlay(server))["IPAddress"]
        on_other = fleet.relay_on(fleet.overlay(other))["IPAddress"]
        task = fleet.task(server)
        seen = exchange_from(
            task, [f"{host}:{port}" for host in (on_own, bridge) for port in ports], INITIALIZE
        )
        _refused(seen)
        assert all(seen[f"{on_own}:{port}"].startswith("open:") for port in ports), seen  # ended, not lost
        _not_ours(exchange_from(task, [f"{on_other}:{port}" for port in ports], INITIALIZE))
    assert fleet.provider.greeting(b) == "hello, Ada"


def test_a_task_cannot_reach_the_host(fleet: Fleet) -> None:
    """Host listeners on another host address, on the relay bridge's gateway and on docker_gwbridge's
    gateway are closed to an egress task (A) and an internal one (B); the host reaches all three."""
    port = free_port()
    relay_gateway = fleet.relay_bridge()["Gateway"]
    gwbridge = fleet.provider.docker.client.networks.get(SWARM_BRIDGE)
    gw_gateway = gwbridge.attrs["IPAM"]["Config"][0]["Gateway"]
    targets = [f"{address}:{port}" for address in (DUMMY_ADDRESS, relay_gateway, gw_gateway)]
    with (
        dummy_address(DUMMY_ADDRESS),
        host_listener(DUMMY_ADDRESS, port),
        host_listener(relay_gateway, port),
        host_listener(gw_gateway, port),
    ):
        assert exchange_from_host(targets) == dict.fromkeys(targets, GREETED)
        _unreachable(exchange_from(fleet.task(fleet.a), targets))
        _unreachable(exchange_from(fleet.task(fleet.b), targets))


def test_egress_reaches_outside_but_never_link_local_and_internal_reaches_nothing(fleet: Fleet) -> None:
    """A (egress) reaches an address outside the VM but not a link-local one there; B (internal)
    reaches neither; the host reaches both."""
    with outside(free_port()) as there:
        out, metadata = f"{there.address}:{there.port}", f"{there.link_local}:{there.port}"
        assert exchange_from_host([out, metadata]) == {out: GREETED, metadata: GREETED}
        seen = exchange_from(fleet.task(fleet.a), [out, metadata])
        assert seen[out] == GREETED and seen[metadata].startswith("closed"), seen
        _unreachable(exchange_from(fleet.task(fleet.b), [out, metadata]))


def test_no_service_publishes_a_port(fleet: Fleet) -> None:
    """No service's endpoint has Ports, no task container has port bindings, nor has the relay."""
    for server in (fleet.a, fleet.b, fleet.c):
        service = fleet.service(server)
        assert not service["Spec"].get("EndpointSpec", {}).get("Ports"), service["Spec"]
        assert not service.get("Endpoint", {}).get("Ports"), service["Endpoint"]
        task = fleet.task(server)
        assert not task.attrs["HostConfig"].get("PortBindings"), task.attrs["HostConfig"]
        assert not any((task.attrs["NetworkSettings"].get("Ports") or {}).values())
    relay = fleet.relay()
    assert not relay.attrs["HostConfig"].get("PortBindings")
    assert not any((relay.attrs["NetworkSettings"].get("Ports") or {}).values())


def test_no_machine_outside_the_vm_reaches_a_task_over_the_swarm_data_plane(fleet: Fleet) -> None:
    """A machine outside the VM sending VXLAN to the host, on B's overlay's VNI, from an address in its
    subnet, gets no answer from B's (internal) task: on a single-node swarm every overlay is encrypted,
    and Docker drops VXLAN that is not IPsec for it (before, the overlay's VXLAN device learned the
    sender and B's task answered it past the proxy); the proxy still reaches B."""
    overlay = fleet.provider.docker.client.networks.get(fleet.overlay(fleet.b))
    assert "encrypted" in overlay.attrs["Options"], (
        f"{overlay.name} is not encrypted: did the swarm have another node when it was made (a two-node "
        "test running alongside)? `docker node ls`"
    )
    _inject(fleet)
    assert fleet.provider.greeting(fleet.b) == "hello, Ada"


def _inject(fleet: Fleet) -> None:
    """From a namespace outside the VM, speak VXLAN to the host on B's overlay as an address of its
    subnet (B's task learns it from our ARP request) and send B's task an MCP initialize."""
    overlay = fleet.provider.docker.client.networks.get(fleet.overlay(fleet.b))
    vni = int(overlay.attrs["Options"][VXLAN_IDS].split(",")[0])
    subnet = ipaddress.IPv4Network(overlay.attrs["IPAM"]["Config"][0]["Subnet"])
    target = f"{fleet.address(fleet.b)}:{ECHO_PORT}"
    mac = fleet.task(fleet.b).attrs["NetworkSettings"]["Networks"][fleet.overlay(fleet.b)]["MacAddress"]
    with outside(free_port()) as there, vxlan_peer(there, vni, f"{subnet[-6]}/{subnet.prefixlen}") as device:
        exchange_in(there.namespace, [target], timeout=1.0)  # its ARP request: B's task learns our address
        ip("-n", there.namespace, "neigh", "replace", target.split(":")[0], "lladdr", mac, "dev", device)
        _not_ours(exchange_in(there.namespace, [target], INITIALIZE))
