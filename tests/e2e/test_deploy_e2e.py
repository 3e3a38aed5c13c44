"""End to end: `git push` into the VM's bare repo deploys into real Docker behind the real proxy.

One `central-mcp serve` subprocess serves the whole module; every test pushes from a real
clone and checks what a user would: the push output, the bare repo's branch, the deploy
record, Docker's labelled containers, and MCP tool calls made through the proxy with the
official SDK client. Failures of the gate and of manifests are in test_deploy_failures_e2e.py.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.dockerhost import LABEL_INSTANCE, LABEL_SERVER
from tests.support.provider import (
    DEPLOY_URL,
    EXAMPLE,
    TESTS,
    Provider,
    Push,
    Workspace,
    finish,
    run_git,
    wait_for,
)
from tests.support.swarmview import SWARM_ONLY

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("synced")]

DRAIN_DEADLINE = 30.0
NOTHING_TO_DEPLOY_SECONDS = 10.0


@dataclass(frozen=True)
class Baseline:
    """The module's first push: the echo fixture and a copy of the real property-search server."""

    echo: str
    example: str
    commit: str
    push: Push


@pytest.fixture(scope="module")
def baseline(provider: Provider, workspace: Workspace) -> Baseline:
    """Push the first two servers (whatever test asks first, this is the repo's first push)."""
    assert provider.branch() == "", "the baseline must be the bare repo's first push"
    echo = workspace.put("echo")
    example = workspace.put_example()
    commit = workspace.commit("two servers")
    push = workspace.push()
    assert push.ok, push.output
    return Baseline(echo, example, commit, push)


def test_first_push_deploys_every_server_and_the_proxy_serves_their_tools(
    provider: Provider, baseline: Baseline
) -> None:
    """The first push builds, gates and routes every server; the branch and the deploy record match."""
    push = baseline.push
    assert "==> succeeded: live:" in push.output
    assert push.deploy_url == f"{provider.base}/deploys/{push.deploy_id}"
    remote = run_git(["ls-remote", str(provider.bare), "refs/heads/main"], TESTS).split()
    assert remote == [baseline.commit, "refs/heads/main"]

    record = provider.deploy(push.deploy_id)
    assert (record["status"], record["source"]) == ("succeeded", "push")
    assert record["commit_sha"] == baseline.commit
    assert [s["name"] for s in record["steps"]] == [
        "validate manifests",
        "plan",
        "build, start and gate 2 server(s)",
        "swap",
    ]
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in record["steps"])
    for server in (baseline.echo, baseline.example):
        outcome = record["servers"][server]
        assert (outcome["outcome"], outcome["release"]) == ("swapped", 1)
        assert sorted(outcome["timings"]) == ["build", "gate", "start"]
        assert all(seconds > 0 for seconds in outcome["timings"].values())

    assert provider.greeting(baseline.echo) == "hello, Ada"
    listings = json.loads((EXAMPLE / "data" / "listings.json").read_text())
    expected = next(item for item in listings if item["id"] == "lst-001")
    assert provider.call(baseline.example, "get_listing", {"listing_id": "lst-001"}) == expected
    found = provider.call(baseline.example, "search_listings", {"city": "Lisbon"})
    assert found["count"] == sum(1 for item in listings if item["city"] == "Lisbon") > 0
    assert {hit["id"] for hit in found["results"]} == {i["id"] for i in listings if i["city"] == "Lisbon"}


def test_a_change_to_one_server_rebuilds_only_that_server(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """Changing echo rebuilds echo alone: the other server's container is untouched and said unchanged."""
    example_before = provider.running(baseline.example)
    echo_before = provider.running(baseline.echo)
    assert len(example_before) == len(echo_before) == 1
    workspace.put("echo", name=baseline.echo, env={"GREETING": "changed"})
    workspace.commit("echo: a new greeting")

    push = workspace.push()

    assert push.ok, push.output
    assert re.search(rf"{baseline.example}: unchanged \(live r\d+\)", push.output)
    assert re.search(rf"{baseline.echo}: changed since r\d+ → r\d+", push.output)
    assert f"{baseline.echo}: build ok" in push.output
    assert f"{baseline.example}: build ok" not in push.output
    assert provider.deploy(push.deploy_id)["servers"][baseline.example]["outcome"] == "unchanged"
    assert provider.running(baseline.example) == example_before
    assert provider.greeting(baseline.echo) == "changed, Ada"
    wait_for(
        "the replaced echo container to be drained and removed",
        lambda: echo_before[0] not in provider.containers(baseline.echo),
        DRAIN_DEADLINE,
    )
    assert provider.running(baseline.echo) != echo_before


def test_a_live_container_runs_at_its_manifests_cpu_limit_after_its_startup_boost(
    provider: Provider, baseline: Baseline
) -> None:
    """Candidates start with one whole CPU; once gated, the live container has its manifest's 0.5."""
    (container_id,) = provider.running(baseline.echo)
    host = provider.docker.client.containers.get(container_id).attrs["HostConfig"]
    assert (host["CpuPeriod"], host["CpuQuota"]) == (100_000, 50_000)


def test_a_registry_write_failing_after_the_swap_never_fails_the_committed_deploy(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """The registry files can't be written after the swap: the push succeeds, the new release is
    live, the old one is drained, and the error is in the deploy's log."""
    registry_dir = provider.state / "registry"
    echo_before = provider.running(baseline.echo)
    shutil.rmtree(registry_dir)
    registry_dir.write_text("a file where the registry directory should be\n")
    try:
        workspace.put("echo", name=baseline.echo, env={"GREETING": "registry-down"})
        workspace.commit("echo: a greeting pushed while the registry can't be written")

        push = workspace.push()

        assert push.ok, push.output
        assert provider.branch() == workspace.git("rev-parse", "HEAD").strip()
        assert provider.deploy(push.deploy_id)["status"] == "succeeded"
        assert provider.greeting(baseline.echo) == "registry-down, Ada"
        wait_for(
            "the replaced echo container to be drained and removed",
            lambda: echo_before[0] not in provider.containers(baseline.echo),
            DRAIN_DEADLINE,
        )
        log = provider.log(push.deploy_id)
        assert "after the swap, registry failed" in log
        assert str(registry_dir) in log.split("after the swap, registry failed", 1)[1].splitlines()[0]
    finally:
        registry_dir.unlink(missing_ok=True)
        registry_dir.mkdir(exist_ok=True)


def test_rollback_makes_the_previous_release_live_and_releases_lists_them(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """`rollback` brings the previous release back; `releases` shows live and previous; `deploy` undoes it."""
    pushed: list[int] = []
    for greeting in ("rollback-old", "rollback-new"):
        workspace.put("echo", name=baseline.echo, env={"GREETING": greeting})
        workspace.commit(f"echo says {greeting}")
        push = workspace.push()
        assert push.ok, push.output
        pushed.append(provider.deploy(push.deploy_id)["servers"][baseline.echo]["release"])
    old, new = pushed
    assert provider.greeting(baseline.echo) == "rollback-new, Ada"

    result = provider.cli("rollback", baseline.echo)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"==> rollback {baseline.echo} to r{old}" in result.stdout
    assert "==> succeeded" in result.stdout
    assert provider.greeting(baseline.echo) == "rollback-old, Ada"
    statuses = provider.releases(baseline.echo)
    assert (statuses[f"r{old}"], statuses[f"r{new}"]) == ("live", "previous")
    assert set(statuses.values()) <= {"live", "previous", "retired", "failed"}

    again = provider.cli("deploy", "--ref", "main")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "==> build, start and gate 1 server(s)" in again.stdout
    assert provider.greeting(baseline.echo) == "rollback-new, Ada"


def test_deploy_by_hand_runs_the_same_flow_and_finds_nothing_to_deploy(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """`central-mcp deploy --ref main` validates and plans like a push and stops fast when all is live."""
    workspace.put("echo", name=baseline.echo, env={"GREETING": "by-hand"})
    commit = workspace.commit("echo says by-hand")
    assert workspace.push().ok

    started = time.monotonic()
    result = provider.cli("deploy", "--ref", "main")
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stdout + result.stderr
    for line in (
        "==> validate manifests",
        "==> plan",
        f"{baseline.echo}: unchanged",
        f"{baseline.example}: unchanged",
        "==> succeeded: nothing to deploy",
    ):
        assert line in result.stdout
    found = DEPLOY_URL.search(result.stdout)
    assert found, result.stdout
    record = provider.deploy(int(found["id"]))
    assert (record["source"], record["status"], record["commit_sha"]) == ("cli", "succeeded", commit)
    assert [s["name"] for s in record["steps"]] == ["validate manifests", "plan"]
    assert record["finished_at"] - record["started_at"] < 2.0
    assert elapsed < NOTHING_TO_DEPLOY_SECONDS
    assert provider.greeting(baseline.echo) == "by-hand, Ada"


def test_a_commit_whose_manifests_no_glob_matches_is_rejected_and_every_server_stays_live(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """Moving every server out of the globs' reach is refused: the push is rejected, nothing is removed."""
    before = provider.branch()
    workspace.git("mv", "servers", "PROJECTS_all")
    workspace.commit("move the servers where deploy.yaml's glob does not look")

    push = workspace.push()

    assert not push.ok, push.output
    assert "no server manifest was found in this commit" in push.output
    assert "[remove-all]" in push.output
    assert provider.branch() == before
    assert provider.greeting(baseline.echo).endswith(", Ada")
    assert provider.releases(baseline.example)


def test_a_removed_server_disappears_from_the_proxy_and_docker(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """Deleting a server's folder retires it: the proxy answers 404 JSON; its container and network go."""
    doomed = workspace.put("echo", name=provider.name("doomed"), env={"GREETING": "doomed"})
    workspace.commit("add a server to remove")
    assert workspace.push().ok
    assert provider.greeting(doomed) == "doomed, Ada"
    containers = provider.running(doomed)
    assert len(containers) == 1

    workspace.remove(doomed)
    workspace.commit("remove it")
    push = workspace.push()

    assert push.ok, push.output
    assert f"{doomed}: its folder is gone" in push.output
    assert f"{doomed} removed" in push.output
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"},
        },
    }
    for status, content_type, body in (
        provider.get(f"/mcp/{doomed}"),
        provider.post(f"/mcp/{doomed}", initialize),
    ):
        assert (status, content_type) == (404, "application/json")
        assert doomed in json.loads(body)["error"]
    wait_for(
        "the removed server's container to go", lambda: provider.containers(doomed) == [], DRAIN_DEADLINE
    )
    network = f"cmcp-{provider.instance}-{doomed}"
    wait_for("its network to go", lambda: provider.docker.network(network) is None, DRAIN_DEADLINE)
    assert provider.releases(doomed) == {"r1": "retired"}
    assert provider.greeting(baseline.echo).endswith(", Ada")


def test_push_to_another_branch_is_accepted_without_a_deploy(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """A push to a branch other than main is stored but deploys nothing."""
    live = provider.greeting(baseline.echo)
    deploys = provider.last_deploy_id()
    workspace.put("echo", name=baseline.echo, env={"GREETING": "feature-only"})
    commit = workspace.commit("work in progress")

    push = workspace.push("HEAD:refs/heads/feature-e2e")

    assert push.ok, push.output
    assert "refs/heads/feature-e2e: accepted without a deploy (only main deploys)" in push.output
    assert provider.branch("refs/heads/feature-e2e") == commit
    assert provider.last_deploy_id() == deploys
    assert provider.greeting(baseline.echo) == live


def test_tag_push_is_accepted_and_ignored(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """Pushing a tag stores it and deploys nothing."""
    deploys = provider.last_deploy_id()
    workspace.git("tag", "-f", "e2e-tag")

    push = workspace.push("refs/tags/e2e-tag")

    assert push.ok, push.output
    assert "refs/tags/e2e-tag: accepted; tags do not deploy" in push.output
    assert provider.branch("refs/tags/e2e-tag") == provider.branch()
    assert provider.last_deploy_id() == deploys


def test_deleting_the_deploy_branch_is_refused(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """`git push origin :main` is rejected with the reason, and the branch stays."""
    before = provider.branch()

    push = workspace.push(":main")

    assert not push.ok, push.output
    assert "refused: deleting main would leave the VM without a source for what is live" in push.output
    assert "pre-receive hook declined" in push.output
    assert provider.branch() == before


def test_force_push_of_rewritten_history_deploys(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """A non-fast-forward (amended) commit pushed with --force is deployed and becomes the branch."""
    before = provider.branch()
    workspace.put("echo", name=baseline.echo, env={"GREETING": "rewritten"})
    workspace.git("add", "--all")
    workspace.git("commit", "--quiet", "--amend", "-m", "rewritten history")
    commit = workspace.git("rev-parse", "HEAD").strip()
    assert not workspace.is_ancestor(before, commit), "the amended commit must rewrite history"

    push = workspace.push(force=True)

    assert push.ok, push.output
    assert "forced update" in push.output
    assert provider.deploy(push.deploy_id)["commit_sha"] == commit
    assert provider.branch() == commit
    assert provider.greeting(baseline.echo) == "rewritten, Ada"


def test_the_hook_deploys_a_commit_whose_objects_are_only_in_quarantine(
    provider: Provider, workspace: Workspace, baseline: Baseline
) -> None:
    """The snapshot is taken inside pre-receive: the commit is not in the repo before, yet it deploys."""
    workspace.put("echo", name=baseline.echo, env={"GREETING": "from-quarantine"})
    commit = workspace.commit("only in quarantine while the hook runs")
    tree = workspace.git("rev-parse", f"{commit}:servers/{baseline.echo}").strip()
    assert not provider.has_object(commit)
    assert not provider.has_object(tree)

    push = workspace.push()

    assert push.ok, push.output
    record = provider.deploy(push.deploy_id)
    assert (record["status"], record["commit_sha"]) == ("succeeded", commit)
    assert provider.greeting(baseline.echo) == "from-quarantine, Ada"
    assert provider.has_object(commit)


def test_concurrent_pushes_are_serialized_and_the_waiting_pusher_is_told(
    provider: Provider, workspace: Workspace, baseline: Baseline, tmp_path: Path
) -> None:
    """Two pushes of main at once run one after the other; the second pusher sees that it waits."""
    second = provider.clone(tmp_path / "second")
    # A slow start-up holds the first deploy in its health gate while the second push arrives.
    workspace.put("echo", name=baseline.echo, env={"GREETING": "first-of-two", "STARTUP_DELAY": "3"})
    first_commit = workspace.commit("slow deploy")
    second.put("echo", name=baseline.echo, env={"GREETING": "second-of-two"})
    second_commit = second.commit("a deploy pushed meanwhile")

    started = time.monotonic()
    first_proc = workspace.start_push()
    wait_for(
        "the first deploy to run",
        lambda: any(d["commit_sha"] == first_commit and d["status"] == "running" for d in provider.deploys()),
        60,
    )
    second_proc = second.start_push()
    first, later = finish(first_proc, started), finish(second_proc, started)

    assert first.ok, first.output
    assert f"waiting: deploy #{first.deploy_id} of central-mcp is running" in later.output
    a, b = provider.deploy(first.deploy_id), provider.deploy(later.deploy_id)
    assert a["status"] == "succeeded"
    assert b["started_at"] >= a["finished_at"]
    # Both pushes were based on the same commit, so git can move the branch for one only; the
    # other must not go live either, or the branch would not name what is live (invariant 4).
    live = {"first-of-two, Ada": first_commit, "second-of-two, Ada": second_commit}
    assert provider.branch() == live[provider.greeting(baseline.echo)] == first_commit, later.output
    assert not later.ok, later.output
    assert "refs/heads/main moved to" in later.output
    assert "fetch, merge or rebase, and push again" in later.output
    assert b["status"] == "failed"


def test_status_shows_live_servers_their_health_and_the_last_deploy(
    provider: Provider, baseline: Baseline
) -> None:
    """`central-mcp status` lists each live server with its release and health, and the last deploy."""

    def echo_line() -> str:
        out = provider.cli("status").stdout
        return next((line for line in out.splitlines() if line.startswith(baseline.echo)), "")

    # The echo server may have been redeployed just now: its health is unknown until the next probe.
    wait_for("a health probe of echo", lambda: " healthy " in echo_line(), 45, interval=1)
    out = provider.cli("status").stdout
    assert f"serving at http://127.0.0.1:{provider.port}" in out and "database ok, docker ok" in out
    line = echo_line()
    assert " r" in line and "1.0.0" in line and " healthy " in line
    assert "last deploy: #" in out


@pytest.mark.parametrize("provider", SWARM_ONLY, indirect=True)
def test_on_the_swarm_engine_the_first_push_deploys_every_server_and_the_proxy_serves_them(
    provider: Provider, baseline: Baseline
) -> None:
    """The same first push with `engine: swarm`: each replica a Swarm service behind the relay."""
    test_first_push_deploys_every_server_and_the_proxy_serves_their_tools(provider, baseline)
    services = provider.docker.containers({LABEL_INSTANCE: provider.instance})
    assert sorted(s.labels[LABEL_SERVER] for s in services) == sorted([baseline.echo, baseline.example])
    assert all(s.status == "running" for s in services)
    status, _, body = provider.get("/healthz")
    assert status == 200 and json.loads(body)["checks"]["swarm"] == "ok", body
