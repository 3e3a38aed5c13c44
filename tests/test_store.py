"""pipeline/store.py: the SQLite state, kept to its owner."""

from __future__ import annotations

import stat
from pathlib import Path

from pipeline.store import SessionRow, Store


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
