"""Start-up reconciliation: rebuild the route table from SQLite and the containers' labels."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from pipeline import launch
from pipeline.config.settings import ENGINE_SWARM
from pipeline.context import Context
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_RELEASE, LABEL_SERVER, container_address
from pipeline.errors import CentralMCPError
from pipeline.plan import ReleaseSpec
from pipeline.proxy.router import Upstream
from pipeline.source import snapshots_dir
from pipeline.states import ReleaseStatus
from pipeline.store import Release

ABANDONED_REASON = "the provider stopped while this deploy was running"


def reconcile(ctx: Context, say: Callable[[str], None]) -> list[Upstream]:
    """Abandon interrupted deploys, remove orphans, route (or restart) every live release."""
    say = _masked(say, ctx.secrets.masker(ctx.settings))  # a restarted container's log lines are copied out
    for deploy_id in ctx.store.abandon_active(ABANDONED_REASON):
        say(f"deploy #{deploy_id} was interrupted: marked abandoned")
    for candidate in (r for r in ctx.store.all_releases() if r.status == ReleaseStatus.CANDIDATE):
        # Gated by a deploy that never swapped; left a candidate, retention would keep its image forever.
        ctx.store.set_release_status(candidate.server, candidate.number, ReleaseStatus.FAILED)
        say(f"{candidate.server} {candidate.name}: its deploy was interrupted before the swap: marked failed")
    for snapshot in snapshots_dir(ctx.settings.state_dir).glob("snap-*"):
        # Left by deploys that died with the provider, or by hooks that found no serve to take them.
        shutil.rmtree(snapshot, ignore_errors=True)
    live = {r.server: r for r in ctx.store.live_releases()}
    _reopen_relays(ctx, live, say)
    routed: dict[str, list[Upstream]] = {}
    for container in ctx.docker.containers({LABEL_INSTANCE: ctx.instance}):
        labels = container.labels
        release = live.get(labels.get(LABEL_SERVER, ""))
        if release and labels.get(LABEL_RELEASE) == release.name and container.status == "running":
            host, port = container_address(container.attrs)
            replicas = routed.setdefault(release.server, [])
            if host and len(replicas) < _most(ctx, release):
                relayed = ctx.settings.engine == ENGINE_SWARM
                replicas.append(_upstream(release, container.id, host, port, relayed))
                if len(replicas) == 1 and (port != release.host_port or container.id != release.container_id):
                    ctx.store.set_container(release.server, release.number, container.id, port)
                continue
        say(f"removing leftover container {container.name}")
        ctx.docker.stop_and_remove(container.id, grace=1)
    idle = ctx.store.idle()  # scaled to zero: left stopped until a request wakes it (idle.py)
    for server, release in live.items():
        replicas = routed.setdefault(server, [])
        if not replicas and idle.get(server) == release.number:
            continue
        for n in range(len(replicas) + 1, _least(ctx, release) + 1):
            upstream = _restart(ctx, release, say, "restart" if n == 1 else f"restart-{n}")
            if upstream is not None:
                replicas.append(upstream)
    ctx.router.replace_all([u for ups in routed.values() for u in ups], known=live)
    if ctx.networks is not None:
        wanted = {s: _run(r).get("host_services", ()) for s, r in live.items()}
        for name in ctx.networks.prune(wanted):
            say(f"removed network {name}: no container uses it")
    return [u for ups in routed.values() for u in ups]


def _masked(say: Callable[[str], None], mask: Callable[[str], str]) -> Callable[[str], None]:
    return lambda text: say(mask(text))


def _reopen_relays(ctx: Context, live: dict[str, Release], say: Callable[[str], None]) -> None:
    """Listen again for the host services live servers use (the relays live in this process)."""
    if ctx.networks is None:
        return
    for server, release in live.items():
        if release.manifest.get("remote") is not None:
            continue  # no container, no network
        run = _run(release)
        try:
            ctx.networks.reopen(
                {server: (run.get("network") == launch.EGRESS, tuple(run.get("host_services", ())))}
            )
        except CentralMCPError as exc:
            say(f"{server}: its host services could not be relayed: {exc}")


def _run(release: Release) -> dict[str, Any]:
    run = release.manifest.get("run")
    return run if isinstance(run, dict) else {}


def _upstream(release: Release, container_id: str, host: str, port: int, relayed: bool) -> Upstream:
    access = tuple(release.manifest.get("access", ("all",)))
    return Upstream(
        release.server, release.number, container_id, host, port, release.path, access, relayed=relayed
    )


def _least(ctx: Context, release: Release) -> int:
    """How many replicas of a live release run at least (its `scale.min`)."""
    return launch.replicas(ctx, ReleaseSpec.of(release))[0]


def _most(ctx: Context, release: Release) -> int:
    """How many replicas of a live release may run (its `scale.max`): the autoscaled ones are kept."""
    return launch.replicas(ctx, ReleaseSpec.of(release))[1]


def _restart(
    ctx: Context, release: Release, say: Callable[[str], None], suffix: str = "restart"
) -> Upstream | None:
    """Start a fresh container of a live release whose container is missing (same labels and gate)."""
    spec = ReleaseSpec.of(release)
    if release.manifest.get("remote") is not None:
        say(f"{release.server} r{release.number}: a remote server; gating it again before routing to it")
    else:
        say(f"{release.server} r{release.number}: its container is missing; starting it again")
    running = None
    try:
        running = launch.start(ctx, spec, suffix)
        launch.wait_healthy(ctx, spec, running, say)
    except CentralMCPError as exc:
        say(f"{release.server} r{release.number}: could not be started again: {exc}")
        if running is not None and not launch.is_remote(running.id):  # failed its gate: never routed
            ctx.docker.stop_and_remove(running.id, grace=1)
        return None
    if suffix == "restart":
        ctx.store.set_container(release.server, release.number, running.id, running.port)
    return launch.upstream(ctx, spec, running)
