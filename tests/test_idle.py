"""Scale to zero without Docker: when the idle job stops a server, how first requests share one
start, what a failed or slow start answers, and the proxy's hook (held, checked, answered)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx2
import pytest

from pipeline import idle as idle_mod
from pipeline import launch
from pipeline.config.settings import IdleConfig, Project, Settings
from pipeline.context import Context
from pipeline.dockerhost import Running
from pipeline.errors import DockerError, GateError
from pipeline.idle import Idler, idle_after, unavailable
from pipeline.monitor import Health
from pipeline.proxy.access import Caller, Gatekeeper
from pipeline.proxy.relay import Proxy, Reply, Ticket
from pipeline.proxy.router import Router, Upstream
from pipeline.proxy.upstreams import Collected
from pipeline.proxy.usage import Usage
from pipeline.secrets import Secrets
from pipeline.states import ServerStatus
from pipeline.store import Store
from tests.support.clock import FakeClock
from tests.support.proxy_rig import ACCEPT_BOTH, Recorder, Rig, jsonrpc, raw_upstream, running_proxy
from tests.test_monitor import release
from tests.test_proxy_access import _key

CALLER = Caller("k", None)
SCALED = {
    "name": "svc",
    "version": "1.0.0",
    "description": "a server that scales to zero",
    "transport": "streamable-http",
    "run": {"port": 8080},
    "scale": {"min": 0, "idle_after": "10s"},
}


class FakeDocker:
    """Records the containers removed."""

    def __init__(self) -> None:
        self.removed: list[str] = []
        self.refused: set[str] = set()

    def stop_and_remove(self, container_id: str, grace: float = 0.0) -> None:
        if container_id in self.refused:
            raise DockerError(f"remove {container_id}: the engine is away")
        self.removed.append(container_id)


@dataclass
class World:
    """An Idler on a store with svc r1 live (min 0, idle after 10 s) and a router on it."""

    idler: Idler
    router: Router
    store: Store
    usage: Usage
    docker: FakeDocker
    clock: FakeClock
    health: dict[str, Health] = field(default_factory=dict)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A live min-0 `svc` r1 on container c1, routed."""
    settings = Settings(
        config_path=Path("deploy.yaml"),
        state_dir=tmp_path,
        idle=IdleConfig(after=600, wake_timeout=2.0, retry_after=5.0),
    )
    store = Store(tmp_path / "db.sqlite")
    stored = replace(release("svc", 1, "candidate"), manifest=SCALED)
    store.add_release(stored)
    store.commit_swap([stored.placement], [])
    router, docker, clock = Router(), FakeDocker(), FakeClock()
    router.replace_all([Upstream("svc", 1, "c1", "127.0.0.1", 5001, "/mcp")])
    ctx = Context(settings, store, docker, router, Secrets(tmp_path, {}), "inst")  # type: ignore[arg-type]
    usage = Usage(store)
    health: dict[str, Health] = {}
    idler = Idler(ctx, usage, health, clock=clock)
    yield World(idler, router, store, usage, docker, clock, health)
    store.close()


def test_idle_after_reads_scale_min_zero_and_its_own_or_the_default_duration() -> None:
    """min 0 stops after the manifest's idle_after or deploy.yaml's; min 1, no scale or a remote never."""
    assert idle_after(SCALED, 600) == 10
    assert idle_after({"scale": {"min": 0}}, 600) == 600
    assert idle_after({"scale": {"min": 1}}, 600) is None
    assert idle_after({}, 600) is None
    assert idle_after({"scale": {"min": 0}, "remote": {"url": "https://x"}}, 600) is None


def test_sweep_stops_a_server_unused_for_its_idle_after_and_keeps_it_known(world: World) -> None:
    """Unused for idle_after, the server leaves the table (still known), its container is removed,
    the store and its health say idle; its release stays live."""
    assert world.idler.sweep() == []  # the first look starts its idle clock
    world.clock.advance(9)
    assert world.idler.sweep() == []
    world.clock.advance(1)
    assert world.idler.sweep() == ["svc"]
    assert world.router.get("svc") is None and "svc" in world.router.known
    assert world.docker.removed == ["c1"]
    assert world.store.idle() == {"svc": 1}
    assert world.health["svc"].status == ServerStatus.IDLE
    assert world.idler.asleep == {"svc"}
    assert [r.number for r in world.store.live_releases()] == [1]


def test_a_request_restarts_the_idle_clock(world: World) -> None:
    """A request counted between two looks puts the stop off by a whole idle_after."""
    world.idler.sweep()
    world.clock.advance(9)
    world.usage.count(CALLER, "svc", 200, 0.01)
    assert world.idler.sweep() == []
    world.clock.advance(9)
    assert world.idler.sweep() == []
    world.clock.advance(1)
    assert world.idler.sweep() == ["svc"]


def test_an_open_session_or_stream_keeps_the_server_running(world: World) -> None:
    """A session or an in-flight request (a GET stream) on the container keeps it, however long."""
    upstream = world.router.get("svc")
    assert upstream is not None
    world.router.open_session("s1", upstream, "k")
    world.idler.sweep()
    world.clock.advance(3600)
    assert world.idler.sweep() == []
    world.router.end_session("s1")
    target = world.router.target(upstream.container_id)
    assert target is not None
    world.router.enter(target)
    world.clock.advance(3600)
    assert world.idler.sweep() == []
    assert world.docker.removed == []


def test_a_min_one_server_is_never_stopped(world: World, tmp_path: Path) -> None:
    """Without scale.min 0 the idle job leaves a server running."""
    stored = replace(release("other", 1, "candidate"), manifest={"name": "other", "run": {"port": 8080}})
    world.store.add_release(stored)
    world.store.commit_swap([stored.placement], [])
    world.router.swap({"other": Upstream("other", 1, "o1", "127.0.0.1", 5002, "/mcp")})
    world.idler.sweep()
    world.clock.advance(100_000)
    assert "other" not in world.idler.sweep()


def test_one_server_that_cannot_be_stopped_does_not_keep_the_others_running(world: World) -> None:
    """A Docker error stopping one idle server is logged; the sweep still stops the next one."""
    other = replace(release("other", 1, "candidate"), manifest=dict(SCALED, name="other"), container_id="o1")
    world.store.add_release(other)
    world.store.commit_swap([other.placement], [])
    world.router.swap({"other": Upstream("other", 1, "o1", "127.0.0.1", 5002, "/mcp")})
    world.docker.refused.add("o1")
    world.idler.sweep()
    world.clock.advance(10)
    assert world.idler.sweep() == ["svc"]
    assert world.docker.removed == ["c1"]


def test_restore_takes_back_idle_servers_and_forgets_stale_records(world: World) -> None:
    """At start-up a recorded idle server whose live release has no route is asleep again; a record
    naming another release (a deploy replaced it) is dropped."""
    world.router.park("svc")
    world.store.set_idle("svc", 1, 0.0)
    world.store.set_idle("gone", 3, 0.0)
    assert world.idler.restore() == ["svc"]
    assert world.idler.ctx.metrics.registry.get_sample_value("central_mcp_idle_servers") == 1
    assert world.store.idle() == {"svc": 1}
    assert world.health["svc"].status == ServerStatus.IDLE


def test_a_deploy_that_routes_or_removes_an_idle_server_ends_its_idleness(world: World) -> None:
    """A swap that makes a release of an idle server live, or removes the server, forgets it is
    idle (its requests are routed, or answered 404, instead of waking a release that is not live)."""
    _asleep(world)
    second = replace(release("svc", 2, "candidate"), manifest=SCALED, container_id="c9")
    world.store.add_release(second)
    world.store.commit_swap([second.placement], [])
    world.router.swap({"svc": Upstream("svc", 2, "c9", "127.0.0.1", 5009, "/mcp")})
    assert world.idler.asleep == frozenset() and world.store.idle() == {}
    world.idler.sweep()
    world.clock.advance(10)
    world.idler.sweep()
    assert world.idler.asleep == {"svc"}
    world.router.swap({"svc": None})
    assert world.idler.asleep == frozenset() and world.store.idle() == {}


def test_a_deploy_that_routes_the_server_while_its_wake_starts_keeps_the_deploys_release(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake whose gate is passed after a deploy made another release live removes its own
    container and leaves the deploy's route in place."""
    _asleep(world)
    deployed = Upstream("svc", 2, "c9", "127.0.0.1", 5009, "/mcp")
    started = Running("w1", "w", "127.0.0.1", 1)
    monkeypatch.setattr(launch, "start", lambda ctx, spec, suffix: started)
    monkeypatch.setattr(idle_mod, "_listening", lambda host, port, deadline: 0.0)

    def gate_while_a_deploy_swaps(*args: object) -> None:
        world.router.swap({"svc": deployed})

    monkeypatch.setattr(launch, "wait_healthy", gate_while_a_deploy_swaps)
    world.idler.start("svc")
    assert world.router.get("svc") == deployed
    assert world.docker.removed == ["c1", "w1"]


def _asleep(world: World) -> None:
    world.idler.sweep()
    world.clock.advance(10)
    assert world.idler.sweep() == ["svc"]


def _fake_start(world: World, starts: list[str], delay: float = 0.05, error: Exception | None = None) -> None:
    """Replace the Docker start with one that takes `delay` and routes c2 (or raises `error`)."""

    def start(server: str) -> None:
        starts.append(server)
        time.sleep(delay)
        if error is not None:
            raise error
        world.router.swap({server: Upstream(server, 1, f"c{len(starts) + 1}", "127.0.0.1", 5001, "/mcp")})

    world.idler.start = start  # type: ignore[method-assign]


async def test_concurrent_first_requests_share_one_start(world: World) -> None:
    """Ten wakes at once start the server once; all return when it is routed; it is asleep no more."""
    _asleep(world)
    starts: list[str] = []
    _fake_start(world, starts)
    answers = await asyncio.gather(*(world.idler.wake("svc") for _ in range(10)))
    assert answers == [None] * 10
    assert starts == ["svc"]
    assert world.router.get("svc") is not None
    assert world.idler.asleep == frozenset()
    assert world.store.idle() == {}


async def test_a_failed_start_answers_503_and_the_next_request_tries_again_after_retry_after(
    world: World,
) -> None:
    """A start that fails answers every waiter 503 with a JSON-RPC error naming the server; within
    idle.retry_after requests get it without a start; after it one start is tried again."""
    _asleep(world)
    starts: list[str] = []
    _fake_start(world, starts, error=GateError("svc r1 failed the MCP health gate: refused"))
    answers = await asyncio.gather(*(world.idler.wake("svc") for _ in range(3)))
    assert starts == ["svc"]
    for answer in answers:
        assert answer is not None and answer[0] == 503
        error = json.loads(answer[1])["error"]
        assert (
            "'svc' is idle and could not be started" in error["message"] and "health gate" in error["message"]
        )
    assert world.idler.asleep == {"svc"} and world.store.idle() == {"svc": 1}
    again = await world.idler.wake("svc")
    assert again is not None and again[0] == 503 and starts == ["svc"]
    world.clock.advance(5)
    _fake_start(world, starts)
    assert await world.idler.wake("svc") is None
    assert starts == ["svc", "svc"]


async def test_a_start_slower_than_wake_timeout_answers_503_and_still_completes(world: World) -> None:
    """A request held past idle.wake_timeout gets 503; the start goes on and routes the server."""
    _asleep(world)
    world.idler.ctx.settings = replace(world.idler.ctx.settings, idle=IdleConfig(wake_timeout=0.05))
    starts: list[str] = []
    _fake_start(world, starts, delay=0.3)
    answer = await world.idler.wake("svc")
    assert answer is not None and answer[0] == 503 and b"did not start within" in answer[1]
    for _ in range(100):
        if world.router.get("svc") is not None:
            break
        await asyncio.sleep(0.01)
    assert world.router.get("svc") is not None and starts == ["svc"]


# the proxy's hook ------------------------------------------------------------------------------
class FakeWaker:
    """Routes `up` when woken (or answers `refuse`), counting wakes."""

    def __init__(self, router: Router, up: Upstream, access: tuple[str, ...] = ("all",)) -> None:
        self.asleep: frozenset[str] = frozenset({up.server})
        self.router, self.up, self._access = router, up, access
        self.wakes = 0
        self.refuse: Reply | None = None

    def access(self, server: str) -> tuple[str, ...]:
        return self._access

    async def wake(self, server: str) -> Reply | None:
        self.wakes += 1
        await asyncio.sleep(0.05)
        if self.refuse is not None:
            return self.refuse
        self.router.swap({server: self.up})
        self.asleep = frozenset()
        return None


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A proxy that requires keys: project web may use x, other may not."""
    projects = (Project("web", servers=("x",)), Project("other", servers=("y",)))
    with running_proxy(tmp_path, projects=projects) as running:
        yield running


def _asleep_x(rig: Rig, up: Upstream, access: tuple[str, ...] = ("all",)) -> FakeWaker:
    rig.router.replace_all([], known=["x"])
    waker = FakeWaker(rig.router, up, access)
    assert rig.aggregate is not None
    rig.aggregate.proxy.waker = waker
    return waker


async def _post(rig: Rig, token: str) -> httpx2.Response:
    headers = {**ACCEPT_BOTH, "authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient() as http:
        return await http.post(rig.url("x"), headers=headers, content=json.dumps(jsonrpc("tools/list")))


async def test_a_request_to_an_asleep_server_is_held_until_it_wakes_then_answered(rig: Rig) -> None:
    """The proxy holds a first request while the waker starts the server, then forwards it: 200."""
    recorder = Recorder()
    with raw_upstream("x", recorder) as up:
        waker = _asleep_x(rig, up)
        reply = await _post(rig, _key(rig, "web"))
    assert reply.status_code == 200 and waker.wakes == 1 and len(recorder.seen) == 1


async def test_a_request_through_asgi_to_an_asleep_server_is_held_too(tmp_path: Path) -> None:
    """Off front.py's fast path (plain uvicorn, as the aggregate's inner requests), the same hold."""
    recorder = Recorder()
    with running_proxy(tmp_path, front=False) as rig, raw_upstream("x", recorder) as up:
        waker = _asleep_x(rig, up)
        async with httpx2.AsyncClient() as http:
            reply = await http.post(
                rig.url("x"), headers=ACCEPT_BOTH, content=json.dumps(jsonrpc("tools/list"))
            )
    assert reply.status_code == 200 and waker.wakes == 1 and len(recorder.seen) == 1


async def test_a_key_not_allowed_on_an_asleep_server_gets_403_and_wakes_nothing(rig: Rig) -> None:
    """An asleep server's access list applies before it is woken: a key of another project, or of a
    project its manifest leaves out, gets 403 and starts no container."""
    with raw_upstream("x", Recorder()) as up:
        waker = _asleep_x(rig, up, access=("ops",))
        assert (await _post(rig, _key(rig, "web"))).status_code == 403
        assert (await _post(rig, _key(rig, "other"))).status_code == 403
    assert waker.wakes == 0


async def test_a_failed_wake_answers_the_wakers_503(rig: Rig) -> None:
    """When the server cannot be started the client gets the waker's 503 JSON-RPC error."""
    with raw_upstream("x", Recorder()) as up:
        waker = _asleep_x(rig, up)
        waker.refuse = unavailable("x", "it did not start within 1s", 5)
        reply = await _post(rig, _key(rig, "web"))
    assert reply.status_code == 503 and reply.headers["retry-after"] == "5"
    assert "'x' is idle and could not be started" in reply.json()["error"]["message"]


class LateWaker(FakeWaker):
    """A server that falls asleep just after the proxy's first look (the idle job runs on a thread)."""

    def __init__(self, router: Router, up: Upstream) -> None:
        super().__init__(router, up)
        self.looks = 0

    @property
    def asleep(self) -> frozenset[str]:
        self.looks += 1
        return self._asleep if self.looks > 1 else frozenset()

    @asleep.setter
    def asleep(self, value: frozenset[str]) -> None:
        self._asleep = value


async def test_a_server_that_falls_asleep_between_the_look_and_the_route_is_woken(tmp_path: Path) -> None:
    """A request that found its server awake, then no route (it was parked meanwhile), wakes it and
    is forwarded instead of getting 503."""
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=tmp_path)
    store = Store(tmp_path / "db.sqlite")
    router = Router()
    router.replace_all([], known=["x"])
    proxy = Proxy(router, Gatekeeper(settings, store), Usage(store), 5.0)
    inner = Collected("POST", "x", [(b"content-type", b"application/json")], b"{}")
    ticket = proxy.admit(inner)
    assert isinstance(ticket, Ticket)
    up = Upstream("x", 1, "c1", "127.0.0.1", 1, "/mcp")
    waker = proxy.waker = LateWaker(router, up)
    forwarded: list[Upstream | None] = []

    async def forward(ex: object, admitted: Ticket, sent: object = None) -> None:
        forwarded.append(admitted.upstream)

    proxy.forward = forward  # type: ignore[method-assign,assignment]
    await proxy.carry(inner, ticket, b"{}")
    store.close()
    assert (forwarded, waker.wakes, inner.status) == ([up], 1, 0)
