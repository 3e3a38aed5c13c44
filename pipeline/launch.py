"""Starting a release, the one way: a labelled, hardened container, then the MCP gate.

A deploy's candidates, a restart and start-up reconciliation all start containers here, so
every container carries the same labels (server, release, commit, port, instance, role,
fingerprint) and passes the same gate before it takes a request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline import gate, stdio
from pipeline.context import Context
from pipeline.dockerhost import (
    LABEL_COMMIT,
    LABEL_FINGERPRINT,
    LABEL_INSTANCE,
    LABEL_PORT,
    LABEL_RELEASE,
    LABEL_ROLE,
    LABEL_SERVER,
    Running,
    RunSpec,
)
from pipeline.errors import GateError
from pipeline.gate import GateResult
from pipeline.plan import ReleaseSpec
from pipeline.proxy.router import Upstream

LOG_TAIL_LINES = 30
ROLE_SERVER = "server"
# A candidate may use one whole CPU until it passes its gate, then gets its manifest's limit:
# a Python MCP server spends its start importing the SDK on one thread (0.8 s at 0.5 CPU, 0.4 s
# at 1). Bounded by the gate's deadline; it never takes a request before the limit applies.
STARTUP_CPUS = 1.0


def start(ctx: Context, spec: ReleaseSpec, suffix: str) -> Running:
    """Start a container of `spec` named `cmcp-<instance>-<server>-r<N>-<suffix>`."""
    m = spec.manifest
    env = {**m.env, **ctx.secrets.values(ctx.settings, spec.repo, m.name, m.secrets)}
    name = f"cmcp-{ctx.instance}-{m.name}-r{spec.number}-{suffix}"
    ctx.docker.remove_container_named(name)
    command = stdio.bridge_command(m, ctx.settings) if stdio.is_stdio(m) else m.command
    run = RunSpec(
        spec.image,
        name,
        m.port,
        labels(ctx, spec),
        env,
        m.memory_bytes,
        m.cpus,
        command,
        m.restart,
        startup_cpus=STARTUP_CPUS,
        user=ctx.settings.containers.user,
        tmpfs_bytes=ctx.settings.containers.tmpfs,
    )
    return ctx.docker.run(run)


def labels(ctx: Context, spec: ReleaseSpec) -> dict[str, str]:
    """The labels of every container of `spec`: what actually runs can be read back from them."""
    return {
        LABEL_SERVER: spec.server,
        LABEL_RELEASE: f"r{spec.number}",
        LABEL_COMMIT: spec.commit,
        LABEL_PORT: str(spec.manifest.port),
        LABEL_INSTANCE: ctx.instance,
        LABEL_ROLE: ROLE_SERVER,
        LABEL_FINGERPRINT: spec.fingerprint,
    }


def wait_healthy(
    ctx: Context,
    spec: ReleaseSpec,
    running: Running,
    say: Callable[[str], None],
    deadline: float | None = None,
) -> GateResult:
    """Gate a started container (within its health timeout, and by `deadline` on the monotonic
    clock when given), then hold it to its manifest's CPU limit; on failure copy its last log
    lines to `say` and raise GateError."""
    m = spec.manifest
    timeout = m.health_timeout
    if deadline is not None:
        timeout = max(0.1, min(timeout, deadline - time.monotonic()))
    try:
        result = gate.wait_until_healthy(
            f"http://127.0.0.1:{running.host_port}{m.path}",
            timeout=timeout,
            interval=m.health_interval,
            alive=lambda: ctx.docker.status(running.id) == "running",
        )
    except GateError as exc:
        for line in ctx.docker.logs_tail(running.id, LOG_TAIL_LINES):
            say(f"{m.name} (container) | {line}")
        raise GateError(f"{m.name} r{spec.number} failed the MCP health gate: {exc}") from exc
    if m.cpus < STARTUP_CPUS:
        ctx.docker.limit_cpus(running.id, m.cpus)
    return result


def upstream(spec: ReleaseSpec, running: Running) -> Upstream:
    """The proxy's route to a started container of `spec`."""
    m = spec.manifest
    return Upstream(m.name, spec.number, running.id, "127.0.0.1", running.host_port, m.path, m.access)
