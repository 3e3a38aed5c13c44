"""Deploy benchmark: push→live and its parts for a one-line change, a no-op push, 10 servers/1 changed.

Runs a real `central-mcp serve` on a loopback port with its own state dir, pushes with real
git into its bare repo (the pre-receive hook deploys into the real Docker engine), reads the
deploy records, prints a table, and removes what it made. Usage: `python bench/deploy_bench.py
[--first-only] [--big-repo] [--starts N]`: `--first-only` runs the first push of SERVERS servers and
prints its breakdown, then stops; `--big-repo` runs that first push, then adds VENDOR_MB of random
vendored files in one push and times docs-only pushes of that big repo (issue 16), then stops (the
full run ends with the same figure); `--starts N` sets deploy.yaml's `build.starts`. The provider under
test is the `pipeline` that `python -m` finds from the current folder: run it from another checkout's folder
(`cd ../before && python /path/to/bench/deploy_bench.py`) for a before/after comparison.

To split the gate's time, a watcher follows the engine's container starts and polls each new
container's port every 5 ms (20 ms during the first push) until its server answers HTTP (any
status): "listen" is the time from the deploy's `start ok` line to that answer, "gate after listen"
the time from it to the `gate ok` line (both line times from the deploy's events in the state
database). The first push is also split per server at the engine's events (network and container
created, container started) and its CPU time is read from /proc, by process.
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
FIRST_GOAL = 8.0  # seconds, the first push of SERVERS servers (issue 16)
BIG_GOAL = 1.0  # seconds, a docs-only push in a repo with VENDOR_MB of vendored files (issue 16)
VENDOR_MB = 141  # of random (incompressible) files in vendor/ ...
VENDOR_FILE_KB = 10  # ... of 10 KiB each, 100 to a folder: 14,100 files, like a vendored dependency tree
LISTEN_POLL = 0.005  # seconds between polls of a started container's port
# ... during the first push, where ten pollers at 5 ms cost the push it measures ~0.4 CPU-s (3 under load)
FIRST_LISTEN_POLL = 0.02
CONFIG = """listen: {{host: 127.0.0.1, port: {port}}}
repos: [{{name: bench, branch: main, manifests: ["servers/*/mcp-server.yaml"]}}]
proxy: {{drain_timeout: 1s, session_drain_timeout: 1s}}
build: {{parallel: 2, network: none{starts}}}
monitor: {{probe_interval: 1h}}
"""


def main() -> None:
    """Run the three scenarios and print their figures."""
    tmp = Path(tempfile.mkdtemp(prefix="central-mcp-bench-"))
    port = _free_port()
    starts = _option("--starts")  # build.starts (a checkout from before it existed refuses the key)
    (tmp / "deploy.yaml").write_text(CONFIG.format(port=port, starts=f", starts: {starts}" if starts else ""))
    env = {**os.environ, "CENTRAL_MCP_STATE_DIR": str(tmp / "state")}
    cli = [sys.executable, "-m", "pipeline", "--config", str(tmp / "deploy.yaml")]
    serve = subprocess.Popen([*cli, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ask = [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"]  # found as `-m` finds it
    where = subprocess.run(ask, env=env, capture_output=True, text=True, check=False)
    print(f"provider under test: {Path(where.stdout.strip()).parent.parent}")
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
        cpu = _cpu_snapshot()
        watch.interval = FIRST_LISTEN_POLL
        first = _push(work, "ten servers", port)
        watch.interval = LISTEN_POLL
        first["cpu"] = _cpu_used(cpu, _cpu_snapshot(), {serve.pid: "serve", os.getpid(): "bench"})
        print(
            f"first push of {SERVERS} servers: {first['seconds']:.2f}s   (goal ≤ {FIRST_GOAL:g} s; "
            f"builds: {first['builds']}, status {first['status']})"
        )
        if first["status"] != "succeeded":
            print(f"  the deploy failed: {first['error']}")
        _first_breakdown(tmp / "state", first, watch)
        if "--first-only" in sys.argv[1:]:
            return
        if "--big-repo" in sys.argv[1:]:
            _big_repo(work, port)
            return
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
        _big_repo(work, port)
    finally:
        watch.stop()
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
        _cleanup(tmp, env)


def _option(name: str) -> str:
    args = sys.argv[1:]
    return args[args.index(name) + 1] if name in args[:-1] else ""


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
        "error": record.get("error", ""),
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


def _big_repo(work: Path, port: int) -> None:
    """Add VENDOR_MB of random files under vendor/ (one push), then time docs-only pushes end to end
    through the real hook: the provider should unpack and deploy nothing."""
    files = VENDOR_MB * 1024 // VENDOR_FILE_KB
    for i in range(files):
        folder = work / "vendor" / f"pkg{i // 100:03}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i % 100:02}.bin").write_bytes(os.urandom(VENDOR_FILE_KB * 1024))
    added = _push(work, "vendor", port)
    print(
        f"\nadding {VENDOR_MB} MB of vendored files ({files} files, one push): {added['seconds']:.2f}s, "
        f"{added['status']}"
    )
    pushes = []
    for round_ in range(ROUNDS):
        (work / "docs").mkdir(exist_ok=True)
        (work / "docs" / "index.md").write_text(f"docs {round_}\n")
        pushes.append(_push(work, f"docs only {round_}", port))
    seconds = sorted(p["seconds"] for p in pushes)
    print(
        f"docs-only push, {VENDOR_MB} MB vendored (median of {ROUNDS}): {seconds[len(seconds) // 2]:.2f}s   "
        f"(goal ≤ {BIG_GOAL:g} s; each: {', '.join(f'{s:.2f}' for s in seconds)}; "
        f"intake median {sorted(p['intake'] for p in pushes)[len(pushes) // 2]:.2f}s; builds: "
        f"{', '.join(str(p['builds']) for p in pushes)}; statuses: {', '.join(p['status'] for p in pushes)})"
    )


class ListenWatch:
    """Follows the engine's events for one instance: when each container was created and started,
    each network created, and when each container's server first answered HTTP."""

    def __init__(self, instance: str) -> None:
        self.client = docker.from_env()
        self.instance = instance
        self.listening: dict[str, float] = {}
        self.created: dict[str, float] = {}  # container name → engine's create time
        self.started: dict[str, float] = {}  # container name → engine's start time
        self.networks: dict[str, float] = {}  # network name → engine's create time
        self.stream: Any = None
        self.interval = LISTEN_POLL  # between one container's polls

    def start(self) -> None:
        """Begin following the engine's container and network events in a thread."""
        # Network events carry no labels: they are told apart by name (cmcp-<instance>-...).
        filters = {"type": ["container", "network"], "event": ["create", "start"]}
        self.stream = self.client.events(decode=True, filters=filters)
        threading.Thread(target=self._follow, daemon=True).start()

    def stop(self) -> None:
        """Stop following events (pollers end on their own)."""
        if self.stream is not None:
            self.stream.close()

    def _follow(self) -> None:
        try:
            for event in self.stream:
                at = event.get("timeNano", 0) / 1e9
                name = str((event.get("Actor") or {}).get("Attributes", {}).get("name", ""))
                if f"-{self.instance}-" not in name:
                    continue
                if event.get("Type") == "network":
                    self.networks[name] = at
                elif event.get("Action") == "create":
                    self.created[name] = at
                else:
                    self.started[name] = at
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
            time.sleep(self.interval)
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


def _first_breakdown(state: Path, first: dict[str, Any], watch: ListenWatch) -> None:
    """Print where the first push's time went, from its deploy log and the engine's events."""
    deploy_id = first["deploy_id"]
    with sqlite3.connect(state / "central-mcp.db") as db:
        rows = db.execute("SELECT ts, text FROM events WHERE deploy_id = ?", (deploy_id,)).fetchall()
        (steps,) = db.execute("SELECT steps FROM deploys WHERE id = ?", (deploy_id,)).fetchone()
    print(f"  {'intake':<26}{first['intake']:6.2f}s   (push → deploy recorded: git, hook, snapshot)")
    for step in json.loads(steps):
        print(f"  {'step: ' + step['name'][:20]:<26}{step['seconds']:6.2f}s")
    print(f"  {'reply':<26}{first['reply']:6.2f}s   (deploy ended → git push exits)")
    busy, groups = first["cpu"]
    cores = os.cpu_count() or 1
    print(
        f"  CPU: {busy:.2f} CPU-s busy of {first['seconds'] * cores:.2f} ({cores} cores x the push); "
        + "by process: "
        + ", ".join(f"{name} {sec:.2f}" for name, sec in groups[:8])
    )
    spans: dict[str, list[tuple[float, float]]] = {}
    for ts, text in rows:
        rest = text.partition(": ")[2]
        words = rest.split()
        if len(words) == 4 and words[1:3] == ["ok", "in"]:  # "<stage> ok in 0.12s"
            spans.setdefault(words[0], []).append((ts - float(words[3].rstrip("s")), ts))
    parts = _engine_parts(rows, deploy_id, watch)
    print("  per server (sum over servers / wall span from the first one's start to the last one's end):")
    for stage, found in spans.items():
        total = sum(b - a for a, b in found)
        wall = max(b for _, b in found) - min(a for a, _ in found)
        print(f"    {stage:<24}{total:6.2f}s / {wall:5.2f}s  ({len(found)} servers)")
    for part, values in parts.items():
        print(f"    {part:<24}{sum(values):6.2f}s          (median {_median(values):.3f}s)")


def _engine_parts(
    rows: list[tuple[float, str]], deploy_id: int, watch: ListenWatch
) -> dict[str, list[float]]:
    """Split each server's start and gate at the engine's events: build ok → its network created (0
    when it was made before) → container created (with any wait for a start slot) → started → start
    ok (its address known) → its server answers HTTP → gate ok."""
    ends = {(text.split(": ")[0], text.split()[1]): ts for ts, text in rows if " ok in " in text}
    parts: dict[str, list[float]] = {}
    for name, created in watch.created.items():
        if not name.endswith(f"-d{deploy_id}"):
            continue
        server = next((s for s, stage in ends if stage == "build" and f"-{s}-r" in name), None)
        if server is None:
            continue
        built, started = ends[(server, "build")], watch.started.get(name, math.nan)
        network = next((t for n, t in watch.networks.items() if n.endswith(f"-{server}")), math.nan)
        marks = [
            ("  network created", network if network >= built else built),
            ("  container created", created),
            ("  container start", started),
            ("  address (start ok)", ends.get((server, "start"), math.nan)),
            ("  listen (server up)", watch.listening.get(name, math.nan)),
            ("  gate after listen", ends.get((server, "gate"), math.nan)),
        ]
        before = built
        for part, at in marks:
            parts.setdefault(part, []).append(at - before)
            before = at
    return parts


def _cpu_snapshot() -> tuple[float, dict[int, tuple[str, float]]]:
    """The machine's busy CPU-seconds so far, and each process's (name, CPU-seconds with its reaped
    children)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = (sum(int(f) for f in fields[:8]) - int(fields[3]) - int(fields[4])) / tick  # not idle, iowait
    procs: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
        procs[int(entry.name)] = (name, sum(int(x) for x in rest[11:15]) / tick)  # utime stime cutime cstime
    return busy, procs


def _cpu_used(
    before: tuple[float, dict[int, tuple[str, float]]],
    after: tuple[float, dict[int, tuple[str, float]]],
    names: dict[int, str],
) -> tuple[float, list[tuple[str, float]]]:
    """Busy CPU-seconds between two snapshots, and the CPU-seconds of processes by name (or by the
    name `names` gives their pid), most first; processes that came and went count in their parent's."""
    groups: dict[str, float] = {}
    for pid, (name, seconds) in after[1].items():
        old = before[1].get(pid)
        used = seconds - (old[1] if old else 0.0)  # a kernel worker may change its name
        name = names.get(pid, name)
        groups[name] = groups.get(name, 0.0) + used
    ranked = sorted(((n, s) for n, s in groups.items() if s >= 0.01), key=lambda x: -x[1])
    return after[0] - before[0], ranked


def _median(values: list[float]) -> float:
    ordered = sorted(v for v in values if not math.isnan(v))
    return ordered[len(ordered) // 2] if ordered else math.nan


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
