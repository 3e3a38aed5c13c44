"""What the proxy forwards to: an `Upstream` address, a `Target` (one container of a release, with its
state and in-flight count) and a `TargetGroup` (a release: its replicas).

A target's state is a small word (kamal-proxy's `Target` is the model): `healthy` targets are in
rotation, a `draining` one serves only the sessions it issued until they end or the drain deadline
passes, a `retired` one serves nothing (its sessions answer 404). A group picks, for a request that
belongs to no session, the healthy replica with the fewest requests in flight. Targets are changed
only by the Router, under its lock.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from enum import StrEnum

from pipeline.remote import Route


@dataclass(frozen=True)
class Upstream:
    """Where one running container (or a remote server) of a release is reached."""

    server: str
    release: int
    container_id: str
    host: str
    port: int
    path: str
    access: tuple[str, ...] = ("all",)
    remote: Route | None = None  # a remote server: no container, `container_id` only names the release
    relayed: bool = False
    """Reached through the Swarm relay (swarm.py), which resets a new connection it could not carry
    to the replica: such a reset, before any answer, means nothing reached the server."""

    @property
    def base_url(self) -> str:
        """The upstream's MCP endpoint URL."""
        if self.remote is not None:
            return self.remote.url
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def authority(self) -> str:
        """The Host sent upstream: loopback for a container, as SDK servers' DNS-rebinding guard
        accepts, whatever address it is reached at on its network; a remote's own name."""
        if self.remote is not None:
            return self.remote.authority
        return f"127.0.0.1:{self.port}"


class TargetState(StrEnum):
    """Where a target is in its life."""

    HEALTHY = "healthy"  # in rotation
    UNHEALTHY = "unhealthy"  # out of rotation (no connection could be made): its sessions still try it
    DRAINING = "draining"  # out of rotation: its own sessions and requests finish
    RETIRED = "retired"  # gone: nothing is routed to it


class Target:
    """One container the proxy forwards to: its address, state, requests in flight, and the event
    that closes its open streams when it is retired."""

    __slots__ = ("closer", "inflight", "state", "upstream")

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.state = TargetState.HEALTHY
        self.inflight = 0
        self.closer: asyncio.Event | None = None  # made on its first request (on the loop's thread)

    @property
    def container_id(self) -> str:
        """The container's id (a remote release's name for a remote server)."""
        return self.upstream.container_id

    def admit(self) -> asyncio.Event | None:
        """Count a request in flight unless retired; return the event set when the target retires."""
        if self.state is TargetState.RETIRED:
            return None
        self.inflight += 1
        closer = self.closer
        if closer is None:
            closer = self.closer = asyncio.Event()
        return closer

    def done(self) -> None:
        """Count a request that ended."""
        if self.inflight > 0:
            self.inflight -= 1

    def retire(self) -> asyncio.Event | None:
        """Take the target out of service for good; return the event to set (its streams close)."""
        self.state = TargetState.RETIRED
        closer, self.closer = self.closer, None
        return closer

    def __repr__(self) -> str:
        u = self.upstream
        return (
            f"Target({u.server} r{u.release} {u.container_id[:12]} {self.state}, {self.inflight} in flight)"
        )


@dataclass(frozen=True)
class TargetGroup:
    """A release as the proxy routes it: its replicas. Immutable; a change makes a new group."""

    server: str
    release: int
    targets: tuple[Target, ...]
    turns: itertools.count[int] = field(default_factory=itertools.count, compare=False, repr=False)

    @property
    def first(self) -> Upstream:
        """The address of its first replica (what the pages, the aggregate and the access check read)."""
        return self.targets[0].upstream

    def pick(self) -> Target | None:
        """The healthy replica with the fewest requests in flight, or None; ties go round the
        replicas in turn, so an idle server's new sessions spread too."""
        targets = self.targets
        count = len(targets)
        if count == 1:
            only = targets[0]
            return only if only.state is TargetState.HEALTHY else None
        start = next(self.turns) % count if count else 0
        best: Target | None = None
        for i in range(start, start + count):
            target = targets[i % count]
            if target.state is TargetState.HEALTHY and (best is None or target.inflight < best.inflight):
                best = target
        return best

    def without(self, container_id: str) -> TargetGroup:
        """The group less one replica."""
        return TargetGroup(
            self.server, self.release, tuple(t for t in self.targets if t.container_id != container_id)
        )

    def plus(self, target: Target) -> TargetGroup:
        """The group with one more replica."""
        return TargetGroup(self.server, self.release, (*self.targets, target))


def group_of(upstreams: tuple[Upstream, ...]) -> TargetGroup:
    """A new group of fresh healthy targets, one per upstream (all of one server and release)."""
    first = upstreams[0]
    if any((u.server, u.release) != (first.server, first.release) for u in upstreams):
        raise ValueError(f"one group holds one release of one server, not {upstreams!r}")
    return TargetGroup(first.server, first.release, tuple(Target(u) for u in upstreams))
