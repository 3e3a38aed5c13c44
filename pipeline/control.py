"""How local commands (the git hook, `central-mcp deploy`) find and talk to the serve process.

`serve` writes `<state>/control.json` (mode 0600) with its URL and a random token; the
hook and the CLI read it, submit deploys over loopback HTTP, and print the streamed events;
`central-mcp reload` asks the same way for deploy.yaml to be read again.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pipeline.errors import ServeError, ServeUnavailable

CONTROL_FILE = "control.json"
TOKEN_HEADER = "X-Central-MCP-Token"
STREAM_TIMEOUT = 3600.0
RELOAD_TIMEOUT = 60.0
MAX_ANSWER = 1024 * 1024


@dataclass(frozen=True)
class Control:
    """The serve process's control address and token."""

    url: str
    token: str
    pid: int

    def save(self, state_dir: Path) -> Path:
        """Write control.json readable by the owner only."""
        path = state_dir / CONTROL_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": self.url, "token": self.token, "pid": self.pid}))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, state_dir: Path) -> Control:
        """Read control.json, or explain that `central-mcp serve` is not running."""
        path = state_dir / CONTROL_FILE
        try:
            data = json.loads(path.read_text())
            return cls(data["url"], data["token"], int(data["pid"]))
        except (OSError, ValueError, KeyError) as exc:
            raise ServeUnavailable(
                f"central-mcp serve is not running for {state_dir} (no readable "
                f"{CONTROL_FILE}); start it with `central-mcp serve`"
            ) from exc


def new_control(url: str) -> Control:
    """A fresh control record for this process."""
    return Control(url, secrets.token_urlsafe(24), os.getpid())


def stream(
    control: Control, path: str, body: dict[str, Any], on_event: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """POST `body` to the serve process and pass each streamed event on; return the `end` event.

    Lines may follow it: the old release drains after the deploy has ended and says so."""
    end: dict[str, Any] = {}
    for event in _post_lines(control, path, body):
        on_event(event)
        if event.get("kind") == "end":
            end = event
    if not end:
        raise ServeError(
            f"the serve process at {control.url} (pid {control.pid}) closed the stream before the "
            "deploy ended; its log says why, and the deploys page shows how far the deploy got"
        )
    return end


def reload(control: Control) -> dict[str, Any]:
    """Ask the serve process to reload deploy.yaml; return its outcome (pipeline/reload.py)."""
    status, raw = _post(control, "/api/reload", RELOAD_TIMEOUT)
    try:
        outcome: dict[str, Any] = json.loads(raw)
    except ValueError:
        outcome = {}
    if status not in (200, 422) or "ok" not in outcome:
        detail = raw.decode("utf-8", "replace")[:500]
        raise ServeError(f"the serve process at {control.url} refused the reload ({status}): {detail}")
    return outcome


def canary(control: Control, server: str, command: str) -> tuple[int, dict[str, Any]]:
    """Ask the serve process to promote or roll back the canary of `server`; return the status
    (200 done, 404 no canary under way) and its answer (the rollout as the deploy page shows it)."""
    status, raw = _post(control, f"/api/canaries/{quote(server, safe='')}/{command}", STREAM_TIMEOUT)
    try:
        answer: dict[str, Any] = json.loads(raw)
    except ValueError:
        answer = {"error": raw.decode("utf-8", "replace")[:500]}
    return status, answer


def _post(control: Control, path: str, timeout: float) -> tuple[int, bytes]:
    """POST an empty JSON body to the serve process's admin API; its status and (bounded) answer."""
    parts = urlsplit(control.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        conn.request("POST", path, body=b"{}", headers={TOKEN_HEADER: control.token})
        response = conn.getresponse()
        return response.status, response.read(MAX_ANSWER)
    except (OSError, http.client.HTTPException) as exc:
        raise _unreachable(control, exc) from exc
    finally:
        conn.close()


def _post_lines(control: Control, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    parts = urlsplit(control.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=STREAM_TIMEOUT)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Content-Type": "application/json", TOKEN_HEADER: control.token},
        )
        response = conn.getresponse()
        if response.status != 200:
            detail = response.read().decode("utf-8", "replace")[:500]
            raise ServeError(
                f"the serve process at {control.url} refused POST {path} ({response.status}): {detail}"
            )
        for raw in response:
            if raw.strip():
                yield json.loads(raw)
    except (OSError, http.client.HTTPException) as exc:
        raise _unreachable(control, exc) from exc
    finally:
        conn.close()


def _unreachable(control: Control, exc: Exception) -> ServeUnavailable:
    """The error for a serve process that does not answer at its control address."""
    return ServeUnavailable(
        f"cannot reach central-mcp serve at {control.url} (pid {control.pid}): {exc}; "
        "start it with `central-mcp serve`, or check that the pid is still running"
    )
