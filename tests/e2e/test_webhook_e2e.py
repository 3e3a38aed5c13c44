"""Webhooks end to end: a local bare repo stands in for GitHub; signed deliveries deploy."""

from __future__ import annotations

import http.client
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.dockerhost import DockerHost
from pipeline.webhook import sign_github
from tests.support.provider import Provider, Workspace, run_git, running_provider, wait_for

pytestmark = pytest.mark.docker
SECRET = "webhook-secret-for-tests"
HOOK = """repos:
  - name: central-mcp
    branch: main
    manifests: ["servers/*/mcp-server.yaml"]
    clone_url: {github}
    webhook: {{provider: github, secret_env: CENTRAL_MCP_TEST_WEBHOOK}}
"""


@pytest.fixture(scope="module")
def hooked(
    tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost
) -> Iterator[tuple[Provider, Path]]:
    """A serve process whose repo is fed by webhooks from a local 'GitHub' bare repo."""
    root = tmp_path_factory.mktemp("webhooks")
    github = root / "github.git"
    run_git(["init", "--quiet", "--bare", "--initial-branch=main", str(github)], root)
    with running_provider(root / "vm", docker_host) as provider:
        provider.stop()
        text = provider.config.read_text()
        start = text.index("repos:")
        end = text.index("proxy:")
        provider.config.write_text(text[:start] + HOOK.format(github=github) + text[end:])
        provider.env["CENTRAL_MCP_TEST_WEBHOOK"] = SECRET
        provider.start()
        yield provider, github


def _github_clone(provider: Provider, github: Path, into: Path) -> Workspace:
    run_git(["clone", "--quiet", str(github), str(into)], into.parent)
    ws = Workspace(into, provider)
    ws.git("config", "user.name", "GitHub User")
    ws.git("config", "user.email", "gh@example.test")
    return ws


def _deliver(
    provider: Provider,
    body: bytes,
    *,
    event: str = "push",
    delivery: str | None = None,
    signature: str | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", provider.port, timeout=30)
    sent = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or secrets.token_hex(8),
        "X-Hub-Signature-256": signature if signature is not None else sign_github(SECRET, body),
    }
    sent.update(headers or {})
    try:
        conn.request(method, "/hooks/github", body=body, headers=sent)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw.startswith(b"{") else {"raw": raw.decode()}
    finally:
        conn.close()


def _push_payload(github: Path, ws: Workspace, before: str, message: str) -> bytes:
    after = ws.git("rev-parse", "HEAD").strip()
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "created": False,
            "deleted": False,
            "repository": {"name": "central-mcp", "full_name": "owner/central-mcp", "clone_url": str(github)},
            "head_commit": {"id": after, "message": message, "author": {"name": "GitHub User"}},
            "commits": [
                {"id": after, "message": message, "added": [], "modified": ["servers/x"], "removed": []}
            ],
        },
        indent=2,
    ).encode()


def _wait_finished(provider: Provider, deploy_id: int) -> dict[str, Any]:
    record: dict[str, Any] = {}

    def done() -> bool:
        record.update(provider.deploy(deploy_id))
        return record["status"] not in ("queued", "running")

    wait_for(f"deploy #{deploy_id} to finish", done, 180, interval=0.2)
    return record


def test_signed_push_webhook_makes_the_new_commit_live(hooked: tuple[Provider, Path], tmp_path: Path) -> None:
    """A signed GitHub push answers 202 at once; the commit is fetched, deployed and served by the proxy."""
    provider, github = hooked
    ws = _github_clone(provider, github, tmp_path / "gh")
    echo = ws.put("echo", env={"GREETING": "hooked"})
    ws.commit("add echo")
    ws.push()
    started = time.monotonic()
    status, answer = _deliver(provider, _push_payload(github, ws, "0" * 40, "add echo"), delivery="first")
    assert status == 202, answer
    assert time.monotonic() - started < 2.0, "the webhook must answer before the deploy runs"
    assert answer["url"].endswith(f"/deploys/{answer['deploy']}")
    record = _wait_finished(provider, answer["deploy"])
    assert record["status"] == "succeeded", provider.log(answer["deploy"])
    assert record["source"] == "webhook" and record["commit_sha"] == ws.git("rev-parse", "HEAD").strip()
    assert provider.greeting(echo) == "hooked, Ada"

    before = ws.git("rev-parse", "HEAD").strip()
    ws.manifest_path(echo).write_text(ws.manifest_path(echo).read_text().replace("hooked", "rehooked"))
    ws.commit("change the greeting")
    ws.push()
    payload = _push_payload(github, ws, before, "change the greeting")
    status, second = _deliver(provider, payload, delivery="second")
    status_again, again = _deliver(provider, payload, delivery="second")
    assert status == status_again == 202 and again["deploy"] == second["deploy"], "one deploy per delivery"
    assert _wait_finished(provider, second["deploy"])["status"] == "succeeded"
    assert provider.greeting(echo) == "rehooked, Ada"


def test_hostile_deliveries_change_nothing(hooked: tuple[Provider, Path]) -> None:
    """Bad signatures, oversized or malformed bodies and wrong methods get their status and deploy nothing."""
    provider, _ = hooked
    before = provider.last_deploy_id()
    body = json.dumps(
        {"ref": "refs/heads/main", "after": "a" * 40, "repository": {"full_name": "owner/central-mcp"}}
    ).encode()
    assert _deliver(provider, body, signature="")[0] == 401
    assert _deliver(provider, body, signature="sha256=" + "0" * 64)[0] == 401
    assert _deliver(provider, body, signature="sha256=" + "é" * 64)[0] == 401  # a latin-1 byte: was a 500
    status, answer = _deliver(provider, body, signature=sign_github(SECRET, body).replace("sha256", "sha1"))
    assert status == 401 and SECRET not in json.dumps(answer)
    assert _deliver(provider, b"{not json", signature=sign_github(SECRET, b"{not json"))[0] == 400
    huge = b" " * (1024 * 1024 + 1)
    assert _deliver(provider, huge, signature=sign_github(SECRET, huge))[0] == 413
    assert _deliver(provider, body, method="GET")[0] == 405
    status, answer = _deliver(provider, body, event="ping")
    assert status == 200
    other = json.dumps(
        {"ref": "refs/heads/main", "after": "b" * 40, "repository": {"full_name": "someone/else"}}
    ).encode()
    assert _deliver(provider, other)[0] == 404
    assert provider.last_deploy_id() == before


def test_a_replayed_old_delivery_keeps_the_branch_tip_live(
    hooked: tuple[Provider, Path], tmp_path: Path
) -> None:
    """A captured c1 delivery re-sent with a new id after c2 went live deploys the branch's tip: no change."""
    provider, github = hooked
    ws = _github_clone(provider, github, tmp_path / "gh")
    echo = ws.put("echo", name=provider.name("replayed"), env={"GREETING": "first"})
    c1 = ws.commit("replay: c1")
    ws.push()
    first = _push_payload(github, ws, "0" * 40, "replay: c1")
    status, answer = _deliver(provider, first, delivery="replay-c1")
    assert status == 202 and _wait_finished(provider, answer["deploy"])["status"] == "succeeded"
    assert provider.greeting(echo) == "first, Ada"

    ws.manifest_path(echo).write_text(ws.manifest_path(echo).read_text().replace("first", "second"))
    c2 = ws.commit("replay: c2")
    ws.push()
    second = _push_payload(github, ws, c1, "replay: c2")
    status, answer = _deliver(provider, second, delivery="replay-c2")
    assert status == 202 and _wait_finished(provider, answer["deploy"])["status"] == "succeeded"
    assert provider.greeting(echo) == "second, Ada"

    status, answer = _deliver(provider, first, delivery="replay-c1-again")
    assert status == 202, answer
    record = _wait_finished(provider, answer["deploy"])
    log = provider.log(answer["deploy"])
    assert record["status"] == "succeeded" and record["commit_sha"] == c2, log
    assert "nothing to deploy" in log and f"the delivery named {c1[:12]}" in log
    assert provider.greeting(echo) == "second, Ada"

    rollback = provider.cli("rollback", echo)
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    assert provider.greeting(echo) == "first, Ada"
    status, answer = _deliver(provider, second, delivery="replay-c2-after-rollback")
    assert status == 202 and _wait_finished(provider, answer["deploy"])["status"] == "succeeded"
    assert f"{c2[:12]}, the tip of refs/heads/main, was deployed by deploy #" in provider.log(
        answer["deploy"]
    )
    assert provider.greeting(echo) == "first, Ada", "a replayed delivery must not undo a rollback"

    ws.manifest_path(echo).write_text(ws.manifest_path(echo).read_text().replace("second", "third"))
    c3 = ws.commit("replay: c3")
    ws.push()
    status, answer = _deliver(provider, _push_payload(github, ws, c2, "replay: c3"), delivery="replay-c3")
    assert status == 202 and _wait_finished(provider, answer["deploy"])["status"] == "succeeded"
    assert provider.greeting(echo) == "third, Ada"
    ws.git("reset", "--quiet", "--hard", c2)
    ws.push(force=True)
    status, answer = _deliver(provider, _push_payload(github, ws, c3, "replay: c2"), delivery="force-back")
    assert status == 202 and _wait_finished(provider, answer["deploy"])["status"] == "succeeded"
    assert provider.greeting(echo) == "second, Ada", "a force push back to an older commit deploys it"
