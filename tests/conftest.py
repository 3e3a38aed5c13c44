"""Shared fixtures: a real Docker engine (a failure in CI when missing) and per-test container labels."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dockerhost import LABEL_INSTANCE, DockerHost
from pipeline.errors import EngineUnavailable

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DOCKERD_RESTART = "--dockerd-restart"


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--dockerd-restart` runs the tests that restart the Docker daemon (they disturb every other user)."""
    parser.addoption(DOCKERD_RESTART, action="store_true", help="run the tests that restart dockerd")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the dockerd-restart tests unless asked for: they get a CI stage of their own."""
    if config.getoption(DOCKERD_RESTART):
        return
    skip = pytest.mark.skip(reason=f"restarts dockerd: run with {DOCKERD_RESTART} (.ci/run's last stage)")
    for item in items:
        if "dockerd_restart" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def bridge_work_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Bridges run on this host keep their sessions' directories here, not in /tmp, which Landlock
    would hide whole from their programs (in a container /tmp is the work root; here the checkout
    and its .venv may be under /tmp)."""
    from pipeline.bridge import child

    root = tmp_path_factory.mktemp("bridge-work")
    before = os.environ.get(child.WORK_ROOT_ENV)
    os.environ[child.WORK_ROOT_ENV] = str(root)
    yield root
    if before is None:
        os.environ.pop(child.WORK_ROOT_ENV, None)
    else:
        os.environ[child.WORK_ROOT_ENV] = before


@pytest.fixture(scope="session")
def docker_host() -> DockerHost:
    """The real Docker engine; in CI a missing engine fails the test instead of skipping it."""
    try:
        host = DockerHost()
        host.ping()
    except EngineUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI needs a Docker engine and none answers: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    return host


@pytest.fixture
def instance_label(request: pytest.FixtureRequest, docker_host: DockerHost) -> Iterator[str]:
    """A label value unique to this test; every container carrying it is removed afterwards."""
    value = f"test-{os.getpid()}-{request.node.name}"[:120]
    yield value
    for container in docker_host.containers({LABEL_INSTANCE: value}):
        container.remove(force=True)


@pytest.fixture(scope="session")
def package_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One package cache for the session: the real downloads of mcp-server-time and server-everything
    happen once and every test after reads them from it."""
    return tmp_path_factory.mktemp("packages")


@pytest.fixture(scope="session")
def python_base_image(docker_host: DockerHost, tmp_path_factory: pytest.TempPathFactory) -> str:
    """central-mcp/python:3.11, made offline once when this engine lacks it (`make` makes it too)."""
    from pipeline import baseimage

    cache = tmp_path_factory.mktemp("python-base-cache")
    baseimage.ensure_base_image(docker_host, cache, lambda line: None)
    return baseimage.BASE_IMAGE


@pytest.fixture(scope="session")
def node_base_image(docker_host: DockerHost, tmp_path_factory: pytest.TempPathFactory) -> str:
    """central-mcp/node:18, made offline once (about a minute) when this engine lacks it."""
    from pipeline import baseimage

    cache = tmp_path_factory.mktemp("base-cache")
    baseimage.ensure_base_image(docker_host, cache, lambda line: None, runtime=baseimage.NODE)
    return baseimage.NODE_IMAGE
