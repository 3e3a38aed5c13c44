"""End to end: smoke checks in the gate and the tool contract, with real pushes into real Docker.

One provider (with an admin token) and one echo server pushed through a sequence of releases: a
release whose tool throws on its smoke call is rejected with the call in the push output and the
old release answering; a removed tool without a major bump is refused naming the tool, accepted
with [allow-breaking]; a narrowed input schema is refused, then accepted with a major bump;
`central-mcp diff` prints the contract diff and `check --against` foresees a refusal.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, Push, VMSecrets, Workspace, running_provider

pytestmark = pytest.mark.docker

TOKEN = secrets.token_hex(16)
GREET_CHECK = {
    "name": "greets",
    "tool": "greet",
    "arguments": {"name": "Ada"},
    "expect": {"contains": "hello, Ada", "json": {"$.greeting": "hello, Ada"}},
    "timeout": "5s",
    "read_only": True,
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Provider]:
    """A real serve process whose admin API wants a token."""
    vm = VMSecrets(env={"E2E_ADMIN_TOKEN": TOKEN})
    root = tmp_path_factory.mktemp("contract")
    with running_provider(root, docker_host, "admin_token_env: E2E_ADMIN_TOKEN\n", vm=vm) as running:
        yield running


@pytest.fixture(scope="module")
def workspace(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The developer's clone of the provider's repo."""
    return provider.clone(tmp_path_factory.mktemp("clone") / "work")


def _put(ws: Workspace, version: str, env: dict[str, str], check: dict[str, Any] | None = None) -> str:
    """The echo fixture at `version` with `env` and one smoke check (the greet check by default)."""

    def change(data: dict[str, Any]) -> None:
        data["version"] = version
        data["checks"] = [check or GREET_CHECK]

    return ws.put("echo", env=env, manifest=change)


def _push(ws: Workspace, message: str) -> Push:
    ws.commit(message)
    return ws.push()


@pytest.fixture(scope="module")
def echo(provider: Provider, workspace: Workspace) -> str:
    """r1 of the echo server: greet and farewell, its smoke check passing, at 1.0.0."""
    server = _put(workspace, "1.0.0", {"FAREWELL": "1"})
    push = _push(workspace, "echo 1.0.0 with a smoke check")
    assert push.ok, push.output
    assert "check 'greets' (tools/call greet" in push.output and "passed" in push.output
    return server


def test_a_tool_that_throws_on_its_smoke_call_is_rejected(
    provider: Provider, workspace: Workspace, echo: str
) -> None:
    """The push is rejected naming the check and what came back; the branch and the live release stay."""
    workspace.sync()
    before = provider.branch()
    _put(workspace, "1.0.1", {"FAREWELL": "1", "BROKEN_GREET": "1"})
    push = _push(workspace, "a greet that throws")
    assert not push.ok
    assert "check 'greets' (tools/call greet" in push.output
    assert "expected a result without isError; got isError=true" in push.output
    assert "the greetings table is gone" in push.output
    assert provider.branch() == before
    assert provider.greeting(echo) == "hello, Ada"
    assert provider.releases(echo)["r1"] == "live"


def test_a_removed_tool_without_a_major_bump_is_refused_then_allowed(
    provider: Provider, workspace: Workspace, echo: str
) -> None:
    """Dropping `farewell` at 1.1.0 is refused naming it; the same with [allow-breaking] deploys."""
    workspace.sync()
    before = provider.branch()
    _put(workspace, "1.1.0", {})
    refused = _push(workspace, "drop farewell")
    assert not refused.ok
    assert "tool farewell: removed (breaking)" in refused.output, refused.output
    assert (
        "breaks the tool contract of the live 1.0.0 without a major version bump: tool farewell: removed"
        in (refused.output)
    )
    assert provider.branch() == before and sorted(provider.tool_names(echo)) == ["farewell", "greet"]

    workspace.sync()
    _put(workspace, "1.1.0", {})
    allowed = _push(workspace, "drop farewell [allow-breaking]")
    assert allowed.ok, allowed.output
    assert "tool farewell: removed (breaking)" in allowed.output
    assert "breaking change(s) accepted ([allow-breaking] in the commit message)" in allowed.output
    assert provider.tool_names(echo) == ["greet"]
    status, _, body = provider.get(f"/deploys/{allowed.deploy_id}.json?token={TOKEN}")
    assert (
        status == 200 and "tool farewell: removed (breaking)" in json.loads(body)["servers"][echo]["contract"]
    )
    status, _, page = provider.get(f"/deploys/{allowed.deploy_id}?token={TOKEN}")
    assert status == 200 and "contract vs live:" in page and "tool farewell: removed (breaking)" in page

    diff = provider.cli("diff", echo)
    assert diff.returncode == 0, diff.stderr
    lines = diff.stdout.splitlines()
    assert lines[0].startswith(f"{echo}: r1 (v1.0.0) -> ") and lines[0].endswith("(v1.1.0)")
    assert "  tool farewell: removed (breaking)" in lines
    assert "  breaking: yes (no major bump)" in lines


def test_a_narrowed_input_is_refused_and_a_major_bump_accepted(
    provider: Provider, workspace: Workspace, echo: str
) -> None:
    """greet requiring `lang` at 1.2.0 is refused naming the property; at 2.0.0 it deploys."""
    check = {**GREET_CHECK, "arguments": {"name": "Ada", "lang": "en"}, "expect": {"contains": "hello, Ada"}}
    workspace.sync()
    before = provider.branch()
    _put(workspace, "1.2.0", {"GREET_NEEDS_LANG": "1"}, check)
    refused = _push(workspace, "greet needs a language")
    assert not refused.ok
    assert "tool greet: inputSchema: new required property 'lang'" in refused.output
    assert provider.branch() == before

    workspace.sync()
    _put(workspace, "2.0.0", {"GREET_NEEDS_LANG": "1"}, check)
    bumped = _push(workspace, "greet needs a language, 2.0.0")
    assert bumped.ok, bumped.output
    assert "breaking change(s) accepted (major version bump 1.1.0 -> 2.0.0)" in bumped.output
    assert provider.call(echo, "greet", {"name": "Ada", "lang": "en"})["greeting"] == "hello, Ada (en)"


def test_check_arguments_the_candidates_schema_refuses_fail_the_gate(
    provider: Provider, workspace: Workspace, echo: str
) -> None:
    """A check whose arguments miss a required property fails before any call, naming the check."""
    workspace.sync()
    _put(workspace, "2.0.1", {"GREET_NEEDS_LANG": "1"}, GREET_CHECK)
    push = _push(workspace, "a check without lang")
    assert not push.ok
    assert "check 'greets' (tools/call greet" in push.output
    assert "do not match the tool's inputSchema: $.arguments: 'lang' is a required property" in push.output


def test_check_against_a_running_provider_foresees_a_refusal(
    provider: Provider, workspace: Workspace, echo: str, tmp_path: Path
) -> None:
    """`check --against` reads the live lists with the admin token, and with --lists says a push
    dropping greet would be refused; without the token it is told to set one."""
    workspace.sync()
    _put(workspace, "2.1.0", {"GREET_NEEDS_LANG": "1"}, {**GREET_CHECK, "tool": "shout"})
    lists = tmp_path / "tools.json"
    lists.write_text(json.dumps({"tools": [{"name": "shout", "inputSchema": {"type": "object"}}]}))
    env_token = {"CENTRAL_MCP_ADMIN_TOKEN": TOKEN}
    root = str(workspace.root)
    foreseen = _cli(
        provider, env_token, "check", root, "--against", provider.base, "--lists", f"{echo}={lists}"
    )
    assert foreseen.returncode == 1, foreseen.stdout + foreseen.stderr
    out = foreseen.stdout
    assert f"{echo}: live r" in out and "v2.0.0 (1 tool(s)), this checkout v2.1.0: not a major bump" in out
    assert "calls a tool the live release lacks" in out
    assert f"{echo}:   tool greet: removed (breaking)" in out
    assert f"{echo}: a push would be refused:" in out

    plain = _cli(provider, env_token, "check", root, "--against", provider.base)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    as_json = _cli(
        provider, env_token, "check", root, "--json", "--against", provider.base, "--lists", f"{echo}={lists}"
    )
    report = json.loads(as_json.stdout)
    assert not report["ok"] and report["against"]["refused"] and report["against"]["url"] == provider.base
    unauthorized = _cli(provider, {}, "check", root, "--against", provider.base)
    assert unauthorized.returncode == 1 and "CENTRAL_MCP_ADMIN_TOKEN" in unauthorized.stderr


def _cli(provider: Provider, env: dict[str, str], *args: str) -> Any:
    """`central-mcp` as the owner runs it at a laptop, with `env` added."""
    import subprocess
    import sys

    full = {k: v for k, v in provider.env.items() if k != "CENTRAL_MCP_ADMIN_TOKEN"} | env
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "--config", str(provider.config), *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_stdio_servers_checks_run_through_its_bridge(provider: Provider, workspace: Workspace) -> None:
    """A stdio server's check passes through the bridge; an expectation its answer misses rejects
    the next push, naming the check and what came back."""

    def checked(expect: str) -> Any:
        def change(data: dict[str, Any]) -> None:
            data["checks"] = [
                {"tool": "echo", "arguments": {"text": "hi there"}, "expect": {"contains": expect}}
            ]

        return change

    workspace.sync()
    workspace.git("reset", "--quiet", "--hard")  # check --against's test left echo edited, uncommitted
    server = workspace.put("stdio", manifest=checked("hi there"))
    first = _push(workspace, "a stdio server with a check")
    assert first.ok, first.output
    assert 'check \'echo\' (tools/call echo {"text": "hi there"}) passed' in first.output

    workspace.sync()
    workspace.put("stdio", name=server, manifest=checked("goodbye"))
    second = _push(workspace, "a check its answer misses")
    assert not second.ok
    assert "check 'echo' (tools/call echo {\"text\": \"hi there\"}) expected text containing 'goodbye'" in (
        second.output
    )
    assert "got isError=false, text: 'hi there'" in second.output
