"""`central-mcp up` (what `make run` starts): serve, deploy this checkout's servers, print where to look."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.context import instance_id
from pipeline.dockerhost import LABEL_INSTANCE, DockerHost
from tests.support.loopback import free_port
from tests.support.provider import FIXTURES

pytestmark = pytest.mark.docker
FIXTURE = FIXTURES / "echo"


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
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for container in docker_host.containers({LABEL_INSTANCE: instance_id(work / ".central-mcp")}):
            container.remove(force=True)
        docker_host.remove_image(f"central-mcp-server/echo-up:r1-{instance_id(work / '.central-mcp')}")
