"""`central-mcp up` (what `make run` starts): serve, deploy this checkout's servers, print where to look;
the deployed servers are reachable through the project's one endpoint `/mcp` with the printed key."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline.context import instance_id
from pipeline.dockerhost import LABEL_INSTANCE, DockerHost
from tests.support.loopback import free_port
from tests.support.provider import FIXTURES
from tests.support.proxy_rig import connect

pytestmark = pytest.mark.docker
FIXTURE = FIXTURES / "echo"
PRINTED_KEY = re.compile(r"api key:\s+(cmcp_\S+)")


def _through_the_aggregate(base: str, key: str) -> tuple[dict[str, Any], set[str], str]:
    """The registry as the key's project reads it; the tools /mcp lists and echo-up's greeting there."""
    headers = {"authorization": f"Bearer {key}"}
    with urllib.request.urlopen(
        urllib.request.Request(f"{base}/registry.json", headers=headers), timeout=10
    ) as r:
        registry: dict[str, Any] = json.loads(r.read())

    async def listed_and_called() -> tuple[set[str], str]:
        async with connect(f"{base}/mcp", headers=headers) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            greeted = await client.call_tool("echo-up__greet", {"name": "Ada"})
            return names, str((greeted.structured_content or {}).get("greeting"))

    names, greeting = asyncio.run(listed_and_called())
    return registry, names, greeting


def test_up_deploys_the_checkout_prints_where_to_look_and_stops_on_sigint(
    tmp_path: Path, docker_host: DockerHost
) -> None:
    """`up` in a fresh checkout pushes HEAD through the hook, serves it, prints a key, stops cleanly."""
    work = tmp_path / "checkout"
    shutil.copytree(FIXTURE, work / "servers" / "echo-up")
    manifest = work / "servers" / "echo-up" / "mcp-server.yaml"
    manifest.write_text(manifest.read_text().replace("name: echo", "name: echo-up"))
    port = free_port()
    (work / "deploy.yaml").write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\nprojects: [{{name: demo}}]\n"
        "build: {network: none}\nproxy: {drain_timeout: 1s}\n"
    )
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "servers"],
    ):
        subprocess.run(["git", *args], cwd=work, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "CENTRAL_MCP_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "up"],
        cwd=work,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        output = "".join(lines)
        assert "press Ctrl-C to stop" in output, output
        assert "==> succeeded: live: echo-up r1" in output
        assert f"http://127.0.0.1:{port}/deploys" in output and "git remote add vm" in output
        assert "api key:   cmcp_" in output
        assert f"one entry: http://127.0.0.1:{port}/mcp " in output
        found = PRINTED_KEY.search(output)
        assert found, output
        registry, names, greeting = _through_the_aggregate(f"http://127.0.0.1:{port}", found[1])
        assert registry["metadata"]["io.central-mcp/aggregate"] == {
            "url": f"http://127.0.0.1:{port}/mcp",
            "project": "demo",
        }
        tools = registry["servers"][0]["_meta"]["io.central-mcp/live"]["tools"]
        assert [t["aggregateName"] for t in tools] == ["echo-up__greet"]
        assert names == {"echo-up__greet"} and greeting == "hello, Ada"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for container in docker_host.containers({LABEL_INSTANCE: instance_id(work / ".central-mcp")}):
            container.remove(force=True)
        for network in docker_host.networks({LABEL_INSTANCE: instance_id(work / ".central-mcp")}):
            docker_host.remove_network(str(network["Name"]))
        docker_host.remove_image(f"central-mcp-server/echo-up:r1-{instance_id(work / '.central-mcp')}")
