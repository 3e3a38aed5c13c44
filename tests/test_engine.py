"""Engine and base-image set-up: what `make` runs before the suite (the real engine answers here)."""

from __future__ import annotations

from pathlib import Path

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


@pytest.mark.docker
def test_the_base_image_carries_its_version_and_byte_compiled_sdk(docker_host: DockerHost) -> None:
    """The base image is labelled with BASE_VERSION and its SDK ships compiled bytecode."""
    labels = docker_host.image_labels(baseimage.BASE_IMAGE)
    assert labels[baseimage.LABEL_BASE_VERSION] == baseimage.BASE_VERSION
    site = f"/usr/local/lib/python{baseimage.PYTHON_VERSION}/dist-packages/mcp/__pycache__"
    listing = docker_host.client.containers.run(
        baseimage.BASE_IMAGE, ["ls", site], remove=True, network_mode="none"
    ).decode()
    assert any(name.startswith("__init__.cpython-311") for name in listing.split())


def test_a_base_image_of_an_older_version_is_made_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An image labelled with an older base version is rebuilt, and the operator is told why."""

    class OldImage:
        def image_exists(self, tag: str) -> bool:
            return True

        def image_labels(self, tag: str) -> dict[str, str]:
            return {baseimage.LABEL_BASE_VERSION: "1"}

    class Making(Exception):
        pass

    def download(target: Path, say: object) -> Path:
        raise Making

    monkeypatch.setattr(baseimage, "download_wheels", download)
    said: list[str] = []
    with pytest.raises(Making):
        baseimage.ensure_base_image(OldImage(), tmp_path, said.append)  # type: ignore[arg-type]
    assert (
        said[0] == f"base image {baseimage.BASE_IMAGE} is version 1; making version {baseimage.BASE_VERSION}"
    )


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


def test_a_base_image_of_a_newer_version_is_kept(tmp_path: Path) -> None:
    """A base image labelled newer than this checkout's (made by a newer provider) is never downgraded."""

    class NewerImage:
        def image_exists(self, tag: str) -> bool:
            return True

        def image_labels(self, tag: str) -> dict[str, str]:
            return {baseimage.LABEL_BASE_VERSION: str(int(baseimage.BASE_VERSION) + 1)}

    said: list[str] = []
    assert baseimage.ensure_base_image(NewerImage(), tmp_path, said.append) is False  # type: ignore[arg-type]
    assert said == [f"base image {baseimage.BASE_IMAGE} is present"]


def test_the_node_base_image_is_made_with_nodejs_python_and_webcrypto(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`base-image --runtime node` debootstraps nodejs and python3 and sets NODE_OPTIONS and its own label."""

    class NoImage:
        def image_exists(self, tag: str) -> bool:
            return False

    made: list[object] = []
    monkeypatch.setattr(baseimage, "download_wheels", lambda target, say: target)
    monkeypatch.setattr(baseimage, "_debootstrap", lambda rootfs, include, say: made.append(include))

    class Stop(Exception):
        pass

    def install(rootfs: Path, wheels: Path) -> None:
        raise Stop

    monkeypatch.setattr(baseimage, "_install_sdk", install)
    said: list[str] = []
    with pytest.raises(Stop):
        baseimage.ensure_base_image(NoImage(), tmp_path, said.append, runtime=baseimage.NODE)  # type: ignore[arg-type]
    assert made == [("nodejs", "python3", "ca-certificates")]
    assert said[0].startswith(
        f"making base image {baseimage.NODE_IMAGE}: debootstrap bookworm + nodejs + python3"
    )
    changes = baseimage._changes(baseimage.NODE)
    assert "ENV NODE_OPTIONS=--experimental-global-webcrypto" in changes
    assert (
        f'LABEL central-mcp.role="base" {baseimage.LABEL_BASE_VERSION}="{baseimage.NODE_BASE_VERSION}"'
        in changes
    )
