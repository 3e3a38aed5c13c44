"""Between deploys: health probes, restarts, the post-deploy watch window, retention.

Jobs run on APScheduler in the serve process, never overlap themselves, skip a server whose
repo has a deploy running or waiting, and log what they did. Restarts and automatic
rollbacks are deploys too (sources `restart` and `auto-rollback`), so they go through the
same gate and swap and show up at /deploys with their reason.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline import checks, gate, launch, registry, scaling, stdio
from pipeline.config import checkspec
from pipeline.context import Context, DeployRequest, redeploy
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_SERVER, container_address
from pipeline.errors import CentralMCPError, EngineUnavailable, NotMCP
from pipeline.plan import ReleaseSpec
from pipeline.proxy.router import TargetGroup, Upstream
from pipeline.proxy.usage import Usage
from pipeline.states import PUSHED, DeploySource, ReleaseStatus

log = logging.getLogger("central-mcp.monitor")
BUILD_CACHE_KEEP_BYTES = 2 * 1024**3
CONTAINER_DOWN = "its container is "  # gone, exited, ...: no probe is needed to know
ENGINE_POLL = 1.0  # seconds between pings while the engine is away
Probe = Callable[[str, float], Any]
ReadProcesses = Callable[[str, int, float], stdio.Processes]
RunChecks = Callable[[str, list[checkspec.Check], list[dict[str, Any]], gate.Via | None], None]


@dataclass
class Health:
    """What the probes know of one server's live container."""

    status: str = "unknown"
    failures: int = 0
    last_error: str = ""
    checked_at: float = 0.0
    restarts: list[float] = field(default_factory=list)
    processes: stdio.Processes | None = None  # a stdio server's, as its bridge last reported them
    replicas: int = 1  # containers in rotation, as the last probe found them

    def summary(self) -> str:
        """One phrase for the registry's _meta."""
        text = self.status
        if self.status != "healthy" and self.last_error:
            text = f"{self.status}: {self.last_error}"
        if self.replicas > 1:
            text = f"{text}; {self.replicas} replicas"
        return f"{text}; {self.processes.summary()}" if self.processes else text


@dataclass
class Watch:
    """A release in its post-deploy watch window."""

    server: str
    release: int
    previous: int
    until: float
    requests: int
    errors: int


class Monitor:
    """Probes live servers, restarts the failing, rolls back bad new releases, prunes history."""

    def __init__(
        self,
        ctx: Context,
        submit: Callable[[DeployRequest], int],
        busy: Callable[[str], bool],
        usage: Usage,
        probe: Probe | None = None,
        read_processes: ReadProcesses = stdio.read_processes,
        run_checks: RunChecks | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctx = ctx
        self.submit = submit
        self.busy = busy
        self.usage = usage
        self.probe = probe or self._handshake
        self.run_checks = run_checks or self._run_checks
        self.read_processes = read_processes
        self._stdio: dict[tuple[str, int], bool] = {}  # (server, release): a stdio server?
        self.clock = clock
        self.sleep = sleep
        self.health: dict[str, Health] = {}
        self.replica_failures: dict[str, int] = {}  # container id -> failed probes in a row (replicas)
        self.autoscaler = scaling.Autoscaler(ctx, clock)
        self._replacing: set[str] = set()
        self.watches: dict[str, Watch] = {}
        self._lock = threading.Lock()
        ctx.on_swap.append(self.on_swap)

    # probes and restarts ------------------------------------------------------------------
    def probe_all(self) -> None:
        """Probe every live server once (a scheduled job); while no engine answers, wait for it up to
        one probe interval, so containers that stopped with the daemon are replaced as it comes back.
        Remote servers need no engine: they are probed either way."""
        engine = not any(u.remote is None for u in self.ctx.router.table.values()) or self._engine_answers()
        if engine:
            self._tend()
        repos = self._repos()
        for server, group in sorted(self.ctx.router.groups.items()):
            upstream = group.first
            if self._deploying(server, repos) or (upstream.remote is None and not engine):
                continue
            self.health.setdefault(server, Health()).replicas = len(group.targets)
            if len(group.targets) > 1:
                self._probe_replicas(group)
            else:
                self._probe(upstream)
        if engine:
            self.check_watches()

    def autoscale(self) -> None:
        """Sample in-flight requests per replica and scale servers between their bounds (a job)."""
        repos = self._repos()
        self.autoscaler.sample(lambda server: self._deploying(server, repos) or server in self._replacing)

    def _probe_replicas(self, group: TargetGroup) -> None:
        """Probe each replica of a server; one that fails `failure_threshold` probes in a row leaves
        rotation and is replaced while the others serve. The server is healthy while one is."""
        health = self.health.setdefault(group.server, Health())
        errors: list[str] = []
        down: list[tuple[str, str]] = []  # replicas past the failure threshold, and why
        for target in group.targets:
            try:
                error = self._failure(target.upstream)
            except EngineUnavailable as exc:
                health.status, health.last_error = "unknown", str(exc)
                return
            cid = target.container_id
            if error is None:
                self.replica_failures.pop(cid, None)
                self.ctx.router.reinstate(cid)  # if the proxy had taken it out of rotation
                continue
            error = self.ctx.secrets.masker(self.ctx.settings)(error)
            errors.append(error)
            failures = self.replica_failures[cid] = self.replica_failures.get(cid, 0) + 1
            if error.startswith(CONTAINER_DOWN):
                failures = self.replica_failures[cid] = max(failures, self._threshold)
            self.ctx.metrics.probe_failures.labels(group.server).inc()
            log.warning(
                "%s replica %s probe failed (%d in a row): %s", group.server, cid[:12], failures, error
            )
            if failures >= self._threshold:
                down.append((cid, error))
        health.checked_at = time.time()
        healthy = len(group.targets) - len(errors)
        health.status = "healthy" if healthy else "down"
        health.last_error = (
            "" if not errors else f"{len(errors)} of {len(group.targets)} replicas failing: {errors[0]}"
        )
        if not healthy and len(down) == len(group.targets):
            for target in group.targets:  # counted again from zero, as a single container's failures are
                self.replica_failures.pop(target.container_id, None)
            self._restart(group.first, health, health.last_error)  # none left serving: a restart deploy
        elif down and group.server not in self._replacing:
            self._replace(group.server, *down[0])

    def _replace(self, server: str, container_id: str, reason: str) -> None:
        """Replace one failing replica in a thread (the server is skipped by scaling meanwhile)."""
        self._replacing.add(server)
        self.replica_failures.pop(container_id, None)
        self.ctx.metrics.restarts.labels(server).inc()
        self.health.setdefault(server, Health()).restarts.append(self.clock())

        def work() -> None:
            try:
                scaling.replace_replica(self.ctx, container_id, reason)
            finally:
                self._replacing.discard(server)

        threading.Thread(target=work, name=f"replace-{server}", daemon=True).start()

    def _engine_answers(self) -> bool:
        deadline = self.clock() + self.ctx.settings.monitor.probe_interval
        while True:
            try:
                self.ctx.docker.ping()
                return True
            except EngineUnavailable as exc:
                if self.clock() + ENGINE_POLL > deadline:
                    log.warning("no Docker engine answers (%s); probes wait for it", exc)
                    return False
                self.sleep(ENGINE_POLL)
            except CentralMCPError:
                return True  # the engine answered, with an error: the probes will say more

    def _probe(self, upstream: Upstream) -> None:
        health = self.health.setdefault(upstream.server, Health())
        try:
            error = self._failure(upstream)
        except EngineUnavailable as exc:  # nothing to restart until the engine is back
            health.status, health.last_error = "unknown", str(exc)
            log.warning("%s: not probed: %s", upstream.server, exc)
            return
        health.checked_at = time.time()
        self._count_processes(upstream, health)
        if error is None:
            if health.status != "healthy":
                log.info("%s r%d is healthy", upstream.server, upstream.release)
            health.status, health.failures, health.last_error = "healthy", 0, ""
            return
        if self.ctx.router.get(upstream.server) is None:
            return  # scaled to zero (or removed) while it was probed: nothing is wrong, nothing to restart
        error = self.ctx.secrets.masker(self.ctx.settings)(error)  # a server's own answer may hold one
        health.failures += 1
        if error.startswith(CONTAINER_DOWN):  # a stopped container needs no more probes to be sure
            health.failures = max(health.failures, self._threshold)
        health.last_error = error
        health.status = "failing" if health.failures < self._threshold else "down"
        self.ctx.metrics.probe_failures.labels(upstream.server).inc()
        log.warning(
            "%s r%d probe failed (%d in a row): %s", upstream.server, upstream.release, health.failures, error
        )
        if health.failures >= self._threshold:
            self._restart(upstream, health, error)

    def _tend(self) -> None:
        """The engine's own housekeeping (the Swarm relay's routes); a failure is logged, then probed."""
        try:
            self.ctx.docker.tend()
        except CentralMCPError as exc:
            log.warning("engine housekeeping: %s", exc)

    def _failure(self, upstream: Upstream) -> str | None:
        """Return why the upstream is unhealthy, or None; re-route when Docker moved its address."""
        if upstream.remote is not None:
            return self._remote_failure(upstream)
        attrs = self.ctx.docker.inspect(upstream.container_id)
        if attrs is None or (attrs.get("State") or {}).get("Status") == "removing":
            return f"{CONTAINER_DOWN}gone"  # "removing": `docker rm -f` caught half-way, gone a moment later
        state = attrs.get("State", {})
        if state.get("Status") != "running":
            return f"{CONTAINER_DOWN}{state.get('Status')} (exit code {state.get('ExitCode')})"
        host, port = container_address(attrs)
        if host and (host, port) != (upstream.host, upstream.port):
            log.info("%s: its container moved to %s:%d; re-routing", upstream.server, host, port)
            first = self.ctx.router.get(upstream.server)
            upstream = replace(upstream, host=host, port=port)
            self.ctx.router.readdress(upstream.container_id, upstream)
            if first is not None and first.container_id == upstream.container_id:
                self.ctx.store.set_container(upstream.server, upstream.release, upstream.container_id, port)
        try:
            self.probe(upstream.base_url, self.ctx.settings.monitor.probe_timeout)
            self._probe_checks(upstream)
        except (OSError, NotMCP, CentralMCPError) as exc:
            return f"{exc.__class__.__name__}: {exc}"
        return None

    def _probe_checks(self, upstream: Upstream, via: gate.Via | None = None) -> None:
        """Run the release's read-only checks when its manifest says probe_checks (their arguments
        were validated against this same release's schemas at its gate: not again here)."""
        release = self.ctx.store.release(upstream.server, upstream.release)
        if release is None or not release.manifest.get("probe_checks"):
            return
        read_only = [c for c in checkspec.parse(release.manifest) if c.read_only]
        if read_only:
            self.run_checks(upstream.base_url, read_only, release.tools, via)

    def _count_processes(self, upstream: Upstream, health: Health) -> None:
        """For a stdio server, read its bridge's process counts into its health and the metrics."""
        key = (upstream.server, upstream.release)
        if key not in self._stdio:
            release = self.ctx.store.release(*key)
            self._stdio[key] = release is not None and stdio.offer(release.manifest) is not None
        if not self._stdio[key]:
            return
        try:
            found = self.read_processes(upstream.host, upstream.port, self.ctx.settings.monitor.probe_timeout)
        except (OSError, CentralMCPError) as exc:
            log.warning("%s: its bridge's process counts: %s", upstream.server, exc)
            health.processes = None
            return
        health.processes = found
        for state, count in (
            ("running", found.running),
            ("started", found.started),
            ("exited", found.exited),
        ):
            self.ctx.metrics.stdio_processes.labels(upstream.server, state).set(count)

    def _remote_failure(self, upstream: Upstream) -> str | None:
        """Why a remote server is unhealthy (its handshake, through the address check and TLS), or None."""
        release = self.ctx.store.release(upstream.server, upstream.release)
        if release is None:
            return f"release r{upstream.release} is not in the store"
        try:
            via = launch.gate_via(self.ctx, ReleaseSpec.of(release))
            gate.handshake(
                upstream.base_url,
                self.ctx.settings.monitor.probe_timeout,
                self.ctx.settings.proxy.max_handshake,
                via,
            )
            self._probe_checks(upstream, via)
        except (OSError, http.client.HTTPException, CentralMCPError) as exc:
            return f"remote {upstream.base_url}: {exc.__class__.__name__}: {exc}"
        return None

    def _run_checks(
        self, url: str, found: list[checkspec.Check], tools: list[dict[str, Any]], via: gate.Via | None
    ) -> None:
        """The real probe checks: each tool called, its answer read up to `proxy.max_handshake`."""
        settings = self.ctx.settings
        checks.run(
            url,
            found,
            tools,
            max_bytes=settings.proxy.max_handshake,
            via=via,
            validate=lambda pairs: [""] * len(pairs),
            session_timeout=settings.monitor.probe_timeout,
        )

    def _handshake(self, url: str, timeout: float) -> gate.GateResult:
        """The real probe: the gate's handshake, reading at most `proxy.max_handshake` (as reloaded)."""
        return gate.handshake(url, timeout, self.ctx.settings.proxy.max_handshake)

    def _restart(self, upstream: Upstream, health: Health, reason: str) -> None:
        release = self.ctx.store.release(upstream.server, upstream.release)
        policy = str((release.manifest.get("run") or {}).get("restart", "on-failure")) if release else "never"
        if release is not None and release.manifest.get("remote") is not None:
            log.warning("%s: a remote server is not restarted; it stays %s", upstream.server, health.status)
            return
        if policy == "never" or release is None:
            log.warning("%s: restart policy is %s; leaving it %s", upstream.server, policy, health.status)
            return
        health.restarts.append(self.clock())
        health.failures = 0
        self.ctx.metrics.restarts.labels(upstream.server).inc()
        message = f"restart {upstream.server} r{upstream.release}: {reason}"
        deploy_id = self.submit(redeploy(DeploySource.RESTART, release, message))
        log.warning("%s: replacing its container (deploy #%d): %s", upstream.server, deploy_id, reason)

    # the watch window ---------------------------------------------------------------------
    def on_swap(self, source: DeploySource, made_live: list[tuple[str, int]]) -> None:
        """Start watching releases a push or webhook made live."""
        if source not in PUSHED:
            return
        window = self.ctx.settings.monitor.watch_window
        for server, number in made_live:
            releases = self.ctx.store.releases(server)
            previous = next((r.number for r in releases if r.status == ReleaseStatus.PREVIOUS), 0)
            requests, errors = self.usage.totals(server)
            until = self.clock() + window
            with self._lock:
                self.watches[server] = Watch(server, number, previous, until, requests, errors)
            self.health[server] = Health()

    def check_watches(self) -> None:
        """Roll back any watched release that went bad; stop watching those past their window."""
        now = self.clock()
        with self._lock:
            watches = list(self.watches.values())
        for watch in watches:
            live = self.ctx.router.get(watch.server)
            if live is None or live.release != watch.release or now > watch.until:
                with self._lock:
                    self.watches.pop(watch.server, None)
                continue
            reason = self._bad(watch, now)
            if reason and watch.previous and not self._deploying(watch.server):
                with self._lock:
                    self.watches.pop(watch.server, None)
                self._roll_back(watch, reason)

    def _bad(self, watch: Watch, now: float) -> str:
        cfg = self.ctx.settings.monitor
        health = self.health.get(watch.server, Health())
        window_start = watch.until - cfg.watch_window
        restarts = [t for t in health.restarts if t >= window_start]
        if len(restarts) >= cfg.watch_restarts:
            return f"restarted {len(restarts)} times within the watch window"
        if health.failures >= cfg.failure_threshold or health.status == "down":
            return f"failed {health.failures} health probes in a row ({health.last_error})"
        requests, errors = self.usage.totals(watch.server)
        requests, errors = requests - watch.requests, errors - watch.errors
        if requests >= cfg.watch_min_requests and errors / requests > cfg.watch_error_rate:
            return f"{errors} of {requests} requests failed with 5xx ({errors / requests:.0%})"
        return ""

    def _roll_back(self, watch: Watch, reason: str) -> None:
        release = self.ctx.store.release(watch.server, watch.previous)
        if release is None:
            return
        self.ctx.metrics.watch_rollbacks.labels(watch.server).inc()
        message = f"r{watch.release} of {watch.server} rolled back: {reason}"
        deploy_id = self.submit(redeploy(DeploySource.AUTO_ROLLBACK, release, message))
        log.warning(
            "%s: r%d is bad (%s); rolling back to r%d (deploy #%d)",
            watch.server,
            watch.release,
            reason,
            watch.previous,
            deploy_id,
        )

    # retention ----------------------------------------------------------------------------
    def retention(self) -> dict[str, int]:
        """Prune old images, deploy records and stopped containers; return what was removed."""
        keep = self.ctx.settings.retention
        images = 0
        repos = self._repos()
        for server in {r.server for r in self.ctx.store.all_releases()}:
            if self._deploying(server, repos):
                continue
            releases = self.ctx.store.releases(server)
            protected = {
                r.number
                for r in releases
                if r.status in (ReleaseStatus.LIVE, ReleaseStatus.PREVIOUS, ReleaseStatus.CANDIDATE)
            }
            newest = {r.number for r in releases[: keep.images_per_server]}
            for release in releases:
                if release.number not in protected | newest and self.ctx.docker.image_exists(release.image):
                    self.ctx.docker.remove_image(release.image)
                    images += 1
        deploys = self.ctx.store.prune_deploys(keep.deploys, time.time() - keep.deploy_max_age)
        containers = 0
        live_ids = {t.container_id for g in self.ctx.router.groups.values() for t in g.targets}
        for container in self.ctx.docker.containers({LABEL_INSTANCE: self.ctx.instance}):
            if container.status in ("exited", "dead", "created") and container.id not in live_ids:
                self.ctx.docker.stop_and_remove(container.id, grace=0)
                containers += 1
        networks = self._prune_networks(repos)
        # BuildKit's cache outlives the images built from it: keep it to a bound.
        cache = self.ctx.docker.prune_build_cache(BUILD_CACHE_KEEP_BYTES)
        removed = {
            "images": images,
            "deploys": deploys,
            "containers": containers,
            "networks": networks,
            "build_cache_bytes": cache,
        }
        log.info("retention removed %s", removed)
        return removed

    def _prune_networks(self, repos: dict[str, str]) -> int:
        """Remove the networks no container uses, of servers with no deploy running."""
        if self.ctx.networks is None:
            return 0
        live = {r.server: r for r in self.ctx.store.live_releases()}
        wanted = {s: (r.manifest.get("run") or {}).get("host_services", ()) for s, r in live.items()}
        servers = {
            n.get("Labels", {}).get(LABEL_SERVER, "")
            for n in self.ctx.docker.networks({LABEL_INSTANCE: self.ctx.instance})
        }
        removed = 0
        for server in servers:
            if server and not self._deploying(server, repos):
                removed += len(self.ctx.networks.prune(wanted, server))
        return removed

    def refresh_registry(self) -> None:
        """Rewrite the registry files (after restarts or rollbacks change what is live)."""
        registry.write_files(self.ctx.settings, self.ctx.store.live_releases())

    @property
    def _threshold(self) -> int:
        return self.ctx.settings.monitor.failure_threshold

    def _repos(self) -> dict[str, str]:
        """Which repo each live server comes from (one query per job run)."""
        return {r.server: r.repo for r in self.ctx.store.live_releases()}

    def _deploying(self, server: str, repos: dict[str, str] | None = None) -> bool:
        repo = (repos if repos is not None else self._repos()).get(server)
        return repo is not None and self.busy(repo)
