"""Make sure a Docker engine answers (install Debian's docker.io and start dockerd if needed), and
make it a single-node Swarm manager on request (`central-mcp engine --swarm`)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dockerhost import DockerHost, translated
from pipeline.errors import EngineUnavailable

ENGINE_START_TIMEOUT = 60.0
DOCKERD_LOG = Path("/var/log/central-mcp-dockerd.log")
DEFAULT_SWARM_POOL = "10.214.0.0/16"  # clear of network.pool 10.213/16, Docker's 172.17-31/16, 10.0/16 VPCs
SWARM_SUBNET_SIZE = 24  # each overlay network gets a /24 of the pool
SWARM_PORT = 2377  # managers: cluster management (tcp)
ROUTE_PROBE = (
    "203.0.113.1"  # TEST-NET-3: a UDP connect() to it picks the default route's source, sends nothing
)
SWARM_FIREWALL = (
    "between the swarm's nodes only (never from the internet): 2377/tcp to managers, "
    "7946/tcp+udp (node gossip) and 4789/udp (overlay VXLAN) both ways"
)


@dataclass(frozen=True)
class SwarmInfo:
    """This engine's place in its swarm."""

    node_id: str
    advertise_addr: str
    manager: bool
    worker_token: str = ""  # what a worker joins with ("" unless a manager)

    @property
    def join_command(self) -> str:
        """The line an operator runs on another VM to join it as a worker."""
        return f"docker swarm join --token {self.worker_token} {self.advertise_addr}:{SWARM_PORT}"


def ensure_engine(say: Callable[[str], None], *, wait: float = ENGINE_START_TIMEOUT) -> DockerHost:
    """Return a DockerHost whose engine answers, installing and starting dockerd when needed."""
    try:
        host = DockerHost()
        host.ping()
        return host
    except EngineUnavailable:
        pass
    if os.geteuid() != 0:
        raise EngineUnavailable(
            "no Docker engine answers, and starting one needs root: run `sudo make run`, "
            "or `sudo apt-get install docker.io && sudo systemctl start docker`"
        )
    if shutil.which("dockerd") is None:
        say(
            "no Docker engine answers and dockerd is missing: installing Debian's docker.io "
            "(apt-get, needs root — running as root)"
        )
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "install", "-y", "-qq", "docker.io"])
    say(f"starting dockerd in the background (log: {DOCKERD_LOG})")
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + wait
    while True:
        try:
            host = DockerHost()
            host.ping()
            say("Docker engine is up")
            return host
        except EngineUnavailable:
            if time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"dockerd did not answer within {wait:.0f}s; see {DOCKERD_LOG}"
                ) from None
            time.sleep(0.5)


def ensure_swarm(
    host: DockerHost,
    say: Callable[[str], None],
    advertise_addr: str | None = None,
    pool: str | None = None,
    *,
    avoid: Sequence[str] = (),
) -> SwarmInfo:
    """Make the engine a single-node swarm manager unless it is one; refuse a worker or a broken swarm.

    `avoid` lists subnets the pool must not overlap (network.pool: the per-server bridges)."""
    state = _swarm_state(host)
    if state.get("LocalNodeState") == "inactive":
        addr = check_advertise_addr(advertise_addr or default_advertise_addr())
        subnet_pool = check_pool(pool or DEFAULT_SWARM_POOL, avoid)
        say(f"making this engine a single-node swarm manager on {addr}, overlay subnets from {subnet_pool}")
        with translated("swarm init"):
            host.client.swarm.init(
                advertise_addr=addr, default_addr_pool=[subnet_pool], subnet_size=SWARM_SUBNET_SIZE
            )
        state = _swarm_state(host)
    else:
        _refuse_unless_manager(state)
        say("this engine is already a swarm manager: left as it is")
    info = _manager_info(host, state)
    if advertise_addr and advertise_addr != info.advertise_addr:
        say(f"note: --advertise-addr {advertise_addr} not applied; the swarm keeps {info.advertise_addr}")
    say(f"swarm manager: node {info.node_id}, advertised on {info.advertise_addr}:{SWARM_PORT}")
    say(f"to add a worker VM, run there: {info.join_command}")
    say(f"firewall: allow {SWARM_FIREWALL}")
    return info


def default_advertise_addr(probe: str = ROUTE_PROBE) -> str:
    """The IPv4 address of the interface holding the default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((probe, 9))
        except OSError as exc:
            raise EngineUnavailable(
                f"no default route to pick a swarm advertise address from ({exc}): "
                "give one with --advertise-addr ADDR (an address the other VMs reach)"
            ) from exc
        addr: str = sock.getsockname()[0]
    return addr


def check_advertise_addr(addr: str) -> str:
    """An IPv4 unicast address other nodes can reach: never loopback, unspecified or link-local."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise EngineUnavailable(f"--advertise-addr {addr!r} is not an IP address") from None
    if ip.version != 4 or ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast:
        raise EngineUnavailable(
            f"--advertise-addr {addr} cannot be reached by other nodes (workers cannot join a manager "
            "advertised on loopback): give the VM's private-network IPv4 address"
        )
    return addr


def check_pool(pool: str, avoid: Sequence[str] = ()) -> str:
    """An IPv4 pool wider than one overlay subnet, overlapping none of `avoid`."""
    try:
        net = ipaddress.IPv4Network(pool)
    except ValueError:
        raise EngineUnavailable(
            f"--address-pool {pool!r} is not an IPv4 network (e.g. {DEFAULT_SWARM_POOL})"
        ) from None
    if net.prefixlen >= SWARM_SUBNET_SIZE:
        raise EngineUnavailable(
            f"--address-pool {pool} must be wider than one /{SWARM_SUBNET_SIZE} overlay subnet"
        )
    for other in avoid:
        if net.overlaps(ipaddress.IPv4Network(other)):
            raise EngineUnavailable(
                f"--address-pool {pool} overlaps {other} (deploy.yaml network.pool): choose another, "
                f"e.g. {DEFAULT_SWARM_POOL}"
            )
    return str(net)


def _swarm_state(host: DockerHost) -> dict[str, Any]:
    with translated("engine info"):
        info: dict[str, Any] = host.client.info()
    swarm: dict[str, Any] = info.get("Swarm") or {}
    return swarm


def _refuse_unless_manager(state: dict[str, Any]) -> None:
    local = state.get("LocalNodeState", "")
    if local == "active" and state.get("ControlAvailable"):
        return
    if local == "active":
        managers = ", ".join(m.get("Addr", "?") for m in state.get("RemoteManagers") or []) or "unknown"
        raise EngineUnavailable(
            f"this engine is a swarm worker (managers: {managers}): run `central-mcp engine --swarm` "
            "on a manager VM, or `docker swarm leave` here first to make this VM a manager"
        )
    if local == "locked":
        raise EngineUnavailable(
            "this engine's swarm is locked: run `docker swarm unlock` with its unlock key"
        )
    if local == "pending":
        raise EngineUnavailable(
            "this engine is still joining a swarm: wait and run again, or `docker swarm leave --force`"
        )
    error = state.get("Error") or "no detail"
    raise EngineUnavailable(
        f"this engine's swarm is in state {local or 'unknown'!r} ({error}): fix it (`docker info`), or "
        "`docker swarm leave --force` and run `central-mcp engine --swarm` again"
    )


def _manager_info(host: DockerHost, state: dict[str, Any]) -> SwarmInfo:
    with translated("swarm inspect"):
        host.client.swarm.reload()
        tokens: dict[str, str] = host.client.swarm.attrs.get("JoinTokens") or {}
    return SwarmInfo(
        node_id=str(state.get("NodeID", "")),
        advertise_addr=str(state.get("NodeAddr", "")),
        manager=True,
        worker_token=tokens.get("Worker", ""),
    )


def _run(argv: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EngineUnavailable(
            f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()[-800:]}"
        )
