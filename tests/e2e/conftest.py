"""Fixtures of the end-to-end modules: one real `serve` per module and a developer's clone of its repo.

A module that needs a differently configured provider (a monitor that probes every second, a short
session drain) starts its own with `tests.support.provider.running_provider`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import firewall
from pipeline.config.settings import Settings
from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, Workspace, running_provider
from tests.support.swarmview import engine_of


@pytest.fixture(scope="session", autouse=True)
def host_firewall() -> None:
    """The server networks' firewall, as `make setup` installs it (serve starts no server without it)."""
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path(".central-mcp"))
    if os.geteuid() == 0:
        firewall.install(settings)
    status = firewall.check(settings)
    assert status.ok, f"the end-to-end tests need the host firewall: {status.detail}"


@pytest.fixture(scope="module")
def provider(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    docker_host: DockerHost,
    package_cache: Path,
) -> Iterator[Provider]:
    """A real serve process shared by the module's tests (containers and images removed afterwards),
    its package cache the session's: each package version is downloaded once per run. A test
    parametrized `indirect` with ENGINE_SWARM gets one on the Swarm engine."""
    engine = engine_of(request, docker_host)
    with running_provider(
        tmp_path_factory.mktemp("provider"), docker_host, package_cache=package_cache, engine=engine
    ) as running:
        yield running


@pytest.fixture(scope="module")
def workspace(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The developer's clone of the provider's repo."""
    return provider.clone(tmp_path_factory.mktemp("clone") / "work")


@pytest.fixture
def synced(workspace: Workspace) -> Workspace:
    """The clone synced to the VM's branch before the test, as a developer who just pulled."""
    workspace.sync()
    return workspace
