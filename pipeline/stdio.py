"""stdio servers: the bridge layer over a server's image, and the bridge's command line.

After a stdio server's own image is built, the provider builds one more layer of its own over it:
the bridge package (pipeline/bridge, standard library only) copied to /opt/central-mcp and made
the entrypoint. So any image with a `python3` (3.11+) serves its stdio program over streamable
HTTP on the manifest's port and path, and a pushed Dockerfile needs nothing for it. The layer's
Dockerfile is the provider's own: its FROM names the image just built, which buildrules refuses
only in pushed Dockerfiles.

The program's argv (run.command, or a package's entry command and run.args) is recorded in the
layer too, as PROGRAM_FILE, which the bridge reads when its command line names no program. So the
image alone knows what it runs: a restart, start-up reconciliation and a rollback start it with the
bridge's options only, for a Dockerfile's image and a package's alike, and never re-stage a package.
A changed run.command changes the fingerprint (the whole manifest is in it), so it is a new build.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.bridge.stats import MAX_REASON, STATS_PATH
from pipeline.config.manifest import DEFAULT_MAX_PROCESSES, DEFAULT_POOL, DEFAULT_SESSIONS, STDIO, Manifest
from pipeline.config.settings import Settings
from pipeline.errors import DockerError, NotMCP
from pipeline.gate import cut_at
from pipeline.packages.fetch import open_to_all

if TYPE_CHECKING:  # check and the registry use this module without loading the docker SDK
    from pipeline.dockerhost import DockerHost

BRIDGE_SOURCE = Path(__file__).resolve().parent / "bridge"
BRIDGE_DIR = "/opt/central-mcp"
BRIDGE_PACKAGE = "cmcp_bridge"
ENTRY = f"{BRIDGE_DIR}/bridge.py"
PROGRAM = "program.json"  # the program's argv as a JSON list: see pipeline/bridge/main.py
PROGRAM_FILE = f"{BRIDGE_DIR}/{PROGRAM}"
ENTRY_TEXT = f'"""Run the central-mcp stdio bridge."""\n\nfrom {BRIDGE_PACKAGE}.main import main\n\nmain()\n'
# On SIGTERM the proxy has drained the container already; calls still running get this long,
# within Docker's stop grace (dockerhost.STOP_GRACE_SECONDS).
BRIDGE_DRAIN_SECONDS = 5.0
# A process must answer initialize within this, and within 3/4 of the manifest's health.timeout, so
# the gate hears the bridge's own reason ("did not answer initialize within ...") before its deadline
# while a cold start on a loaded VM still has most of the gate's time.
BRIDGE_INIT_SECONDS = 20.0
BRIDGE_INIT_SHARE = 0.75
MAX_STATS_BYTES = 64 * 1024  # of the bridge's stats answer (a container's bytes: bounded)
SESSION_ERAS = ("session",)  # what a stdio server offers outside: see pipeline/bridge/app.py


def is_stdio(manifest: Manifest) -> bool:
    """Whether the server is a stdio program behind the bridge."""
    return manifest.transport == STDIO


def bridge_version(source: Path = BRIDGE_SOURCE) -> str:
    """A hash of what the bridge layer puts into an image (every file of the bridge package, the
    entry script, the layer's Dockerfile): part of a stdio server's fingerprint, so a change to the
    bridge rebuilds every stdio server on the next push. Read each time (a few files): an upgrade of
    the provider's checkout under a running serve is what the next build copies."""
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{path.relative_to(source).as_posix()}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    digest.update(ENTRY_TEXT.encode() + layer_dockerfile("").encode())
    return digest.hexdigest()


def layer_dockerfile(image: str) -> str:
    """The provider's own Dockerfile that puts the bridge over `image`."""
    return (
        f"FROM {image}\n"
        f"COPY {BRIDGE_PACKAGE} {BRIDGE_DIR}/{BRIDGE_PACKAGE}\n"
        f"COPY bridge.py {ENTRY}\n"
        f"COPY {PROGRAM} {PROGRAM_FILE}\n"
        f'ENTRYPOINT ["python3", "-E", "-s", "{ENTRY}"]\n'
        "CMD []\n"
    )


def add_bridge(
    docker: DockerHost,
    image: str,
    program: Sequence[str],
    labels: Mapping[str, str],
    on_line: Callable[[str], None],
    network: str,
    timeout: float,
    own_id: str = "",
) -> None:
    """Rebuild `image` with the bridge layer on top, `program` recorded in it, under the same tag;
    then remove the server's own image (`own_id`), left untagged, which retention (by tag) would
    never find."""
    with tempfile.TemporaryDirectory(prefix="central-mcp-bridge-") as tmp:
        context = Path(tmp)
        shutil.copytree(BRIDGE_SOURCE, context / BRIDGE_PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
        (context / "bridge.py").write_text(ENTRY_TEXT)
        (context / PROGRAM).write_text(json.dumps(list(program)) + "\n")
        open_to_all(context)  # COPY keeps the host's modes, and the bridge runs as containers.user
        built = docker.build(
            image, context, layer_dockerfile(image), [], {}, labels, on_line, network, timeout
        )
    if own_id and own_id != built:
        # BuildKit records no parent, so the layers stay with the new image; the legacy builder's
        # child image keeps its parent (the engine refuses, and that is fine).
        with contextlib.suppress(DockerError):
            docker.remove_image(own_id)


def bridge_command(manifest: Manifest, settings: Settings) -> tuple[str, ...]:
    """The bridge's arguments (after the layer's entrypoint); the program's argv is in the layer."""
    idle = settings.proxy.session_idle_timeout or 0
    options = [
        f"--port={manifest.port}",
        f"--path={manifest.path}",
        f"--sessions={manifest.sessions}",
        f"--max-processes={manifest.max_processes}",
        f"--pool={manifest.pool if manifest.sessions != 'shared' else 0}",
        f"--drain-timeout={BRIDGE_DRAIN_SECONDS:g}",
        f"--init-timeout={max(1.0, min(BRIDGE_INIT_SECONDS, manifest.health_timeout * BRIDGE_INIT_SHARE)):g}",
    ]
    if idle:
        options.append(f"--idle-timeout={idle:g}")
    return tuple(options)


def program(manifest: Manifest, entry: Sequence[str] = ()) -> tuple[str, ...]:
    """The stdio program's argv: run.command, else a package's `entry` command and run.args."""
    return manifest.command or (*entry, *manifest.args)


@dataclass(frozen=True)
class Processes:
    """What a stdio server's bridge reports of its processes (see pipeline/bridge/stats.py)."""

    running: int
    started: int
    stopped: int
    exited: int
    last_exit: str
    isolation: str

    def as_json(self) -> dict[str, Any]:
        """The form /healthz shows."""
        return {
            "running": self.running,
            "started": self.started,
            "stopped": self.stopped,
            "exited": self.exited,
            "lastExit": self.last_exit,
            "isolation": self.isolation,
        }

    def summary(self) -> str:
        """One phrase for the registry's health."""
        text = f"stdio processes: {self.running} running, {self.started} started, {self.exited} exited"
        return text + (f" (last: {self.last_exit})" if self.last_exit else "")


def read_processes(host: str, port: int, timeout: float) -> Processes:
    """Ask a stdio server's bridge for its process counts (bounded in time and size); raise OSError
    or NotMCP when it does not answer them."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    # The socket's timeout bounds each read only: a container answering a byte at a time would hold
    # the monitor, which probes servers one after another. At `timeout` the socket is shut down.
    try:
        with cut_at(connection, timeout):
            connection.request("GET", STATS_PATH)
            response = connection.getresponse()
            body = response.read(MAX_STATS_BYTES + 1)
    except http.client.HTTPException as exc:
        raise NotMCP(f"the bridge's {STATS_PATH} answered badly: {exc}") from exc
    finally:
        connection.close()
    try:
        data: Any = json.loads(body) if response.status == 200 and len(body) <= MAX_STATS_BYTES else None
        counts = data["processes"]
        return Processes(
            int(counts["running"]),
            int(counts["started"]),
            int(counts["stopped"]),
            int(counts["exited"]),
            str(counts["lastExit"])[:MAX_REASON],
            str(data["isolation"])[:MAX_REASON],
        )
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise NotMCP(
            f"the bridge's {STATS_PATH} answered {response.status} without its process counts"
        ) from exc


def offer(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a stdio server offers its clients (None for other kinds), from its manifest's data:
    shown by `check` and in the registry's live state."""
    if raw.get("transport") != STDIO:
        return None
    run = raw.get("run") if isinstance(raw.get("run"), Mapping) else {}
    assert isinstance(run, Mapping)
    sessions = run.get("sessions", DEFAULT_SESSIONS)
    shared = sessions == "shared"
    return {
        "sessions": sessions,
        "maxProcesses": run.get("max_processes", DEFAULT_MAX_PROCESSES),
        "warmProcesses": 0 if shared else run.get("pool", DEFAULT_POOL),
        "eras": list(SESSION_ERAS),
    }


def describe(raw: Mapping[str, Any]) -> str:
    """One line for `check`: how a stdio server is shared and which protocol era it offers."""
    found = offer(raw)
    if found is None:
        return ""
    if found["sessions"] == "shared":
        how = "one shared process"
    else:
        how = f"a process per session ({found['warmProcesses']} warm, at most {found['maxProcesses']})"
    return f"stdio, {how}, session era only: 2026-07-28 clients fall back to initialize"
