"""What the stages share: the services of one serve process and the request for one deploy.

Intake (hook, webhook, CLI), the deploy runbook, the dispatcher and the monitor all import
these from here, so none of them imports another through deploy.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.canary import Canaries
from pipeline.config.settings import Settings
from pipeline.deploylog import DeployLog
from pipeline.dockerhost import DockerHost
from pipeline.errors import NetworkError
from pipeline.firewall import Guard
from pipeline.metrics import Metrics
from pipeline.network import Networks
from pipeline.proxy.router import Router
from pipeline.remote import Dialer, Resolver, system_resolver
from pipeline.secrets import Secrets
from pipeline.states import DeploySource
from pipeline.store import Release, Store

SwapListener = Callable[[DeploySource, list[tuple[str, int]]], None]


@dataclass(frozen=True)
class DeployRequest:
    """What to deploy: a snapshot of a pushed commit, or a rollback to a stored release."""

    source: DeploySource
    repo: str
    ref: str
    commit: str
    snapshot_dir: Path | None = None
    author: str = ""
    message: str = ""
    rollback: tuple[str, int] | None = None
    fetch: Callable[[DeployLog], Path] | None = None
    """For webhooks: fetches the commit and returns its snapshot directory, run in the repo's lane."""


def redeploy(source: DeploySource, release: Release, message: str) -> DeployRequest:
    """A request to make a stored release live again (a restart, a rollback, an auto-rollback)."""
    return DeployRequest(
        source=source,
        repo=release.repo,
        ref=str(source),
        commit=release.commit_sha,
        message=message,
        rollback=(release.server, release.number),
    )


@dataclass
class Context:
    """The services a deploy uses, created once by the serve process."""

    settings: Settings
    store: Store
    docker: DockerHost
    router: Router
    secrets: Secrets
    instance: str
    metrics: Metrics = field(default_factory=Metrics)
    on_swap: list[SwapListener] = field(default_factory=list)
    """Called after a committed swap with the deploy's source and the (server, release) made live."""
    networks: Networks | None = None
    """The servers' own networks and host-service relays (None where no container is started)."""
    firewall: Guard | None = None
    """The host firewall those networks need (None where no container is started)."""
    resolver: Resolver = system_resolver
    """How remote servers' host names are resolved (tests inject one: no hosts file, no DNS)."""
    canaries: Canaries = field(default_factory=Canaries)
    """The canary rollouts under way (pipeline/canary.py)."""
    _dialer: tuple[Settings, Dialer] | None = field(default=None, repr=False)

    def dialer(self) -> Dialer:
        """How remote servers are reached under the current settings (rebuilt after a reload)."""
        if self._dialer is None or self._dialer[0] is not self.settings:
            self._dialer = (self.settings, Dialer.from_settings(self.settings, self.resolver))
        return self._dialer[1]

    def server_networks(self) -> Networks:
        """The networks, or NetworkError where this context starts no container."""
        if self.networks is None or self.firewall is None:
            raise NetworkError("this provider was started without server networks; containers cannot start")
        self.firewall.require()
        return self.networks


def instance_id(state_dir: Path) -> str:
    """A short id for one provider instance, so several can share an engine."""
    return hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:8]
