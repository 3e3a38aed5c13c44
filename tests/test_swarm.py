"""The Swarm engine's decisions without an engine: names, the task template, task states.

The real engine's behaviour (services, the relay, secrets, two nodes) is proven in
tests/e2e (tests marked `swarm`) and tests/e2e/test_swarm_nodes_e2e.py.
"""

from __future__ import annotations

import types
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import docker.errors
import pytest

from pipeline import swarmrelay
from pipeline.config import settings as settings_mod
from pipeline.config.settings import Settings, SwarmConfig
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_SERVER, DockerHost, RunSpec
from pipeline.errors import DockerError
from pipeline.swarm import (
    DNS_LABEL,
    LABEL_OVERLAY,
    LABEL_SECRET_OF,
    RELAY_MEMORY,
    SECRETS_SHIM,
    NodeEngine,
    SwarmHost,
    overlay_name,
    relay_memory,
    service_name,
)


class _Api:
    def __init__(self, tasks: list[dict[str, Any]], networks: list[dict[str, Any]]) -> None:
        self.listed = tasks
        self.listed_networks = networks

    def tasks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return self.listed

    def networks(self, names: list[str]) -> list[dict[str, Any]]:
        return [n for n in self.listed_networks if any(name in n["Name"] for name in names)]  # as Docker's


class _Secrets(_Api):
    """Secrets as the engine keeps them, and a service create the engine refuses."""

    def __init__(self) -> None:
        super().__init__([], [])
        self.held: dict[str, dict[str, str]] = {}
        self.running: list[str] = []

    def create_secret(self, name: str, data: bytes, labels: dict[str, str]) -> dict[str, str]:
        self.held[name] = labels
        return {"ID": name}

    def secrets(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        key, _, value = filters["label"].partition("=")
        held = self.held.items()
        return [{"ID": n, "Spec": {"Name": n, "Labels": ls}} for n, ls in held if ls.get(key) == value]

    def services(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return [{"Spec": {"Name": name}} for name in self.running]

    def remove_secret(self, secret_id: str) -> None:
        del self.held[secret_id]


class _Refusing:
    def create(self, image: str, **spec: Any) -> None:
        raise docker.errors.APIError("refused", explanation="ContainerSpec: duplicate mount point: /tmp")


class _Networks:
    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self, name: str, **options: Any) -> None:
        self.created.append(name)


class _Client:
    def __init__(self, tasks: list[dict[str, Any]], networks: list[dict[str, Any]]) -> None:
        self.api = _Api(tasks, networks)
        self.networks = _Networks()


def _host(
    tasks: list[dict[str, Any]] | None = None, networks: list[dict[str, Any]] | None = None
) -> SwarmHost:
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path("/tmp/x"))
    return SwarmHost(settings, "abcd1234", _Client(tasks or [], networks or []))  # type: ignore[arg-type]


def _task(state: str, created: str) -> dict[str, Any]:
    return {"CreatedAt": created, "Status": {"State": state, "Message": state}}


def test_overlay_names_are_dns_labels_apart_for_egress_and_per_server() -> None:
    names = {overlay_name("abcd1234", s, e) for s in ("a", "a-egress", "b") for e in (False, True)}
    assert len(names) == 6
    assert all(len(n) <= DNS_LABEL and "." not in n for n in names)
    assert overlay_name("abcd1234", "a", True).endswith("-e")


def test_an_overlay_name_holds_128_bits_of_its_server_so_no_name_can_be_searched_for_anothers() -> None:
    digest = overlay_name("abcd1234", "victim", False).removeprefix("cmcp-abcd1234-ov-")
    assert len(digest) >= 32 and int(digest, 16) >= 0
    assert len(overlay_name("abcd1234", "v" * 63, True)) <= DNS_LABEL


def test_a_replica_never_joins_an_overlay_of_that_name_made_for_another_server() -> None:
    name = overlay_name("abcd1234", "victim", False)
    victims = {"Name": name, "Labels": {LABEL_OVERLAY: "abcd1234", LABEL_SERVER: "victim"}}
    host = _host(networks=[victims])
    with pytest.raises(DockerError, match=f"{name} exists but is not this instance's overlay of hostile"):
        host._overlay(name, False, "hostile")
    host._overlay(name, False, "victim")  # its own: joined as it is
    assert cast(_Networks, host.client.networks).created == []


def test_an_overlay_whose_name_only_contains_the_wanted_one_is_not_taken_for_it() -> None:
    name = overlay_name("abcd1234", "a", False)
    other = {"Name": f"x{name}", "Labels": {LABEL_OVERLAY: "abcd1234", LABEL_SERVER: "a"}}
    host = _host(networks=[other])
    host._overlay(name, False, "a")
    assert cast(_Networks, host.client.networks).created == [name]


class _RefusingClient:
    def __init__(self) -> None:
        self.api = _Secrets()
        self.services = _Refusing()
        self.images = types.SimpleNamespace(get=lambda ref: types.SimpleNamespace(id="sha256:1", attrs={}))


def test_a_service_the_engine_refuses_leaves_no_swarm_secret_behind() -> None:
    client = _RefusingClient()
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path("/tmp/x"))
    host = SwarmHost(settings, "abcd1234", client)  # type: ignore[arg-type]
    host._placement = lambda image_id, spec: []  # type: ignore[method-assign]
    host._overlay = lambda name, egress, server: None  # type: ignore[method-assign]
    host.relay = lambda: cast(Any, None)  # type: ignore[method-assign]
    host._connect = lambda relay, network: None  # type: ignore[method-assign]
    host._free_port = lambda: 20000  # type: ignore[method-assign]
    with pytest.raises(DockerError, match="duplicate mount point"):
        host.run(_spec(network="cmcp-abcd1234-ov-x", secret_env={"TOKEN": "s3cret", "KEY": "k"}))
    assert client.api.held == {}


def test_tending_removes_the_secrets_of_services_that_are_gone_and_keeps_the_others() -> None:
    client = _RefusingClient()
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path("/tmp/x"))
    host = SwarmHost(settings, "abcd1234", client)  # type: ignore[arg-type]
    mine = {LABEL_INSTANCE: "abcd1234"}
    client.api.held = {
        "live": {**mine, LABEL_SECRET_OF: "cmcp-abcd1234-echo-r2-d7"},
        "orphan": {**mine, LABEL_SECRET_OF: "cmcp-abcd1234-echo-r1-d6"},  # serve died before its service
        "other": {LABEL_INSTANCE: "ffff0000", LABEL_SECRET_OF: "cmcp-ffff0000-echo-r1-d1"},
    }
    client.api.running = ["cmcp-abcd1234-echo-r2-d7"]
    assert host.prune_secrets() == ["orphan"]
    assert set(client.api.held) == {"live", "other"}


class _Unreachable(NodeEngine):
    def copy_image_from(self, source: Any, tag: str, image_id: str) -> str:
        raise AssertionError(f"node {self.name} was dialled though the swarm reports it down")

    def remove_image(self, tag: str) -> None:
        raise AssertionError(f"node {self.name} was dialled though the swarm reports it down")


class _Nodes(_Api):
    def nodes(self) -> list[dict[str, Any]]:
        return [{"ID": "M", "Status": {"State": "ready"}}, {"ID": "W1", "Status": {"State": "down"}}]

    def services(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return []  # no other replica of the release yet


class _Images:
    def __init__(self, tags: set[str]) -> None:
        self.tags = tags

    def get(self, tag: str) -> object:
        if tag not in self.tags:
            raise docker.errors.ImageNotFound(tag)
        return object()

    def remove(self, tag: str, force: bool) -> None:
        self.tags.discard(tag)


def test_retention_removes_an_image_from_every_node_it_was_copied_to_too() -> None:
    tag = "central-mcp-server/echo-abcd12:r1-aaaa"
    here, there = _Images({tag, "kept"}), _Images({tag, "kept"})
    settings = Settings(
        config_path=Path("deploy.yaml"), state_dir=Path("/tmp/x"), swarm=SwarmConfig(nodes={"w1": "tcp://w1"})
    )
    client = types.SimpleNamespace(images=here, api=_Nodes([], []))
    host = SwarmHost(settings, "abcd1234", client)  # type: ignore[arg-type]
    host._nodes["w1"] = NodeEngine("w1", types.SimpleNamespace(images=there))  # type: ignore[arg-type]
    host.remove_image(tag)
    assert here.tags == {"kept"} and there.tags == {"kept"}
    host._nodes["w1"], host._node_ids["w1"] = _Unreachable("w1", client), "W1"  # type: ignore[arg-type]
    host.remove_image("kept")  # the down node is not dialled


class _Logs(_Api):
    def service_logs(self, service_id: str, **options: Any) -> list[bytes]:
        return []


def test_the_gate_shows_why_a_task_never_started_which_logged_nothing() -> None:
    failed = {
        "CreatedAt": "2026-01-01T00:00:01Z",
        "Status": {"State": "failed", "Err": 'starting container failed: exec: "/bin/sh": no such file'},
    }
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path("/tmp/x"))
    host = SwarmHost(settings, "abcd1234", types.SimpleNamespace(api=_Logs([failed], [])))  # type: ignore[arg-type]
    assert host.logs_tail("svc") == [
        '(its task is failed: starting container failed: exec: "/bin/sh": no such file)'
    ]


def test_the_relays_memory_limit_holds_every_connection_it_admits_backpressured_both_ways() -> None:
    """A backpressured way holds asyncio's 64 KiB high-water mark and one read (measured: 65 KiB)."""
    per_connection = 2 * (64 * 1024 + swarmrelay.CHUNK)
    assert swarmrelay.DEFAULT_MAX_CONNECTIONS * per_connection < RELAY_MEMORY


def test_a_node_the_swarm_reports_down_is_not_dialled_and_gets_no_replica() -> None:
    manager = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True, "NodeID": "M"}}
    client = types.SimpleNamespace(api=_Nodes([], []), info=lambda: manager)
    settings = Settings(
        config_path=Path("deploy.yaml"), state_dir=Path("/tmp/x"), swarm=SwarmConfig(nodes={"w1": "tcp://w1"})
    )
    host = SwarmHost(settings, "abcd1234", client)  # type: ignore[arg-type]
    host._nodes["w1"] = _Unreachable("w1", client)  # type: ignore[arg-type]
    host._node_ids["w1"] = "W1"  # it answered before it went down
    assert host._placement("sha256:1", _spec()) == ["node.id!=W1"]


def test_an_images_volume_at_tmp_is_one_mount_point_not_two_swarm_refuses() -> None:
    image: dict[str, Any] = {"Config": {"Volumes": {"/tmp": {}, "/data/": {}, "/data": {}}}}
    task = _host()._task(_spec(), image, [], [])
    assert [m["Target"] for m in task["mounts"]] == ["/tmp", "/data"]


def test_a_long_container_name_becomes_a_distinct_dns_label() -> None:
    short = "cmcp-abcd1234-echo-r1-d3"
    assert service_name(short) == short
    long_a = f"cmcp-abcd1234-{'x' * 63}-r12-d345"
    long_b = f"cmcp-abcd1234-{'x' * 63}-r12-d346"
    assert len(service_name(long_a)) <= DNS_LABEL
    assert service_name(long_a) != service_name(long_b)


def _spec(**extra: Any) -> RunSpec:
    return RunSpec("img", "cmcp-abcd1234-echo-r1-d1", 8000, {}, {"A": "1"}, 256 * 1024**2, 0.5, **extra)


def test_the_task_template_keeps_the_plain_engines_hardening() -> None:
    task = _host()._task(_spec(command=("python3", "server.py")), {"Config": {}}, [], [])
    assert (task["read_only"], task["cap_drop"], task["init"], task["user"]) == (
        True,
        ["ALL"],
        True,
        "65534:65534",
    )
    assert task["command"] is None and task["args"] == ["python3", "server.py"]
    assert task["resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 256 * 1024**2, "Pids": 256}
    assert [m["Target"] for m in task["mounts"]] == ["/tmp"]
    assert "A=1" in task["env"]


def test_secrets_are_files_read_by_the_shim_never_environment_in_the_spec() -> None:
    image = {"Config": {"Entrypoint": ["tini", "--"], "Cmd": ["node", "index.js"], "Volumes": {"/data": {}}}}
    task = _host()._task(_spec(secret_env={"TOKEN": "s3cret"}), image, [object()], [])
    assert task["command"] == ["/bin/sh", "-c", SECRETS_SHIM, "central-mcp-secrets"]
    assert task["args"] == ["tini", "--", "node", "index.js"]
    assert not any("s3cret" in e for e in task["env"])
    assert [m["Target"] for m in task["mounts"]] == ["/tmp", "/data"]


@pytest.mark.parametrize(
    ("tasks", "status"),
    [
        ([], "missing"),
        ([_task("preparing", "1")], "starting"),
        ([_task("running", "1")], "running"),
        ([_task("failed", "1"), _task("running", "2")], "restarting"),
        ([_task("failed", "1")], "failed"),
        # Docker trims trailing zeros of the fraction: .5 is before .53, though "5Z" > "53Z" as text
        (
            [_task("failed", "2026-01-01T00:00:01.5Z"), _task("running", "2026-01-01T00:00:01.53Z")],
            "restarting",
        ),
        ([_task("running", "2026-01-01T00:00:01.53Z"), _task("failed", "2026-01-01T00:00:02Z")], "failed"),
    ],
)
def test_the_gate_sees_a_task_that_ever_ended_as_restarting(tasks: list[dict[str, Any]], status: str) -> None:
    assert _host(tasks).status("svc") == status


class _Container:
    def __init__(self, cid: str, labels: dict[str, str]) -> None:
        self.id, self.name, self.labels = cid, f"c-{cid}", labels


class _Listed(_Api):
    """A swarm with no service yet, beside containers the plain engine left."""

    def services(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return []


def test_a_plain_engines_containers_are_leftovers_on_swarm_but_tasks_and_the_relay_are_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a switch to `engine: swarm`, the plain engine's replicas are listed as exited (start-up
    and retention remove them); a task's container and the relay are Swarm's own and never listed."""
    host = _host()
    host.client.api = _Listed([], [])  # type: ignore[assignment]
    left = [
        _Container("old", {"central-mcp.instance": "abcd1234", "central-mcp.server": "echo"}),
        _Container("task", {"central-mcp.instance": "abcd1234", "com.docker.swarm.service.id": "s1"}),
        _Container("relay", {"central-mcp.instance": "abcd1234", "central-mcp.role": "swarm-relay"}),
    ]
    monkeypatch.setattr(host, "sync", lambda: None)
    monkeypatch.setattr(DockerHost, "containers", lambda self, labels: left)
    seen = host.containers({"central-mcp.instance": "abcd1234"})
    assert [(c.id, c.status) for c in seen] == [("old", "exited")]


def test_the_relays_cap_and_connect_timeout_come_from_deploy_yaml_and_its_memory_follows(
    tmp_path: Path,
) -> None:
    """swarm.relay_max_connections and relay_connect_timeout reach the relay's environment; a relay
    running with other values is not reused; the memory limit holds every admitted connection."""
    config = tmp_path / "deploy.yaml"
    config.write_text("engine: swarm\nswarm: {relay_max_connections: 4096, relay_connect_timeout: 2s}\n")
    settings = settings_mod.load(config, env={})
    assert (settings.engine, settings.swarm.encrypt) == ("swarm", True)
    host = SwarmHost(settings, "abcd1234", _Client([], []))  # type: ignore[arg-type]
    env = host._relay_config("t" * 32, "10.213.0.1").environment()
    assert (env["RELAY_MAX_CONNECTIONS"], float(env["RELAY_CONNECT_TIMEOUT"])) == ("4096", 2.0)
    assert relay_memory(4096) >= 4096 * 2 * 128 * 1024 > relay_memory(1024)


def test_a_replica_no_node_takes_in_time_is_removed_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task still pending at swarm.start_timeout: its service is removed (it would wait for a node
    forever, and retention leaves a starting service be) and the error says what it waited for."""
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path("/tmp/x"))
    settings = replace(settings, swarm=replace(settings.swarm, start_timeout=0.05))
    pending = [{"CreatedAt": "1", "Status": {"State": "pending", "Message": "no suitable node"}}]
    host = SwarmHost(settings, "abcd1234", _Client(pending, []))  # type: ignore[arg-type]
    removed: list[str] = []
    monkeypatch.setattr(host, "stop_and_remove", lambda cid, grace=0: removed.append(cid))
    relay = SimpleNamespace(host="10.213.0.2")
    with pytest.raises(DockerError, match="pending: no suitable node"):
        host._started("svc1", "cmcp-abcd1234-echo-r1-d1", relay, 20000)  # type: ignore[arg-type]
    assert removed == ["svc1"]


class _Siblings(_Api):
    """One other replica of the release, running on node n1."""

    def services(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"ID": "sibling"}]

    def tasks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return [{"NodeID": "n1", "Status": {"State": "running"}}]


def test_a_replica_goes_beside_its_siblings_only_when_no_other_node_can_take_it() -> None:
    """Each replica is its own service, so Swarm's spread cannot see siblings: a replica is kept off
    the nodes its release's other replicas run on while another node can take it, not otherwise."""
    host = _host()
    host.client.api = _Siblings([], [])  # type: ignore[assignment]
    spec = _spec(command=())
    assert host._beside(spec, {"n1", "n2"}) == ["n1"]
    assert host._beside(spec, {"n1"}) == []
