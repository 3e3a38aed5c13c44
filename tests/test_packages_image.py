"""pipeline/packages/image.py: the generated Dockerfile, and the real offline builds of mcp-server-time
(PyPI) and server-everything (npm) with `network: none`, whose entry commands then speak MCP on stdio
in a hardened container with no network."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config.settings import Packages
from pipeline.dockerhost import DockerHost
from pipeline.packages import fetch, image, spec

TIME = "pypi:mcp-server-time==2026.10.19"
EVERYTHING = "npm:@modelcontextprotocol/server-everything@2026.8.31"
STDIO_TIMEOUT = 60
HANDSHAKE = [
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    },
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
]


def _staged(text: str, command: tuple[str, ...] = ("/opt/server/bin/x",)) -> fetch.Staged:
    return fetch.Staged(
        spec.parse(text), Path("/nowhere"), command, 1, 1, pip_wheel="pip-25.3-py3-none-any.whl"
    )


def test_a_pypi_dockerfile_installs_offline_by_hash_into_a_venv() -> None:
    """The PyPI Dockerfile: a venv made by the image's Python, pip run from its wheel with no index and
    required hashes, bytecode compiled, the wheels left in the first stage, args after the command."""
    text = image.dockerfile(_staged(TIME), Packages(), ["--local-timezone", "UTC"])
    assert "ARG BASE_IMAGE=central-mcp/python:3.11" in text
    assert "python3 -m venv --without-pip /opt/server" in text
    assert "/pkg/wheels/pip-25.3-py3-none-any.whl/pip install --no-index" in text
    assert "--require-hashes -r /pkg/wheels/requirements.txt" in text
    assert "compileall" in text
    assert text.count("FROM ${BASE_IMAGE}") == 2 and "COPY --from=install /opt/server /opt/server" in text
    assert 'CMD ["/opt/server/bin/x", "--local-timezone", "UTC"]' in text
    assert f'LABEL {image.LABEL_PACKAGE}="{TIME}"' in text


def test_an_npm_dockerfile_copies_the_tree_onto_the_node_base() -> None:
    """The npm Dockerfile: the tree laid out on the host, copied onto packages.node_image; no command
    when the package has none (run.command gives it)."""
    text = image.dockerfile(_staged(EVERYTHING, ()), dataclasses.replace(Packages(), node_image="node:22"))
    assert "ARG BASE_IMAGE=node:22" in text
    assert "COPY app /opt/server" in text and "RUN" not in text
    assert "CMD" not in text


@pytest.fixture
def built(docker_host: DockerHost) -> Iterator[list[str]]:
    """Tags of images a test built; removed afterwards."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        docker_host.remove_image(tag)


def _build(
    host: DockerHost, staged: fetch.Staged, packages: Packages, tags: list[str]
) -> tuple[str, list[str]]:
    tag = f"central-mcp-test/pkg-{staged.spec.unscoped}:{os.getpid()}"
    tags.append(tag)
    lines: list[str] = []
    host.build(
        tag,
        staged.root,
        image.dockerfile(staged, packages),
        [],
        image.build_args(staged, packages),
        {},
        lines.append,
        network="none",
        timeout=300,
    )
    return tag, lines


def _stdio(tag: str) -> list[dict[str, object]]:
    """Run the image's command as the provider runs a server (no network, read-only, nobody) and speak
    one MCP handshake to it on stdin; return its answers. stdin stays open until the last request is
    answered: a server may end on EOF before it answers what it has read."""
    run = ["docker", "run", "--rm", "-i", "--network", "none", "--read-only", "--user", "65534:65534"]
    run += ["--tmpfs", "/tmp", "-e", "HOME=/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    last = 2  # the id of HANDSHAKE's last request (tools/list)
    answers: list[dict[str, object]] = []
    with subprocess.Popen(
        [*run, tag], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("".join(json.dumps(m) + "\n" for m in HANDSHAKE))
        proc.stdin.flush()
        killer = threading.Timer(STDIO_TIMEOUT, proc.kill)
        killer.start()
        try:
            for line in proc.stdout:
                if line.startswith("{"):
                    answers.append(json.loads(line))
                    if answers[-1].get("id") == last:
                        break
        finally:
            killer.cancel()
            proc.stdin.close()
            proc.wait(timeout=STDIO_TIMEOUT)
    return answers


def _answer(answers: list[dict[str, object]], request_id: int) -> dict[str, object]:
    found = next(a for a in answers if a.get("id") == request_id)
    result = found["result"]
    assert isinstance(result, dict)
    return result


@pytest.mark.docker
def test_mcp_server_time_builds_with_no_network_and_speaks_mcp(
    docker_host: DockerHost, package_cache: Path, built: list[str]
) -> None:
    """pypi mcp-server-time: downloaded on the host, installed in a build with network none, and its
    console script answers initialize and tools/list on stdio."""
    staged = fetch.fetch(spec.parse(TIME), Packages(), package_cache, lambda line: None)
    tag, lines = _build(docker_host, staged, Packages(), built)
    assert any("--no-index" in line for line in lines)
    answers = _stdio(tag)
    assert _answer(answers, 1)["serverInfo"] == {"name": "mcp-time", "version": "2026.10.19"}
    tools = {t["name"] for t in _answer(answers, 2)["tools"]}  # type: ignore[attr-defined]
    assert {"get_current_time", "convert_time"} <= tools
    labels = docker_host.image_labels(tag)
    assert labels[image.LABEL_PACKAGE] == TIME


@pytest.mark.docker
def test_server_everything_builds_on_the_node_base_and_speaks_mcp(
    docker_host: DockerHost, package_cache: Path, node_base_image: str, built: list[str]
) -> None:
    """npm server-everything: laid out on the host with scripts off, copied onto central-mcp/node:18 in
    a build with network none; its bin runs under bookworm's Node 18 and answers on stdio."""
    staged = fetch.fetch(spec.parse(EVERYTHING), Packages(), package_cache, lambda line: None)
    tag, _ = _build(docker_host, staged, Packages(), built)
    answers = _stdio(tag)
    assert str(_answer(answers, 1)["serverInfo"]["name"]).endswith("everything")  # type: ignore[index]
    tools = {t["name"] for t in _answer(answers, 2)["tools"]}  # type: ignore[attr-defined]
    assert "echo" in tools


@pytest.mark.docker
def test_the_node_base_image_runs_node_with_webcrypto_and_python_with_the_sdk(
    docker_host: DockerHost, node_base_image: str
) -> None:
    """central-mcp/node:18 carries its version label, NODE_OPTIONS for Node 18's webcrypto, and python3
    with the SDK (the stdio bridge is Python)."""
    from pipeline import baseimage

    assert (
        docker_host.image_labels(node_base_image)[baseimage.LABEL_BASE_VERSION] == baseimage.NODE_BASE_VERSION
    )
    script = (
        "node -e 'console.log(typeof globalThis.crypto.subtle)' && python3 -c 'import mcp; print(\"sdk\")'"
    )
    out = docker_host.client.containers.run(
        node_base_image, ["sh", "-c", script], remove=True, network_mode="none", user="65534:65534"
    ).decode()
    assert out.split() == ["object", "sdk"]


@pytest.mark.docker
def test_the_base_image_is_a_build_arg_so_a_registry_image_can_stand_in(
    docker_host: DockerHost, package_cache: Path, built: list[str], tmp_path: Path
) -> None:
    """packages.python_image names the base the generated Dockerfile builds on (as python:3.12-slim
    would on a VM with a registry): the built image carries what that base carries."""
    stand_in = f"central-mcp-test/registry-python:{os.getpid()}"
    built.append(stand_in)
    (tmp_path / "Dockerfile").write_text("")
    docker_host.build(
        stand_in,
        tmp_path,
        'FROM central-mcp/python:3.11\nLABEL registry.example/base="stand-in"\n',
        [],
        {},
        {},
        lambda line: None,
        network="none",
        timeout=120,
    )
    packages = dataclasses.replace(Packages(), python_image=stand_in)
    staged = fetch.fetch(spec.parse(TIME), packages, package_cache, lambda line: None)
    tag, _ = _build(docker_host, staged, packages, built)
    assert docker_host.image_labels(tag)["registry.example/base"] == "stand-in"
    assert _answer(_stdio(tag), 1)["serverInfo"] == {"name": "mcp-time", "version": "2026.10.19"}
