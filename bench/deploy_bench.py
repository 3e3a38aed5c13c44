"""Deploy benchmark: push→live and its parts for a one-line change, a no-op push, 10 servers/1 changed.

Runs a real `central-mcp serve` on a loopback port with its own state dir, pushes with real
git into its bare repo (the pre-receive hook deploys into the real Docker engine), reads the
deploy records, prints a table, and removes what it made. Usage: `python bench/deploy_bench.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tests" / "fixtures" / "servers" / "echo"
SERVERS = 10
ROUNDS = 3
CONFIG = """listen: {{host: 127.0.0.1, port: {port}}}
repos: [{{name: bench, branch: main, manifests: ["servers/*/mcp-server.yaml"]}}]
proxy: {{drain_timeout: 1s, session_drain_timeout: 1s}}
build: {{parallel: 2, network: none}}
monitor: {{probe_interval: 1h}}
"""


def main() -> None:
    """Run the three scenarios and print their figures."""
    tmp = Path(tempfile.mkdtemp(prefix="central-mcp-bench-"))
    port = _free_port()
    (tmp / "deploy.yaml").write_text(CONFIG.format(port=port))
    env = {**os.environ, "CENTRAL_MCP_STATE_DIR": str(tmp / "state")}
    cli = [sys.executable, "-m", "pipeline", "--config", str(tmp / "deploy.yaml")]
    serve = subprocess.Popen([*cli, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(port)
        subprocess.run([*cli, "init-repo"], env=env, check=True, capture_output=True)
        work = tmp / "work"
        _git(["clone", "-q", str(tmp / "state" / "repos" / "bench.git"), str(work)], tmp)
        _git(["config", "user.email", "bench@local"], work)
        _git(["config", "user.name", "bench"], work)
        suffix = f"b{os.getpid()}"
        names = [f"echo{i}-{suffix}" for i in range(SERVERS)]
        for name in names:
            _add_server(work, name)
        first = _push(work, "ten servers", port)
        print(
            f"first push of {SERVERS} servers: {first['seconds']:.2f}s "
            f"(builds: {first['builds']}, status {first['status']})"
        )
        rows = []
        for round_ in range(ROUNDS):
            manifest = work / "servers" / names[0] / "mcp-server.yaml"
            text = manifest.read_text()
            manifest.write_text(text.replace(text.split("GREETING: ")[1].split("}")[0], f"hello{round_}", 1))
            rows.append(_push(work, f"one-line change {round_}", port))
        noops = []
        for round_ in range(ROUNDS):
            (work / "NOTES.md").write_text(f"note {round_}\n")
            noops.append(_push(work, f"no-op {round_}", port))
        _report(rows, noops)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        _cleanup(tmp, env)


def _add_server(work: Path, name: str) -> None:
    target = work / "servers" / name
    shutil.copytree(TEMPLATE, target)
    manifest = target / "mcp-server.yaml"
    manifest.write_text(manifest.read_text().replace("name: echo", f"name: {name}"))


def _push(work: Path, message: str, port: int) -> dict[str, Any]:
    _git(["add", "-A"], work)
    _git(["commit", "-qm", message], work)
    started = time.perf_counter()
    out = subprocess.run(
        ["git", "push", "-q", "origin", "HEAD:main"], cwd=work, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    line = next((ln for ln in out.stderr.splitlines() if "/deploys/" in ln), "")
    deploy_id = int(line.rsplit("/", 1)[-1]) if line else 0
    record = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/deploys/{deploy_id}.json").read())
    changed = {k: v for k, v in record["servers"].items() if v.get("outcome") != "unchanged"}
    parts = {"build": 0.0, "start": 0.0, "gate": 0.0}
    for outcome in changed.values():
        for key in parts:
            parts[key] += (outcome.get("timings") or {}).get(key, 0.0)
    swap = sum(s["seconds"] for s in record["steps"] if s["name"] == "swap")
    return {
        "seconds": seconds,
        "status": record["status"],
        "builds": sum(1 for v in changed.values() if "build" in (v.get("timings") or {})),
        "swap": swap,
        **parts,
        "rest": seconds - swap - sum(parts.values()),
    }


def _report(rows: list[dict[str, Any]], noops: list[dict[str, Any]]) -> None:
    def med(key: str, data: list[dict[str, Any]]) -> float:
        values = sorted(r[key] for r in data)
        return values[len(values) // 2]

    print(f"\none-line change to 1 of {SERVERS} servers, warm cache (median of {ROUNDS}):")
    print(f"  {'total push→live':<18}{med('seconds', rows):7.2f}s")
    for key in ("build", "start", "gate", "swap", "rest"):
        print(f"  {key:<18}{med(key, rows):7.2f}s")
    print(f"  builds per push   {', '.join(str(r['builds']) for r in rows)} (goal: 1)")
    print(f"\nno-op push (median of {ROUNDS}): {med('seconds', noops):.2f}s   (goal ≤ 2 s)")
    print(f"pipeline overhead ('rest'): {med('rest', rows):.2f}s   (goal ≤ 1 s)")
    print("statuses:", ", ".join(r["status"] for r in rows + noops))


def _cleanup(tmp: Path, env: dict[str, str]) -> None:
    from pipeline.context import instance_id

    client = docker.from_env()
    instance = instance_id(Path(env["CENTRAL_MCP_STATE_DIR"]))
    for container in client.containers.list(all=True, filters={"label": f"central-mcp.instance={instance}"}):
        container.remove(force=True)
    for image in client.images.list():
        if any(tag.endswith(f"-{instance}") for tag in image.tags):
            client.images.remove(image.id, force=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _git(args: list[str], cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_up(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("serve did not start")


if __name__ == "__main__":
    main()
