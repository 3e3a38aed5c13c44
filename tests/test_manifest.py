"""pipeline/config/manifest.py: discovering and validating servers/<name>/mcp-server.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.config import manifest, rolloutspec, settings
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = ["property-search", "999x-ray-analyzer"]

GOOD = """name: srv
version: 1.0.0
description: A test server
transport: streamable-http
run:
  port: 8080
"""


def _settings(tmp_path: Path) -> settings.Settings:
    """Settings with one project, `demo`, for the access checks, and secrets API_KEY and KEY granted."""
    grants = (settings.SecretGrant("API_KEY"), settings.SecretGrant("KEY"))
    return settings.Settings(
        config_path=tmp_path / "deploy.yaml",
        state_dir=tmp_path / "state",
        repos=(settings.Repo("central-mcp", secrets=grants),),
        projects=(settings.Project("demo"),),
    )


def _server(root: Path, folder: str, text: str, *, dockerfile: bool = True, top: str = "servers") -> Path:
    """Write `text` as root/<top>/<folder>/mcp-server.yaml, with a Dockerfile unless told not to."""
    where = root / top / folder
    where.mkdir(parents=True, exist_ok=True)
    (where / manifest.MANIFEST_NAME).write_text(text)
    if dockerfile:
        (where / "Dockerfile").write_text("FROM scratch\n")
    return where


def _with(old: str, new: str) -> str:
    """The good manifest with one piece of text replaced."""
    assert old in GOOD
    return GOOD.replace(old, new)


def _check(tmp_path: Path, **kwargs: object) -> manifest.CheckReport:
    """Check tmp_path/repo with the demo settings."""
    return manifest.check_tree(tmp_path / "repo", _settings(tmp_path), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("folder", EXAMPLES)
def test_example_server_manifest_is_valid(folder: str) -> None:
    """Each example server shipped in servers/ passes the check against the repo's deploy.yaml."""
    file = REPO / "servers" / folder / manifest.MANIFEST_NAME
    loaded = manifest.read(file, REPO, settings.load(REPO / "deploy.yaml", env={}))
    assert loaded.name == folder
    assert loaded.folder == f"servers/{folder}"
    assert 1 <= loaded.port <= 65535


def test_good_manifest_builds_a_manifest_with_defaults(tmp_path: Path) -> None:
    """A minimal manifest gets the default path, health, memory, cpus and access."""
    _server(tmp_path / "repo", "srv", GOOD)
    report = _check(tmp_path)
    assert report.ok
    [server] = report.manifests
    assert (server.name, server.folder, server.context) == ("srv", "servers/srv", "servers/srv")
    assert server.port == 8080
    assert server.path == manifest.DEFAULT_PATH
    assert server.health_timeout == manifest.DEFAULT_HEALTH_TIMEOUT
    assert server.memory_bytes == 256 * 1024**2
    assert server.access == ("all",)


def test_full_manifest_converts_units_and_values(tmp_path: Path) -> None:
    """Durations, sizes, env values and build args are converted as the engine needs them."""
    text = GOOD + (
        "  env: {DEBUG: true, WORKERS: 2}\n  secrets: [API_KEY]\n"
        "health: {timeout: 1m, interval: 500ms}\nresources: {memory: 1g, cpus: 2}\n"
        "build: {args: {PY: 3.12}}\naccess: [demo]\n"
    )
    _server(tmp_path / "repo", "srv", text)
    [server] = _check(tmp_path).manifests
    assert server.env == {"DEBUG": "true", "WORKERS": "2"}
    assert server.build_args == {"PY": "3.12"}
    assert (server.health_timeout, server.health_interval) == (60.0, 0.5)
    assert (server.memory_bytes, server.cpus) == (1024**3, 2.0)
    assert (server.secrets, server.access) == (("API_KEY",), ("demo",))


BAD = [
    pytest.param(_with("name: srv\n", ""), "$", 1, "'name' is a required property", id="missing-name"),
    pytest.param(_with("version: 1.0.0\n", ""), "$", 1, "'version' is a required", id="missing-version"),
    pytest.param(
        _with("run:\n  port: 8080\n", ""), "$", 1, "needs `run` (a container) or `remote`", id="missing-run"
    ),
    pytest.param(_with("port: 8080", "path: /mcp"), "$.run", 6, "'port' is a required", id="missing-port"),
    pytest.param(_with("name: srv", "name: s_rv"), "$.name", 1, "not a DNS label", id="name-not-dns"),
    pytest.param(_with("1.0.0", "v1"), "$.version", 2, "not a semantic version", id="version-not-semver"),
    pytest.param(_with("1.0.0", "1.0"), "$.version", 2, "1.0 is not of type 'string'", id="version-float"),
    pytest.param(
        _with("streamable-http", "websocket"),
        "$.transport",
        4,
        "'websocket' is not one of",
        id="unknown-transport",
    ),
    pytest.param(
        _with("streamable-http", "stdio"), "$.run", 6, "'stdio' needs run.command", id="stdio-without-command"
    ),
    pytest.param(
        GOOD + "  sessions: shared\n",
        "$.run.sessions",
        7,
        "for transport 'stdio' only",
        id="sessions-on-http",
    ),
    pytest.param(
        _with("streamable-http", "stdio") + "  command: [srv]\n  sessions: shared\n  pool: 2\n",
        "$.run.pool",
        9,
        "a shared server has one process",
        id="pool-on-shared",
    ),
    pytest.param(
        _with("streamable-http", "stdio") + "  command: [srv]\n  sessions: each\n",
        "$.run.sessions",
        8,
        "'each' is not one of",
        id="sessions-unknown",
    ),
    pytest.param(
        _with("streamable-http", "stdio") + "  command: [srv]\n  max_processes: 0\n",
        "$.run.max_processes",
        8,
        "minimum of 1",
        id="max-processes-zero",
    ),
    pytest.param(GOOD + "colour: blue\n", "$.colour", 7, "unknown key 'colour'", id="unknown-top-key"),
    pytest.param(GOOD + "  ports: [1]\n", "$.run.ports", 7, "unknown key 'ports'", id="unknown-run-key"),
    pytest.param(_with("8080", "'8080'"), "$.run.port", 6, "not of type 'integer'", id="port-string"),
    pytest.param(_with("8080", "0"), "$.run.port", 6, "minimum of 1", id="port-zero"),
    pytest.param(_with("8080", "70000"), "$.run.port", 6, "maximum of 65535", id="port-too-big"),
    pytest.param(
        GOOD + "  path: mcp\n", "$.run.path", 7, "not a URL path starting with /", id="path-no-slash"
    ),
    pytest.param(
        GOOD + "  env: {1BAD: x}\n",
        "$.run.env",
        7,
        "'1BAD' is not an environment variable name",
        id="env-bad-name",
    ),
    pytest.param(
        GOOD + "  secrets: [api-key]\n",
        "$.run.secrets[0]",
        7,
        "not an environment variable",
        id="secret-bad-name",
    ),
    pytest.param(GOOD + "  secrets: [KEY, KEY]\n", "$.run.secrets", 7, "non-unique", id="secret-twice"),
    pytest.param(
        GOOD + "  secrets: [KEY, OTHER]\n",
        "$.run.secrets[1]",
        7,
        "secret OTHER is not granted to server 'srv' of repo 'central-mcp'",
        id="secret-not-granted",
    ),
    pytest.param(
        GOOD + "  secrets: [CENTRAL_MCP_ADMIN_TOKEN]\n",
        "$.run.secrets[0]",
        7,
        "CENTRAL_MCP_ADMIN_TOKEN is one of the provider's own credentials",
        id="secret-provider-variable",
    ),
    pytest.param(
        GOOD + "  secrets: [KEY]\nbuild: {args: {KEY: x}}\n",
        "$.build.args.KEY",
        8,
        "build arg KEY has the name of a secret of this server",
        id="build-arg-named-as-a-secret",
    ),
    pytest.param(
        GOOD + "build: {context: ../../..}\n",
        "$.build.context",
        7,
        "'..' that leads outside",
        id="context-escapes",
    ),
    pytest.param(
        GOOD + "build: {context: /etc}\n", "$.build.context", 7, "is an absolute path", id="context-absolute"
    ),
    pytest.param(
        GOOD + "build: {dockerfile: Dockerfile.prod}\n",
        "$.build.dockerfile",
        7,
        "no Dockerfile at servers/srv/Dockerfile.prod",
        id="named-dockerfile-missing",
    ),
    pytest.param(
        GOOD + "build: {dockerfile: ../../../Dockerfile}\n",
        "$.build.dockerfile",
        7,
        "'..' that leads outside",
        id="dockerfile-escapes",
    ),
    pytest.param(
        GOOD + "health: {timeout: soon}\n", "$.health.timeout", 7, "not a duration", id="bad-duration"
    ),
    pytest.param(
        GOOD + "resources: {memory: lots}\n", "$.resources.memory", 7, "not a size", id="memory-lots"
    ),
    pytest.param(
        GOOD + "resources: {memory: 1m}\n",
        "$.resources.memory",
        7,
        "below Docker's 6m minimum",
        id="memory-too-small",
    ),
    pytest.param(
        GOOD + "resources: {memory: 64g}\n",
        "$.resources.memory",
        7,
        "server 'srv' asks for memory '64g', more than this VM allows (2g, limits.memory in deploy.yaml)",
        id="memory-over-the-cap",
    ),
    pytest.param(GOOD + "resources: {cpus: 0}\n", "$.resources.cpus", 7, "minimum of 0", id="cpus-zero"),
    pytest.param(
        GOOD + "access: [demo, billing]\n",
        "$.access[1]",
        7,
        "unknown project 'billing'",
        id="unknown-project",
    ),
    pytest.param("", "$", 0, "file is empty", id="empty-file"),
    pytest.param("- name: srv\n", "$", 1, "must be a mapping", id="list-not-mapping"),
    pytest.param("name: srv\nname: srv\n", "$.name", 2, "duplicate key", id="duplicate-key"),
]


# A bad name always differs from folder `srv` too; a folder of the same name isolates the one fault.
FOLDERS = {"name-not-dns": "s_rv"}


@pytest.mark.parametrize("text, path, line, fragment", BAD)
def test_bad_manifest_is_located(
    tmp_path: Path, request: pytest.FixtureRequest, text: str, path: str, line: int, fragment: str
) -> None:
    """Each fault is reported once, with its file, JSON path, line, a message and a hint."""
    folder = FOLDERS.get(request.node.callspec.id, "srv")
    _server(tmp_path / "repo", folder, text)
    report = _check(tmp_path)
    assert not report.ok and report.manifests == ()
    [problem] = report.problems
    assert (problem.file, problem.path, problem.line) == (f"servers/{folder}/mcp-server.yaml", path, line)
    assert fragment in problem.message
    assert problem.hint


def test_a_server_grant_covers_only_that_server(tmp_path: Path) -> None:
    """A secret granted to one server of the repo passes for it and is refused, located, for another."""
    grant = settings.SecretGrant("ONE_KEY", ("srv",))
    repo = settings.Repo("central-mcp", secrets=(grant,))
    config = dataclasses.replace(_settings(tmp_path), repos=(repo,))
    text = GOOD + "  secrets: [ONE_KEY]\n"
    _server(tmp_path / "repo", "srv", text)
    _server(tmp_path / "repo", "other", text.replace("name: srv", "name: other"))
    report = manifest.check_tree(tmp_path / "repo", config, repo=repo)
    assert [m.name for m in report.manifests] == ["srv"]
    [problem] = report.problems
    assert (problem.file, problem.path) == ("servers/other/mcp-server.yaml", "$.run.secrets[0]")
    assert "{name: ONE_KEY, servers: [other]}" in problem.hint


def test_context_symlink_leaving_the_repo_is_refused(tmp_path: Path) -> None:
    """A context folder that is a symlink to outside the repository is refused as such."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "Dockerfile").write_text("FROM scratch\n")
    folder = _server(tmp_path / "repo", "srv", GOOD + "build: {context: ctx}\n")
    (folder / "ctx").symlink_to(outside, target_is_directory=True)
    [problem] = _check(tmp_path).problems
    assert (problem.path, problem.line) == ("$.build.context", 7)
    assert "symlink that leads outside" in problem.message


def test_missing_default_dockerfile_is_reported_at_the_name(tmp_path: Path) -> None:
    """Without a Dockerfile beside the manifest, the problem names the expected path."""
    _server(tmp_path / "repo", "srv", GOOD, dockerfile=False)
    [problem] = _check(tmp_path).problems
    assert (problem.path, problem.line) == ("$.name", 1)
    assert "no Dockerfile at servers/srv/Dockerfile" in problem.message


def test_a_manifest_that_links_out_of_the_repository_is_never_read(tmp_path: Path) -> None:
    """A manifest symlinked to a host file is refused without its content reaching any message."""
    (tmp_path / "host-secret.yaml").write_text("name: root-password-hunter2\n")
    where = _server(tmp_path / "repo", "srv", GOOD)
    (where / manifest.MANIFEST_NAME).unlink()
    (where / manifest.MANIFEST_NAME).symlink_to(tmp_path / "host-secret.yaml")
    [problem] = _check(tmp_path).problems
    assert (problem.file, problem.message) == (
        "servers/srv/mcp-server.yaml",
        "the manifest is a link out of the repository",
    )
    assert "hunter2" not in problem.render()


def test_a_costly_dockerignore_pattern_is_refused_naming_its_line(tmp_path: Path) -> None:
    """A .dockerignore pattern too costly to match is a located problem before anything builds."""
    where = _server(tmp_path / "repo", "srv", GOOD)
    (where / ".dockerignore").write_text("# fine\n*.pyc\n*a*a*a*a*b\n")
    [problem] = _check(tmp_path).problems
    assert (
        problem.message
        == "servers/srv/.dockerignore:3: more than 3 `*` in one path segment (too costly to match)"
    )


def test_a_buildkit_syntax_build_arg_is_refused_at_its_key(tmp_path: Path) -> None:
    """BUILDKIT_SYNTAX in build.args names a frontend image too: refused where it is written."""
    _server(tmp_path / "repo", "srv", GOOD + "build:\n  args: {BUILDKIT_SYNTAX: evil/frontend}\n")
    [problem] = _check(tmp_path).problems
    assert (problem.path, problem.line) == ("$.build.args.BUILDKIT_SYNTAX", 8)
    assert "frontend image" in problem.message


def test_context_at_the_repo_root_is_allowed(tmp_path: Path) -> None:
    """`context: ../..` from servers/<name> is the repository root itself, which is inside."""
    _server(tmp_path / "repo", "srv", GOOD + "build: {context: ../..}\n")
    (tmp_path / "repo" / "Dockerfile").write_text("FROM scratch\n")
    [server] = _check(tmp_path).manifests
    assert (tmp_path / "repo" / server.context).resolve() == (tmp_path / "repo").resolve()


def test_oversized_manifest_is_a_clean_size_problem(tmp_path: Path) -> None:
    """A 10 MB manifest is refused by size with one problem, not read into memory."""
    _server(tmp_path / "repo", "srv", GOOD + "#" * (10 * 1024 * 1024) + "\n")
    [problem] = _check(tmp_path).problems
    assert problem.file == "servers/srv/mcp-server.yaml"
    assert "the limit is 1048576" in problem.message


def test_every_fault_in_one_manifest_is_reported_in_line_order(tmp_path: Path) -> None:
    """A manifest with many faults lists all of them in one check, sorted by line."""
    text = (
        "colour: blue\nname: Bad_Name\nversion: 1.0\ntransport: stdio\n"
        "run:\n  port: 0\n  path: x\nresources: {cpus: 0}\n"
    )
    _server(tmp_path / "repo", "x", text)
    problems = _check(tmp_path).problems
    assert len(problems) == 8
    assert [p.line for p in problems] == sorted(p.line for p in problems)
    assert {p.path for p in problems} == {
        "$",
        "$.colour",
        "$.name",
        "$.version",
        "$.run",
        "$.run.port",
        "$.run.path",
        "$.resources.cpus",
    }


def test_read_raises_every_problem_at_once(tmp_path: Path) -> None:
    """read() raises one ConfigError carrying each fault of the file."""
    folder = _server(tmp_path / "repo", "srv", _with("8080", "0") + "colour: x\n")
    with pytest.raises(ConfigError) as caught:
        manifest.read(folder / manifest.MANIFEST_NAME, tmp_path / "repo", _settings(tmp_path))
    assert [p.path for p in caught.value.problems] == ["$.run.port", "$.colour"]


def test_a_folder_may_be_named_anything_the_server_name_comes_from_the_manifest(tmp_path: Path) -> None:
    """`PROJECT_airbnsearch/mcp-server.yaml` naming `airbnsearch` is valid: a folder needs no DNS label."""
    _server(tmp_path / "repo", "PROJECT_airbnsearch", _with("name: srv", "name: airbnsearch"), top=".")
    report = _check(tmp_path, globs=["*/mcp-server.yaml"])
    assert report.ok, report.problems
    [server] = report.manifests
    assert (server.name, server.folder, server.context) == (
        "airbnsearch",
        "PROJECT_airbnsearch",
        "PROJECT_airbnsearch",
    )


def test_same_name_in_two_folders_is_refused_naming_both_files(tmp_path: Path) -> None:
    """Two manifests named `b` under servers/a and servers/b: one duplicate, naming both files."""
    _server(tmp_path / "repo", "a", _with("name: srv", "name: b"))
    _server(tmp_path / "repo", "b", _with("name: srv", "name: b"))
    report = _check(tmp_path)
    assert [m.folder for m in report.manifests] == ["servers/a"]
    [problem] = report.problems
    assert (problem.file, problem.path) == ("servers/b/mcp-server.yaml", "$.name")
    assert problem.message == "server name 'b' is also used by servers/a/mcp-server.yaml"
    assert "servers/b/mcp-server.yaml" in problem.hint and "servers/a/mcp-server.yaml" in problem.hint


def test_same_name_under_two_manifest_globs_is_a_duplicate(tmp_path: Path) -> None:
    """The same server name found under two globbed trees is reported once, naming the first file."""
    _server(tmp_path / "repo", "srv", GOOD)
    _server(tmp_path / "repo", "srv", GOOD, top="more")
    report = _check(tmp_path, globs=["servers/*/mcp-server.yaml", "more/*/mcp-server.yaml"])
    assert [m.folder for m in report.manifests] == ["more/srv"]
    [problem] = report.problems
    assert (problem.file, problem.path) == ("servers/srv/mcp-server.yaml", "$.name")
    assert problem.message == "server name 'srv' is also used by more/srv/mcp-server.yaml"


def test_duplicate_name_is_located_at_the_name_line(tmp_path: Path) -> None:
    """The duplicate-name problem points at the `name:` line even when it is not line 1."""
    _server(tmp_path / "repo", "srv", "# the server\n" + GOOD)
    _server(tmp_path / "repo", "srv", GOOD, top="more")
    [problem] = _check(tmp_path, globs=["servers/*/mcp-server.yaml", "more/*/mcp-server.yaml"]).problems
    assert problem.line == 2


def test_discover_skips_git_folders_and_duplicates(tmp_path: Path) -> None:
    """discover returns each manifest once, sorted, never from inside .git."""
    root = tmp_path / "repo"
    _server(root, "b", GOOD)
    _server(root, "a", GOOD)
    _server(root, "x", GOOD, top=".git/servers")
    found = manifest.discover(root, ["servers/*/mcp-server.yaml", "*/*/mcp-server.yaml", ".git/**/*.yaml"])
    assert [p.relative_to(root).as_posix() for p in found] == [
        "servers/a/mcp-server.yaml",
        "servers/b/mcp-server.yaml",
    ]


def test_limits_memory_in_deploy_yaml_sets_the_cap(tmp_path: Path) -> None:
    """A manifest asking for more memory than deploy.yaml's limits.memory is refused naming both values."""
    config = tmp_path / "deploy.yaml"
    config.write_text("limits: {memory: 512m}\n")
    _server(tmp_path / "repo", "srv", GOOD + "resources: {memory: 768m}\n")
    report = manifest.check_tree(tmp_path / "repo", settings.load(config, env={}))
    [problem] = report.problems
    assert "memory '768m', more than this VM allows (512m, limits.memory" in problem.message
    _server(tmp_path / "repo", "srv", GOOD + "resources: {memory: 512m}\n")
    assert manifest.check_tree(tmp_path / "repo", settings.load(config, env={})).ok


def test_a_name_that_is_not_a_dns_label_gets_a_hint_that_is_not_circular(tmp_path: Path) -> None:
    """`name: PROJECT_other` is refused with an example of a good name, and the folder may stay as it is."""
    _server(tmp_path / "repo", "PROJECT_other", _with("name: srv", "name: PROJECT_other"), top=".")
    [problem] = _check(tmp_path, globs=["*/mcp-server.yaml"]).problems
    assert problem.path == "$.name" and "'project-other'" in problem.hint
    assert "folder keeps whatever name it has" in problem.hint


def test_network_and_host_services_are_read(tmp_path: Path) -> None:
    """run.network and run.host_services reach the Manifest (internal and none by default)."""
    plain = manifest.from_data({**_data(), "run": {"port": 8080}}, "servers/srv")
    assert (plain.network, plain.host_services) == ("internal", ())
    full = manifest.from_data(
        {**_data(), "run": {"port": 1, "network": "egress", "host_services": ["o"]}}, "s"
    )
    assert (full.network, full.host_services) == ("egress", ("o",))


def test_a_host_service_must_be_declared_and_granted_to_the_server(tmp_path: Path) -> None:
    """Naming an unknown host service, or one deploy.yaml grants to another server, is located."""
    _server(tmp_path / "repo", "srv", GOOD + "  host_services: [ollama, nope]\n")
    base = _settings(tmp_path)
    granted = settings.Settings(
        config_path=base.config_path,
        state_dir=base.state_dir,
        host_services=(settings.HostService("ollama", "127.0.0.1", 11434, ("other",)),),
    )
    report = manifest.check_tree(tmp_path / "repo", granted)
    messages = {p.path: p.message for p in report.problems}
    assert "does not grant host service 'ollama' to server 'srv'" in messages["$.run.host_services[0]"]
    assert "no host service named 'nope'" in messages["$.run.host_services[1]"]


def test_an_unknown_network_mode_is_refused(tmp_path: Path) -> None:
    """run.network is internal or egress; anything else is a located schema problem."""
    _server(tmp_path / "repo", "srv", GOOD + "  network: host\n")
    report = _check(tmp_path)
    assert [p.path for p in report.problems] == ["$.run.network"]


def _data() -> dict[str, object]:
    return {"name": "srv", "version": "1.0.0", "description": "d", "transport": "streamable-http"}


def test_scale_min_zero_with_idle_after_is_valid_and_kept_in_the_raw_manifest(tmp_path: Path) -> None:
    """`scale: {min: 0, idle_after: 10m}` passes and is stored with the release (idle.py reads it)."""
    _server(tmp_path / "repo", "srv", GOOD + "scale: {min: 0, idle_after: 10m}\n")
    report = _check(tmp_path)
    assert report.ok, report.problems
    assert report.manifests[0].raw["scale"] == {"min": 0, "idle_after": "10m"}


@pytest.mark.parametrize(
    ("scale", "path"),
    [
        ("{min: -1}", "$.scale.min"),
        ("{min: 0, idle_after: soon}", "$.scale.idle_after"),
        ("{idle: 1}", "$.scale.idle"),
    ],
)
def test_a_bad_scale_is_refused_at_its_path(tmp_path: Path, scale: str, path: str) -> None:
    """A negative min, a duration that is not one, or an unknown key is refused where it is."""
    _server(tmp_path / "repo", "srv", GOOD + f"scale: {scale}\n")
    report = _check(tmp_path)
    assert [p.path for p in report.problems] == [path], report.problems


def test_scale_max_below_min_is_refused_naming_both(tmp_path: Path) -> None:
    """`scale: {min: 3, max: 2}` is located at $.scale.max; min alone raises deploy.yaml's max with it."""
    _server(tmp_path / "repo", "srv", GOOD + "scale: {min: 3, max: 2}\n")
    [problem] = _check(tmp_path).problems
    assert problem.path == "$.scale.max" and "scale.max 2 below scale.min 3" in problem.message
    _server(tmp_path / "repo", "srv", GOOD + "scale: {min: 3}\n")
    report = _check(tmp_path)
    assert report.ok and report.manifests[0].scale == manifest.Scale(min=3)


def test_a_canary_rollout_is_parsed_and_the_default_stays_the_swap(tmp_path: Path) -> None:
    """`rollout: {strategy: canary, ...}` becomes a Rollout with its margins; no rollout is the swap."""
    _server(tmp_path / "repo", "srv", GOOD)
    assert _check(tmp_path).manifests[0].rollout == rolloutspec.SWAP
    assert not rolloutspec.SWAP.canary
    _server(
        tmp_path / "repo",
        "srv",
        GOOD
        + "rollout:\n  strategy: canary\n  steps: [5, 25, 100]\n  step_interval: 1s\n"
        + "  margins: {max_error_rate_increase: 0.1, max_p99_ratio: 3}\n"
        + "  min_requests: 4\n  on_insufficient: promote\n",
    )
    report = _check(tmp_path)
    assert report.ok, report.problems
    rollout = report.manifests[0].rollout
    assert rollout.canary and rollout.steps == (5, 25, 100) and rollout.step_interval == 1.0
    assert (rollout.max_error_rate_increase, rollout.max_p99_ratio, rollout.min_requests) == (0.1, 3.0, 4)
    assert rollout.on_insufficient is rolloutspec.OnInsufficient.PROMOTE


def test_canary_steps_that_do_not_rise_to_100_are_refused(tmp_path: Path) -> None:
    """Steps must rise, each once, and end at 100; an unknown strategy is a schema problem."""
    _server(tmp_path / "repo", "srv", GOOD + "rollout: {strategy: canary, steps: [50, 10]}\n")
    [problem] = _check(tmp_path).problems
    assert problem.path == "$.rollout.steps" and "end at 100" in problem.message
    _server(tmp_path / "repo", "srv", GOOD + "rollout: {strategy: blue-green}\n")
    [problem] = _check(tmp_path).problems
    assert problem.path == "$.rollout.strategy"
