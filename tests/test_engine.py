"""Engine and base-image set-up: what `make` runs before the suite (the real engine answers here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline import baseimage, engine
from pipeline.dockerhost import DockerHost
from pipeline.errors import DockerError, EngineUnavailable
from tests.support.swarmnodes import require_manager


@pytest.mark.docker
def test_an_answering_engine_is_used_as_it_is(docker_host: DockerHost) -> None:
    """With an engine up, ensure_engine returns at once and says nothing."""
    said: list[str] = []
    host = engine.ensure_engine(said.append)
    host.ping()
    assert said == []


@pytest.mark.docker
def test_a_present_base_image_is_not_made_again(docker_host: DockerHost, tmp_path: object) -> None:
    """ensure_base_image leaves an existing base image alone and says so."""
    said: list[str] = []
    assert docker_host.image_exists(baseimage.BASE_IMAGE)
    assert baseimage.ensure_base_image(docker_host, tmp_path, said.append) is False  # type: ignore[arg-type]
    assert said == [f"base image {baseimage.BASE_IMAGE} is present"]


@pytest.mark.docker
def test_the_base_image_carries_its_version_and_byte_compiled_sdk(docker_host: DockerHost) -> None:
    """The base image is labelled with BASE_VERSION and its SDK ships compiled bytecode."""
    labels = docker_host.image_labels(baseimage.BASE_IMAGE)
    assert labels[baseimage.LABEL_BASE_VERSION] == baseimage.BASE_VERSION
    site = f"/usr/local/lib/python{baseimage.PYTHON_VERSION}/dist-packages/mcp/__pycache__"
    listing = docker_host.client.containers.run(
        baseimage.BASE_IMAGE, ["ls", site], remove=True, network_mode="none"
    ).decode()
    assert any(name.startswith("__init__.cpython-311") for name in listing.split())


def test_a_base_image_of_an_older_version_is_made_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An image labelled with an older base version is rebuilt, and the operator is told why."""

    class OldImage:
        def image_exists(self, tag: str) -> bool:
            return True

        def image_labels(self, tag: str) -> dict[str, str]:
            return {baseimage.LABEL_BASE_VERSION: "1"}

    class Making(Exception):
        pass

    def download(target: Path, say: object) -> Path:
        raise Making

    monkeypatch.setattr(baseimage, "download_wheels", download)
    said: list[str] = []
    with pytest.raises(Making):
        baseimage.ensure_base_image(OldImage(), tmp_path, said.append)  # type: ignore[arg-type]
    assert (
        said[0] == f"base image {baseimage.BASE_IMAGE} is version 1; making version {baseimage.BASE_VERSION}"
    )


def test_without_an_engine_and_without_root_the_message_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-root user with no engine is told to use sudo, and nothing is installed."""

    def no_engine() -> DockerHost:
        raise EngineUnavailable("no engine")

    monkeypatch.setattr(engine, "DockerHost", no_engine)
    monkeypatch.setattr("pipeline.engine.os.geteuid", lambda: 1000)
    with pytest.raises(EngineUnavailable, match="sudo make run"):
        engine.ensure_engine(lambda text: None)


def test_a_failing_setup_command_is_reported_with_its_output() -> None:
    """A set-up command that fails is translated into a DockerError naming what could not be done."""
    with pytest.raises(DockerError, match="could not pack the root file system: `sh` exited 3: boom"):
        baseimage._check(["sh", "-c", "echo boom >&2; exit 3"], "pack the root file system")


def test_a_base_image_of_a_newer_version_is_kept(tmp_path: Path) -> None:
    """A base image labelled newer than this checkout's (made by a newer provider) is never downgraded."""

    class NewerImage:
        def image_exists(self, tag: str) -> bool:
            return True

        def image_labels(self, tag: str) -> dict[str, str]:
            return {baseimage.LABEL_BASE_VERSION: str(int(baseimage.BASE_VERSION) + 1)}

    said: list[str] = []
    assert baseimage.ensure_base_image(NewerImage(), tmp_path, said.append) is False  # type: ignore[arg-type]
    assert said == [f"base image {baseimage.BASE_IMAGE} is present"]


def test_the_node_base_image_is_made_with_nodejs_python_and_webcrypto(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`base-image --runtime node` debootstraps nodejs and python3 and sets NODE_OPTIONS and its own label."""

    class NoImage:
        def image_exists(self, tag: str) -> bool:
            return False

    made: list[object] = []
    monkeypatch.setattr(baseimage, "download_wheels", lambda target, say: target)
    monkeypatch.setattr(baseimage, "_debootstrap", lambda rootfs, include, say: made.append(include))

    class Stop(Exception):
        pass

    def install(rootfs: Path, wheels: Path) -> None:
        raise Stop

    monkeypatch.setattr(baseimage, "_install_sdk", install)
    said: list[str] = []
    with pytest.raises(Stop):
        baseimage.ensure_base_image(NoImage(), tmp_path, said.append, runtime=baseimage.NODE)  # type: ignore[arg-type]
    assert made == [("nodejs", "python3", "ca-certificates")]
    assert said[0].startswith(
        f"making base image {baseimage.NODE_IMAGE}: debootstrap bookworm + nodejs + python3"
    )
    changes = baseimage._changes(baseimage.NODE)
    assert "ENV NODE_OPTIONS=--experimental-global-webcrypto" in changes
    assert (
        f'LABEL central-mcp.role="base" {baseimage.LABEL_BASE_VERSION}="{baseimage.NODE_BASE_VERSION}"'
        in changes
    )


class FakeSwarm:
    """The docker SDK's `client.swarm`: records init, holds join tokens."""

    def __init__(self, client: FakeSwarmClient) -> None:
        self.client = client
        self.inits: list[dict[str, object]] = []
        self.attrs: dict[str, object] = {}

    def init(self, **kwargs: object) -> str:
        self.inits.append(kwargs)
        self.client.state = {
            "LocalNodeState": "active",
            "ControlAvailable": True,
            "NodeID": "node1",
            "NodeAddr": str(kwargs["advertise_addr"]),
        }
        return "node1"

    def reload(self) -> None:
        self.attrs = {"JoinTokens": {"Worker": "SWMTKN-worker", "Manager": "SWMTKN-manager"}}


class FakeSwarmClient:
    """A docker client whose `info()` reports a given swarm state."""

    def __init__(self, state: dict[str, object]) -> None:
        self.state = state
        self.swarm = FakeSwarm(self)

    def info(self) -> dict[str, object]:
        return {"Swarm": self.state}


def _swarm_host(state: dict[str, object]) -> tuple[DockerHost, FakeSwarmClient]:
    client = FakeSwarmClient(state)
    return DockerHost(client), client  # type: ignore[arg-type]


def test_an_engine_outside_any_swarm_becomes_a_manager_and_prints_the_join_line() -> None:
    """An inactive engine is initialised with the address and pool given, and the join line printed."""
    host, client = _swarm_host({"LocalNodeState": "inactive"})
    said: list[str] = []
    info = engine.ensure_swarm(host, said.append, "192.0.2.9", "10.215.0.0/16")
    assert client.swarm.inits == [
        {"advertise_addr": "192.0.2.9", "default_addr_pool": ["10.215.0.0/16"], "subnet_size": 24}
    ]
    assert info == engine.SwarmInfo("node1", "192.0.2.9", True, "SWMTKN-worker")
    assert "docker swarm join --token SWMTKN-worker 192.0.2.9:2377" in "\n".join(said)
    assert any("2377/tcp" in line and "7946/tcp+udp" in line and "4789/udp" in line for line in said)


def test_the_default_pool_and_the_default_route_address_are_used_when_none_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without options the pool is DEFAULT_SWARM_POOL and the address the default route's."""
    monkeypatch.setattr(engine, "default_advertise_addr", lambda: "192.0.2.44")
    host, client = _swarm_host({"LocalNodeState": "inactive"})
    engine.ensure_swarm(host, lambda line: None)
    assert client.swarm.inits[0]["advertise_addr"] == "192.0.2.44"
    assert client.swarm.inits[0]["default_addr_pool"] == [engine.DEFAULT_SWARM_POOL]


def test_a_manager_is_left_as_it_is() -> None:
    """An engine already managing a swarm is not initialised again; its node and address are told."""
    state = {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "n7", "NodeAddr": "192.0.2.2"}
    host, client = _swarm_host(state)
    said: list[str] = []
    info = engine.ensure_swarm(host, said.append, "192.0.2.3")
    assert client.swarm.inits == []
    assert info.node_id == "n7" and info.advertise_addr == "192.0.2.2" and info.manager
    assert "this engine is already a swarm manager: left as it is" in said
    assert any("--advertise-addr 192.0.2.3 not applied" in line for line in said)


@pytest.mark.parametrize(
    ("state", "hint"),
    [
        (
            {
                "LocalNodeState": "active",
                "ControlAvailable": False,
                "RemoteManagers": [{"Addr": "192.0.2.5:2377"}],
            },
            "swarm worker (managers: 192.0.2.5:2377)",
        ),
        ({"LocalNodeState": "error", "Error": "raft broke"}, "in state 'error' (raft broke)"),
        ({"LocalNodeState": "locked"}, "docker swarm unlock"),
        ({"LocalNodeState": "pending"}, "still joining a swarm"),
    ],
)
def test_a_worker_or_a_broken_swarm_is_refused_with_what_to_do(state: dict[str, object], hint: str) -> None:
    """A worker, a locked, pending or failed swarm raises EngineUnavailable naming the way out."""
    host, client = _swarm_host(state)
    with pytest.raises(EngineUnavailable, match=re.escape(hint)):
        engine.ensure_swarm(host, lambda line: None)
    assert client.swarm.inits == []


@pytest.mark.parametrize("addr", ["127.0.0.1", "0.0.0.0", "169.254.1.1", "::1", "vm.example"])
def test_an_advertise_address_other_nodes_cannot_reach_is_refused(addr: str) -> None:
    """Loopback, unspecified, link-local, IPv6 and names are refused before anything changes."""
    host, client = _swarm_host({"LocalNodeState": "inactive"})
    with pytest.raises(EngineUnavailable, match="advertise-addr"):
        engine.ensure_swarm(host, lambda line: None, addr)
    assert client.swarm.inits == []


@pytest.mark.parametrize(
    ("pool", "hint"),
    [
        ("10.213.0.0/16", "overlaps 10.213.0.0/16"),
        ("10.214.0.0/24", "wider than one /24"),
        ("nope", "not an IPv4"),
    ],
)
def test_a_pool_that_clashes_or_is_too_small_is_refused(pool: str, hint: str) -> None:
    """The pool must be IPv4, wider than a /24 and clear of network.pool."""
    host, client = _swarm_host({"LocalNodeState": "inactive"})
    with pytest.raises(EngineUnavailable, match=re.escape(hint)):
        engine.ensure_swarm(host, lambda line: None, "192.0.2.9", pool, avoid=("10.213.0.0/16",))
    assert client.swarm.inits == []


def test_the_default_advertise_address_is_never_loopback() -> None:
    """Here the default route's interface holds a real address, not 127.0.0.1."""
    addr = engine.default_advertise_addr()
    assert not addr.startswith("127.")


@pytest.mark.docker
def test_the_real_engine_already_a_manager_is_left_as_it_is(docker_host: DockerHost) -> None:
    """Against the real engine (a swarm manager in CI) ensure_swarm changes nothing and says so."""
    before = require_manager(docker_host)  # never init a swarm on an engine that is not one
    said: list[str] = []
    info = engine.ensure_swarm(docker_host, said.append)
    after = docker_host.client.info()["Swarm"]
    assert info.manager and info.node_id == before["NodeID"] == after["NodeID"]
    assert after["Cluster"]["Version"] == before["Cluster"]["Version"]
    assert info.worker_token.startswith("SWMTKN-")
    assert "this engine is already a swarm manager: left as it is" in said
