"""`central-mcp status`: what is live, how healthy, and the last deploy, at a glance."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from pipeline import control
from pipeline.config.settings import Settings
from pipeline.errors import ServeUnavailable
from pipeline.store import Store

HEALTH_TIMEOUT = 3.0


def render(settings: Settings, store: Store) -> str:
    """The status report as text."""
    health, serving = _health(settings)
    lines = [serving, ""]
    live = store.live_releases()
    if live:
        lines.append(
            f"{'SERVER':<24} {'RELEASE':<8} {'VERSION':<10} {'HEALTH':<12} {'COMMIT':<13} LIVE SINCE"
        )
        for r in live:
            since = _when(r.live_at) if r.live_at else "-"
            lines.append(
                f"{r.server:<24} {r.name:<8} {r.version:<10} {health.get(r.server, '?'):<12} "
                f"{r.commit_sha[:12]:<13} {since}"
            )
    else:
        lines.append("nothing is live yet: push to the VM's repo (see `central-mcp init-repo`)")
    last = store.deploys(1, 0)
    if last:
        d = last[0]
        took = f"{(d.finished_at or time.time()) - (d.started_at or d.created_at):.1f}s"
        message = (d.message.splitlines() or [""])[0][:60]
        lines += [
            "",
            f"last deploy: #{d.id} {d.status} ({d.source} of {d.repo}@"
            f'{d.ref.removeprefix("refs/heads/")} {d.commit_sha[:12]} "{message}") '
            f"{_when(d.created_at)}, took {took}",
        ]
        if d.error:
            lines.append(f"  {d.error.splitlines()[0][:160]}")
    return "\n".join(lines)


def _health(settings: Settings) -> tuple[dict[str, str], str]:
    try:
        ctl = control.Control.load(settings.state_dir)
    except ServeUnavailable:
        return {}, f"serve is not running for {settings.state_dir}"
    try:
        with urllib.request.urlopen(f"{ctl.url}/healthz", timeout=HEALTH_TIMEOUT) as answer:
            data: dict[str, Any] = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        data = json.loads(exc.read() or b"{}")
    except (OSError, ValueError) as exc:
        return {}, f"serve (pid {ctl.pid}) does not answer at {ctl.url}: {exc}"
    checks = ", ".join(f"{k} {v}" for k, v in (data.get("checks") or {}).items())
    servers = {k: str(v).split(":")[0] for k, v in (data.get("servers") or {}).items()}
    return servers, f"serving at {ctl.url} (pid {ctl.pid}); {checks}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
