"""The tests' view of a Swarm-engine provider's replicas: its services, seen as containers.

`Provider.containers(server)` and friends list containers by label; with `engine: swarm` a replica
is a service. This view lists them without touching the relay (the provider's own SwarmHost keeps
it), and its cleanup removes what a Swarm provider leaves: services, secrets and overlay networks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import docker.errors
import pytest

from pipeline.config.settings import ENGINE_PLAIN, ENGINE_SWARM
from pipeline.dockerhost import DockerHost
from pipeline.swarm import LABEL_OVERLAY, SwarmHost
from tests.support.swarmnodes import require_manager


class SwarmView(DockerHost):
    """Lists and removes services where a DockerHost lists and removes containers."""

    def containers(self, labels: Mapping[str, str]) -> list[Any]:
        """Every service with these labels, as the provider's SwarmHost sees it (no relay work)."""
        api: Any = self.client.api
        found = api.services(filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        return [_Service(self, s) for s in found]

    def status(self, container_id: str) -> str:
        """The service's task state, as SwarmHost.status reads it."""
        return SwarmHost.status(self, container_id)  # type: ignore[arg-type]

    def _tasks(self, service_id: str) -> list[dict[str, Any]]:
        return SwarmHost._tasks(self, service_id)  # type: ignore[arg-type]

    def _task_state(self, service_id: str, tasks: list[dict[str, Any]] | None = None) -> tuple[str, str]:
        return SwarmHost._task_state(self, service_id, tasks)  # type: ignore[arg-type]

    def stop_and_remove(self, container_id: str, grace: float = 0) -> None:
        """Remove the service (its task stops with it)."""
        del grace
        api: Any = self.client.api
        with suppress(docker.errors.NotFound):
            api.remove_service(container_id)

    def hostname(self, container_id: str) -> str:
        """The service's name: its task's host name."""
        api: Any = self.client.api
        return str(api.inspect_service(container_id)["Spec"]["Name"])

    @property
    def _api(self) -> Any:
        return self.client.api


class _Service:
    """One service with the attributes tests read of a container, and `remove`."""

    def __init__(self, view: SwarmView, attrs: Mapping[str, Any]) -> None:
        spec = attrs.get("Spec") or {}
        self.view = view
        self.id = str(attrs["ID"])
        self.name = str(spec.get("Name", ""))
        self.labels = {str(k): str(v) for k, v in (spec.get("Labels") or {}).items()}
        self.status = view.status(self.id)

    def remove(self, force: bool = True) -> None:
        """Remove the service and its secrets."""
        del force
        api: Any = self.view.client.api
        with suppress(docker.errors.NotFound):
            api.remove_service(self.id)


def remove_swarm_leftovers(host: DockerHost, instance: str) -> None:
    """Remove the services, secrets and overlay networks a Swarm provider of `instance` made."""
    api: Any = host.client.api
    label = f"central-mcp.instance={instance}"
    for service in api.services(filters={"label": label}):
        with suppress(docker.errors.NotFound):
            api.remove_service(service["ID"])
    for secret in api.secrets(filters={"label": label}):
        with suppress(docker.errors.APIError):
            api.remove_secret(secret["ID"])
    for container in host.client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)  # the relay, attached to every overlay
    deadline = time.monotonic() + LEAVE_TIMEOUT
    for network in api.networks(filters={"label": f"{LABEL_OVERLAY}={instance}"}):
        while True:  # until the removed services' tasks have left it
            try:
                api.remove_network(network["Id"])
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def engine_of(request: pytest.FixtureRequest, host: DockerHost) -> str:
    """The engine a provider fixture was parametrized with (plain by default); the Swarm engine
    needs this engine to be a swarm manager (`central-mcp engine --swarm`; a failure in CI)."""
    engine = str(getattr(request, "param", ENGINE_PLAIN))
    if engine == ENGINE_SWARM:
        require_manager(host)
    return engine


LEAVE_TIMEOUT = 30.0  # for removed services' tasks to leave their overlay (a stop grace is 10 s)

# Both engines, for the tests every engine must pass (the Swarm one marked `swarm`).
ENGINES = [ENGINE_PLAIN, pytest.param(ENGINE_SWARM, marks=pytest.mark.swarm)]
SWARM_ONLY = [pytest.param(ENGINE_SWARM, marks=pytest.mark.swarm)]
