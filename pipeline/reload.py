"""Reloading deploy.yaml into a running serve process (SIGHUP, or `central-mcp reload`).

The file is read and validated first: on any problem the running configuration stays as it is
and the problems go back to whoever asked (and into the log). Otherwise each setting that
differs is either applied at once (projects, keys' rate limits, repos, proxy timeouts, webhook
limits, the registry, monitor and retention settings, build settings, the public URL) or, when
it cannot change in a running process (the listen address, the state directory, or anything
not known here to be live), keeps its running value and is named as needing a restart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.config import settings as settings_mod
from pipeline.config.settings import Listen, Settings
from pipeline.errors import ConfigError

# Dotted Settings fields that a running process picks up; a prefix covers what is under it.
LIVE = frozenset(
    {
        "public_url",
        "namespace",
        "registry_dir",
        "repos",
        "projects",
        "retention",
        "monitor",
        "idle",
        "build_parallel",
        "build_starts",
        "build_args",
        "build_network",
        "build_base_images",
        "build_remote_add",
        "packages",
        "webhook_max_body",
        "webhook_queue",
        "admin_token",
        "containers",
        "limits",
        "proxy.deploy_timeout",
        "proxy.drain_timeout",
        "proxy.session_drain_timeout",
        "proxy.keepalive",
        "proxy.allowed_origins",
        "proxy.max_handshake",  # read by each gate and probe
        "remotes",  # Context.dialer follows the settings: the next connection to a remote uses them
    }
)


@dataclass(frozen=True)
class Outcome:
    """What a reload did: applied settings, settings kept until a restart, or why it was refused."""

    ok: bool
    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The outcome as the control API returns it."""
        return {**dataclasses.asdict(self), "summary": self.summary()}

    def summary(self) -> str:
        """One line for the log and for `central-mcp reload`."""
        if not self.ok:
            return (
                f"reload refused: deploy.yaml has {len(self.problems)} problem(s); the running "
                "configuration is unchanged"
            )
        applied = ", ".join(self.applied) or "nothing changed"
        restart = f"; needs a restart to change: {', '.join(self.restart)}" if self.restart else ""
        return f"reloaded deploy.yaml: applied {applied}{restart}"


def read(running: Settings, listen: Listen) -> tuple[Settings, Outcome]:
    """Load and validate `running`'s deploy.yaml again; return the settings to run with and what changes."""
    try:
        fresh = settings_mod.load(running.config_path)
    except ConfigError as exc:
        return running, Outcome(False, problems=tuple(p.render() for p in exc.problems))
    fresh, warnings = settings_mod.listening(fresh, listen)
    merged, applied, kept = _merge(running, fresh, "")
    return merged, Outcome(True, tuple(applied), tuple(kept), warnings=tuple(warnings))


def _merge(old: Any, new: Any, name: str) -> tuple[Any, list[str], list[str]]:
    """The value to run with for field `name`, the live changes and the changes kept for a restart."""
    if old == new:
        return old, [], []
    if _live(name):
        return new, [name], []
    if dataclasses.is_dataclass(old) and not isinstance(old, type) and type(old) is type(new):
        values: dict[str, Any] = {}
        applied: list[str] = []
        kept: list[str] = []
        for field in dataclasses.fields(old):
            inner = f"{name}.{field.name}" if name else field.name
            value, live, later = _merge(getattr(old, field.name), getattr(new, field.name), inner)
            values[field.name] = value
            applied += live
            kept += later
        return dataclasses.replace(old, **values), applied, kept
    return old, [], [name]


def _live(name: str) -> bool:
    return any(name == live or name.startswith(live + ".") for live in LIVE)
