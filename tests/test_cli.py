"""pipeline/cli.py: the `check` command, its exit codes and its human and JSON reports."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import cli
from tests.support.readme import yaml_example

GOOD = """name: srv
version: 1.0.0
description: A test server
transport: streamable-http
run:
  port: 8080
access: [demo]
"""
DEPLOY = "listen: {host: 127.0.0.1, port: 8900}\nprojects:\n  - name: demo\n"
# file:line:column $.path: message, optionally followed by " — hint"
LINE = re.compile(r"^(?P<file>\S+):(?P<line>\d+):(?P<column>\d+) (?P<path>\$\S*): (?P<message>.+)$")


def _write(path: Path, text: str) -> Path:
    """Write `text` to `path`, creating its folders, and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A good tree: deploy.yaml with project `demo` and one valid server `srv`."""
    root = tmp_path / "repo"
    _write(root / "deploy.yaml", DEPLOY)
    _write(root / "servers" / "srv" / "mcp-server.yaml", GOOD)
    _write(root / "servers" / "srv" / "Dockerfile", "FROM scratch\n")
    return root


def _check(repo: Path, *extra: str) -> int:
    """Run `central-mcp --config <repo>/deploy.yaml check <repo> [extra]` in process."""
    return cli.main(["--config", str(repo / "deploy.yaml"), "check", str(repo), *extra])


def _break(repo: Path) -> None:
    """Give servers/srv two faults: port 0 on line 6 and an unknown key on line 8."""
    _write(repo / "servers" / "srv" / "mcp-server.yaml", GOOD.replace("8080", "0") + "colour: blue\n")


def test_check_returns_zero_on_a_good_tree(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid tree exits 0 and the summary names its servers."""
    assert _check(repo) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "checked 1 file(s): ok; servers: srv (servers/srv/)"


def test_check_returns_one_on_a_bad_tree(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tree with a faulty manifest exits 1 and counts the problems in its summary."""
    _break(repo)
    assert _check(repo) == cli.EXIT_FAILED
    assert "2 problem(s)" in capsys.readouterr().out


def test_check_of_a_tree_where_no_manifest_matches_fails_naming_the_globs(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A glob that matches nothing is a problem, not `checked 0 file(s): ok` (a push would remove all)."""
    (repo / "servers").rename(repo / "PROJECTS_all")
    assert _check(repo) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert f"$.repos[0].manifests: no server manifest under {repo} matches servers/*/mcp-server.yaml" in out
    assert "would remove every live server" in out


def test_human_output_lines_read_file_line_column_path_message(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each problem is one `file:line:column $.path: message — hint` line, in file order."""
    _break(repo)
    _check(repo)
    lines = capsys.readouterr().out.strip().splitlines()[:-1]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    found = [(m["file"], int(m["line"]), int(m["column"]), m["path"]) for m in matches if m]
    assert found == [
        ("servers/srv/mcp-server.yaml", 6, 9, "$.run.port"),
        ("servers/srv/mcp-server.yaml", 8, 1, "$.colour"),
    ]
    assert " — " in lines[0]


def test_json_output_lists_every_problem_field(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--json` prints one JSON document whose problems carry file, line, column, path, message, hint."""
    _break(repo)
    assert _check(repo, "--json") == cli.EXIT_FAILED
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["servers"] == []
    first, second = report["problems"]
    assert set(first) == {"file", "line", "column", "path", "message", "hint"}
    assert (first["file"], first["line"], first["column"], first["path"]) == (
        "servers/srv/mcp-server.yaml",
        6,
        9,
        "$.run.port",
    )
    assert "minimum of 1" in first["message"]
    assert second["path"] == "$.colour" and second["hint"]


def test_json_output_on_a_good_tree(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a good tree `--json` reports ok, the servers and no problems."""
    assert _check(repo, "--json") == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out) == {
        "ok": True,
        "servers": ["srv"],
        "folders": {"srv": "servers/srv"},
        "problems": [],
    }


def test_bad_deploy_yaml_is_reported_by_check(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fault in deploy.yaml fails `check` and is located in deploy.yaml like a manifest fault."""
    config = _write(repo / "deploy.yaml", DEPLOY + "proxy:\n  drain_timeout: soon\n")
    assert _check(repo, "--json") == cli.EXIT_FAILED
    problems = json.loads(capsys.readouterr().out)["problems"]
    deploy = [p for p in problems if p["file"] == str(config)]
    assert deploy, problems
    assert {(p["path"], p["line"]) for p in deploy} == {("$.proxy.drain_timeout", 5)}


def test_bad_deploy_yaml_is_reported_in_human_output(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The human report of a bad deploy.yaml names the file, line and JSON path."""
    config = _write(repo / "deploy.yaml", "listen: {port: 70000}\n")
    assert _check(repo) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert f"{config}:1:16 $.listen.port: 70000 is greater than the maximum of 65535" in out


def test_check_without_a_command_is_a_usage_error() -> None:
    """Running with no sub-command is refused by argparse with the usage exit code."""
    with pytest.raises(SystemExit) as caught:
        cli.main([])
    assert caught.value.code == cli.EXIT_USAGE


def test_python_m_pipeline_check_exits_zero_on_a_good_tree(repo: Path) -> None:
    """`python -m pipeline check` as a real process exits 0 on a good tree."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--config", str(repo / "deploy.yaml"), "check", str(repo)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "checked 1 file(s): ok" in done.stdout


SECRET_DEPLOY = (
    "state_dir: state\nrepos:\n  - name: r\n    secrets: [ALL_KEY, {name: ONE_KEY, servers: [srv]}]\n"
    "    webhook: {provider: github, secret_env: HOOK_SECRET}\n"
)


@dataclass(frozen=True)
class Ran:
    """What one in-process command run returned and printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """Run `central-mcp --config <config> secret <args>` in process with `stdin` piped in."""

    def run(config: Path, *args: str, stdin: bytes = b"") -> Ran:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = cli.main(["--config", str(config), "secret", *args])
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return run


def test_secret_set_reads_the_value_from_stdin_and_never_prints_it(
    tmp_path: Path, secret: Callable[..., Ran]
) -> None:
    """`secret set NAME` stores stdin (one final newline dropped) 0600 and says where it is granted."""
    config = _write(tmp_path / "deploy.yaml", SECRET_DEPLOY)
    done = secret(config, "set", "ONE_KEY", stdin=b"hunter2-value\n")
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert "granted to r: srv" in done.stderr
    stored = tmp_path / "state" / "server-secrets" / "ONE_KEY"
    assert stored.read_text() == "hunter2-value"
    assert oct(stored.stat().st_mode & 0o777) == "0o600"


def test_secret_list_shows_names_and_grants_never_values(tmp_path: Path, secret: Callable[..., Ran]) -> None:
    """`secret list` names each stored or granted secret, its grants, and which are not stored yet."""
    config = _write(tmp_path / "deploy.yaml", SECRET_DEPLOY)
    assert secret(config, "set", "ALL_KEY", stdin=b"all-value").returncode == 0
    assert secret(config, "set", "SPARE", stdin=b"spare-value").returncode == 0
    listed = secret(config, "list")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "r (every server)" in lines["ALL_KEY"]
    assert "r: srv" in lines["ONE_KEY"] and "NOT STORED: `central-mcp secret set ONE_KEY`" in lines["ONE_KEY"]
    assert "not granted to any repo or server" in lines["SPARE"]
    assert "value" not in listed.stdout


@pytest.mark.parametrize(
    "name, stdin, fragment",
    [
        ("HOOK_SECRET", b"x-value", "names one of the provider's own credentials"),
        ("CENTRAL_MCP_TOKEN", b"x-value", "starts with CENTRAL_MCP_"),
        ("bad-name", b"x-value", "is not a secret name"),
        ("EMPTY", b"\n", "no value for EMPTY on stdin"),
    ],
)
def test_secret_set_refuses_what_a_server_secret_cannot_be(
    tmp_path: Path, secret: Callable[..., Ran], name: str, stdin: bytes, fragment: str
) -> None:
    """A provider credential's name, a CENTRAL_MCP_ name, a bad name and an empty value are refused."""
    config = _write(tmp_path / "deploy.yaml", SECRET_DEPLOY)
    done = secret(config, "set", name, stdin=stdin)
    assert done.returncode == cli.EXIT_FAILED
    assert fragment in done.stderr
    assert "x-value" not in done.stderr
    assert not (tmp_path / "state" / "server-secrets" / name).exists()


def test_secret_rm_removes_and_warns_while_still_granted(tmp_path: Path, secret: Callable[..., Ran]) -> None:
    """`secret rm` removes a stored secret, says it is still granted, and fails for an unknown name."""
    config = _write(tmp_path / "deploy.yaml", SECRET_DEPLOY)
    assert secret(config, "set", "ALL_KEY", stdin=b"all-value").returncode == 0
    removed = secret(config, "rm", "ALL_KEY")
    assert removed.returncode == 0 and "still granted to r (every server)" in removed.stderr
    again = secret(config, "rm", "ALL_KEY")
    assert again.returncode == cli.EXIT_FAILED and "no server secret 'ALL_KEY'" in again.stderr


def test_check_reports_a_secret_the_store_lacks_where_the_store_exists(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the VM (the store exists) `check` names a granted secret that is not stored, and the command."""
    _write(repo / "deploy.yaml", DEPLOY + "state_dir: state\nrepos:\n  - name: r\n    secrets: [API_KEY]\n")
    _write(
        repo / "servers" / "srv" / "mcp-server.yaml",
        GOOD.replace("  port: 8080\n", "  port: 8080\n  secrets: [API_KEY]\n"),
    )
    assert _check(repo) == cli.EXIT_OK  # no store here: the grant is checked, the value cannot be
    capsys.readouterr()
    (repo / "state" / "server-secrets").mkdir(parents=True)
    assert _check(repo) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert (
        "servers/srv/mcp-server.yaml $.run.secrets: secret API_KEY is not in this VM's server-secret" in out
    )
    assert "`central-mcp secret set API_KEY`" in out


def test_check_reports_an_ungranted_secret(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`check` without any store still refuses a secret deploy.yaml does not grant, naming the key to add."""
    _write(
        repo / "servers" / "srv" / "mcp-server.yaml",
        GOOD.replace("  port: 8080\n", "  port: 8080\n  secrets: [API_KEY]\n"),
    )
    assert _check(repo) == cli.EXIT_FAILED
    out = capsys.readouterr().out
    assert "$.run.secrets[0]: secret API_KEY is not granted to server 'srv'" in out
    assert "under repos[0].secrets add `- API_KEY`" in out


def test_config_may_follow_the_sub_command(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`central-mcp check PATH --config FILE` uses FILE, as `--config FILE check PATH` does."""
    other = _write(repo.parent / "elsewhere" / "vm.yaml", "listen: {port: 70000}\n")
    assert cli.main(["check", str(repo), "--config", str(other)]) == cli.EXIT_FAILED
    assert f"{other}:1:16 $.listen.port" in capsys.readouterr().out
    assert cli.main(["--config", str(other), "check", str(repo)]) == cli.EXIT_FAILED
    assert f"{other}:1:16 $.listen.port" in capsys.readouterr().out


def test_check_path_reads_that_trees_own_deploy_yaml(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`check PATH` without --config reads PATH/deploy.yaml, not the one in the current directory."""
    cwd = tmp_path / "cwd"
    _write(cwd / "deploy.yaml", "listen: {port: 70000}\n")  # would fail the check if it were read
    monkeypatch.chdir(cwd)
    assert cli.main(["check", str(repo)]) == cli.EXIT_OK, capsys.readouterr().out
    assert "checked 1 file(s): ok; servers: srv (servers/srv/)" in capsys.readouterr().out


def test_keys_take_config_after_the_sub_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nested sub-commands take --config too: `keys list --config FILE` reads FILE."""
    assert cli.main(["keys", "list", "--config", str(tmp_path / "missing.yaml")]) == cli.EXIT_FAILED
    assert "missing.yaml $: no such config file" in capsys.readouterr().err


def test_the_readmes_webhook_example_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's webhook config (`name: owner/PROJECTS_all`, a PROJECT_airbnsearch folder) checks ok."""
    root = tmp_path / "PROJECTS_all"
    _write(root / "deploy.yaml", yaml_example("Webhooks"))
    _write(
        root / "PROJECT_airbnsearch" / "mcp-server.yaml",
        GOOD.replace("srv", "airbnsearch").replace("[demo]", "[all]"),
    )
    _write(root / "PROJECT_airbnsearch" / "Dockerfile", "FROM central-mcp/python:3.11\n")
    assert cli.main(["check", str(root)]) == cli.EXIT_OK, capsys.readouterr().out
    assert "servers: airbnsearch (PROJECT_airbnsearch/)" in capsys.readouterr().out


def _live_state(tmp_path: Path, projects: str = "") -> Path:
    """A deploy.yaml (with `projects` text) and a state dir whose database holds one live server `srv`."""
    from pipeline.store import DATABASE, Placement, Store
    from tests.test_registry import release

    state = tmp_path / "state"
    store = Store(state / DATABASE)
    store.add_release(release("srv", number=1))
    store.commit_swap([Placement("srv", 1, "c", 1234)], [])
    store.close()
    return _write(tmp_path / "deploy.yaml", f"state_dir: {state}\npublic_url: https://vm.test\n{projects}")


def test_client_config_with_a_wrong_state_dir_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state dir without the provider's database fails naming it, never printing an empty config."""
    config = _live_state(tmp_path, "projects:\n  - name: demo\n")
    monkeypatch.setenv("CENTRAL_MCP_STATE_DIR", str(tmp_path / "wrong"))
    assert cli.main(["--config", str(config), "client-config", "demo"]) == cli.EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == "" and f"no central-mcp database in {tmp_path / 'wrong'}" in err
    assert not (tmp_path / "wrong").exists(), "a read-only command must not create a state dir"
    monkeypatch.delenv("CENTRAL_MCP_STATE_DIR")
    assert cli.main(["--config", str(config), "client-config", "demo", "--format", "cursor"]) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["mcpServers"]["central-mcp"]["url"] == "https://vm.test/mcp"
    each = ["--config", str(config), "client-config", "demo", "--format", "cursor", "--per-server"]
    assert cli.main(each) == cli.EXIT_OK
    assert json.loads(capsys.readouterr().out)["mcpServers"]["srv"]["url"] == "https://vm.test/mcp/srv"


def test_client_config_without_projects_lists_every_live_server_without_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no projects in deploy.yaml, client-config needs no project and its config carries no key."""
    monkeypatch.delenv("CENTRAL_MCP_STATE_DIR", raising=False)
    config = _live_state(tmp_path)
    assert cli.main(["--config", str(config), "client-config", "--format", "claude-code"]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert json.loads(out) == {"mcpServers": {"central-mcp": {"type": "http", "url": "https://vm.test/mcp"}}}
    assert "takes no key" in err
    assert cli.main(["--config", str(config), "client-config", "demo"]) == cli.EXIT_FAILED
    assert "deploy.yaml lists no projects" in capsys.readouterr().err


def test_engine_swarm_passes_its_options_and_keeps_the_pool_off_network_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`engine --swarm` hands address and pool to ensure_swarm, with deploy.yaml's network.pool to avoid;
    a refusal from it is one error line and exit 1."""
    from pipeline import engine
    from pipeline.errors import EngineUnavailable

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(engine, "ensure_engine", lambda say: "host")

    def ensure_swarm(host: object, say: object, addr: object, pool: object, *, avoid: object) -> None:
        calls.append((host, addr, pool, avoid))
        if pool == "bad":
            raise EngineUnavailable("the pool is bad")

    monkeypatch.setattr(engine, "ensure_swarm", ensure_swarm)
    config = tmp_path / "deploy.yaml"
    config.write_text("network:\n  pool: 10.99.0.0/16\n")
    argv = ["engine", "--config", str(config), "--swarm", "--advertise-addr", "192.0.2.7"]
    assert cli.main([*argv, "--address-pool", "10.98.0.0/16"]) == cli.EXIT_OK
    assert calls == [("host", "192.0.2.7", "10.98.0.0/16", ("10.99.0.0/16",))]
    assert cli.main([*argv, "--address-pool", "bad"]) == cli.EXIT_FAILED
    assert "error: the pool is bad" in capsys.readouterr().err
    assert cli.main(["engine", "--config", str(config)]) == cli.EXIT_OK
    assert len(calls) == 2  # without --swarm the engine is only made to answer
