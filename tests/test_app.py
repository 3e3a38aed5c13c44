"""pipeline/app.py: the provider's own health, as /healthz reports it."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

from pipeline.app import _self_check
from pipeline.config.settings import Settings
from pipeline.firewall import Guard, Status
from pipeline.store import Store


class FullDisk(Store):
    """A real Store that reads fine and can no longer write, as on a full disk."""

    def heartbeat(self) -> None:
        raise sqlite3.OperationalError("database or disk is full")


class Engine:
    """A Docker engine that answers."""

    def ping(self) -> None:
        return None


def test_a_database_that_takes_no_writes_is_reported_failing(tmp_path: Path) -> None:
    """/healthz says the database is failing when it can be read but not written."""
    store = FullDisk(tmp_path / "central-mcp.db")
    services = SimpleNamespace(ctx=SimpleNamespace(store=store, docker=Engine(), firewall=None))

    checks = _self_check(services)  # type: ignore[arg-type]

    assert checks == {"database": "failing: database or disk is full", "docker": "ok"}
    store.close()


def test_a_writable_database_is_ok(tmp_path: Path) -> None:
    """A database that reads and writes is ok, and the check leaves one heartbeat row."""
    store = Store(tmp_path / "central-mcp.db")
    services = SimpleNamespace(ctx=SimpleNamespace(store=store, docker=Engine(), firewall=None))

    assert _self_check(services) == {"database": "ok", "docker": "ok"}  # type: ignore[arg-type]
    store.close()


def test_a_missing_firewall_fails_healthz_naming_the_fix(tmp_path: Path) -> None:
    """Without the host firewall for server networks, /healthz says so and how to install it."""
    store = Store(tmp_path / "central-mcp.db")
    settings = Settings(config_path=tmp_path / "deploy.yaml", state_dir=tmp_path)
    missing = Guard(settings, lambda s: Status(False, "no CMCP-INPUT chain; run `sudo central-mcp firewall`"))
    services = SimpleNamespace(ctx=SimpleNamespace(store=store, docker=Engine(), firewall=missing))

    checks = _self_check(services)  # type: ignore[arg-type]

    assert checks["firewall"] == "failing: no CMCP-INPUT chain; run `sudo central-mcp firewall`"
    store.close()
