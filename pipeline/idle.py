"""Scale to zero: servers whose manifest says `scale: {min: 0}` stop when unused, start on demand.

The monitor's idle job (`Idler.sweep`) stops a server that had no request, no session and no
open stream for its `idle_after`: it leaves the route table but stays known (requests are held,
not 404), drains, and its container is removed; its image and release row stay, and the store
records it idle, so probes, the watch window and a restarted provider leave it so. The proxy
holds the first request afterwards (`Idler.wake`): one start per server however many wait,
through `launch.start` and the gate as a deploy's, then the requests are routed. A start that
fails or outlasts `idle.wake_timeout` answers 503 with a JSON-RPC error; the server stays idle,
and a request after `idle.retry_after` tries again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from pipeline import gate, launch
from pipeline.config.units import parse_duration
from pipeline.context import Context
from pipeline.errors import CentralMCPError, WakeFailed
from pipeline.monitor import Health
from pipeline.plan import ReleaseSpec
from pipeline.proxy.router import Upstream
from pipeline.proxy.usage import Usage
from pipeline.states import ReleaseStatus, ServerStatus

log = logging.getLogger("central-mcp.idle")
STOP_GRACE = 2.0  # seconds an idle server gets to exit on SIGTERM (it holds no request)
WAKE_SUFFIX = "wake"  # container name suffix of a server started by its first request
LISTEN_BACKOFF = 0.02  # the most a wake waits between connection attempts while the process starts
WAKE_ERROR = -32603  # JSON-RPC internal error: the answer's code when a start fails
Reply = tuple[int, bytes, list[tuple[bytes, bytes]]]


def idle_after(manifest: Mapping[str, Any], default: float) -> float | None:
    """Seconds unused before a server stops (its `scale.idle_after`, else `default`), or None when
    its manifest keeps one container running (no `scale.min: 0`, or a remote server: no container)."""
    scale = manifest.get("scale") or {}
    if scale.get("min", 1) != 0 or manifest.get("remote") is not None:
        return None
    return parse_duration(scale["idle_after"]) if "idle_after" in scale else default


class Idler:
    """Stops unused `scale.min: 0` servers and starts them again on their first request."""

    def __init__(
        self,
        ctx: Context,
        usage: Usage,
        health: MutableMapping[str, Health],
        busy: Callable[[str], bool] = lambda server: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.usage = usage
        self.health = health  # the monitor's: pages, /registry.json and /healthz show `idle`
        self.busy = busy  # whether a deploy of the server's repo runs or waits
        self.clock = clock
        self.asleep: frozenset[str] = frozenset()  # read by the proxy; replaced in one assignment
        self._access: dict[str, tuple[str, ...]] = {}
        self._seen: dict[str, tuple[str, int, float]] = {}  # server -> (container, requests, since)
        self._policies: dict[tuple[str, int], Mapping[str, Any]] = {}  # (server, release) -> manifest
        self._locks: dict[str, threading.Lock] = {}  # one stop or start of a server at a time
        self._lock = threading.Lock()
        self._waking: dict[str, asyncio.Future[None]] = {}  # on the proxy's loop
        self._failed: dict[str, tuple[float, str]] = {}  # server -> (when, why) its last start failed
        self._tasks: set[asyncio.Task[None]] = set()
        ctx.router.listeners.append(self._swapped)

    # start-up -----------------------------------------------------------------------------
    def restore(self) -> list[str]:
        """Take back the servers the store records idle whose live release has no route (start-up,
        after reconciliation); forget the others. Return the idle ones."""
        live = {r.server: r for r in self.ctx.store.live_releases()}
        for server, number in self.ctx.store.idle().items():
            release = live.get(server)
            if release is None or release.number != number or self.ctx.router.get(server) is not None:
                self.ctx.store.clear_idle(server)
                continue
            self._mark(server, tuple(release.manifest.get("access", ("all",))))
        self._count()
        return sorted(self.asleep)

    # stopping -----------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Stop every live `scale.min: 0` server unused for its idle_after (a scheduled job)."""
        now = self.clock()
        stopped = []
        for server, upstream in sorted(self.ctx.router.table.items()):
            after = self._idle_after(upstream)
            if after is None or self._used(upstream, now) or now - self._seen[server][2] < after:
                continue
            try:
                if not self.busy(server) and self.stop(upstream):
                    stopped.append(server)
            except CentralMCPError as exc:  # the engine away, say: the others are still looked at
                log.warning("%s: stopping it for want of use failed: %s", server, exc)
        return stopped

    def stop(self, upstream: Upstream) -> bool:
        """Stop a live server for want of use: out of the table (still known), drained, removed,
        recorded idle. False if it was replaced or took a request meanwhile."""
        server, cid, router = upstream.server, upstream.container_id, self.ctx.router
        with self._server_lock(server):
            group = router.groups.get(server)
            if group is None or len(group.targets) != 1:  # autoscaling takes it down to one first
                return False
            if router.get(server) != upstream or router.inflight(cid) or router.sessions_on(cid):
                return False
            self._mark(server, upstream.access)  # from here its requests wait for a start
            router.park(server)
            timeout = self.ctx.settings.proxy.drain_timeout
            router.drain(cid, timeout, timeout)  # a request that raced the park finishes
            router.retire(cid)
            self.ctx.store.set_idle(server, upstream.release, time.time())
            self.ctx.docker.stop_and_remove(cid, grace=STOP_GRACE)
            self.health[server] = Health(status=ServerStatus.IDLE)
            self._seen.pop(server, None)
        self._count()
        log.info("%s r%d: unused for its idle_after; stopped (idle)", server, upstream.release)
        return True

    def _idle_after(self, upstream: Upstream) -> float | None:
        if upstream.remote is not None:
            return None
        key = (upstream.server, upstream.release)
        manifest = self._policies.get(key)
        if manifest is None:
            release = self.ctx.store.release(*key)
            manifest = self._policies[key] = release.manifest if release is not None else {}
        return idle_after(manifest, self.ctx.settings.idle.after)

    def _used(self, upstream: Upstream, now: float) -> bool:
        """Whether the server was used since the last look (a request, or a session or stream open
        now); restarts its idle clock if so."""
        server, cid = upstream.server, upstream.container_id
        requests = self.usage.totals(server)[0]
        seen = self._seen.get(server)
        router = self.ctx.router
        if seen is None or seen[:2] != (cid, requests) or router.inflight(cid) or router.sessions_on(cid):
            self._seen[server] = (cid, requests, now)
            return True
        return False

    # waking -------------------------------------------------------------------------------
    def access(self, server: str) -> tuple[str, ...]:
        """Who may use an asleep server: its live release's `access`."""
        return self._access.get(server, ("all",))

    async def wake(self, server: str) -> Reply | None:
        """Start `server` (one start for every request waiting) and return None once it is routed,
        or a 503 when the start failed, failed within `idle.retry_after`, or outlasted
        `idle.wake_timeout`."""
        cfg = self.ctx.settings.idle
        waiting = self._waking.get(server)
        if waiting is None:
            failed = self._failed.get(server)
            if failed is not None and self.clock() - failed[0] < cfg.retry_after:
                return unavailable(server, failed[1], cfg.retry_after)
            waiting = self._waking[server] = asyncio.get_running_loop().create_future()
            waiting.add_done_callback(_retrieved)
            task = asyncio.create_task(self._start_soon(server, waiting))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait_for(asyncio.shield(waiting), cfg.wake_timeout)
        except TimeoutError:
            return unavailable(server, f"it did not start within {cfg.wake_timeout:g}s", cfg.retry_after)
        except WakeFailed as exc:
            return unavailable(server, str(exc), cfg.retry_after)
        return None

    async def _start_soon(self, server: str, waiting: asyncio.Future[None]) -> None:
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.start, server)
        except Exception as exc:  # a bug, too: every waiter gets a 503 and the server stays idle
            why = str(exc) if isinstance(exc, CentralMCPError) else f"internal error: {exc!r}"
            why = self.ctx.secrets.masker(self.ctx.settings)(why)
            self._failed[server] = (self.clock(), why)
            log.warning("%s: could not be started for a request: %s", server, why)
            self.ctx.metrics.wakes.labels(server, "failed").inc()
            waiting.set_exception(WakeFailed(why))
        else:
            self._failed.pop(server, None)
            log.info("%s: started for its waiting requests in %.3fs", server, time.monotonic() - started)
            self.ctx.metrics.wakes.labels(server, "started").inc()
            waiting.set_result(None)
        finally:
            self._waking.pop(server, None)

    def start(self, server: str) -> None:
        """Start an idle server's live release, gate it and route to it (a worker thread); nothing
        is routed if it fails (GateError, DockerError, ...)."""
        with self._server_lock(server):
            if server not in self.asleep:
                return  # started already (a deploy, or the start before)
            spec = ReleaseSpec.of(self._release(server))
            began = time.monotonic()
            deadline = began + self.ctx.settings.idle.wake_timeout
            running = launch.start(self.ctx, spec, WAKE_SUFFIX)
            started = time.monotonic()
            try:
                listening = started + _listening(running.host, running.port, deadline)
                launch.wait_healthy(self.ctx, spec, running, self._say, deadline)
            except CentralMCPError:
                self.ctx.docker.stop_and_remove(running.id, grace=0)
                raise
            gated = time.monotonic()
            if server not in self.asleep:  # a deploy routed or removed it meanwhile: it is not ours
                self.ctx.docker.stop_and_remove(running.id, grace=0)
                return
            self.ctx.store.set_container(server, spec.number, running.id, running.port)
            self.ctx.store.clear_idle(server)
            self.health[server] = Health()
            self.ctx.router.swap({server: launch.upstream(self.ctx, spec, running)})
            self._unmark(server)
        self._count()
        log.info(
            "%s r%d: woken in %.3fs (container created and started %.3fs, process listening %.3fs, "
            "MCP gate %.3fs, routed %.3fs)",
            server,
            spec.number,
            time.monotonic() - began,
            started - began,
            listening - started,
            gated - listening,
            time.monotonic() - gated,
        )

    def _release(self, server: str) -> Any:
        number = self.ctx.store.idle().get(server)
        release = self.ctx.store.release(server, number) if number is not None else None
        if release is None or release.status != ReleaseStatus.LIVE:
            raise WakeFailed(f"server {server!r} has no live release to start (it was replaced or removed)")
        return release

    def _say(self, line: str) -> None:
        log.warning("%s", self.ctx.secrets.masker(self.ctx.settings)(line))

    # bookkeeping --------------------------------------------------------------------------
    def _swapped(self) -> None:
        """A swap routed an asleep server (a deploy, a rollback) or removed it (its folder is gone
        from the commit): it is idle no longer."""
        router = self.ctx.router
        for server in self.asleep:
            if router.get(server) is not None or server not in router.known:
                self._unmark(server)
                self.ctx.store.clear_idle(server)
                self._count()

    def _mark(self, server: str, access: tuple[str, ...]) -> None:
        with self._lock:
            self._access[server] = access
            self.asleep = self.asleep | {server}
            self.health[server] = Health(status=ServerStatus.IDLE)

    def _unmark(self, server: str) -> None:
        with self._lock:
            self.asleep = self.asleep - {server}
            self._access.pop(server, None)

    def _server_lock(self, server: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(server, threading.Lock())

    def _count(self) -> None:
        self.ctx.metrics.idle.set(len(self.asleep))


def unavailable(server: str, why: str, retry_after: float) -> Reply:
    """The 503 for requests whose server could not be started: a JSON-RPC error naming it."""
    message = f"server {server!r} is idle and could not be started: {why}; retry later"
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": WAKE_ERROR, "message": message}}
    seconds = str(max(1, round(retry_after))).encode()
    headers = [(b"retry-after", seconds), (b"content-type", b"application/json")]
    return 503, json.dumps(body).encode(), headers


def _listening(host: str, port: int, deadline: float) -> float:
    """Wait until the server's process accepts connections (or the deadline passes; the gate then
    says why); return the seconds it took."""
    started = time.monotonic()
    delays = gate.backoff(LISTEN_BACKOFF)
    while host and time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=LISTEN_BACKOFF).close()
            break
        except OSError:
            time.sleep(next(delays))
    return time.monotonic() - started


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a start's failure retrieved though every waiter may have timed out already."""
    if not future.cancelled():
        future.exception()
