"""pipeline/app.py: the provider's own health, as /healthz reports it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

from pipeline.app import _self_check, _servers_shown
from pipeline.config.settings import Settings
from pipeline.firewall import Guard, Status
from pipeline.monitor import Health
from pipeline.proxy.router import Router, Upstream
from pipeline.store import Store


class FullDisk(Store):
    """A real Store that reads fine and can no longer write, as on a full disk."""

    def heartbeat(self) -> None:
        raise sqlite3.OperationalError("database or disk is full")


class Engine:
    """A Docker engine that answers."""

    def ping(self) -> None:
        return None

    def checks(self) -> dict[str, str]:
        return {}


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


def test_healthz_names_a_restricted_server_only_to_the_admin() -> None:
    """Without a key the registry lists only servers whose manifest allows `all`; /healthz, which needs
    no key either, listed every route and its health, restricted ones included."""
    public = Upstream("open", 1, "c1", "10.0.0.2", 8000, "/mcp")
    restricted = Upstream("payroll", 1, "c2", "10.0.0.3", 8000, "/mcp", access=("finance",))
    router = Router()
    router.swap({"open": public, "payroll": restricted})
    health = {"open": Health(), "payroll": Health()}
    services = SimpleNamespace(ctx=SimpleNamespace(router=router), monitor=SimpleNamespace(health=health))

    anonymous = _servers_shown(services, admin=False)  # type: ignore[arg-type]
    admin = _servers_shown(services, admin=True)  # type: ignore[arg-type]

    assert "payroll" not in json.dumps(anonymous)
    assert anonymous["routes"] == ["open"] and list(anonymous["servers"]) == ["open"]
    assert admin["routes"] == ["open", "payroll"] and sorted(admin["servers"]) == ["open", "payroll"]
