"""Starting a release, the one way: a labelled, hardened container, then the MCP gate.

A deploy's candidates, a restart and start-up reconciliation all start containers here, so
every container carries the same labels (server, release, commit, port, instance, role,
fingerprint) and passes the same gate before it takes a request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from pipeline import checks, gate, remote, stdio
from pipeline.config.settings import ENGINE_SWARM
from pipeline.context import Context
from pipeline.dockerhost import (
    LABEL_COMMIT,
    LABEL_FINGERPRINT,
    LABEL_INSTANCE,
    LABEL_NETWORK,
    LABEL_PORT,
    LABEL_RELEASE,
    LABEL_ROLE,
    LABEL_SERVER,
    Running,
    RunSpec,
)
from pipeline.errors import GateError, NetworkError, RemoteRefused, SecretsError
from pipeline.gate import GateResult
from pipeline.plan import ReleaseSpec
from pipeline.proxy.router import Upstream
from pipeline.swarm import overlay_name

LOG_TAIL_LINES = 30
ROLE_SERVER = "server"
# A candidate may use one whole CPU until it passes its gate, then gets its manifest's limit:
# a Python MCP server spends its start importing the SDK on one thread (0.8 s at 0.5 CPU, 0.4 s
# at 1). Bounded by the gate's deadline; it never takes a request before the limit applies.
STARTUP_CPUS = 1.0
EGRESS = "egress"  # run.network: the server may open connections out of the VM
REMOTE_ID = "remote:"  # what a remote release's "container id" starts with: no container has one


def is_remote(container_id: str) -> bool:
    """Whether `container_id` names a remote release (nothing to stop, remove or ask Docker about)."""
    return container_id.startswith(REMOTE_ID)


def start(ctx: Context, spec: ReleaseSpec, suffix: str) -> Running:
    """Start a container of `spec` named `cmcp-<instance>-<server>-r<N>-<suffix>` on its server's
    own network (host services it names resolve to that network's relays). A remote server starts
    nothing: its Running names the release and the remote's host and port."""
    m = spec.manifest
    if m.remote is not None:
        route = remote.Route(m.remote.url)
        name = f"{REMOTE_ID}{ctx.instance}:{m.name}:r{spec.number}"
        return Running(name, name, route.host, route.port)
    granted = ctx.secrets.values(ctx.settings, spec.repo, m.name, m.secrets)
    name = f"cmcp-{ctx.instance}-{m.name}-r{spec.number}-{suffix}"
    networks = ctx.server_networks()
    ctx.docker.remove_container_named(name)
    if ctx.settings.engine == ENGINE_SWARM:
        if m.host_services:
            raise NetworkError(
                f"{m.name}: host services ({', '.join(m.host_services)}) are not reachable from Swarm "
                "services (engine: swarm); run it on the plain engine or reach the service as a remote"
            )
        overlay = overlay_name(ctx.instance, m.name, m.network == EGRESS)
        return ctx.docker.run(_run_spec(ctx, spec, name, overlay, granted))
    with networks.joining(m.name, m.network == EGRESS, m.host_services) as net:
        run = _run_spec(ctx, spec, name, net.name, granted)
        return ctx.docker.run(replace(run, extra_hosts=dict.fromkeys(m.host_services, net.gateway)))


def _run_spec(ctx: Context, spec: ReleaseSpec, name: str, network: str, granted: dict[str, str]) -> RunSpec:
    """What a replica of `spec` runs with, on `network`."""
    m = spec.manifest
    return RunSpec(
        spec.image,
        name,
        m.port,
        {**labels(ctx, spec), LABEL_NETWORK: network},
        m.env,
        m.memory_bytes,
        m.cpus,
        stdio.bridge_command(m, ctx.settings) if stdio.is_stdio(m) else m.command,
        m.restart,
        startup_cpus=STARTUP_CPUS,
        network=network,
        user=ctx.settings.containers.user,
        tmpfs_bytes=ctx.settings.containers.tmpfs,
        secret_env=granted,
    )


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
    clock when given), run its manifest's smoke checks, then hold it to its manifest's CPU limit;
    on failure copy its last log lines to `say` and raise GateError."""
    m = spec.manifest
    timeout = m.health_timeout
    if deadline is not None:
        timeout = max(0.1, min(timeout, deadline - time.monotonic()))
    if m.remote is not None:
        return _wait_remote(ctx, spec, timeout, say)
    try:
        if not running.host:
            raise GateError("the container exited before completing the MCP handshake (it got no address)")
        url = f"http://{running.host}:{running.port}{m.path}"
        result = gate.wait_until_healthy(
            url,
            timeout=timeout,
            interval=m.health_interval,
            alive=lambda: ctx.docker.status(running.id) == "running",
            max_bytes=ctx.settings.proxy.max_handshake,
            surface=True,
        )
        max_bytes = ctx.settings.proxy.max_handshake
        for line in checks.run(url, m.checks, result.tools, max_bytes=max_bytes, session_timeout=timeout):
            say(f"{m.name}: {line}")
    except GateError as exc:
        for line in ctx.docker.logs_tail(running.id, LOG_TAIL_LINES):
            say(f"{m.name} (container) | {line}")
        raise GateError(f"{m.name} r{spec.number} failed the MCP health gate: {exc}") from exc
    if m.cpus < STARTUP_CPUS:
        ctx.docker.limit_cpus(running.id, m.cpus)
    return result


def upstream(ctx: Context, spec: ReleaseSpec, running: Running) -> Upstream:
    """The proxy's route to a started container of `spec`, or to its remote server."""
    m = spec.manifest
    if m.remote is None:
        relayed = ctx.settings.engine == ENGINE_SWARM
        return Upstream(
            m.name, spec.number, running.id, running.host, running.port, m.path, m.access, relayed=relayed
        )
    route = remote.route(m.remote.url, remote_headers(ctx, spec))
    return Upstream(m.name, spec.number, running.id, route.host, route.port, route.path, m.access, route)


def remote_headers(ctx: Context, spec: ReleaseSpec) -> dict[str, str]:
    """The headers the provider adds for a remote server: literal ones and granted secrets' values."""
    m = spec.manifest
    assert m.remote is not None
    names = tuple(m.remote.secret_headers.values())
    values = ctx.secrets.values(ctx.settings, spec.repo, m.name, names)
    for header, name in m.remote.secret_headers.items():
        if not remote.HEADER_VALUE.fullmatch(values[name]):
            raise SecretsError(
                f"secret {name} (header {header} of remote server {m.name!r}) holds a character an HTTP "
                "header cannot carry (a line break, a control or non-ASCII character)",
            )
    return {**m.remote.headers, **{h: values[n] for h, n in m.remote.secret_headers.items()}}


def gate_via(ctx: Context, spec: ReleaseSpec) -> gate.Via:
    """How the gate and the probes reach `spec`'s remote server: checked, verified, with its headers."""
    return gate.Via(ctx.dialer().http, remote_headers(ctx, spec))


def _wait_remote(ctx: Context, spec: ReleaseSpec, timeout: float, say: Callable[[str], None]) -> GateResult:
    """Gate a remote server, then run its read-only checks (a remote's gate is its live endpoint:
    a check that changes something is left to the owner's own tests)."""
    m = spec.manifest
    assert m.remote is not None
    try:
        via = gate_via(ctx, spec)
        max_bytes = ctx.settings.proxy.max_handshake
        result = gate.wait_until_healthy(
            m.remote.url,
            timeout=timeout,
            interval=m.health_interval,
            max_bytes=max_bytes,
            via=via,
            surface=True,
        )
        read_only = [c for c in m.checks if c.read_only]
        for line in checks.run(
            m.remote.url, read_only, result.tools, max_bytes=max_bytes, via=via, session_timeout=timeout
        ):
            say(f"{m.name}: {line}")
        return result
    except (GateError, RemoteRefused) as exc:
        raise GateError(
            f"{m.name} r{spec.number} (remote {m.remote.url}) failed the MCP health gate: {exc}"
        ) from exc


def replicas(ctx: Context, spec: ReleaseSpec) -> tuple[int, int]:
    """How many replicas of `spec` run at least and at most: its manifest's `scale`, else
    deploy.yaml's; a remote server is one endpoint elsewhere (1, 1). `scale.min: 0` runs one while
    used: the idle job (idle.py), not autoscaling, takes the last one away."""
    m = spec.manifest
    if m.remote is not None:
        return 1, 1
    low = max(1, m.scale.min if m.scale.min is not None else ctx.settings.scale.min)
    high = m.scale.max if m.scale.max is not None else ctx.settings.scale.max
    return low, max(low, high)
