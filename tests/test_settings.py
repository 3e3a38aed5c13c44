"""pipeline/config/settings.py: deploy.yaml read, validated and frozen into one Settings object."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.config import settings
from pipeline.errors import ConfigError, Problem

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    """Write `text` as tmp_path/deploy.yaml and return its path."""
    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    return path


def _problems(tmp_path: Path, text: str) -> list[Problem]:
    """Load `text` as deploy.yaml, expect it refused, and return every problem."""
    with pytest.raises(ConfigError) as caught:
        settings.load(_write(tmp_path, text), env={})
    return caught.value.problems


def test_missing_deploy_yaml_gives_the_defaults(tmp_path: Path) -> None:
    """Without a deploy.yaml every value is its named default, state beside the config path."""
    loaded = settings.load(tmp_path / "deploy.yaml", env={})
    assert (loaded.host, loaded.port) == (settings.DEFAULT_HOST, settings.DEFAULT_PORT)
    assert loaded.state_dir == tmp_path / settings.DEFAULT_STATE_DIR
    assert loaded.repo().name == "central-mcp"
    assert loaded.repo().manifests == settings.DEFAULT_MANIFESTS
    assert loaded.proxy.keepalive == settings.DEFAULT_KEEPALIVE
    assert loaded.proxy.session_idle_timeout == settings.DEFAULT_SESSION_IDLE_TIMEOUT
    assert loaded.projects == ()
    assert loaded.base_url == "http://127.0.0.1:8900"


def test_the_repository_deploy_yaml_loads() -> None:
    """The deploy.yaml shipped in the repo is valid and its durations are converted to seconds."""
    loaded = settings.load(REPO / "deploy.yaml", env={})
    assert loaded.port == 8900
    assert loaded.proxy.deploy_timeout == 300.0
    assert loaded.proxy.keepalive == 20.0
    assert loaded.retention.deploy_max_age == 90 * 86400.0
    assert loaded.project("demo") is not None
    assert loaded.build_network == "none"


def test_state_dir_environment_variable_overrides_the_file(tmp_path: Path) -> None:
    """CENTRAL_MCP_STATE_DIR, passed as env, wins over state_dir in deploy.yaml."""
    path = _write(tmp_path, "state_dir: from-file\n")
    override = tmp_path / "elsewhere"
    loaded = settings.load(path, env={settings.STATE_DIR_ENV: str(override)})
    assert loaded.state_dir == override


def test_relative_state_dir_resolves_against_the_config_folder(tmp_path: Path) -> None:
    """A relative state_dir is taken from deploy.yaml's folder, not the working directory."""
    loaded = settings.load(_write(tmp_path, "state_dir: st\n"), env={})
    assert loaded.state_dir == (tmp_path / "st").resolve()


@pytest.mark.parametrize(("given", "seconds"), [("90s", 90.0), ("2h", 7200.0), ("0", 0.0)])
def test_session_idle_timeout_is_read_from_the_proxy_section(
    tmp_path: Path, given: str, seconds: float
) -> None:
    """`proxy.session_idle_timeout` is a duration; 0 turns expiry off."""
    loaded = settings.load(_write(tmp_path, f"proxy: {{session_idle_timeout: '{given}'}}\n"), env={})
    assert loaded.proxy.session_idle_timeout == seconds


def test_settings_is_frozen(tmp_path: Path) -> None:
    """Settings cannot be changed once built."""
    loaded = settings.load(tmp_path / "deploy.yaml", env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.port = 1  # type: ignore[misc]


def test_repo_lookup_names_the_known_repos(tmp_path: Path) -> None:
    """Asking for an unknown repo raises ConfigError listing the repos that exist."""
    loaded = settings.load(_write(tmp_path, "repos: [{name: a}, {name: b}]\n"), env={})
    assert loaded.repo("b").name == "b"
    with pytest.raises(ConfigError, match="known repos: a, b"):
        loaded.repo("c")


def test_project_access_honours_all_and_named_servers(tmp_path: Path) -> None:
    """A project reaches every server with `all`, otherwise only the servers it names."""
    text = "projects:\n  - {name: wide, servers: [all]}\n  - {name: narrow, servers: [one]}\n"
    loaded = settings.load(_write(tmp_path, text), env={})
    wide, narrow = loaded.project("wide"), loaded.project("narrow")
    assert wide is not None and narrow is not None
    assert wide.may_use("anything")
    assert narrow.may_use("one") and not narrow.may_use("two")
    assert loaded.project("missing") is None


def test_project_tool_selection_allows_then_denies_by_server_tool_glob(tmp_path: Path) -> None:
    """`tools: {allow, deny}` selects what the aggregate offers: a bare server name means all its
    tools, globs match `server:tool`, and deny wins over allow."""
    text = "projects:\n  - name: p\n    tools: {allow: [fs, 'git:log*'], deny: ['fs:write*']}\n"
    project = settings.load(_write(tmp_path, text), env={}).project("p")
    assert project is not None
    assert project.may_call("fs", "read") and not project.may_call("fs", "write_file")
    assert project.may_call("git", "log_one") and not project.may_call("git", "push")
    assert not project.may_call("other", "read")
    assert settings.Project("open").may_call("any", "tool")


def test_a_tool_pattern_with_a_space_is_refused_naming_where(tmp_path: Path) -> None:
    """A `projects[].tools` pattern that no `server:tool` can match is a config problem at its path."""
    problems = _problems(tmp_path, "projects:\n  - name: p\n    tools: {deny: ['fs: write']}\n")
    assert any("$.projects[0].tools.deny[0]" in p.render() for p in problems), problems


def test_webhook_and_rate_limits_are_read(tmp_path: Path) -> None:
    """A repo's webhook and a project's rate limit land in their frozen values."""
    text = (
        "public_url: https://mcp.example.com/\n"
        "repos:\n  - name: r\n    clone_url: https://git.example.com/o/r.git\n"
        "    webhook: {provider: gitea, secret_env: HOOK_SECRET}\n"
        "projects:\n  - {name: p, rate_limit: {per_minute: 10, burst: 2}}\n"
    )
    loaded = settings.load(_write(tmp_path, text), env={})
    assert loaded.repo().webhook == settings.Webhook("gitea", "HOOK_SECRET")
    assert loaded.projects[0] == settings.Project("p", per_minute=10, burst=2)
    assert loaded.base_url == "https://mcp.example.com"


def test_secret_grants_are_read(tmp_path: Path) -> None:
    """A plain name is granted to every server of its repo; {name, servers} only to those servers."""
    text = "repos:\n  - name: r\n    secrets: [ALL_KEY, {name: ONE_KEY, servers: [a, b]}]\n"
    repo = settings.load(_write(tmp_path, text), env={}).repo()
    assert repo.secrets == (settings.SecretGrant("ALL_KEY"), settings.SecretGrant("ONE_KEY", ("a", "b")))
    assert repo.granted("a") == {"ALL_KEY", "ONE_KEY"}
    assert repo.granted("c") == {"ALL_KEY"}


def test_credential_names_are_every_env_name_deploy_yaml_reads_a_credential_from(tmp_path: Path) -> None:
    """Webhook secrets, fetch tokens and the admin token's variable are the provider's credentials."""
    text = (
        "admin_token_env: ADMIN\nrepos:\n  - name: r\n"
        "    webhook: {provider: github, secret_env: HOOK, token_env: FETCH}\n"
    )
    loaded = settings.load(_write(tmp_path, text), env={"ADMIN": "a"})
    assert loaded.credential_names() == {"ADMIN", "HOOK", "FETCH"}


BAD_CONFIGS = [
    pytest.param(
        "repos:\n  - name: r\n    webhook: {provider: gitlab, secret_env: S}\n",
        "$.repos[0].webhook",
        3,
        "a gitlab webhook needs repos[0].clone_url",
        id="gitlab-webhook-without-clone-url",
    ),
    pytest.param(
        "listen: {port: 8900}\nbogus: 1\n", "$.bogus", 2, "unknown key 'bogus'", id="unknown-top-level-key"
    ),
    pytest.param(
        "proxy:\n  drain_timeout: 30s\n  drian: 1\n",
        "$.proxy.drian",
        3,
        "unknown key 'drian'",
        id="unknown-nested-key",
    ),
    pytest.param(
        "listen:\n  port: '8900'\n", "$.listen.port", 2, "not of type 'integer'", id="port-as-string"
    ),
    pytest.param("listen:\n  port: 70000\n", "$.listen.port", 2, "maximum of 65535", id="port-out-of-range"),
    pytest.param("proxy:\n  drain_timeout: soon\n", "$.proxy.drain_timeout", 2, "'soon'", id="bad-duration"),
    pytest.param(
        "proxy:\n  keepalive: 30s\n", "$.proxy.keepalive", 2, "longer than 25s", id="keepalive-over-25s"
    ),
    pytest.param(
        "repos:\n  - name: a\n  - name: a\n", "$.repos[1].name", 3, "duplicate repo 'a'", id="duplicate-repo"
    ),
    pytest.param(
        "projects:\n  - name: p\n  - name: p\n",
        "$.projects[1].name",
        3,
        "duplicate project 'p'",
        id="duplicate-project",
    ),
    pytest.param(
        "repos:\n  - name: a\n    webhook: {provider: bitbucket, secret_env: X}\n",
        "$.repos[0].webhook.provider",
        3,
        "'bitbucket' is not one of",
        id="bad-webhook-provider",
    ),
    pytest.param(
        "public_url: mcp.example.com\n",
        "$.public_url",
        1,
        "not an http(s) URL",
        id="public-url-without-scheme",
    ),
    pytest.param(
        "build:\n  network: bridge\n", "$.build.network", 2, "'bridge' is not one of", id="bad-build-network"
    ),
    pytest.param(
        "retention:\n  images_per_server: 1\n",
        "$.retention.images_per_server",
        2,
        "minimum of 2",
        id="too-few-images-kept",
    ),
    pytest.param('containers:\n  user: "0:0"\n', "$.containers.user", 2, "non-root uid:gid", id="root-user"),
    pytest.param(
        'containers:\n  user: "1000:0"\n', "$.containers.user", 2, "non-root uid:gid", id="root-group"
    ),
    pytest.param("containers:\n  user: nobody\n", "$.containers.user", 2, "non-root uid:gid", id="user-name"),
    pytest.param("limits:\n  memory: lots\n", "$.limits.memory", 2, "not a size", id="limits-memory"),
    pytest.param("- listen\n", "$", 1, "must be a mapping", id="list-instead-of-mapping"),
    pytest.param(
        "admin_token_env: ADMIN\nrepos:\n  - name: r\n    secrets: [A, ADMIN]\n",
        "$.repos[0].secrets[1]",
        4,
        "'ADMIN' is the name of one of the provider's own credentials",
        id="grant-of-the-admin-token",
    ),
    pytest.param(
        "repos:\n  - name: r\n    webhook: {provider: github, secret_env: HOOK}\n"
        "    secrets: [{name: HOOK, servers: [s]}]\n",
        "$.repos[0].secrets[0]",
        4,
        "'HOOK' is the name of one of the provider's own credentials",
        id="grant-of-a-webhook-secret",
    ),
    pytest.param(
        "repos:\n  - name: r\n    secrets: [CENTRAL_MCP_X]\n",
        "$.repos[0].secrets[0]",
        3,
        "CENTRAL_MCP_*",
        id="grant-of-a-provider-variable",
    ),
    pytest.param(
        "repos:\n  - name: r\n    secrets: [not-a-name]\n",
        "$.repos[0].secrets[0]",
        3,
        "not-a-name",
        id="grant-of-a-bad-name",
    ),
]


@pytest.mark.parametrize("text, path, line, fragment", BAD_CONFIGS)
def test_bad_deploy_yaml_is_located(tmp_path: Path, text: str, path: str, line: int, fragment: str) -> None:
    """Each fault is reported with its file, JSON path, line and a message naming what is wrong."""
    problems = _problems(tmp_path, text)
    assert any(p.path == path and p.line == line and fragment in p.message for p in problems), problems
    assert all(p.file == str(tmp_path / "deploy.yaml") for p in problems)
    assert all(p.hint for p in problems)


def test_every_fault_in_deploy_yaml_is_reported_at_once(tmp_path: Path) -> None:
    """Several independent faults come back together, one problem each, in file order."""
    text = "bogus: 1\nlisten:\n  port: 0\npublic_url: ftp://x\n"
    problems = _problems(tmp_path, text)
    assert [p.path for p in problems] == ["$.bogus", "$.listen.port", "$.public_url"]


@pytest.mark.parametrize(
    "text, path",
    [("proxy: 5\n", "$.proxy"), ("proxy: [1]\n", "$.proxy"), ("repos: 5\n", "$.repos")],
    ids=["proxy-int", "proxy-list", "repos-int"],
)
def test_section_of_the_wrong_type_is_a_config_error(tmp_path: Path, text: str, path: str) -> None:
    """A section that is not the mapping or list it should be is reported, not a crash."""
    problems = _problems(tmp_path, text)
    assert [p.path for p in problems] == [path]


def test_keepalive_is_checked_even_when_another_fault_exists(tmp_path: Path) -> None:
    """A too-long keep-alive is reported alongside a duplicate repo, not hidden behind it."""
    text = "repos:\n  - name: a\n  - name: a\nproxy:\n  keepalive: 60s\n"
    problems = _problems(tmp_path, text)
    assert {p.path for p in problems} == {"$.repos[1].name", "$.proxy.keepalive"}


def test_proxy_caps_and_client_timeouts_are_read_with_units(tmp_path: Path) -> None:
    """The proxy's caps take sizes and its client timeouts durations; unset ones are the named defaults."""
    path = _write(
        tmp_path,
        "proxy:\n  max_body: 1MiB\n  max_header: 16k\n  max_url: 4KiB\n  header_timeout: 5s\n"
        "  body_timeout: 500ms\n  send_timeout: 2m\n  max_connections: 50\n  max_upstream_header: 32k\n",
    )
    proxy = settings.load(path, env={}).proxy
    assert (proxy.max_body, proxy.max_header, proxy.max_url) == (1 << 20, 16 * 1024, 4096)
    assert (proxy.header_timeout, proxy.body_timeout, proxy.send_timeout) == (5.0, 0.5, 120.0)
    assert (proxy.max_connections, proxy.max_upstream_header) == (50, 32 * 1024)
    assert proxy.max_handshake == settings.DEFAULT_MAX_HANDSHAKE


def test_a_proxy_cap_that_is_not_a_size_is_refused(tmp_path: Path) -> None:
    """`max_header: lots` is refused at its JSON path, as any malformed size is."""
    problems = _problems(tmp_path, "proxy:\n  max_header: lots\n")
    assert [p.path for p in problems] == ["$.proxy.max_header"]


def test_the_aggregate_section_is_read_with_units_and_defaults_unchanged(tmp_path: Path) -> None:
    """`aggregate:` gives /mcp's per-key caps, what it holds of one answer and its own timeouts; left
    out, each is the value the aggregate used before it was a setting (4MiB, 30s, 30s, 10s)."""
    defaults = settings.load(tmp_path / "deploy.yaml", env={}).aggregate
    assert (defaults.max_held, defaults.upstream_timeout) == (4 * 1024 * 1024, 30.0)
    assert (defaults.list_timeout, defaults.list_retry_after) == (30.0, 10.0)
    path = _write(
        tmp_path,
        "aggregate:\n  max_sessions_per_key: 3\n  max_streams_per_key: 2\n  max_held: 64k\n"
        "  upstream_timeout: 500ms\n  list_timeout: 2s\n  list_retry_after: 1m\n",
    )
    loaded = settings.load(path, env={}).aggregate
    assert (loaded.max_sessions_per_key, loaded.max_streams_per_key, loaded.max_held) == (3, 2, 64 * 1024)
    assert (loaded.upstream_timeout, loaded.list_timeout, loaded.list_retry_after) == (0.5, 2.0, 60.0)
    problems = _problems(tmp_path, "aggregate:\n  max_streams_per_key: 0\n  list_timeout: soon\n")
    assert sorted(p.path for p in problems) == ["$.aggregate.list_timeout", "$.aggregate.max_streams_per_key"]


@pytest.mark.parametrize(
    "name", ["owner/PROJECTS_all", "Owner.Name/Repo-2", "group/sub/project", "central-mcp"]
)
def test_repo_names_may_carry_an_owner_and_mixed_case(tmp_path: Path, name: str) -> None:
    """Repo names as GitHub and GitLab spell them load, and every path derived from them stays put."""
    from pipeline.hook import repo_path
    from pipeline.webhook import mirror_path

    loaded = settings.load(_write(tmp_path, f"repos:\n  - name: {name}\n"), env={})
    repo = loaded.repo(name)
    for path, parent in (
        (repo_path(loaded, repo.name), loaded.state_dir / "repos"),
        (mirror_path(loaded, repo), loaded.state_dir / "mirrors"),
    ):
        assert path.resolve().is_relative_to(parent) and path.name.endswith(".git")


@pytest.mark.parametrize(
    "name",
    ["../etc", "owner/../../x", "/abs", "-upload", "owner//x", "owner/", "a b", "x;rm", ".hidden", "o/.git"],
)
def test_repo_names_that_could_leave_their_folder_or_reach_a_shell_are_refused(
    tmp_path: Path, name: str
) -> None:
    """A name with `..`, a leading `/`, `-` or `.`, an empty part, a space or a shell character is refused."""
    [problem] = _problems(tmp_path, f"repos:\n  - name: {name!r}\n")
    assert problem.path == "$.repos[0].name"


def _listen(tmp_path: Path, text: str, listen: settings.Listen) -> tuple[settings.Settings, list[str]]:
    """deploy.yaml `text` with serve's overrides `listen` applied."""
    return settings.listening(settings.load(_write(tmp_path, text), env={}), listen)


def test_serve_port_moves_the_derived_public_url_with_it(tmp_path: Path) -> None:
    """Without a public_url, `serve --port N` makes every link (base_url) point at port N."""
    moved, warnings = _listen(tmp_path, "listen: {port: 8900}\n", settings.Listen(port=9123))
    assert (moved.port, moved.base_url, warnings) == (9123, "http://127.0.0.1:9123", [])


def test_a_public_url_naming_the_listen_address_follows_the_override(tmp_path: Path) -> None:
    """A public_url that is the configured listen address itself follows --host/--port."""
    text = "listen: {port: 8900}\npublic_url: http://localhost:8900/\n"
    moved, warnings = _listen(tmp_path, text, settings.Listen(port=9123))
    assert (moved.base_url, warnings) == ("http://localhost:9123", [])


def test_a_public_url_of_a_front_is_kept_with_a_loud_warning(tmp_path: Path) -> None:
    """A public_url of a TLS front stays (it may proxy to any port), but serve says so; --public-url wins."""
    text = "listen: {port: 8900}\npublic_url: https://mcp.example.com\n"
    kept, [warning] = _listen(tmp_path, text, settings.Listen(port=9123))
    assert kept.base_url == "https://mcp.example.com"
    assert "http://127.0.0.1:9123" in warning and "--public-url" in warning
    given, warnings = _listen(tmp_path, text, settings.Listen(port=9123, public_url="http://10.0.0.5:9123/"))
    assert (given.base_url, warnings) == ("http://10.0.0.5:9123", [])
    same, warnings = _listen(tmp_path, text, settings.Listen())
    assert (same.base_url, warnings) == ("https://mcp.example.com", [])


def test_network_and_host_services_are_read(tmp_path: Path) -> None:
    """The pool, subnet size, deny list, relay bounds and host services with their grants."""
    loaded = settings.load(
        _write(
            tmp_path,
            "network: {pool: 10.99.0.0/20, subnet_prefix: 29, egress_deny: [169.254.0.0/16],\n"
            "          relay: {max_connections: 8, idle_timeout: 30s}}\n"
            "host_services: {ollama: {address: 'localhost:11434', servers: [xray]}}\n",
        ),
        env={},
    )
    assert loaded.network == settings.NetworkConfig("10.99.0.0/20", 29, ("169.254.0.0/16",), 8, 30.0)
    assert loaded.host_services == (settings.HostService("ollama", "127.0.0.1", 11434, ("xray",)),)
    ollama = loaded.host_service("ollama")
    assert ollama is not None and ollama.grants("xray") and not ollama.grants("other")


@pytest.mark.parametrize(
    "text, path, fragment",
    [
        ("network: {pool: 10.213.0.1/16}\n", "$.network.pool", "not an IPv4 network"),
        ("network: {pool: 10.213.0.0/28, subnet_prefix: 28}\n", "$.network.subnet_prefix", "not smaller"),
        ("network: {egress_deny: [169.254.0.0/33]}\n", "$.network.egress_deny[0]", "not an IPv4 network"),
        (
            "host_services: {o: {address: '127.0.0.1:99999', servers: [a]}}\n",
            "$.host_services.o.address",
            "port",
        ),
        ("host_services: {o: {address: '127.0.0.1:1'}}\n", "$.host_services.o", "servers"),
        (
            "host_services: {a: {address: '127.0.0.1:1', servers: []},\n"
            "                b: {address: '127.0.0.2:1', servers: []}}\n",
            "$.host_services.b.address",
            "also 'a'",
        ),
    ],
)
def test_bad_network_settings_are_located(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    """A malformed pool, prefix, deny entry or host service is refused at its JSON path."""
    problems = _problems(tmp_path, text)
    assert any(p.path == path and fragment in p.message for p in problems), problems


def test_remotes_section_is_read_with_its_ca_file_next_to_deploy_yaml(tmp_path: Path) -> None:
    """remotes.allow_hosts are kept lowercase without a trailing dot; ca_file resolves beside deploy.yaml."""
    (tmp_path / "ca.pem").write_text("")
    text = "remotes:\n  allow_hosts: [Stand-In.test., 127.0.0.1]\n  ca_file: ca.pem\n  connect_timeout: 2s\n"
    loaded = settings.load(_write(tmp_path, text), env={})
    assert loaded.remotes.allow_hosts == ("stand-in.test", "127.0.0.1")
    assert loaded.remotes.ca_file == (tmp_path / "ca.pem").resolve()
    assert loaded.remotes.connect_timeout == 2.0
    assert loaded.remotes.allows("STAND-IN.test")


def test_a_missing_remotes_ca_file_is_refused_at_its_key(tmp_path: Path) -> None:
    """A ca_file that is not there is named at $.remotes.ca_file, not found at the first remote call."""
    [problem] = _problems(tmp_path, "remotes:\n  ca_file: nowhere.pem\n")
    assert (problem.path, problem.message) == ("$.remotes.ca_file", "no CA file at 'nowhere.pem'")


def test_idle_section_is_read_with_units_and_defaults(tmp_path: Path) -> None:
    """`idle:` gives the default idle_after, the job's interval, the wake's hold and retry pause."""
    loaded = settings.load(_write(tmp_path, "idle: {after: 5m, wake_timeout: 10s}\n"), env={})
    assert loaded.idle == settings.IdleConfig(
        after=300.0,
        check_interval=settings.DEFAULT_IDLE_CHECK_INTERVAL,
        wake_timeout=10.0,
        retry_after=settings.DEFAULT_WAKE_RETRY_AFTER,
    )
    assert settings.load(tmp_path / "none.yaml", env={}).idle.after == settings.DEFAULT_IDLE_AFTER
    [problem] = _problems(tmp_path, "idle: {after: soon}\n")
    assert problem.path == "$.idle.after"
