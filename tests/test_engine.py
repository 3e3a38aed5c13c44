"""Engine and base-image set-up: what `make` runs before the suite (the real engine answers here)."""

from __future__ import annotations

import pytest

from pipeline import baseimage, engine
from pipeline.dockerhost import DockerHost
from pipeline.errors import DockerError, EngineUnavailable


@pytest.mark.docker
def test_an_answering_engine_is_used_as_it_is(docker_host: DockerHost) -> None:
    """With an engine up, ensure_engine returns at once and says nothing."""
    said: list[str] = []
    host = engine.ensure_engine(said.append)
    host.ping()
    assert said == []


@pytest.mark.docker
def test_a_present_base_image_is_not_made_again(docker_host: DockerHost, tmp_path: object) -> None:
    """ensure_base_image leaves an existing base image alone and says so."""
    said: list[str] = []
    assert docker_host.image_exists(baseimage.BASE_IMAGE)
    assert baseimage.ensure_base_image(docker_host, tmp_path, said.append) is False  # type: ignore[arg-type]
    assert said == [f"base image {baseimage.BASE_IMAGE} is present"]


def test_without_an_engine_and_without_root_the_message_says_what_to_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-root user with no engine is told to use sudo, and nothing is installed."""

    def no_engine() -> DockerHost:
        raise EngineUnavailable("no engine")

    monkeypatch.setattr(engine, "DockerHost", no_engine)
    monkeypatch.setattr("pipeline.engine.os.geteuid", lambda: 1000)
    with pytest.raises(EngineUnavailable, match="sudo make run"):
        engine.ensure_engine(lambda text: None)


def test_a_failing_setup_command_is_reported_with_its_output() -> None:
    """A set-up command that fails is translated into a DockerError naming what could not be done."""
    with pytest.raises(DockerError, match="could not pack the root file system: `sh` exited 3: boom"):
        baseimage._check(["sh", "-c", "echo boom >&2; exit 3"], "pack the root file system")
