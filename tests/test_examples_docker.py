"""The two example servers, built on the real Docker engine and driven with the SDK's client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from pipeline import dockerfile, gate
from pipeline.config.manifest import check_tree
from pipeline.config.settings import load
from pipeline.dockerhost import LABEL_INSTANCE, DockerHost, Running, RunSpec

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(docker_host: DockerHost) -> Iterator[dict[str, str]]:
    """Build both example images offline (build network 'none'); remove them afterwards."""
    settings = load(ROOT / "deploy.yaml")
    report = check_tree(ROOT, settings)
    assert report.ok, [p.render() for p in report.problems]
    tags = {}
    for manifest in report.manifests:
        tag = f"central-mcp-test/{manifest.name}:examples"
        lines: list[str] = []
        context = ROOT / manifest.context
        found = dockerfile.read(ROOT, context, manifest.dockerfile)
        exclude = dockerfile.ignore_patterns(context)
        docker_host.build(tag, context, found.text, exclude, {}, {}, lines.append, network="none")
        assert any("Successfully" in line or "exporting to image" in line for line in lines), lines
        tags[manifest.name] = tag
    yield tags
    for tag in tags.values():
        docker_host.remove_image(tag)


def _start(docker_host: DockerHost, tag: str, label: str, env: dict[str, str] | None = None) -> Running:
    return docker_host.run(
        RunSpec(
            tag,
            f"{label}-{tag.split('/')[1].split(':')[0]}",
            8080,
            {LABEL_INSTANCE: label},
            env or {"LOG_LEVEL": "info"},
            256 * 1024 * 1024,
            0.5,
        )
    )


async def _call(url: str, tool: str, args: dict[str, Any]) -> tuple[list[str], Any]:
    async with Client(url) as client:
        tools = await client.list_tools()
        result = await client.call_tool(tool, args)
        assert not result.is_error, result
        return [t.name for t in tools.tools], result.structured_content


def test_property_search_answers_a_real_search(
    docker_host: DockerHost, built: dict[str, str], instance_label: str
) -> None:
    """property-search passes the gate and a real search through the SDK returns Lisbon listings."""
    running = _start(docker_host, built["property-search"], instance_label)
    url = f"http://127.0.0.1:{running.host_port}/mcp"
    result = gate.wait_until_healthy(url, timeout=30, interval=0.2)
    assert {t["name"] for t in result.tools} == {"search_listings", "get_listing", "compare_listings"}
    names, content = asyncio.run(_call(url, "search_listings", {"city": "Lisbon", "guests": 2}))
    assert "search_listings" in names
    assert content["count"] >= 1
    assert all(r["max_guests"] >= 2 for r in content["results"])


def test_xray_analyzer_counts_lines_with_heuristics(
    docker_host: DockerHost, built: dict[str, str], instance_label: str
) -> None:
    """999x-ray-analyzer (no OLLAMA_URL) counts lines and summarises with its heuristic engine."""
    running = _start(docker_host, built["999x-ray-analyzer"], instance_label)
    url = f"http://127.0.0.1:{running.host_port}/mcp"
    gate.wait_until_healthy(url, timeout=30, interval=0.2)
    code = "import os\n\n# comment\ndef f(x):\n    if x:\n        return 1\n    return 2\n"
    _, stats = asyncio.run(_call(url, "line_stats", {"content": code}))
    assert (stats["total"], stats["blank"], stats["comment"]) == (7, 1, 1)
    _, summary = asyncio.run(_call(url, "summarize", {"filename": "f.py", "content": code}))
    assert summary["engine"] == "heuristic"


def test_containers_are_hardened_and_bound_to_loopback(
    docker_host: DockerHost, built: dict[str, str], instance_label: str
) -> None:
    """A started server publishes on 127.0.0.1 only, with no-new-privileges, no capabilities, limits,
    a read-only root with a capped /tmp, and the forced non-root user (which its image names too)."""
    running = _start(docker_host, built["property-search"], instance_label)
    attrs = docker_host.client.containers.get(running.id).attrs
    bindings = attrs["HostConfig"]["PortBindings"]["8080/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    assert attrs["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert attrs["HostConfig"]["CapDrop"] == ["ALL"]
    assert attrs["HostConfig"]["Memory"] == 256 * 1024 * 1024
    assert (attrs["HostConfig"]["CpuPeriod"], attrs["HostConfig"]["CpuQuota"]) == (100_000, 50_000)
    assert attrs["Config"]["User"] == "65534:65534"
    assert attrs["HostConfig"]["ReadonlyRootfs"] is True
    tmp = "rw,nosuid,nodev,noexec,uid=65534,gid=65534,size=67108864"
    assert attrs["HostConfig"]["Tmpfs"] == {"/tmp": tmp}
