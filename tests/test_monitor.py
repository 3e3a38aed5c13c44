"""The monitor's decisions with fake Docker and probes: restarts, re-routing, watch-window rollbacks."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline import remote, scaling, stdio
from pipeline.config.settings import MonitorConfig, ProxyTimeouts, Settings
from pipeline.context import Context, DeployRequest
from pipeline.errors import CheckFailed, DockerError, EngineUnavailable, NotMCP
from pipeline.monitor import Monitor
from pipeline.proxy.access import Caller
from pipeline.proxy.router import Router, Upstream
from pipeline.proxy.usage import Usage
from pipeline.secrets import Secrets
from pipeline.states import DeploySource
from pipeline.store import Release, Store
from tests.support.clock import FakeClock
from tests.support.loopback import huge_tools_app, serve_asgi
from tests.support.memory import peak_growth


class FakeDocker:
    """Container states and addresses by id, as Docker would report them."""

    def tend(self) -> None:
        """The plain engine's housekeeping between deploys: none."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.hosts: dict[str, str] = {}
        self.images: set[str] = set()
        self.removed: list[str] = []
        self.cache_kept = 0

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        if container_id not in self.states:
            return None
        return {
            "State": {"Status": self.states[container_id], "ExitCode": 1},
            "Config": {
                "Labels": {"central-mcp.port": str(self.ports[container_id]), "central-mcp.network": "n"}
            },
            "NetworkSettings": {"Networks": {"n": {"IPAddress": self.hosts.get(container_id, "127.0.0.1")}}},
        }

    def image_exists(self, tag: str) -> bool:
        return tag in self.images

    def remove_image(self, tag: str) -> None:
        self.images.discard(tag)
        self.removed.append(tag)

    def containers(self, labels: dict[str, str]) -> list[Any]:
        return []

    def prune_build_cache(self, keep_bytes: int) -> int:
        self.cache_kept = keep_bytes
        return 1234

    def ping(self) -> None:
        raise DockerError("unused")


def release(server: str, number: int, status: str, restart: str = "on-failure") -> Release:
    """A stored release of `server`."""
    return Release(
        server=server,
        number=number,
        repo="repo",
        commit_sha=f"{number:040d}",
        fingerprint=str(number),
        image=f"central-mcp/{server}:r{number}",
        version="1.0.0",
        status=status,
        deploy_id=1,
        container_id=f"c{number}",
        host_port=5000 + number,
        path="/mcp",
        tools=[],
        manifest={"name": server, "run": {"port": 8080, "restart": restart}},
    )


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    """A store with r1 (previous) and r2 (live) of `svc`, a router on r2, and a monitor on fakes."""
    settings = Settings(
        config_path=Path("deploy.yaml"),
        state_dir=tmp_path,
        monitor=MonitorConfig(
            failure_threshold=2, watch_window=60, watch_error_rate=0.5, watch_min_requests=4, watch_restarts=2
        ),
    )
    store = Store(tmp_path / "db.sqlite")
    for number in (1, 2):
        store.add_release(release("svc", number, "candidate"))
        store.commit_swap([release("svc", number, "candidate").placement], [])
    docker = FakeDocker()
    docker.states["c2"], docker.ports["c2"] = "running", 5002
    router = Router()
    router.replace_all([Upstream("svc", 2, "c2", "127.0.0.1", 5002, "/mcp")])
    ctx = Context(settings, store, docker, router, Secrets(tmp_path, {}), "inst")  # type: ignore[arg-type]
    submitted: list[DeployRequest] = []
    failing: dict[str, Exception] = {}

    def probe(url: str, timeout: float) -> None:
        if url in failing:
            raise failing[url]

    def submit(request: DeployRequest) -> int:
        submitted.append(request)
        return len(submitted)

    usage = Usage(store)
    clock = FakeClock()
    monitor = Monitor(
        ctx,
        submit,
        lambda repo: False,
        usage,
        probe=probe,
        clock=clock,
        sleep=clock.sleep,
    )
    return {
        "monitor": monitor,
        "docker": docker,
        "router": router,
        "submitted": submitted,
        "store": store,
        "failing": failing,
        "usage": usage,
        "clock": clock,
        "ctx": ctx,
    }


def test_healthy_server_is_left_alone(world: dict[str, Any]) -> None:
    """A running container that completes the probe is healthy and nothing is submitted."""
    world["monitor"].probe_all()
    assert world["monitor"].health["svc"].status == "healthy"
    assert world["submitted"] == []


def test_failures_past_the_threshold_replace_the_container_with_the_same_release(
    world: dict[str, Any],
) -> None:
    """Two failed probes (the threshold) submit a `restart` deploy of the same release with the reason."""
    world["failing"]["http://127.0.0.1:5002/mcp"] = NotMCP("tools/list answered HTTP 500")
    world["monitor"].probe_all()
    assert world["monitor"].health["svc"].status == "failing" and world["submitted"] == []
    world["monitor"].probe_all()
    (request,) = world["submitted"]
    assert (request.source, request.rollback) == ("restart", ("svc", 2))
    assert "HTTP 500" in request.message


def test_a_dead_container_counts_as_a_failure(world: dict[str, Any]) -> None:
    """An exited container fails the probe without any HTTP call."""
    world["docker"].states["c2"] = "exited"
    world["monitor"].probe_all()
    assert "exited" in world["monitor"].health["svc"].last_error


def test_a_container_caught_being_removed_is_gone(world: dict[str, Any]) -> None:
    """`docker rm -f` seen half-way ("removing") reads as gone, as a moment later, not as an exit."""
    world["docker"].states["c2"] = "removing"
    world["monitor"].probe_all()
    assert world["monitor"].health["svc"].last_error.endswith("gone")


def test_restart_policy_never_is_honoured(world: dict[str, Any]) -> None:
    """A manifest with restart: never is left down, not replaced."""
    store: Store = world["store"]
    store.add_release(release("svc", 3, "candidate", restart="never"))
    store.commit_swap([release("svc", 3, "candidate", restart="never").placement], [])
    world["docker"].states["c3"], world["docker"].ports["c3"] = "exited", 5003
    world["router"].replace_all([Upstream("svc", 3, "c3", "127.0.0.1", 5003, "/mcp")])
    world["monitor"].probe_all()
    world["monitor"].probe_all()
    assert world["submitted"] == [] and world["monitor"].health["svc"].status == "down"


def test_a_moved_address_is_re_routed(world: dict[str, Any]) -> None:
    """When the container comes back at another address on its network (daemon restart) the route follows."""
    world["docker"].hosts["c2"] = "10.213.0.7"
    world["monitor"].probe_all()
    assert (world["router"].get("svc").host, world["router"].get("svc").port) == ("10.213.0.7", 5002)


def test_a_stopped_container_is_replaced_at_the_first_probe(world: dict[str, Any]) -> None:
    """A container that stopped (with the Docker daemon, say) is replaced at once, not after the threshold."""
    world["docker"].states["c2"] = "exited"
    world["monitor"].probe_all()
    assert [(r.source, r.rollback) for r in world["submitted"]] == [("restart", ("svc", 2))]


def test_no_engine_is_no_reason_to_restart(world: dict[str, Any]) -> None:
    """While the Docker engine does not answer, a probe round waits for it (one probe interval at
    most), then gives up without failing or restarting anything."""

    def down(*args: object) -> None:
        raise EngineUnavailable("no Docker engine answers")

    world["docker"].ping = world["docker"].inspect = down
    started = world["clock"]()
    for _ in range(3):
        world["monitor"].probe_all()
    assert world["submitted"] == [] and "svc" not in world["monitor"].health
    assert 3 * 14 <= world["clock"]() - started <= 3 * 15


def test_remote_servers_are_probed_while_no_engine_answers(world: dict[str, Any]) -> None:
    """A remote server needs no Docker: while the engine is away its probe still runs (and fails
    when the remote does), and the containers' probes wait for the engine."""

    def down(*args: object) -> None:
        raise EngineUnavailable("no Docker engine answers")

    world["docker"].ping = world["docker"].inspect = down
    monitor: Monitor = world["monitor"]
    weather = Upstream("weather", 1, "remote:inst:weather:r1", "weather.example", 443, "/mcp")
    world["router"].swap({"weather": replace(weather, remote=remote.Route("https://weather.example/mcp"))})
    asked: list[str] = []

    def failure(upstream: Upstream) -> str:
        asked.append(upstream.server)
        return "remote down"

    monitor._remote_failure = failure  # type: ignore[method-assign]
    monitor.probe_all()
    assert asked == ["weather"]
    assert monitor.health["weather"].status == "failing" and "svc" not in monitor.health


def test_containers_that_stopped_with_the_engine_are_replaced_as_it_comes_back(world: dict[str, Any]) -> None:
    """A probe round that starts while the engine is away proceeds as soon as it answers again, and
    replaces the containers that stopped with it."""
    pings = [EngineUnavailable("down"), EngineUnavailable("down"), None]

    def ping() -> None:
        answer = pings.pop(0)
        if answer is not None:
            raise answer

    world["docker"].ping = ping
    world["docker"].states["c2"] = "exited"
    started = world["clock"]()
    world["monitor"].probe_all()
    assert world["clock"]() - started == 2.0
    assert [(r.source, r.rollback) for r in world["submitted"]] == [("restart", ("svc", 2))]


def test_watch_window_rolls_back_a_release_that_fails_its_probes(world: dict[str, Any]) -> None:
    """A release made live by a push that then fails its probes is rolled back to the previous one."""
    monitor: Monitor = world["monitor"]
    monitor.on_swap(DeploySource.PUSH, [("svc", 2)])
    world["failing"]["http://127.0.0.1:5002/mcp"] = OSError("connection refused")
    world["docker"].states["c2"] = "running"
    monitor.probe_all()
    monitor.probe_all()
    sources = [(r.source, r.rollback) for r in world["submitted"]]
    assert ("auto-rollback", ("svc", 1)) in sources
    rollback = next(r for r in world["submitted"] if r.source == "auto-rollback")
    assert "failed" in rollback.message and "r2" in rollback.message


def test_watch_window_rolls_back_on_a_5xx_rate(world: dict[str, Any]) -> None:
    """More than half of the proxied requests failing with 5xx in the window triggers a rollback."""
    monitor: Monitor = world["monitor"]
    monitor.on_swap(DeploySource.WEBHOOK, [("svc", 2)])
    caller = Caller("open", None)
    for status in (500, 502, 503, 200):
        world["usage"].count(caller, "svc", status, 0.01)
    monitor.check_watches()
    (request,) = world["submitted"]
    assert request.source == "auto-rollback" and "3 of 4" in request.message


def test_watch_ends_after_its_window(world: dict[str, Any]) -> None:
    """After the window passes, errors no longer roll back (ordinary restarts take over)."""
    monitor: Monitor = world["monitor"]
    monitor.on_swap(DeploySource.PUSH, [("svc", 2)])
    world["clock"].advance(61)
    for status in (500, 500, 500, 500):
        world["usage"].count(Caller("open", None), "svc", status, 0.01)
    monitor.check_watches()
    assert world["submitted"] == [] and monitor.watches == {}


def test_rollbacks_and_restarts_are_not_watched(world: dict[str, Any]) -> None:
    """Only pushes, webhooks and manual deploys open a watch window."""
    world["monitor"].on_swap(DeploySource.AUTO_ROLLBACK, [("svc", 1)])
    world["monitor"].on_swap(DeploySource.RESTART, [("svc", 2)])
    assert world["monitor"].watches == {}


def test_servers_with_a_deploy_running_are_skipped(world: dict[str, Any]) -> None:
    """No probe or restart touches a server whose repo has a deploy running or waiting."""
    monitor: Monitor = world["monitor"]
    monitor.busy = lambda repo: True
    world["docker"].states["c2"] = "exited"
    monitor.probe_all()
    monitor.probe_all()
    assert "svc" not in monitor.health and world["submitted"] == []


def test_retention_keeps_live_previous_and_the_newest(world: dict[str, Any]) -> None:
    """Images beyond the newest N go; the live and previous releases' images always stay."""
    store: Store = world["store"]
    docker: FakeDocker = world["docker"]
    for number in range(3, 9):
        store.add_release(release("svc", number, "candidate"))
        store.set_release_status("svc", number, "retired")
    docker.images |= {f"central-mcp/svc:r{n}" for n in range(1, 9)}
    removed = world["monitor"].retention()
    kept = {int(tag.rsplit("r", 1)[1]) for tag in docker.images}
    assert kept == {1, 2, 4, 5, 6, 7, 8}
    assert removed["images"] == 1
    assert (removed["build_cache_bytes"], docker.cache_kept) == (1234, 2 * 1024**3)


def test_the_real_probe_reads_no_more_than_max_handshake(world: dict[str, Any]) -> None:
    """With the real probe, a server answering a 150 MiB tools/list fails its probe naming the cap
    (deploy.yaml proxy.max_handshake), and the probe reads little past it."""
    ctx: Context = world["ctx"]
    capped = Context(
        replace(ctx.settings, proxy=ProxyTimeouts(max_handshake=1 << 20)),
        ctx.store,
        ctx.docker,
        ctx.router,
        ctx.secrets,
        ctx.instance,
    )
    monitor = Monitor(capped, world["monitor"].submit, lambda repo: False, world["usage"])
    with serve_asgi(huge_tools_app(150 << 20, sse=False)) as port, peak_growth() as growth:
        world["docker"].ports["c2"] = port
        world["router"].replace_all([Upstream("svc", 2, "c2", "127.0.0.1", port, "/mcp")])
        monitor.probe_all()
        grew = growth()
    error = monitor.health["svc"].last_error
    assert "AnswerTooLarge" in error and "more than 1048576 bytes" in error and "max_handshake" in error
    assert grew < 16 << 20, f"peak memory rose by {grew >> 20} MiB"


def test_a_stdio_servers_process_counts_reach_its_health_and_metrics(world: dict[str, Any]) -> None:
    """For a live stdio release the probe reads its bridge's process counts into the server's health
    (and its summary) and the stdio process gauge; an HTTP server's bridge is never asked."""
    monitor, store, router, docker = world["monitor"], world["store"], world["router"], world["docker"]
    asked: list[tuple[str, int]] = []

    def counts(host: str, port: int, timeout: float) -> stdio.Processes:
        asked.append((host, port))
        return stdio.Processes(1, 5, 2, 2, "pid 9: the server process exited with code 3", "landlock ABI 7")

    monitor.read_processes = counts
    monitor.probe_all()
    assert asked == [] and monitor.health["svc"].processes is None
    piped = replace(release("svc", 3, "candidate"), manifest={"name": "svc", "transport": "stdio", "run": {}})
    store.add_release(piped)
    store.commit_swap([piped.placement], [])
    docker.states["c3"], docker.ports["c3"] = "running", 5003
    router.replace_all([Upstream("svc", 3, "c3", "127.0.0.1", 5003, "/mcp")])
    monitor.probe_all()
    assert asked == [("127.0.0.1", 5003)]
    assert monitor.health["svc"].summary() == (
        "healthy; stdio processes: 1 running, 5 started, 2 exited "
        "(last: pid 9: the server process exited with code 3)"
    )
    exposed = world["ctx"].metrics.render().decode()
    assert 'central_mcp_stdio_processes{server="svc",state="exited"} 2.0' in exposed


PROBED = {
    "probe_checks": True,
    "checks": [
        {"name": "reads", "tool": "get", "read_only": True},
        {"name": "writes", "tool": "put"},
    ],
}


def _with_probe_checks(world: dict[str, Any], manifest: dict[str, Any]) -> list[list[str]]:
    """Release r3 of `svc` live with `manifest` added, and a recording run_checks; what it was given."""
    stored = release("svc", 3, "candidate")
    world["store"].add_release(replace(stored, manifest={**stored.manifest, **manifest}))
    world["store"].commit_swap([stored.placement], [])
    world["router"].replace_all([Upstream("svc", 3, "c3", "127.0.0.1", 5003, "/mcp")])
    world["docker"].states["c3"], world["docker"].ports["c3"] = "running", 5003
    ran: list[list[str]] = []

    def run_checks(url: str, found: list[Any], tools: list[dict[str, Any]], via: object) -> None:
        ran.append([c.name for c in found])
        if world["failing"].get("checks"):
            raise world["failing"]["checks"]

    world["monitor"].run_checks = run_checks
    return ran


def test_probe_checks_run_the_read_only_checks(world: dict[str, Any]) -> None:
    """With probe_checks, each probe runs the checks marked read_only, and only those."""
    ran = _with_probe_checks(world, PROBED)
    world["monitor"].probe_all()
    assert ran == [["reads"]]
    assert world["monitor"].health["svc"].status == "healthy"


def test_a_failing_probe_check_counts_as_a_failed_probe(world: dict[str, Any]) -> None:
    """A read-only check that fails makes the probe fail, with the check's message."""
    _with_probe_checks(world, PROBED)
    world["failing"]["checks"] = CheckFailed(
        "check 'reads' (tools/call get {}) expected text containing 'ok'"
    )
    world["monitor"].probe_all()
    health = world["monitor"].health["svc"]
    assert health.status == "failing" and "check 'reads'" in health.last_error


def test_without_probe_checks_no_check_runs(world: dict[str, Any]) -> None:
    """Checks are the gate's alone unless the manifest says probe_checks."""
    ran = _with_probe_checks(world, {**PROBED, "probe_checks": False})
    world["monitor"].probe_all()
    assert ran == []


def test_a_failing_replica_leaves_rotation_and_is_replaced_while_the_other_serves(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of two replicas, the dead one leaves rotation at once and a new one takes its place; no restart
    deploy is submitted and the server stays healthy, listed with its replicas."""
    router: Router = world["router"]
    router.add_target(Upstream("svc", 2, "c2b", "127.0.0.1", 5012, "/mcp"))
    world["docker"].states["c2b"], world["docker"].ports["c2b"] = "exited", 5012
    added: list[str] = []
    stopped: list[str] = []

    def add_replica(ctx: Context, server: str, why: str) -> Upstream:
        new = Upstream(server, 2, "c2c", "127.0.0.1", 5022, "/mcp")
        added.append(why)
        ctx.router.add_target(new)
        return new

    monkeypatch.setattr(scaling, "add_replica", add_replica)
    monkeypatch.setattr(scaling, "drain_and_stop", lambda ctx, up, say: stopped.append(up.container_id))
    monitor: Monitor = world["monitor"]
    monitor.probe_all()
    deadline = time.monotonic() + 5
    while monitor._replacing and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [t.container_id for t in router.groups["svc"].targets] == ["c2", "c2c"]
    assert stopped == ["c2b"] and added == ["replacing c2b"]
    assert world["submitted"] == []
    assert "1 of 2 replicas failing" in monitor.health["svc"].last_error
    world["docker"].states["c2c"], world["docker"].ports["c2c"] = "running", 5022
    monitor.probe_all()
    assert monitor.health["svc"].summary() == "healthy; 2 replicas"


def test_when_every_replica_fails_the_release_is_restarted(world: dict[str, Any]) -> None:
    """With no replica left serving, one restart deploy replaces the whole release (all its replicas)."""
    world["router"].add_target(Upstream("svc", 2, "c2b", "127.0.0.1", 5012, "/mcp"))
    world["docker"].states["c2"] = "exited"
    world["docker"].states["c2b"], world["docker"].ports["c2b"] = "exited", 5012
    world["monitor"].probe_all()
    (request,) = world["submitted"]
    assert (request.source, request.rollback) == ("restart", ("svc", 2))
    assert world["monitor"].health["svc"].status == "down"
