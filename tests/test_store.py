"""pipeline/store.py: the SQLite state, kept to its owner."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import StateError
from pipeline.store import SessionRow, Store
from tests.support.loopback import free_port


def test_the_state_dir_and_database_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    """However the umask is set, the state directory is 0700 and the database files 0600."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    store = Store(state / "central-mcp.db")
    store.create_deploy(source="push", repo="r", ref="refs/heads/main", commit_sha="c" * 40)

    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("central-mcp.db", "central-mcp.db-wal", "central-mcp.db-shm"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    store.close()


def _damaged_database(path: Path) -> bytes:
    """A real database with deploys and events whose pages past the first (the header and the
    schema) and before the last are overwritten; return the damaged file's bytes."""
    store = Store(path)
    for _ in range(40):
        deploy = store.create_deploy(source="push", repo="r", ref="refs/heads/main", commit_sha="c" * 40)
        for seq in range(1, 21):
            store.add_event(deploy, seq, "log", f"line {seq} " + "x" * 100)
    store.close()  # the last connection checkpoints the WAL into the file
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[16:18], "big")
    pages = len(data) // size
    assert pages > 10
    for page in range(1, pages - 1):
        data[page * size : (page + 1) * size] = b"\xde\xad\xbe\xef" * (size // 4)
    path.write_bytes(bytes(data))
    return bytes(data)


def test_a_database_damaged_past_its_header_is_one_state_error(tmp_path: Path) -> None:
    """Damaged pages behind a sound header: opening works, and every read or write that meets them,
    and `verify`, raise a StateError naming the file and the way out (DatabaseDamaged)."""
    database = tmp_path / "central-mcp.db"
    damaged = _damaged_database(database)
    store = Store(database)
    fix = "move the file aside to start with an empty one, or restore it from a backup"
    with pytest.raises(StateError, match=rf"the database {database} is damaged \(.*\); .*{fix}"):
        store.verify()
    with pytest.raises(StateError, match="is damaged") as caught:
        store.deploys()
    assert isinstance(caught.value, sqlite3.Error)  # what tolerates a failed write tolerates this too
    with pytest.raises(StateError, match="is damaged"):
        store.create_deploy(source="push", repo="r", ref="refs/heads/main", commit_sha="c" * 40)
    store.close()
    assert database.read_bytes() == damaged


@pytest.mark.parametrize("command", [["status"], ["releases", "srv"], ["serve"]])
def test_a_damaged_database_stops_a_command_with_one_line(tmp_path: Path, command: list[str]) -> None:
    """A CLI command and `serve`'s start on a database damaged past its header exit 1 with one
    line naming the file and what to do, no traceback, and leave the file as it was."""
    state = tmp_path / "state"
    database = state / "central-mcp.db"
    damaged = _damaged_database(database)
    config = tmp_path / "deploy.yaml"
    config.write_text(f"listen: {{host: 127.0.0.1, port: {free_port()}}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--config", str(config), *command],
        env={**os.environ, "CENTRAL_MCP_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, output
    assert output.startswith(f"error: the database {database} is damaged (") and "\n" not in output, output
    assert "move the file aside to start with an empty one, or restore it from a backup" in output
    assert database.read_bytes() == damaged


def test_sessions_are_saved_and_forgotten_across_store_instances(tmp_path: Path) -> None:
    """Saved session bindings outlive the Store (a restart), and ended ones are gone."""
    store = Store(tmp_path / "central-mcp.db")
    store.save_sessions([SessionRow("s1", "x", "c1", "k1"), SessionRow("s2", "x", "c1", "k2")], [])
    store.save_sessions([SessionRow("s3", "y", "c2", "k1")], ["s2"])
    store.save_sessions([], [])
    store.close()
    again = Store(tmp_path / "central-mcp.db")
    assert sorted(again.sessions()) == [SessionRow("s1", "x", "c1", "k1"), SessionRow("s3", "y", "c2", "k1")]
    again.close()
