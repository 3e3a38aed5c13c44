"""Deploy benchmark: push→live and its parts for a one-line change, a no-op push, 10 servers/1 changed.

Runs a real `central-mcp serve` on a loopback port with its own state dir, pushes with real
git into its bare repo (the pre-receive hook deploys into the real Docker engine), reads the
deploy records, prints a table, and removes what it made. Usage: `python bench/deploy_bench.py`.

To split the gate's time, a watcher follows the engine's container starts and polls each new
container's published port every 5 ms until its server answers HTTP (any status): "listen" is
the time from the deploy's `start ok` line to that answer, "gate after listen" the time from it
to the `gate ok` line (both line times from the deploy's events in the state database).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import docker
import docker.errors

from pipeline.dockerhost import container_address

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "tests" / "fixtures" / "servers" / "echo"
SERVERS = 10
ROUNDS = 3
LIVE_GOAL = 1.2  # seconds, push → live for the one-line change (issue 11)
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
    watch = ListenWatch(_instance(env))
    try:
        _wait_up(port)
        watch.start()
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
            row = _push(work, f"one-line change {round_}", port)
            rows.append({**row, **_gate_split(tmp / "state", row["deploy_id"], names[0], watch)})
        noops = []
        for round_ in range(ROUNDS):
            (work / "NOTES.md").write_text(f"note {round_}\n")
            noops.append(_push(work, f"no-op {round_}", port))
        _report(rows, noops)
    finally:
        watch.stop()
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
    started, wall = time.perf_counter(), time.time()
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
        "deploy_id": deploy_id,
        "seconds": seconds,
        "status": record["status"],
        "builds": sum(1 for v in changed.values() if "build" in (v.get("timings") or {})),
        "swap": swap,
        **parts,
        "rest": seconds - swap - sum(parts.values()),
        # 'rest' split: push → deploy recorded (git, the hook, the snapshot), the deploy's own
        # steps other than build/start/gate/swap, and deploy end → git push exits.
        "intake": record["created_at"] - wall,
        "reply": seconds - ((record.get("finished_at") or wall) - wall),
    }


def _report(rows: list[dict[str, Any]], noops: list[dict[str, Any]]) -> None:
    def med(key: str, data: list[dict[str, Any]]) -> float:
        values = sorted(r[key] for r in data if not math.isnan(r[key]))
        return values[len(values) // 2] if values else math.nan

    print(f"\none-line change to 1 of {SERVERS} servers, warm cache (median of {ROUNDS}):")
    print(f"  {'total push→live':<18}{med('seconds', rows):7.2f}s   (goal ≤ {LIVE_GOAL} s)")
    for key in ("build", "start", "gate", "swap", "rest"):
        print(f"  {key:<18}{med(key, rows):7.2f}s")
    print(f"  {'  intake':<18}{med('intake', rows):7.2f}s   (push → deploy recorded: git, hook, snapshot)")
    print(f"  {'  reply':<18}{med('reply', rows):7.2f}s   (deploy ended → git push exits)")
    print(f"  {'  listen (gate)':<18}{med('listen', rows):7.2f}s   (start ok → the server answers HTTP)")
    print(f"  {'  after (gate)':<18}{med('after_listen', rows):7.2f}s   (→ gate ok; goal ≤ 0.3 s)")
    print(f"  builds per push   {', '.join(str(r['builds']) for r in rows)} (goal: 1)")
    print(f"\nno-op push (median of {ROUNDS}): {med('seconds', noops):.2f}s   (goal ≤ 2 s)")
    print(f"pipeline overhead ('rest'): {med('rest', rows):.2f}s   (goal ≤ 1 s)")
    print("statuses:", ", ".join(r["status"] for r in rows + noops))


class ListenWatch:
    """Follows container starts of one instance and records when each one's server first answers HTTP."""

    def __init__(self, instance: str) -> None:
        self.client = docker.from_env()
        self.instance = instance
        self.listening: dict[str, float] = {}
        self.stream: Any = None

    def start(self) -> None:
        """Begin following the engine's `start` events in a thread."""
        label = f"central-mcp.instance={self.instance}"
        filters = {"type": "container", "event": "start", "label": label}
        self.stream = self.client.events(decode=True, filters=filters)
        threading.Thread(target=self._follow, daemon=True).start()

    def stop(self) -> None:
        """Stop following events (pollers end on their own)."""
        if self.stream is not None:
            self.stream.close()

    def _follow(self) -> None:
        try:
            for event in self.stream:
                threading.Thread(target=self._poll, args=(event["id"],), daemon=True).start()
        except Exception:  # closing the stream ends it with an error
            return

    def _poll(self, container_id: str) -> None:
        try:
            container = self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return  # removed already (a failed or replaced candidate)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            host, port = container_address(container.attrs)
            if host and _answers_http(host, port):
                self.listening[container.name] = time.time()
                return
            time.sleep(0.005)
            if not host:
                try:
                    container.reload()
                except docker.errors.NotFound:
                    return


def _answers_http(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return sock.recv(5) == b"HTTP/"
    except OSError:
        return False


def _gate_split(state: Path, deploy_id: int, server: str, watch: ListenWatch) -> dict[str, float]:
    """Split the gate's time at the moment the new container's server first answered HTTP."""
    with sqlite3.connect(state / "central-mcp.db") as db:
        rows = db.execute("SELECT ts, text FROM events WHERE deploy_id = ?", (deploy_id,)).fetchall()
    started = next(ts for ts, text in rows if text.startswith(f"{server}: start ok"))
    gated = next(ts for ts, text in rows if text.startswith(f"{server}: gate ok"))
    listening = next((t for name, t in watch.listening.items() if name.endswith(f"-d{deploy_id}")), math.nan)
    return {"listen": listening - started, "after_listen": gated - listening}


def _instance(env: dict[str, str]) -> str:
    from pipeline.context import instance_id

    return instance_id(Path(env["CENTRAL_MCP_STATE_DIR"]))


def _cleanup(tmp: Path, env: dict[str, str]) -> None:
    client = docker.from_env()
    instance = _instance(env)
    for container in client.containers.list(all=True, filters={"label": f"central-mcp.instance={instance}"}):
        container.remove(force=True)
    for network in client.networks.list(filters={"label": f"central-mcp.instance={instance}"}):
        network.remove()
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
