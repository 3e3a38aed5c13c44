"""The route table and the targets' lives: a release is a group of targets (its replicas), each
healthy, draining (its own sessions only) or retired (pipeline/proxy/targets.py).

The table maps a server name to its live group; it is an immutable mapping replaced in one
assignment. A request outside any session goes to the live group's least busy healthy replica; a
session's requests go to the target that issued it, and a stateless-era retry that carries a
`requestState` goes to the target that minted it (`pin`). After a swap the old targets keep serving
the sessions they issued until those end or the session drain timeout passes; then they are retired
and their session ids answer 404. Sessions (sessions.py) are counted busy from `enter` to `leave`,
under the same lock.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType

from pipeline.proxy.sessions import Session, SessionTable
from pipeline.proxy.split import Split
from pipeline.proxy.targets import Target, TargetGroup, TargetState, Upstream, group_of
from pipeline.store import SessionRow

__all__ = ["MAX_PINS", "Router", "Target", "TargetGroup", "TargetState", "Upstream"]

PIN_DIGEST = 16  # bytes of a pinned request state's digest (collisions: 2**-128)
MAX_PINS = 10_000  # request states kept per server (the oldest forgotten first), whatever servers mint
Change = Upstream | Sequence[Upstream] | None


class Router:
    """Routes, targets, sessions and in-flight counts; thread-safe (deploys run on worker threads)."""

    def __init__(self) -> None:
        self._groups: Mapping[str, TargetGroup] = MappingProxyType({})
        self._table: Mapping[str, Upstream] = MappingProxyType({})
        self._targets: dict[str, Target] = {}  # every target not retired (live and draining), by id
        self._sessions = SessionTable()
        self._pins: dict[str, OrderedDict[bytes, str]] = {}  # server -> state's digest -> its minter
        # the servers with a canary beside their live release (empty, the common case): replaced in
        # one assignment, read on the hot path as a plain attribute
        self.splits: Mapping[str, Split] = MappingProxyType({})
        self._lock = threading.RLock()
        self.known: frozenset[str] = frozenset()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.listeners: list[Callable[[], None]] = []  # told after each swap (from the swapping thread)

    @property
    def table(self) -> Mapping[str, Upstream]:
        """Each live server's first replica (never mutated; a swap replaces it)."""
        return self._table

    @property
    def groups(self) -> Mapping[str, TargetGroup]:
        """Each live server's group of replicas (never mutated; a swap replaces it)."""
        return self._groups

    def get(self, server: str) -> Upstream | None:
        """Return the first live replica of `server`, or None."""
        return self._table.get(server)

    def pick(self, server: str) -> Target | None:
        """The live replica of `server` a new request goes to (fewest in flight), or None; with a
        canary beside the live release, its share of them go to the canary."""
        group = self._groups.get(server)
        if group is None:
            return None
        if self.splits and (split := self.splits.get(server)) is not None:
            chosen = split.choose(group)
            return chosen.pick() or group.pick()
        targets = group.targets
        if len(targets) == 1:  # the usual server: no choice to make (the hot path)
            only = targets[0]
            return only if only.state is TargetState.HEALTHY else None
        return group.pick()

    def target(self, container_id: str) -> Target | None:
        """The live or draining target with this id, or None."""
        return self._targets.get(container_id)

    def swap(self, changes: Mapping[str, Change]) -> dict[str, TargetGroup]:
        """Apply changes (an upstream, or a release's replicas; None removes a server) in one step;
        return the replaced groups, whose targets start draining."""
        with self._lock:
            groups = dict(self._groups)
            replaced = {name: groups[name] for name in changes if name in groups}
            for name, change in changes.items():
                if change is None:
                    groups.pop(name, None)
                else:
                    ups = (change,) if isinstance(change, Upstream) else tuple(change)
                    group = groups[name] = self._group(ups)
                    self._targets.update((t.container_id, t) for t in group.targets)
            kept = {t.container_id for g in groups.values() for t in g.targets}
            for old in replaced.values():
                for target in old.targets:
                    if target.container_id not in kept:
                        target.state = TargetState.DRAINING
            self._publish(groups)
            self.known = frozenset(self.known | set(groups)) - {n for n, c in changes.items() if c is None}
        self._tell()
        return replaced

    def _group(self, upstreams: tuple[Upstream, ...]) -> TargetGroup:
        """A group of these upstreams; a container already routed keeps its target (and its counts)."""
        group = group_of(upstreams)
        targets = []
        for fresh in group.targets:
            known = self._targets.get(fresh.container_id)
            if known is None or known.state is TargetState.RETIRED:
                targets.append(fresh)
                continue
            known.upstream, known.state = fresh.upstream, TargetState.HEALTHY
            targets.append(known)
        return TargetGroup(group.server, group.release, tuple(targets))

    def park(self, server: str) -> Upstream | None:
        """Take `server` out of the table but keep it known (scaled to zero): all its replicas drain;
        return its first replica's address (None if it had none)."""
        with self._lock:
            groups = dict(self._groups)
            parked = groups.pop(server, None)
            if parked is None:
                return None
            for target in parked.targets:
                target.state = TargetState.DRAINING
            self._publish(groups)
            self.known = self.known | {server}
        self._tell()
        return parked.first if parked.targets else None

    def replace_all(self, upstreams: Iterable[Upstream], known: Iterable[str] = ()) -> None:
        """Replace the whole table (start-up reconciliation; one server's upstreams make one group);
        `known` servers lacking one answer 503."""
        by_server: dict[str, list[Upstream]] = {}
        for upstream in upstreams:
            by_server.setdefault(upstream.server, []).append(upstream)
        with self._lock:
            groups = {name: group_of(tuple(ups)) for name, ups in by_server.items()}
            self._targets = {t.container_id: t for g in groups.values() for t in g.targets}
            self._publish(groups)
            self.known = frozenset(set(known) | set(groups))
        self._tell()

    def add_target(self, upstream: Upstream) -> Target:
        """Put one more replica of the live release of `upstream.server` in rotation."""
        target = Target(upstream)
        with self._lock:
            group = self._groups.get(upstream.server)
            if group is None or group.release != upstream.release:
                raise ValueError(f"{upstream.server} r{upstream.release} is not live: no replica is added")
            self._targets[target.container_id] = target
            self._publish({**self._groups, upstream.server: group.plus(target)})
        self._tell()
        return target

    def remove_target(self, container_id: str) -> Target | None:
        """Take one live replica out of rotation (it drains: its sessions stay); return it. The last
        replica of a server is never removed this way (None)."""
        with self._lock:
            target = self._targets.get(container_id)
            group = self._groups.get(target.upstream.server) if target is not None else None
            if target is None or group is None or target not in group.targets or len(group.targets) < 2:
                return None
            target.state = TargetState.DRAINING
            self._publish({**self._groups, group.server: group.without(container_id)})
        self._tell()
        return target

    def replace_target(self, container_id: str, upstream: Upstream) -> Target | None:
        """Put `upstream` in a live replica's place in one step (the old one drains); return the old."""
        new = Target(upstream)
        with self._lock:
            old = self._targets.get(container_id)
            group = self._groups.get(upstream.server)
            if old is None or group is None or old not in group.targets:
                return None
            old.state = TargetState.DRAINING
            self._targets[new.container_id] = new
            targets = tuple(new if t is old else t for t in group.targets)
            self._publish({**self._groups, group.server: TargetGroup(group.server, group.release, targets)})
        self._tell()
        return old

    def suspend(self, target: Target) -> bool:
        """Take a live replica that could not be connected to out of rotation, if another healthy
        one remains (the monitor's probes bring it back or replace it); return whether it was."""
        with self._lock:
            group = self._groups.get(target.upstream.server)
            if target.state is not TargetState.HEALTHY or group is None or target not in group.targets:
                return False
            if not any(t is not target and t.state is TargetState.HEALTHY for t in group.targets):
                return False
            target.state = TargetState.UNHEALTHY
        return True

    def reinstate(self, container_id: str) -> None:
        """Put a suspended replica that answers its probes again back in rotation."""
        with self._lock:
            target = self._targets.get(container_id)
            if target is not None and target.state is TargetState.UNHEALTHY:
                target.state = TargetState.HEALTHY

    def readdress(self, container_id: str, upstream: Upstream) -> None:
        """Route to a live target at its new address (Docker moved it); its counts stay."""
        with self._lock:
            target = self._targets.get(container_id)
            if target is None or target.upstream.container_id != upstream.container_id:
                return
            target.upstream = upstream
            self._publish(dict(self._groups))
        self._tell()

    def _publish(self, groups: Mapping[str, TargetGroup]) -> None:
        """Replace the table (under the lock): one assignment each for the groups and first replicas."""
        self._groups = MappingProxyType(dict(groups))
        self._table = MappingProxyType({name: g.first for name, g in groups.items() if g.targets})

    def _tell(self) -> None:
        """Tell the listeners the table changed (the aggregate: its lists and clients)."""
        for listener in list(self.listeners):
            listener()

    # canaries (pipeline/canary.py runs them) ------------------------------------------------
    def start_split(self, server: str, upstreams: Sequence[Upstream], percent: int) -> Split:
        """Put a candidate release beside the live one of `server`, taking `percent` of new traffic."""
        with self._lock:
            stable = self._groups.get(server)
            if stable is None:
                raise ValueError(f"{server} has no live release: a canary needs one beside it")
            canary = self._group(tuple(upstreams))
            self._targets.update((t.container_id, t) for t in canary.targets)
            split = Split(stable.release, canary, percent)
            self.splits = MappingProxyType({**self.splits, server: split})
        return split

    def end_split(self, server: str, promote: bool) -> TargetGroup | None:
        """End the canary of `server`: promoted, it becomes the live release (the stable one drains,
        as after a swap); else it drains and the stable keeps everything. Return the group to drain."""
        with self._lock:
            split = self.splits.get(server)
            if split is None:
                return None
            self.splits = MappingProxyType({k: v for k, v in self.splits.items() if k != server})
            if promote:
                return self.swap({server: tuple(t.upstream for t in split.canary.targets)}).get(server)
            for target in split.canary.targets:
                target.state = TargetState.DRAINING
            return split.canary

    def observe(self, target: Target, status: int, rpc_error: bool, seconds: float) -> None:
        """Count a request that ended on a server with a canary (its step's figures)."""
        split = self.splits.get(target.upstream.server)
        if split is not None:
            split.observe(target.upstream.release, status >= 500, rpc_error, seconds)

    # request state (the stateless era's multi-round-trip requests) --------------------------
    def pin(self, state: str, container_id: str) -> None:
        """Remember that `container_id` minted request state `state` (its retry goes back there)."""
        key = _pin_key(state)
        with self._lock:
            target = self._targets.get(container_id)
            if target is None:
                return
            pins = self._pins.setdefault(target.upstream.server, OrderedDict())  # one server's own
            pins[key] = container_id
            pins.move_to_end(key)
            while len(pins) > MAX_PINS:
                pins.popitem(last=False)

    def pinned(self, server: str, state: str) -> Target | None:
        """The target of `server` that minted `state`, if it still serves (else None: any replica may
        take it)."""
        pins = self._pins.get(server)
        container_id = pins.get(_pin_key(state)) if pins is not None else None
        target = self._targets.get(container_id) if container_id is not None else None
        return target if target is not None and target.state is not TargetState.RETIRED else None

    # sessions -----------------------------------------------------------------------------
    def session(self, session_id: str) -> Session | None:
        """Return the live session with this id, or None (unknown, ended, expired or retired)."""
        return self._sessions.get(session_id)

    def target_of(self, session: Session) -> Target | None:
        """Return the target that issued a session, live or draining (None once retired)."""
        return self._targets.get(session.container_id)

    def upstream_of(self, session: Session) -> Upstream | None:
        """Return the address of the target that issued a session, live or draining."""
        target = self._targets.get(session.container_id)
        return target.upstream if target is not None else None

    def open_session(self, session_id: str, upstream: Upstream, key_id: str) -> Session:
        """Remember that `upstream` issued `session_id` to `key_id` (idle from now)."""
        session = Session(session_id, upstream.server, upstream.container_id, key_id)
        with self._lock:
            self._sessions.open(session, time.monotonic())
        return session

    def end_session(self, session_id: str) -> None:
        """Forget a session that ended (DELETE, or the upstream no longer knows it)."""
        with self._lock:
            self._sessions.end(session_id)

    def sessions_on(self, container_id: str) -> int:
        """Return how many sessions an upstream holds."""
        with self._lock:
            return self._sessions.on(container_id)

    def expire_idle(self, before: float) -> list[Session]:
        """End the sessions with no request in flight since before `before`; return them."""
        with self._lock:
            return self._sessions.end_idle_since(before)

    def take_session_changes(self) -> tuple[list[SessionRow], list[str]]:
        """Sessions opened and ended since the last call, for the store."""
        with self._lock:
            return self._sessions.take_changes()

    def restore_sessions(self, rows: list[SessionRow]) -> tuple[int, list[str]]:
        """Take back stored sessions whose container is live (start-up, after the table is rebuilt);
        return how many, and the ids of the others, which are gone for good."""
        with self._lock:
            live = {t.container_id for g in self._groups.values() for t in g.targets}
            kept, gone = (
                [r for r in rows if r.container_id in live],
                [r.id for r in rows if r.container_id not in live],
            )
            self._sessions.restore(kept, time.monotonic())
        return len(kept), gone

    # in-flight requests and open streams ----------------------------------------------------
    def enter(self, target: Target, session: Session | None = None) -> asyncio.Event | None:
        """Count a request on `target` (and `session` busy) if it is still routable (else None:
        route again).

        The check and the count happen under the lock that `drain` retires under, so a request
        is either counted before a target is retired or never sent to it. The event returned is
        set when the target is retired (one per target, shared by its requests).
        """
        with self._lock:
            if target.state is TargetState.RETIRED or (session is not None and session.ended):
                return None
            if session is not None:
                self._sessions.busy(session)
            return target.admit()

    def leave(self, target: Target, session: Session | None = None, now: float = 0.0) -> None:
        """Count a request that ended on `target` at `now` (its session idle from then if it was
        its last)."""
        with self._lock:
            if session is not None:
                self._sessions.rest(session, now)
            target.done()

    def inflight(self, container_id: str) -> int:
        """Return how many requests are running on a container."""
        target = self._targets.get(container_id)
        return target.inflight if target is not None else 0

    def drain(
        self,
        container_id: str,
        request_timeout: float,
        session_timeout: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> bool:
        """Wait until a draining target holds no request and no session; True if it emptied in time
        (then it is retired, atomically: nothing more is routed to it).

        Requests alone get `request_timeout`; while sessions remain, `session_timeout` applies.
        """
        started = clock()
        while True:
            with self._lock:
                target = self._targets.get(container_id)
                sessions = self._sessions.on(container_id)
                if target is None:
                    return True
                if target.inflight == 0 and sessions == 0 and target.state is not TargetState.HEALTHY:
                    del self._targets[container_id]
                    target.retire()  # nothing is left to close
                    return True
            limit = session_timeout if sessions else request_timeout
            if clock() - started >= limit:
                return False
            sleep(0.05)

    def retire(self, container_id: str) -> int:
        """Stop routing to a draining target: its sessions answer 404, its open streams close."""
        with self._lock:
            target = self._targets.pop(container_id, None)
            closer = target.retire() if target is not None else None
            gone = self._sessions.end_all_on(container_id)
        if closer is not None:
            if self.loop is not None and self.loop.is_running():
                self.loop.call_soon_threadsafe(closer.set)
            else:
                closer.set()
        return len(gone)


def _pin_key(state: str) -> bytes:
    """A request state's fixed-size digest: MAX_PINS states cost the same however long each is."""
    return hashlib.blake2b(state.encode(), digest_size=PIN_DIGEST).digest()
