"""Make sure a Docker engine answers: install Debian's docker.io and start dockerd if needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.dockerhost import DockerHost
from pipeline.errors import EngineUnavailable

ENGINE_START_TIMEOUT = 60.0
DOCKERD_LOG = Path("/var/log/central-mcp-dockerd.log")


def ensure_engine(say: Callable[[str], None], *, wait: float = ENGINE_START_TIMEOUT) -> DockerHost:
    """Return a DockerHost whose engine answers, installing and starting dockerd when needed."""
    try:
        host = DockerHost()
        host.ping()
        return host
    except EngineUnavailable:
        pass
    if os.geteuid() != 0:
        raise EngineUnavailable(
            "no Docker engine answers, and starting one needs root: run `sudo make run`, "
            "or `sudo apt-get install docker.io && sudo systemctl start docker`"
        )
    if shutil.which("dockerd") is None:
        say(
            "no Docker engine answers and dockerd is missing: installing Debian's docker.io "
            "(apt-get, needs root — running as root)"
        )
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "install", "-y", "-qq", "docker.io"])
    say(f"starting dockerd in the background (log: {DOCKERD_LOG})")
    with DOCKERD_LOG.open("ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + wait
    while True:
        try:
            host = DockerHost()
            host.ping()
            say("Docker engine is up")
            return host
        except EngineUnavailable:
            if time.monotonic() > deadline:
                raise EngineUnavailable(
                    f"dockerd did not answer within {wait:.0f}s; see {DOCKERD_LOG}"
                ) from None
            time.sleep(0.5)


def _run(argv: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise EngineUnavailable(
            f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()[-800:]}"
        )
