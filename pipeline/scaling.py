"""Replicas between deploys: one more replica of a live release, one fewer, one replaced; and the
autoscaler that decides, from requests in flight per replica, when to add or remove one.

A replica is started and gated exactly as a deploy's candidates are (launch.py), and only then put in
rotation; a replica leaving goes out of rotation first, drains (its sessions finish, to the session
drain deadline) and only then stops. The live release (store, registry) does not change: replicas
are containers of the same release.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

from pipeline import launch
from pipeline.context import Context
from pipeline.deploy import drain_and_stop
from pipeline.errors import CentralMCPError
from pipeline.plan import ReleaseSpec
from pipeline.proxy.router import TargetGroup, Upstream

log = logging.getLogger("central-mcp.scaling")
LOW_FRACTION = 0.5  # load is low below this fraction of target_inflight per replica


def add_replica(ctx: Context, server: str, why: str) -> Upstream | None:
    """Start, gate and put in rotation one more replica of `server`'s live release (None if it
    failed; nothing of it is left)."""
    group = ctx.router.groups.get(server)
    release = ctx.store.release(server, group.release) if group is not None else None
    if group is None or release is None:
        return None
    spec = ReleaseSpec.of(release)
    running = None
    try:
        running = launch.start(ctx, spec, f"x{time.time_ns() % 10**9:09d}")
        launch.wait_healthy(ctx, spec, running, log.info)
        upstream = launch.upstream(ctx, spec, running)
        ctx.router.add_target(upstream)
    except (CentralMCPError, ValueError) as exc:
        log.warning("%s: a new replica of r%d failed: %s", server, group.release, exc)
        if running is not None and not launch.is_remote(running.id):
            ctx.docker.stop_and_remove(running.id, grace=1)
        return None
    log.info("%s: replica %s of r%d is in rotation (%s)", server, running.id[:12], group.release, why)
    return upstream


def remove_replica(ctx: Context, container_id: str, why: str) -> bool:
    """Take one replica out of rotation, let it drain, stop it (never a server's last replica)."""
    target = ctx.router.remove_target(container_id)
    if target is None:
        return False
    log.info("%s: replica %s leaves rotation (%s); draining", target.upstream.server, container_id[:12], why)
    drain_and_stop(ctx, target.upstream, log.info)
    return True


def replace_replica(ctx: Context, container_id: str, why: str) -> bool:
    """Replace a failing replica while the others serve: out of rotation at once, a new one started
    and gated in its place, then the old one drained and stopped."""
    target = ctx.router.target(container_id)
    if target is None:
        return False
    server = target.upstream.server
    if ctx.router.remove_target(container_id) is None:
        return False  # its server's last replica: a restart deploy replaces it
    log.warning("%s: replica %s failed (%s); replacing it", server, container_id[:12], why)
    added = add_replica(ctx, server, f"replacing {container_id[:12]}")
    drain_and_stop(ctx, target.upstream, log.info)
    return added is not None


class Step(StrEnum):
    """What the autoscaler decided for one server."""

    UP = "up"
    DOWN = "down"
    HOLD = "hold"


@dataclass(frozen=True)
class Bounds:
    """One server's autoscaling settings (its manifest's `scale`, else deploy.yaml's)."""

    min: int
    max: int
    target_inflight: float
    window: float
    cooldown: float


@dataclass
class Trend:
    """Since when one server's load has been high, or low, and when it last scaled."""

    high_since: float | None = None
    low_since: float | None = None
    last_step: float = float("-inf")


class Autoscaler:
    """Adds a replica while in-flight requests per replica stay above the target for a window,
    removes one while they stay below half of it; with cool-downs, within [min, max]."""

    def __init__(self, ctx: Context, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.clock = clock
        self.trends: dict[str, Trend] = {}
        self._busy: set[str] = set()  # servers with a step under way (in its own thread)
        self._lock = threading.Lock()

    def sample(self, skip: Callable[[str], bool] = lambda server: False) -> dict[str, Step]:
        """Look at every live server once; start the steps decided (in threads); return them."""
        steps: dict[str, Step] = {}
        for server, group in sorted(self.ctx.router.groups.items()):
            if skip(server) or server in self._busy:
                continue
            bounds = self.bounds(group)
            if bounds is None or (bounds.max <= 1 and len(group.targets) <= 1):
                continue
            step = self.decide(server, group, bounds, self.clock())
            steps[server] = step
            if step is not Step.HOLD:
                self._start(server, group, step)
        return steps

    def bounds(self, group: TargetGroup) -> Bounds | None:
        """The autoscaling bounds of a live release (None if the store lacks it)."""
        release = self.ctx.store.release(group.server, group.release)
        if release is None:
            return None
        spec = ReleaseSpec.of(release)
        low, high = launch.replicas(self.ctx, spec)
        low = max(1, low)  # scale.min 0 (scale to zero) is the idle job's; autoscaling keeps one
        scale, defaults = spec.manifest.scale, self.ctx.settings.scale
        return Bounds(
            low,
            high,
            scale.target_inflight if scale.target_inflight is not None else defaults.target_inflight,
            scale.window if scale.window is not None else defaults.window,
            scale.cooldown if scale.cooldown is not None else defaults.cooldown,
        )

    def decide(self, server: str, group: TargetGroup, bounds: Bounds, now: float) -> Step:
        """Pure but for the server's trend: the step its load calls for at `now`."""
        trend = self.trends.setdefault(server, Trend())
        replicas = len(group.targets)
        per_replica = sum(t.inflight for t in group.targets) / max(1, replicas)
        high = per_replica > bounds.target_inflight
        low = per_replica < bounds.target_inflight * LOW_FRACTION
        trend.high_since = (trend.high_since if trend.high_since is not None else now) if high else None
        trend.low_since = (trend.low_since if trend.low_since is not None else now) if low else None
        if now - trend.last_step < bounds.cooldown:
            return Step.HOLD
        if replicas < bounds.min or (
            high and replicas < bounds.max and now - (trend.high_since or now) >= bounds.window
        ):
            return Step.UP
        if replicas > bounds.max or (
            low and replicas > bounds.min and now - (trend.low_since or now) >= bounds.window
        ):
            return Step.DOWN
        return Step.HOLD

    def _start(self, server: str, group: TargetGroup, step: Step) -> None:
        trend = self.trends[server]
        trend.last_step = self.clock()
        trend.high_since = trend.low_since = None
        with self._lock:
            self._busy.add(server)
        work: Callable[[], object]
        if step is Step.UP:
            work = partial(add_replica, self.ctx, server, "load is high")
        else:
            # the replica with the fewest sessions leaves (never the first: the store names it)
            leaving = min(
                group.targets[1:], key=lambda t: (self.ctx.router.sessions_on(t.container_id), t.inflight)
            )
            work = partial(remove_replica, self.ctx, leaving.container_id, "load is low")
        threading.Thread(target=self._run, args=(server, work), name=f"scale-{server}", daemon=True).start()

    def _run(self, server: str, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception:  # a step's failure is logged; the next sample tries again
            log.exception("%s: a scaling step failed", server)
        finally:
            with self._lock:
                self._busy.discard(server)

    def idle(self) -> bool:
        """Whether no step is under way (tests wait on it)."""
        with self._lock:
            return not self._busy
