"""Fixtures of the end-to-end modules: one real `serve` per module and a developer's clone of its repo.

A module that needs a differently configured provider (a monitor that probes every second, a short
session drain) starts its own with `tests.support.provider.running_provider`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, Workspace, running_provider


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Provider]:
    """A real serve process shared by the module's tests (containers and images removed afterwards)."""
    with running_provider(tmp_path_factory.mktemp("provider"), docker_host) as running:
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
