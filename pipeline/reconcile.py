"""Start-up reconciliation: rebuild the route table from SQLite and the containers' labels."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from pipeline import gate
from pipeline.config.manifest import from_data
from pipeline.context import Context
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_PORT, LABEL_RELEASE, LABEL_SERVER, RunSpec
from pipeline.errors import CentralMCPError
from pipeline.proxy.router import Upstream
from pipeline.store import Release

ABANDONED_REASON = "the provider stopped while this deploy was running"


def reconcile(ctx: Context, say: Callable[[str], None]) -> list[Upstream]:
    """Abandon interrupted deploys, remove orphans, route (or restart) every live release."""
    for deploy_id in ctx.store.abandon_active(ABANDONED_REASON):
        say(f"deploy #{deploy_id} was interrupted: marked abandoned")
    for candidate in (r for r in ctx.store.all_releases() if r.status == "candidate"):
        # Gated by a deploy that never swapped; left a candidate, retention would keep its image forever.
        ctx.store.set_release_status(candidate.server, candidate.number, "failed")
        say(f"{candidate.server} {candidate.name}: its deploy was interrupted before the swap: marked failed")
    for snapshot in (ctx.settings.state_dir / "snapshots").glob("snap-*"):
        # Left by deploys that died with the provider, or by hooks that found no serve to take them.
        shutil.rmtree(snapshot, ignore_errors=True)
    live = {r.server: r for r in ctx.store.live_releases()}
    routed: dict[str, Upstream] = {}
    for container in ctx.docker.containers({LABEL_INSTANCE: ctx.instance}):
        labels = container.labels
        release = live.get(labels.get(LABEL_SERVER, ""))
        if release and labels.get(LABEL_RELEASE) == release.name and container.status == "running":
            port = _host_port(container, labels.get(LABEL_PORT, ""))
            if port and release.server not in routed:
                routed[release.server] = Upstream(
                    release.server,
                    release.number,
                    container.id,
                    "127.0.0.1",
                    port,
                    release.path,
                    tuple(release.manifest.get("access", ("all",))),
                )
                if port != release.host_port or container.id != release.container_id:
                    ctx.store.set_container(release.server, release.number, container.id, port)
                continue
        say(f"removing leftover container {container.name}")
        ctx.docker.stop_and_remove(container.id, grace=1)
    for server, release in live.items():
        if server not in routed:
            upstream = _restart(ctx, release, say)
            if upstream is not None:
                routed[server] = upstream
    ctx.router.replace_all(routed.values(), known=live)
    return list(routed.values())


def _host_port(container: Any, port: str) -> int:
    bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{port}/tcp") or []
    return int(bindings[0]["HostPort"]) if bindings else 0


def _restart(ctx: Context, release: Release, say: Callable[[str], None]) -> Upstream | None:
    """Start a fresh container of a live release whose container is missing."""
    manifest = from_data(release.manifest, release.server)
    say(f"{release.server} r{release.number}: its container is missing; starting it again")
    try:
        env = {**manifest.env, **ctx.secrets.values(manifest.name, manifest.secrets)}
        labels = {
            LABEL_SERVER: release.server,
            LABEL_RELEASE: release.name,
            LABEL_PORT: str(manifest.port),
            LABEL_INSTANCE: ctx.instance,
        }
        name = f"cmcp-{ctx.instance}-{release.server}-r{release.number}-restart"
        ctx.docker.remove_container_named(name)
        running = ctx.docker.run(
            RunSpec(
                release.image,
                name,
                manifest.port,
                labels,
                env,
                manifest.memory_bytes,
                manifest.cpus,
                manifest.command,
                manifest.restart,
            )
        )
        gate.wait_until_healthy(
            f"http://127.0.0.1:{running.host_port}{manifest.path}",
            timeout=manifest.health_timeout,
            interval=manifest.health_interval,
            alive=lambda: ctx.docker.status(running.id) == "running",
        )
    except CentralMCPError as exc:
        say(f"{release.server} r{release.number}: could not be started again: {exc}")
        return None
    ctx.store.set_container(release.server, release.number, running.id, running.host_port)
    return Upstream(
        release.server,
        release.number,
        running.id,
        "127.0.0.1",
        running.host_port,
        manifest.path,
        manifest.access,
    )
