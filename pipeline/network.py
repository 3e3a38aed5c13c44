"""Per-server networks: each server's containers join a bridge network of their own, and nothing else.

`cmcp-<instance>-<server>` is `internal` (no route out of the VM); a manifest's `run.network:
egress` gives `cmcp-<instance>-<server>.egress` instead (a dot, which no server name holds: with
`-egress`, server `x-egress`'s network was server `x`'s egress network, shared). Each gets a small
explicit subnet from deploy.yaml's `network.pool` (Docker's own pools run out at about 30 networks)
and a bridge interface named `cmcp<hash>`, so the firewall (firewall.py) can hold every one of them
to the same rules. No port is published: the proxy reaches a container at its address on its
network, which the host routes to, internal networks included. Docker's own rules keep one bridge
from another; the firewall keeps them from the host and from link-local and metadata addresses.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from pipeline.config.settings import HostService, NetworkConfig, Settings
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_SERVER, DockerHost
from pipeline.errors import DockerError, NetworkError
from pipeline.hostrelay import HostRelays

NAME_PREFIX = "cmcp"
BRIDGE_PREFIX = "cmcp"  # the firewall matches `cmcp+`; interface names hold 15 characters
EGRESS_SUFFIX = ".egress"  # not a DNS label's character: no server name ends with it
LABEL_EGRESS = "central-mcp.egress"
CREATE_ATTEMPTS = 8  # another instance may take the same free subnet between our look and our create


@dataclass(frozen=True)
class ServerNetwork:
    """One server's network: where its containers are, and the gateway the host answers on."""

    name: str
    server: str
    subnet: ipaddress.IPv4Network
    gateway: str
    egress: bool

    @property
    def bridge(self) -> str:
        """The bridge interface's name on the host."""
        return bridge_name(self.name)


def network_name(instance: str, server: str, egress: bool) -> str:
    """The name of a server's network (`cmcp-<instance>-<server>[.egress]`)."""
    return f"{NAME_PREFIX}-{instance}-{server}{EGRESS_SUFFIX if egress else ''}"


def bridge_name(network: str) -> str:
    """The host interface of a network: `cmcp` and 11 hex digits of its name's hash."""
    return BRIDGE_PREFIX + hashlib.sha1(network.encode()).hexdigest()[: 15 - len(BRIDGE_PREFIX)]


def free_subnet(pool: ipaddress.IPv4Network, prefix: int, used: Iterable[str]) -> ipaddress.IPv4Network:
    """The first subnet of `pool` of size `prefix` that overlaps none of `used`."""
    taken = [ipaddress.ip_network(u, strict=False) for u in used]
    taken4 = [t for t in taken if isinstance(t, ipaddress.IPv4Network) and t.overlaps(pool)]
    for subnet in pool.subnets(new_prefix=prefix):
        if not any(subnet.overlaps(t) for t in taken4):
            return subnet
    count = 2 ** (prefix - pool.prefixlen)
    raise NetworkError(
        f"the server network pool {pool} is full ({count} subnets of /{prefix} in use): "
        "widen network.pool in deploy.yaml, or remove servers"
    )


class Networks:
    """The server networks of one provider instance and the host-service relays on their gateways."""

    def __init__(self, docker: DockerHost, settings: Settings, instance: str, relays: HostRelays) -> None:
        self.docker = docker
        self.settings = settings
        self.instance = instance
        self.relays = relays
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._create = threading.Lock()

    @contextmanager
    def joining(self, server: str, egress: bool, services: Iterable[str]) -> Iterator[ServerNetwork]:
        """Make sure the server's network and its relays exist, and hold it while a container joins."""
        with self._lock(server):
            net = self.ensure(server, egress)
            self.relays.open(net, self.granted(server, services))
            yield net

    def granted(self, server: str, names: Iterable[str]) -> list[HostService]:
        """The host services `names` of `server`, each checked against deploy.yaml's grants."""
        found: list[HostService] = []
        for name in names:
            service = self.settings.host_service(name)
            if service is None or not service.grants(server):
                raise NetworkError(
                    f"{server}: deploy.yaml does not grant host service {name!r} to it; "
                    f"add {server!r} to host_services.{name}.servers"
                )
            found.append(service)
        return found

    def ensure(self, server: str, egress: bool) -> ServerNetwork:
        """Return the server's network, creating it with a free subnet of the pool when missing."""
        name = network_name(self.instance, server, egress)
        if (found := self._existing(name, server, egress)) is not None:
            return found
        cfg = self.settings.network
        with self._create:
            if (found := self._existing(name, server, egress)) is not None:  # made while we waited
                return found
            last: DockerError | None = None
            for _ in range(CREATE_ATTEMPTS):
                subnet = free_subnet(
                    ipaddress.IPv4Network(cfg.pool), cfg.subnet_prefix, self.docker.subnets()
                )
                try:
                    attrs = self.docker.create_network(
                        name,
                        str(subnet),
                        str(subnet.network_address + 1),
                        internal=not egress,
                        bridge=bridge_name(name),
                        labels={
                            LABEL_INSTANCE: self.instance,
                            LABEL_SERVER: server,
                            LABEL_EGRESS: str(egress),
                        },
                    )
                    return _parsed(attrs, server, egress)
                except DockerError as exc:
                    last = exc
                    made = self.docker.network(name)  # another instance may have made it
                    if made is not None:
                        return _parsed(made, server, egress)
        raise NetworkError(f"could not create network {name} for {server}: {last}")

    def prune(self, wanted: Mapping[str, Iterable[str]], server: str | None = None) -> list[str]:
        """Remove this instance's networks (of `server`, or all) that no container uses; keep each live
        server's relays to what its live manifest names (`wanted`); return the removed names."""
        labels = {LABEL_INSTANCE: self.instance} | ({LABEL_SERVER: server} if server else {})
        removed: list[str] = []
        for attrs in self.docker.networks(labels):
            owner = str((attrs.get("Labels") or {}).get(LABEL_SERVER, ""))
            with self._lock(owner):
                fresh = self.docker.network(str(attrs["Name"]))
                if fresh is None:
                    continue
                if fresh.get("Containers"):
                    self.relays.keep(str(fresh["Name"]), set(wanted.get(owner, ())))
                    continue
                self.relays.close(str(fresh["Name"]))
                self.docker.remove_network(str(fresh["Name"]))
                removed.append(str(fresh["Name"]))
        return removed

    def reopen(self, live: Mapping[str, tuple[bool, tuple[str, ...]]]) -> None:
        """Open the relays of every live server's network (at start-up): server → (egress, services)."""
        for server, (egress, services) in live.items():
            if services:
                with self.joining(server, egress, services):
                    pass

    def _existing(self, name: str, server: str, egress: bool) -> ServerNetwork | None:
        """The network `name` if it exists (refused when its subnet is outside the pool)."""
        attrs = self.docker.network(name)
        if attrs is None:
            return None
        net = _parsed(attrs, server, egress)
        cfg = self.settings.network
        if not net.subnet.subnet_of(pool_of(cfg)):
            raise NetworkError(
                f"network {name} has subnet {net.subnet}, outside network.pool {cfg.pool}, so the "
                f"firewall does not cover it: remove it (`docker network rm {name}`, after "
                f"stopping its containers) and deploy again"
            )
        return net

    def _lock(self, server: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(server, threading.Lock())


def _parsed(attrs: Mapping[str, object], server: str, egress: bool) -> ServerNetwork:
    ipam = attrs.get("IPAM") or {}
    configs = ipam.get("Config") if isinstance(ipam, dict) else None
    config = configs[0] if isinstance(configs, list) and configs else {}
    try:
        subnet = ipaddress.IPv4Network(str(config.get("Subnet")))
        gateway = str(config.get("Gateway") or subnet.network_address + 1)
    except ValueError as exc:
        raise NetworkError(f"network {attrs.get('Name')} has no IPv4 subnet ({exc}); remove it") from exc
    return ServerNetwork(str(attrs.get("Name")), server, subnet, gateway, egress)


def pool_of(config: NetworkConfig) -> ipaddress.IPv4Network:
    """The pool server subnets come from."""
    return ipaddress.IPv4Network(config.pool)
