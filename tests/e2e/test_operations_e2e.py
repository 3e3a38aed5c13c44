"""End to end: the provider between and across deploys — crashes, restarts, rollbacks, health.

Real `central-mcp serve` subprocesses and real pushes, as in test_deploy_e2e.py. One provider
is killed with SIGKILL mid-deploy and started again on the same state dir and port; another
runs the monitor fast (1s probes, two failures) so its restart policy and post-deploy watch
window act within seconds. What counts is what an operator sees: deploy records, Docker's
labelled containers, `central-mcp releases`, and SDK calls through the proxy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.dockerhost import LABEL_INSTANCE, LABEL_SERVER, DockerHost
from pipeline.reconcile import ABANDONED_REASON
from tests.support.loopback import free_port
from tests.support.provider import Provider, Workspace, running_provider, wait_for

pytestmark = pytest.mark.docker

PROBE_INTERVAL = 1.0
FAILURE_THRESHOLD = 2
WATCH_MIN_REQUESTS = 3
MONITOR_CONFIG = f"""\
monitor: {{probe_interval: {PROBE_INTERVAL}s, probe_timeout: 2s, failure_threshold: {FAILURE_THRESHOLD},
           watch_window: 60s, watch_error_rate: 0.5, watch_min_requests: {WATCH_MIN_REQUESTS},
           watch_restarts: 2}}
"""
DETECT_SLACK = 5.0  # scheduler start-up, the probe in flight, the restart deploy being queued
RECOVERY_SECONDS = 10.0  # from starting serve again to every live server answering
DEPLOY_SECONDS = 60.0
MARKER_SECONDS = 60.0
SLOW_STEP_OUTPUT = "| echo fixture: a slow build step (5s)"
DEPLOY_ID = re.compile(r"deploy #(\d+): push of ")
TOOLS_CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "greet", "arguments": {"name": "Ada"}},
}


def slow_build(data: dict[str, Any]) -> None:
    """Build echo with Dockerfile.slow (a 5-second RUN step)."""
    data["build"] = {"dockerfile": "Dockerfile.slow"}


def slow_stop(data: dict[str, Any]) -> None:
    """Run echo under a shell that ignores SIGTERM, so stopping its container takes Docker's 10s."""
    data["run"]["command"] = ["sh", "-c", "trap '' TERM; python3 /app/server.py & wait"]


def hangs_long(data: dict[str, Any]) -> None:
    """Give the hang fixture a gate deadline far beyond the test (within the 2m deploy_timeout)."""
    data["health"]["timeout"] = "100s"


def dies_soon(data: dict[str, Any]) -> None:
    """Keep Docker from restarting a container that exits."""
    data["run"]["restart"] = "never"


@dataclass
class Fleet:
    """A provider, a developer's clone, and the servers live on it with the greeting each answers."""

    provider: Provider
    workspace: Workspace
    echo: str
    live: dict[str, str]

    def answers(self) -> None:
        """Every live server answers its greeting through the proxy."""
        for server, greeting in self.live.items():
            assert self.provider.greeting(server) == f"{greeting}, Ada", server

    def only_live_containers(self) -> None:
        """The instance's containers, by Docker label, are exactly one running container per live server."""
        found = self.provider.docker.containers({LABEL_INSTANCE: self.provider.instance})
        assert sorted((c.labels[LABEL_SERVER], c.status) for c in found) == sorted(
            (server, "running") for server in self.live
        ), [c.name for c in found]

    def push_ok(self, message: str) -> str:
        """Commit and push; the push must succeed and move the branch. Return the commit."""
        commit = self.workspace.commit(message)
        push = self.workspace.push()
        assert push.ok, push.output
        assert self.provider.branch() == commit
        return commit


# crash recovery ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crash_fleet(provider: Provider, workspace: Workspace) -> Fleet:
    """An echo server, slow to stop so a drain outlives the deploy, on the provider these tests kill -9."""
    echo = workspace.put("echo", env={"GREETING": "steady"}, manifest=slow_stop)
    fleet = Fleet(provider, workspace, echo, {echo: "steady"})
    fleet.push_ok("echo, slow to stop")
    return fleet


@pytest.fixture
def crash(crash_fleet: Fleet) -> Fleet:
    """The crash fleet, its clone synced to the VM's branch (rejected commits dropped)."""
    crash_fleet.workspace.sync()
    return crash_fleet


def test_a_crash_during_a_build_is_abandoned_and_the_push_can_be_repeated(crash: Fleet) -> None:
    """kill -9 mid-build: on restart the deploy is abandoned, no orphan is left, and a re-push deploys."""
    p, workspace = crash.provider, crash.workspace
    branch = p.branch()
    slow = workspace.put("echo", name=p.name("slow-build"), env={"GREETING": "slow"}, manifest=slow_build)
    commit = workspace.commit("a server with a slow build")
    pushing = workspace.watch_push()
    pushing.wait_for_line(SLOW_STEP_OUTPUT, MARKER_SECONDS)

    p.kill()
    push = pushing.finish()

    assert not push.ok, push.output
    assert "push rejected: " in push.output
    assert p.branch() == branch
    recover(crash)
    record = p.deploy(deploy_id(push.output))
    assert (record["status"], record["error"]) == ("abandoned", ABANDONED_REASON)
    assert record["finished_at"] is not None
    crash.only_live_containers()
    assert list((p.state / "snapshots").iterdir()) == [], "the interrupted deploy's snapshot must go"

    again = workspace.push()

    assert again.ok, again.output
    assert p.branch() == commit
    crash.live[slow] = "slow"
    crash.answers()


def test_a_crash_during_the_health_gate_leaves_no_candidate_behind(crash: Fleet) -> None:
    """kill -9 while a candidate waits in its gate: its container is removed, a gated sibling failed."""
    p, workspace = crash.provider, crash.workspace
    branch = p.branch()
    echo_before = p.releases(crash.echo)
    workspace.put("echo", name=crash.echo, env={"GREETING": "never-live"}, manifest=slow_stop)
    hang = workspace.put("hang", name=p.name("hang"), manifest=hangs_long)
    workspace.commit("echo changes while hang never passes its gate")
    pushing = workspace.watch_push()
    pushing.wait_for_line(f"{crash.echo}: gate ok", MARKER_SECONDS)
    pushing.wait_for_line(f"{hang}: start ok", MARKER_SECONDS)
    assert len(p.running(hang)) == 1

    p.kill()
    push = pushing.finish()

    assert not push.ok, push.output
    assert p.branch() == branch
    recover(crash)
    record = p.deploy(deploy_id(push.output))
    assert (record["status"], record["error"]) == ("abandoned", ABANDONED_REASON)
    crash.only_live_containers()
    gated = next(r for r in p.releases(crash.echo) if r not in echo_before)
    assert p.releases(crash.echo) == {**echo_before, gated: "failed"}

    workspace.sync()
    after = workspace.put("echo", name=p.name("after-gate-crash"), env={"GREETING": "after"})
    crash.push_ok("a server pushed after the crash")
    crash.live[after] = "after"
    crash.answers()


def test_a_crash_while_the_old_release_drains_leaves_only_the_new_one(crash: Fleet) -> None:
    """kill -9 right after a swap: the deploy stays succeeded; restart removes the draining old container."""
    p, workspace = crash.provider, crash.workspace
    old = p.running(crash.echo)
    workspace.put("echo", name=crash.echo, env={"GREETING": "swapped"}, manifest=slow_stop)
    commit = workspace.commit("echo is swapped, then serve dies")
    push = workspace.push()
    assert push.ok, push.output

    p.kill()

    assert p.docker.status(old[0]) == "running", "the old release must still be stopping when serve dies"
    crash.live[crash.echo] = "swapped"
    recover(crash)
    assert p.deploy(push.deploy_id)["status"] == "succeeded"
    assert p.branch() == commit
    crash.only_live_containers()
    assert p.running(crash.echo) != old

    workspace.put("echo", name=crash.echo, env={"GREETING": "after-drain-crash"}, manifest=slow_stop)
    crash.push_ok("a push after the crash")
    crash.live[crash.echo] = "after-drain-crash"
    crash.answers()


def test_a_live_container_lost_while_serve_was_down_is_started_again(crash: Fleet) -> None:
    """A live container removed while serve is dead: on restart the same release runs again, routed."""
    p = crash.provider
    releases, old = p.releases(crash.echo), p.running(crash.echo)
    p.kill()

    p.docker.client.containers.get(old[0]).remove(force=True)

    recover(crash)
    assert p.releases(crash.echo) == releases
    crash.only_live_containers()
    assert p.running(crash.echo) != old


def recover(fleet: Fleet) -> None:
    """Start serve again on the same state dir and port; every live server must answer soon after."""
    started = time.monotonic()
    fleet.provider.start()
    fleet.answers()
    assert time.monotonic() - started < RECOVERY_SECONDS, fleet.provider.serve_log()


def deploy_id(output: str) -> int:
    """The deploy a push started (its first event names it, even when the push never ended)."""
    found = DEPLOY_ID.search(output)
    assert found, output
    return int(found[1])


# the monitor: restarts, the watch window, health and metrics ------------------------------
@pytest.fixture(scope="module")
def watched_provider(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Provider]:
    """A serve process whose monitor probes every second and acts after two failures."""
    with running_provider(tmp_path_factory.mktemp("monitor-e2e"), docker_host, MONITOR_CONFIG) as running:
        yield running


@pytest.fixture(scope="module")
def watched_fleet(watched_provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """An echo server live on the monitored provider."""
    workspace = watched_provider.clone(tmp_path_factory.mktemp("monitor-clone") / "work")
    echo = workspace.put("echo", env={"GREETING": "steady"})
    fleet = Fleet(watched_provider, workspace, echo, {echo: "steady"})
    fleet.push_ok("echo")
    return fleet


@pytest.fixture
def watched(watched_fleet: Fleet) -> Fleet:
    """The monitored fleet, its clone synced to the VM's branch."""
    watched_fleet.workspace.sync()
    return watched_fleet


def test_a_removed_container_is_replaced_by_a_restart_deploy_of_the_same_release(watched: Fleet) -> None:
    """`docker rm -f` of a live container: a restart deploy soon brings the same release back."""
    p = watched.provider
    before, releases = p.running(watched.echo), p.releases(watched.echo)
    assert len(before) == 1
    since = p.last_deploy_id()

    p.docker.client.containers.get(before[0]).remove(force=True)

    restart = wait_for_deploy(p, "restart", since, PROBE_INTERVAL * FAILURE_THRESHOLD + DETECT_SLACK)
    assert restart["status"] == "succeeded", p.log(restart["id"])
    live = next(release for release, status in releases.items() if status == "live")
    assert restart["message"] == f"restart {watched.echo} {live}: its container is gone"
    watched.answers()
    assert p.releases(watched.echo) == releases
    assert len(p.running(watched.echo)) == 1
    assert p.running(watched.echo) != before


def test_a_release_that_dies_in_its_watch_window_is_rolled_back(watched: Fleet) -> None:
    """v2 passes its gate, then exits (restart: never): an auto-rollback deploy brings v1 back."""
    p, workspace = watched.provider, watched.workspace
    server = workspace.put("echo", name=p.name("dies"), env={"GREETING": "v1"})
    watched.push_ok("v1")
    workspace.put("echo", name=server, env={"GREETING": "v2", "EXIT_AFTER": "5"}, manifest=dies_soon)
    watched.push_ok("v2 exits five seconds after it starts")
    assert p.greeting(server) == "v2, Ada"

    rollback = wait_for_deploy(p, "auto-rollback", p.last_deploy_id(), DEPLOY_SECONDS)

    assert rollback["status"] == "succeeded", p.log(rollback["id"])
    assert rollback["message"].startswith(
        f"r2 of {server} rolled back: failed {FAILURE_THRESHOLD} health probes in a row "
        "(its container is exited (exit code 1))"
    ), rollback["message"]
    assert p.greeting(server) == "v1, Ada"
    assert p.releases(server) == {"r2": "rolled-back", "r1": "live"}
    (workspace.root / "NOTES.md").write_text("an unrelated change\n")
    workspace.commit("the branch still holds v2: it is held back, not deployed again")
    held = workspace.push()
    assert held.ok and f"{server}: held back" in held.output, held.output
    assert p.greeting(server) == "v1, Ada"
    back_to_v1(watched, server)


def test_a_release_failing_calls_in_its_watch_window_is_rolled_back(watched: Fleet) -> None:
    """v2 passes its handshake but answers tools/call with 500: past the error rate, v1 comes back."""
    p, workspace = watched.provider, watched.workspace
    server = workspace.put("echo", name=p.name("fails-calls"), env={"GREETING": "v1"})
    watched.push_ok("v1")
    workspace.put("bad-calls", name=server)
    watched.push_ok("v2 fails every call")
    since = p.last_deploy_id()

    for _ in range(WATCH_MIN_REQUESTS):
        status, _, body = p.post(f"/mcp/{server}", TOOLS_CALL)
        assert status == 500, body

    rollback = wait_for_deploy(p, "auto-rollback", since, PROBE_INTERVAL + DETECT_SLACK + DEPLOY_SECONDS)
    assert rollback["status"] == "succeeded", p.log(rollback["id"])
    assert rollback["message"] == (
        f"r2 of {server} rolled back: {WATCH_MIN_REQUESTS} of "
        f"{WATCH_MIN_REQUESTS} requests failed with 5xx (100%)"
    )
    assert p.greeting(server) == "v1, Ada"
    assert p.releases(server) == {"r2": "rolled-back", "r1": "live"}
    back_to_v1(watched, server)


def test_healthz_and_metrics_report_the_provider(watched: Fleet) -> None:
    """/healthz checks the database, Docker and firewall; /metrics counts deploys, calls, live releases."""
    p = watched.provider
    wait_for("the monitor to probe echo", lambda: health(p)["servers"].get(watched.echo) == "healthy", 10)
    requests_before = sample(p, "central_mcp_proxy_requests_total", server=watched.echo, status="200")

    watched.answers()

    found = health(p)
    assert found["ok"] is True
    assert found["checks"] == {"database": "ok", "docker": "ok", "firewall": "ok"}
    assert watched.echo in found["routes"]
    assert sample(p, "central_mcp_proxy_requests_total", server=watched.echo, status="200") > requests_before
    assert sample(p, "central_mcp_deploys_total", status="succeeded", source="push") >= 1
    assert sample(p, "central_mcp_live_releases") == len(found["routes"])


def wait_for_deploy(p: Provider, source: str, since: int, appears_within: float) -> dict[str, Any]:
    """Wait for a deploy of `source` newer than `since` to appear, then to finish; return its record."""
    found: list[dict[str, Any]] = []

    def appeared() -> bool:
        found[:] = [d for d in p.deploys() if d["source"] == source and d["id"] > since]
        return bool(found)

    wait_for(f"a {source} deploy", appeared, appears_within)
    deploy = found[-1]["id"]
    wait_for(
        f"{source} deploy #{deploy} to finish",
        lambda: p.deploy(deploy)["status"] not in ("queued", "running"),
        DEPLOY_SECONDS,
    )
    return p.deploy(deploy)


def back_to_v1(fleet: Fleet, server: str) -> None:
    """Push v1 back, as the developer would after a rollback; it is live already, so nothing deploys."""
    fleet.workspace.put("echo", name=server, env={"GREETING": "v1"})
    fleet.workspace.commit("back to v1")
    push = fleet.workspace.push()
    assert push.ok, push.output
    assert "==> succeeded: nothing to deploy" in push.output


def health(p: Provider) -> dict[str, Any]:
    """The provider's /healthz answer."""
    status, _, body = p.get("/healthz")
    found: dict[str, Any] = json.loads(body)
    assert status == (200 if found["ok"] else 503)
    return found


def sample(p: Provider, name: str, **labels: str) -> float:
    """The sum of a /metrics sample's values over the series carrying these labels."""
    status, content_type, text = p.get("/metrics")
    assert (status, content_type.split(";")[0]) == (200, "text/plain")
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


# start-up errors --------------------------------------------------------------------------
def test_a_corrupt_database_stops_serve_with_the_file_and_the_fix(tmp_path: Path) -> None:
    """Garbage in <state>/central-mcp.db: serve exits 1 naming the file and what to do, with no traceback."""
    state = tmp_path / "state"
    state.mkdir()
    database = state / "central-mcp.db"
    garbage = b"not a database\0" * 300
    database.write_bytes(garbage)
    config = tmp_path / "deploy.yaml"
    config.write_text(f"listen: {{host: 127.0.0.1, port: {free_port()}}}\n")
    env = {**os.environ, "CENTRAL_MCP_STATE_DIR": str(state)}

    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--config", str(config), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert (
        f"error: the database {database} cannot be opened (file is not a database); move it aside "
        "to start with an empty one, or restore it from a backup" in output
    )
    assert "Traceback" not in output
    assert database.read_bytes() == garbage
