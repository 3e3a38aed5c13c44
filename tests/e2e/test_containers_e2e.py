"""What a pushed server's container may touch on the VM: no root user, no writable root, no disk.

Real pushes into a real serve and the real Docker engine: a server whose image says `USER root`
and declares a `VOLUME` still runs as 65534 on a read-only root with a size-capped /tmp, makes no
Docker volume over redeploys and retirement, and cannot build on another server's image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.buildrules import SERVER_IMAGES
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_SERVER, DockerHost
from tests.support.provider import Provider, Workspace, running_provider, wait_for

pytestmark = pytest.mark.docker

TMPFS_BYTES = 8 * 1024 * 1024


def inspect(provider: Provider, server: str) -> list[dict[str, Any]]:
    """`docker inspect` of every container of `server` in this instance."""
    found = provider.docker.containers({LABEL_INSTANCE: provider.instance, LABEL_SERVER: server})
    return [c.attrs for c in found]


def volumes(attrs: list[dict[str, Any]]) -> list[str]:
    """The Docker volumes these containers mount."""
    return [m["Name"] for a in attrs for m in a.get("Mounts") or [] if m.get("Type") == "volume"]


@pytest.fixture(scope="module")
def small_tmp(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Provider]:
    """A provider whose containers get an 8 MiB /tmp (containers.tmpfs)."""
    root = tmp_path_factory.mktemp("containers-e2e")
    with running_provider(root, docker_host, "containers: {tmpfs: 8m}\n") as running:
        yield running


@pytest.fixture(scope="module")
def work(small_tmp: Provider, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The developer's clone of that provider's repo."""
    return small_tmp.clone(tmp_path_factory.mktemp("clone") / "work")


def test_a_server_runs_as_nobody_on_a_read_only_root_with_a_capped_tmp(
    small_tmp: Provider, work: Workspace
) -> None:
    """An image that says USER root and VOLUME /data runs as 65534:65534 with HOME=/tmp; it can
    write to neither / nor /app nor /etc; /tmp and /data are tmpfs of containers.tmpfs bytes."""
    work.sync()
    server = work.put("fs-probe")
    work.commit("fs-probe")
    push = work.push()
    assert push.ok, push.output

    seen = small_tmp.call(server, "probe")

    assert (seen["uid"], seen["gid"], seen["home"]) == (65534, 65534, "/tmp")
    assert seen["writable"] == {
        "/probe": False,
        "/app/probe": False,
        "/etc/probe": False,
        "/tmp/probe": True,
        "/data/probe": True,
    }
    assert seen["tmp_bytes"] == TMPFS_BYTES
    assert seen["mounts"] == {"/": "overlay", "/tmp": "tmpfs", "/data": "tmpfs"}
    [attrs] = inspect(small_tmp, server)
    assert attrs["Config"]["User"] == "65534:65534"
    assert attrs["HostConfig"]["ReadonlyRootfs"] is True
    assert attrs["HostConfig"]["Tmpfs"] == {
        "/tmp": f"rw,nosuid,nodev,noexec,uid=65534,gid=65534,size={TMPFS_BYTES}",
        "/data": f"rw,nosuid,nodev,noexec,uid=65534,gid=65534,size={TMPFS_BYTES}",
    }
    assert volumes([attrs]) == []


def test_no_volume_is_left_after_a_redeploy_and_retirement(small_tmp: Provider, work: Workspace) -> None:
    """A server whose image declares a VOLUME, deployed, redeployed and removed, leaves no Docker
    volume behind: none is made for any of its containers, and none of theirs exists afterwards."""
    work.sync()
    server = work.put("fs-probe", name=small_tmp.name("fs-vol"))
    work.commit("fs-vol r1")
    assert work.push().ok
    first = inspect(small_tmp, server)
    work.put("fs-probe", name=server, manifest=lambda m: m["run"].update(env={"RELEASE": "2"}))
    work.commit("fs-vol r2")
    assert work.push().ok
    second = inspect(small_tmp, server)
    work.remove(server)
    work.commit("fs-vol retired")
    push = work.push()
    assert push.ok, push.output
    wait_for("the retired server's containers to go", lambda: not inspect(small_tmp, server), 30)

    seen = volumes(first + second)
    assert seen == []
    left = {v.name for v in small_tmp.docker.client.volumes.list()}
    assert not left & set(seen)


def test_a_dockerfile_cannot_build_on_another_servers_image(small_tmp: Provider, work: Workspace) -> None:
    """A server whose Dockerfile says FROM another server's image (the tag the provider built) is
    refused before any build, naming the image and why; the live server keeps serving."""
    work.sync()
    victim = work.put("echo")
    work.commit("victim")
    assert work.push().ok
    [image] = {a["Config"]["Image"] for a in inspect(small_tmp, victim)}
    assert image.startswith(f"{SERVER_IMAGES}/{victim}:")
    thief = work.put("echo", name=small_tmp.name("thief"))
    (work.root / "servers" / thief / "Dockerfile").write_text(f"FROM {image}\nUSER 65534\n")
    work.commit("thief")

    push = work.push()

    assert not push.ok
    assert f"FROM {image}: a server image this provider built" in push.output
    assert small_tmp.greeting(victim) == "hello, Ada"


def test_a_permissive_base_image_glob_still_cannot_name_a_server_image(
    tmp_path: Path, docker_host: DockerHost
) -> None:
    """With build.base_images: ["central-mcp/*"], a server image under a name the glob allows (as
    releases built before server images moved to central-mcp-server/ are tagged) is still refused
    at build time: the image carries a server's label, whatever its name."""
    glob = {"base_images": '["central-mcp/*"]'}
    with running_provider(tmp_path / "vm", docker_host, build=glob) as provider:
        work = provider.clone(tmp_path / "work")
        victim = work.put("echo")
        work.commit("victim")
        assert work.push().ok
        [image_id] = {a["Image"] for a in inspect(provider, victim)}
        old_name = f"central-mcp/{victim}:r1-old"
        docker_host.client.images.get(image_id).tag(old_name)
        try:
            thief = work.put("echo", name=provider.name("thief"))
            (work.root / "servers" / thief / "Dockerfile").write_text(f"FROM {old_name}\nUSER 65534\n")
            work.commit("thief")

            push = work.push()
        finally:
            docker_host.remove_image(old_name)

        assert not push.ok
        assert f"{old_name}: a server image this provider built; build on a base image instead" in push.output
        assert "load metadata" not in push.output  # refused before the builder ran
        assert provider.greeting(victim) == "hello, Ada"
