"""pipeline/stdio.py: the bridge layer over a stdio server's image, its command line, and what
`check` and the registry say a stdio server offers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import cli, errors, stdio
from pipeline.bridge import child
from pipeline.bridge import main as bridge_main
from pipeline.bridge.stats import STATS_PATH
from pipeline.config import manifest, settings
from tests.support.loopback import serve_asgi
from tests.test_cli import DEPLOY, GOOD, _check, _write

STDIO_DATA = {
    "name": "t",
    "version": "1.0.0",
    "description": "d",
    "transport": "stdio",
    "run": {"port": 8080, "command": ["python3", "-m", "srv"], "max_processes": 4},
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A tree with deploy.yaml and one stdio server `srv`."""
    root = tmp_path / "repo"
    _write(root / "deploy.yaml", DEPLOY)
    text = GOOD.replace("streamable-http", "stdio").replace(
        "  port: 8080\n", "  port: 8080\n  command: [srv]\n"
    )
    _write(root / "servers" / "srv" / "mcp-server.yaml", text)
    _write(root / "servers" / "srv" / "Dockerfile", "FROM scratch\n")
    return root


def _settings(tmp_path: Path) -> settings.Settings:
    return settings.Settings(config_path=tmp_path / "deploy.yaml", state_dir=tmp_path)


def test_the_bridge_command_carries_the_manifest_and_no_program(tmp_path: Path) -> None:
    """Port, path, sharing, cap and pool become bridge options; the program is not on the command
    line (it is recorded in the image), so whatever starts the container needs only the manifest."""
    found = manifest.from_data(STDIO_DATA, "servers/t")
    argv = stdio.bridge_command(found, _settings(tmp_path))
    assert "--" not in argv and "srv" not in argv
    assert {"--port=8080", "--path=/mcp", "--sessions=per-session", "--max-processes=4", "--pool=1"} <= set(
        argv
    )
    assert "--init-timeout=20" in argv  # 3/4 of the default 30s health.timeout, at most 20s


def test_the_program_is_run_command_or_the_package_entry_and_its_args() -> None:
    """run.command wins; a package's entry command is followed by run.args, untouched (no shell)."""
    found = manifest.from_data(STDIO_DATA, "servers/t")
    assert stdio.program(found, ("ignored",)) == ("python3", "-m", "srv")
    run = {"port": 8080, "args": ["--local-timezone", "UTC; rm -rf /"]}
    package = {**STDIO_DATA, "build": {"package": "pypi:mcp-server-time==2026.10.19"}, "run": run}
    entry = ("/opt/server/bin/mcp-server-time",)
    assert stdio.program(manifest.from_data(package, "servers/t"), entry) == (
        *entry,
        "--local-timezone",
        "UTC; rm -rf /",
    )


def test_a_shared_server_starts_no_warm_pool(tmp_path: Path) -> None:
    """In shared mode the pool option is 0: the shared process is the only one."""
    data = {**STDIO_DATA, "run": {**STDIO_DATA["run"], "sessions": "shared"}}  # type: ignore[dict-item]
    argv = stdio.bridge_command(manifest.from_data(data, "servers/t"), _settings(tmp_path))
    assert "--pool=0" in argv and "--sessions=shared" in argv


def test_the_layer_copies_the_bridge_and_makes_it_the_entrypoint() -> None:
    """The provider's own Dockerfile builds FROM the server's image and runs the bridge."""
    text = stdio.layer_dockerfile("central-mcp-server/t:r1-abc")
    assert text.splitlines()[0] == "FROM central-mcp-server/t:r1-abc"
    assert 'ENTRYPOINT ["python3", "-E", "-s", "/opt/central-mcp/bridge.py"]' in text
    assert "COPY program.json /opt/central-mcp/program.json" in text


def test_the_copied_bridge_runs_under_another_package_name(tmp_path: Path) -> None:
    """The package imports only itself, relatively, so it runs as /opt/central-mcp/cmcp_bridge."""
    shutil.copytree(stdio.BRIDGE_SOURCE, tmp_path / stdio.BRIDGE_PACKAGE)
    (tmp_path / "bridge.py").write_text(stdio.ENTRY_TEXT)
    done = subprocess.run(
        [sys.executable, "-E", "-s", str(tmp_path / "bridge.py"), "--port=1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "no program after `--` and none readable in" in done.stderr
    (tmp_path / "program.json").write_text('["x", 1]')  # next to the package, as in the layer
    done = subprocess.run(
        [sys.executable, "-E", "-s", str(tmp_path / "bridge.py"), "--port=1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "must hold a JSON list of strings naming a program" in done.stderr


def test_the_bridge_reads_the_recorded_program_when_given_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `--`: the argv comes from the recorded file; one after `--` still wins."""
    recorded = tmp_path / "program.json"
    recorded.write_text(json.dumps(["node", "/opt/server/x.js", "--flag"]))
    monkeypatch.setattr(bridge_main, "PROGRAM_FILE", recorded)
    assert bridge_main.parse(["--port=9"]).command == ("node", "/opt/server/x.js", "--flag")
    assert bridge_main.parse(["--port=9", "--"]).command == ("node", "/opt/server/x.js", "--flag")
    assert bridge_main.parse(["--port=9", "--", "srv"]).command == ("srv",)


def test_what_a_stdio_server_offers_is_named_for_check_and_the_registry() -> None:
    """offer() lists the sharing, the cap, the warm pool and the eras; an HTTP server offers None."""
    assert stdio.offer(STDIO_DATA) == {
        "sessions": "per-session",
        "maxProcesses": 4,
        "warmProcesses": 1,
        "eras": ["session"],
    }
    assert stdio.offer({"transport": "streamable-http"}) is None
    assert "session era only" in stdio.describe(STDIO_DATA)


@pytest.mark.parametrize("as_json", [False, True])
def test_check_shows_how_a_stdio_server_is_served(
    repo: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    """`check` names a stdio server's sharing and its era next to its folder (and in --json)."""
    assert _check(repo, *(["--json"] if as_json else [])) == cli.EXIT_OK
    out = capsys.readouterr().out
    if as_json:
        assert "session era only" in json.loads(out)["kinds"]["srv"]
    else:
        assert "srv (servers/srv/; stdio, a process per session (1 warm, at most 16), session era only" in out


def test_a_leading_home_in_the_environment_is_the_sessions_own() -> None:
    """`$HOME` alone or before `/` becomes the session's HOME (so server-memory's MEMORY_FILE_PATH is
    per session); anything else, `$HOMEX` or a `$HOME` further in, is left as written."""
    env = {"A": "$HOME/memory.jsonl", "B": "$HOME", "C": "$HOMEX/y", "D": "x/$HOME/y", "E": "plain"}
    assert child.session_env(env, "/tmp/session-1") == {
        "A": "/tmp/session-1/memory.jsonl",
        "B": "/tmp/session-1",
        "C": "$HOMEX/y",
        "D": "x/$HOME/y",
        "E": "plain",
    }


def test_the_bridge_version_follows_every_file_of_the_bridge(tmp_path: Path) -> None:
    """A change to any bridge file (or a new one) gives another version; compiled caches do not."""
    copy = tmp_path / "bridge"
    shutil.copytree(stdio.BRIDGE_SOURCE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    first = stdio.bridge_version(copy)
    assert first == stdio.bridge_version(stdio.BRIDGE_SOURCE)
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"compiled")
    assert stdio.bridge_version(copy) == first
    (copy / "wire.py").write_text((copy / "wire.py").read_text() + "\n# a change\n")
    changed = stdio.bridge_version(copy)
    assert changed != first
    (copy / "extra.py").write_text("")
    assert stdio.bridge_version(copy) not in (first, changed)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"x" * (stdio.MAX_STATS_BYTES + 1), "without its process counts"),
        (b'{"processes": {"running": "many"}}', "without its process counts"),
        (b"not json", "without its process counts"),
    ],
    ids=["too-large", "wrong-shape", "not-json"],
)
def test_a_bridge_answer_without_counts_is_refused_naming_the_path(body: bytes, fragment: str) -> None:
    """The probe's reader takes at most MAX_STATS_BYTES of a container's answer and refuses one that
    is too large, not JSON or not shaped as the bridge's counts, naming the path it asked."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    with serve_asgi(app, lifespan="off") as port, pytest.raises(errors.NotMCP) as caught:
        stdio.read_processes("127.0.0.1", port, 5)
    assert fragment in str(caught.value) and STATS_PATH in str(caught.value)


def test_a_bridge_dripping_its_answer_is_cut_at_the_probe_timeout() -> None:
    """A container that sends its answer a byte at a time, each within the socket timeout, holds the
    probe's reader no longer than the timeout in all (the monitor probes servers one after another:
    one such server would stall every other's probes and restarts)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not stop.is_set():  # one header line, a byte at a time: 64 KiB takes an hour
                try:
                    conn.sendall(b"a")
                except OSError:
                    return
                time.sleep(0.05)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    started = time.monotonic()
    try:
        with pytest.raises((OSError, errors.NotMCP)):
            stdio.read_processes("127.0.0.1", listener.getsockname()[1], 0.5)
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        listener.close()
        dripper.join(5)
