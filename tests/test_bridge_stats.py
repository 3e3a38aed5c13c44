"""pipeline/bridge/stats.py through a real bridge process: the counts the provider's probes read.

Processes started, stopped by the bridge (a session's DELETE) and exited on their own (a program
that exits at once) are counted at the stats path, which no MCP client reaches through the proxy.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2

from pipeline import stdio
from pipeline.bridge.stats import STATS_PATH
from tests.support.bridge import fixture_command, running_bridge
from tests.test_bridge_process import ACCEPT, INIT


def _stats(url: str) -> dict[str, Any]:
    answer = httpx2.get(url.removesuffix("/mcp") + STATS_PATH, timeout=10)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def test_a_session_ended_by_delete_counts_as_stopped() -> None:
    """One session opened and deleted: its process is counted started and stopped, none exited; the
    provider's reader (stdio.read_processes) parses the same answer."""
    with running_bridge("--pool=0") as url:
        opened = httpx2.post(url, headers=ACCEPT, content=json.dumps(INIT), timeout=20)
        assert _stats(url)["processes"]["running"] == 1 and _stats(url)["open"] == 1
        httpx2.delete(url, headers={**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"]}, timeout=20)
        seen = _stats(url)
        port = int(url.split(":")[2].split("/")[0])
        read = stdio.read_processes("127.0.0.1", port, 5)
    assert seen["processes"] == {"running": 0, "started": 1, "stopped": 1, "exited": 0, "lastExit": ""}
    assert seen["sessions"] == "per-session" and seen["open"] == 0
    assert (read.started, read.stopped, read.exited, read.isolation) == (1, 1, 0, seen["isolation"])


def test_a_program_that_exits_is_counted_and_restarted_for_the_next_session() -> None:
    """Each session meets a new process of a program that exits at once: both exits are counted,
    the last one's reason kept."""
    with running_bridge("--init-timeout=2", "--pool=0", command=fixture_command("--hostile", "exit")) as url:
        for _ in range(2):
            reply = httpx2.post(url, headers=ACCEPT, content=json.dumps(INIT), timeout=20)
            assert "exited with code 3" in reply.json()["error"]["message"]
        seen = _stats(url)["processes"]
    assert (seen["started"], seen["exited"], seen["running"]) == (2, 2, 0)
    assert seen["lastExit"].endswith("the server process exited with code 3")


def test_a_session_never_used_after_initialize_ends_with_its_process() -> None:
    """A client that gave up waiting for initialize's answer never learns its session id: that
    session ends within init_timeout (its process stopped) instead of holding it until the idle
    timeout; a session whose client sent notifications/initialized stays."""
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    with running_bridge("--init-timeout=3", "--pool=0") as url:
        used = httpx2.post(url, headers=ACCEPT, content=json.dumps(INIT), timeout=20)
        session = {**ACCEPT, "mcp-session-id": used.headers["mcp-session-id"]}
        assert (
            httpx2.post(url, headers=session, content=json.dumps(initialized), timeout=20).status_code == 202
        )
        httpx2.post(url, headers=ACCEPT, content=json.dumps(INIT), timeout=20)  # never used
        assert _stats(url)["processes"]["running"] == 2
        time.sleep(6)  # init_timeout, then up to one look of the reaper (2s)
        seen = _stats(url)
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        still = httpx2.post(url, headers=session, content=json.dumps(ping), timeout=20)
    assert (seen["open"], seen["processes"]["running"], seen["processes"]["stopped"]) == (1, 1, 1)
    assert still.status_code == 200 and "result" in still.json(), still.text
