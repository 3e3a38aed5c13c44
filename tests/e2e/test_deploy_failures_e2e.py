"""End to end: pushes that must be rejected, and secrets that must never be shown.

A real `central-mcp serve` and real pushes, as in test_deploy_e2e.py. Each rejected push
must leave everything as it was: the bare repo's branch (and its objects: the quarantine is
dropped), the live release answering through the proxy, and no candidate container behind.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.control import TOKEN_HEADER, Control
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_SERVER, DockerHost
from tests.support.loopback import free_port
from tests.support.provider import (
    SECRET_NAME,
    SECRET_VALUE,
    Provider,
    Push,
    Workspace,
    running_provider,
)
from tests.support.swarmview import SWARM_ONLY

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("synced")]

INVALID_MANIFEST_SECONDS = 2.0


@dataclass(frozen=True)
class Baseline:
    """The module's first push: the echo fixture and the secret-probe fixture."""

    echo: str
    probe: str
    push: Push


@dataclass(frozen=True)
class GateCase:
    """A fixture server that fails the health gate, and what its deploy log must then say."""

    id: str
    fixture: str
    reason: str
    container_line: str
    command: tuple[str, ...] = ()


GATE_CASES = [
    GateCase(
        "crash",
        "crash",
        "the container exited before completing the MCP handshake",
        "crash fixture: cannot open /nonexistent/config.toml, exiting with status 3",
    ),
    # A shell exits within milliseconds, often before Docker has published the port.
    GateCase(
        "crash-at-once",
        "crash",
        "the container exited before completing the MCP handshake",
        "crash fixture: exiting at once",
        ("sh", "-c", "echo 'crash fixture: exiting at once'; exit 3"),
    ),
    GateCase("hang", "hang", "no MCP handshake within 5s", "hang fixture: waiting forever without listening"),
    # Plain HTTP answers initialize with 501; the gate then tries the stateless era's tools/list,
    # and reports initialize's answer first (the server's own error, issue 12).
    GateCase(
        "not-mcp",
        "not-mcp",
        "no MCP handshake within 5s; last: initialize answered HTTP 501",
        '"POST /mcp HTTP/1.1" 501',
    ),
]


@pytest.fixture(scope="module")
def baseline(provider: Provider, workspace: Workspace) -> Baseline:
    """Deploy echo and secret-probe: the live releases every rejected push must leave serving."""
    echo = workspace.put("echo", env={"GREETING": "live"})
    probe = workspace.put("secret-probe")
    workspace.commit("echo and secret-probe")
    push = workspace.push()
    assert push.ok, push.output
    return Baseline(echo, probe, push)


@pytest.mark.parametrize("case", GATE_CASES, ids=[c.id for c in GATE_CASES])
def test_a_candidate_failing_the_health_gate_rejects_the_push_and_keeps_the_old_release(
    provider: Provider, workspace: Workspace, baseline: Baseline, case: GateCase
) -> None:
    """A server that exits, hangs or does not speak MCP fails the gate; nothing that was live changes."""
    branch = provider.branch()
    live_echo = provider.running(baseline.echo)
    # echo changes too: its gated candidate must be thrown away with the failing server's.
    workspace.put("echo", name=baseline.echo, env={"GREETING": f"never-live-{case.id}"})
    command = list(case.command)
    bad = workspace.put(
        case.fixture,
        name=provider.name(case.id),
        manifest=(lambda data: data["run"].update(command=command)) if command else None,
    )
    commit = workspace.commit(f"add {case.id}")

    push = workspace.push()

    assert not push.ok, push.output
    assert "pre-receive hook declined" in push.output
    assert f"==> failed: {bad} r1 failed the MCP health gate: {case.reason}" in push.output, push.output
    assert provider.branch() == branch
    assert not provider.has_object(commit), "a rejected push's objects must not enter the repo"
    assert provider.greeting(baseline.echo) == "live, Ada"
    assert provider.running(baseline.echo) == live_echo
    assert not [n for n in provider.container_names() if n.endswith(f"-d{push.deploy_id}")]
    assert provider.running(bad) == []
    record = provider.deploy(push.deploy_id)
    assert record["status"] == "failed"
    assert record["servers"][bad]["outcome"] == "failed"
    log = provider.log(push.deploy_id)
    copied = [line for line in log.splitlines() if line.startswith(f"{bad} (container) | ")]
    assert any(case.container_line in line for line in copied), log
    assert f"{bad}: candidate r1 removed; nothing of it was live" in log


def test_an_invalid_manifest_is_rejected_with_its_location_before_any_build(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """A schema error is reported as file:line:column $.path, fast, and nothing is built or moved."""
    branch = provider.branch()
    workspace.put("echo", name=baseline.echo, env={"GREETING": "never-live-invalid"})
    bad = workspace.put(
        "echo", name=provider.name("invalid"), manifest=lambda data: data["run"].update(port="eighty")
    )
    lines = workspace.manifest_path(bad).read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "port: eighty" in text)
    commit = workspace.commit("a manifest with a bad port")

    push = workspace.push()

    assert not push.ok, push.output
    where = re.escape(f"servers/{bad}/mcp-server.yaml:{line}:")
    assert re.search(where + r"\d+ \$\.run\.port: ", push.output), push.output
    assert provider.branch() == branch
    assert provider.images_of_commit(commit) == []
    record = provider.deploy(push.deploy_id)
    assert record["status"] == "failed"
    assert [(s["name"], s["status"]) for s in record["steps"]] == [("validate manifests", "failed")]
    assert record["finished_at"] - record["started_at"] < INVALID_MANIFEST_SECONDS
    assert provider.greeting(baseline.echo) == "live, Ada"


@pytest.fixture
def host_listener() -> Iterator[tuple[int, list[str]]]:
    """An HTTP listener on the host's loopback recording every request (none must arrive)."""
    seen: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()


@pytest.mark.parametrize(
    ("line", "refusal"),
    [
        ("ADD http://127.0.0.1:{port}/payload /payload", "ADD http://127.0.0.1:{port}/payload: the daemon"),
        ("COPY --from=127.0.0.1:{port}/evil / /", "COPY --from 127.0.0.1:{port}/evil: the daemon"),
        (
            "RUN --mount=type=bind,from=127.0.0.1:{port}/evil,target=/x ls",
            "RUN --mount=from 127.0.0.1:{port}/evil",
        ),
    ],
    ids=["add-url", "copy-from-registry", "mount-from-registry"],
)
def test_a_dockerfile_that_makes_the_daemon_fetch_is_rejected_and_nothing_is_fetched(
    provider: Provider,
    workspace: Workspace,
    baseline: Baseline,
    host_listener: tuple[int, list[str]],
    line: str,
    refusal: str,
) -> None:
    """Remote ADD and images from a registry are refused at validation: the host's listener sees nothing."""
    port, seen = host_listener
    branch = provider.branch()
    server = workspace.put("echo", name=provider.name("fetcher"))
    dockerfile = workspace.root / "servers" / server / "Dockerfile"
    lines = dockerfile.read_text().splitlines()
    at = next(i for i, text in enumerate(lines) if text.startswith("COPY")) + 1
    lines.insert(at, line.format(port=port))
    dockerfile.write_text("\n".join(lines) + "\n")
    workspace.commit("a Dockerfile that makes the daemon fetch")

    push = workspace.push()

    assert not push.ok, push.output
    assert f"servers/{server}/Dockerfile:{at + 1}: {refusal.format(port=port)}" in push.output
    assert provider.branch() == branch
    assert seen == []
    assert provider.greeting(baseline.echo) == "live, Ada"


def test_a_server_receives_its_secret_from_the_vm(provider: Provider, baseline: Baseline) -> None:
    """The secret named in run.secrets reaches the container from <state>/secrets.env."""
    assert provider.call(baseline.probe, "token_status") == {"set": True, "length": len(SECRET_VALUE)}
    assert SECRET_VALUE not in baseline.push.output


def test_a_secret_printed_by_a_failing_server_is_masked_in_output_and_log(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """A server that prints its secret and dies has its log copied with the value shown as ****."""
    workspace.put("secret-probe", name=baseline.probe, env={"EXIT_AT_START": "1"})
    workspace.commit("secret-probe exits at start")

    push = workspace.push()

    assert not push.ok, push.output
    log = provider.log(push.deploy_id)
    assert f"{baseline.probe} (container) | secret-probe starting with {SECRET_NAME}=****" in log
    assert f"{SECRET_NAME}=****" in push.output
    record, index = provider.deploy(push.deploy_id), provider.deploys()
    for shown in (push.output, log, json.dumps(record), json.dumps(index)):
        assert SECRET_VALUE not in shown
    assert provider.call(baseline.probe, "token_status")["set"] is True


@pytest.mark.parametrize("where", ["outside", "state-dir"])
def test_the_control_api_takes_only_snapshots_the_hook_made(
    provider: Provider, baseline: Baseline, tmp_path: Path, where: str
) -> None:
    """A snapshot_dir outside <state>/snapshots is a 400: never deployed, never removed afterwards."""
    control = Control.load(provider.state)
    victim = tmp_path / "snap-victim" if where == "outside" else provider.state / "repos"
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("still here")
    before = provider.last_deploy_id()
    body = {
        "source": "push",
        "repo": "central-mcp",
        "ref": "refs/heads/main",
        "commit": "c" * 40,
        "snapshot_dir": str(victim),
    }
    request = urllib.request.Request(
        f"{provider.base}/api/deploys",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", TOKEN_HEADER: control.token},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert "is not a snapshot under" in refused.value.read().decode()
    assert (victim / "keep.txt").read_text() == "still here"
    assert provider.last_deploy_id() == before


def test_a_deploy_past_its_deploy_timeout_is_stopped_and_the_push_rejected(
    docker_host: DockerHost, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """proxy.deploy_timeout bounds the whole runbook: a 5 s build step under a 2 s deploy is cut."""
    with running_provider(
        tmp_path_factory.mktemp("deadline"), docker_host, proxy={"deploy_timeout": "2s"}
    ) as p:
        workspace = p.clone(tmp_path_factory.mktemp("deadline-clone") / "work")
        slow = {"build": {"dockerfile": "Dockerfile.slow"}, "health": {"timeout": "1s", "interval": "200ms"}}
        workspace.put("echo", manifest=lambda data: data.update(slow))
        workspace.commit("a build slower than the whole deploy may take")

        push = workspace.push()

        assert not push.ok, push.output
        assert "did not build within" in push.output and "proxy.deploy_timeout" in push.output
        assert push.seconds < 15
        assert p.branch() == ""


def test_a_health_timeout_longer_than_a_deploy_is_refused_before_anything_builds(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """A gate that could wait an hour (and hold the repo's deploy lane) is refused at validation."""
    branch = provider.branch()
    workspace.put(
        "hang", name=provider.name("patient"), manifest=lambda data: data.update(health={"timeout": "1h"})
    )
    workspace.commit("a server that may take an hour to become healthy")

    push = workspace.push()

    assert not push.ok, push.output
    assert "$.health.timeout: health.timeout 1h is longer than a whole deploy may take (120s" in push.output
    assert provider.branch() == branch


SWARM_CASES = [c for c in GATE_CASES if c.id in ("crash", "not-mcp")]


@pytest.mark.parametrize("provider", SWARM_ONLY, indirect=True)
@pytest.mark.parametrize("case", SWARM_CASES, ids=[c.id for c in SWARM_CASES])
def test_on_the_swarm_engine_a_candidate_failing_the_gate_is_rejected_and_the_old_release_serves(
    provider: Provider, workspace: Workspace, baseline: Baseline, case: GateCase
) -> None:
    """The same rejection with `engine: swarm`: the failing service is removed, nothing live changes."""
    test_a_candidate_failing_the_health_gate_rejects_the_push_and_keeps_the_old_release(
        provider, workspace, baseline, case
    )


@pytest.mark.parametrize("provider", SWARM_ONLY, indirect=True)
def test_on_the_swarm_engine_a_server_reads_its_secret_and_the_service_spec_holds_none(
    provider: Provider, baseline: Baseline
) -> None:
    """Swarm secrets reach the server's environment through the shim; the service spec, which
    every manager keeps, holds the secret in no environment variable."""
    test_a_server_receives_its_secret_from_the_vm(provider, baseline)
    (service,) = provider.docker.containers({LABEL_INSTANCE: provider.instance, LABEL_SERVER: baseline.probe})
    api: Any = provider.docker.client.api
    spec = api.inspect_service(service.id)["Spec"]
    assert SECRET_VALUE not in json.dumps(spec)
    assert [s["File"]["Name"] for s in spec["TaskTemplate"]["ContainerSpec"]["Secrets"]] == [SECRET_NAME]
