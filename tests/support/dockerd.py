"""Restarting the Docker daemon the way this project's machines run it (for the dockerd-restart stage)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from pipeline.engine import ensure_engine

PID_FILE = Path("/var/run/docker.pid")
STOP_TIMEOUT = 60.0


def restart_dockerd() -> float:
    """Stop dockerd (every container stops with it), start it again as `central-mcp engine` does (or
    systemd, where it runs dockerd); return the monotonic time at which the engine answered again."""
    if _systemd_runs_docker():
        subprocess.run(["systemctl", "stop", "docker.socket", "docker.service"], check=True)
        subprocess.run(["systemctl", "start", "docker.service"], check=True)
    else:
        pid = int(PID_FILE.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while Path(f"/proc/{pid}").exists():
            assert time.monotonic() < deadline, f"dockerd ({pid}) did not stop within {STOP_TIMEOUT:.0f}s"
            time.sleep(0.1)
    ensure_engine(lambda line: None)
    return time.monotonic()


def _systemd_runs_docker() -> bool:
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").exists():
        return False
    state = subprocess.run(["systemctl", "is-active", "docker.service"], capture_output=True, text=True)
    return state.stdout.strip() == "active"
