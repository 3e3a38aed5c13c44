"""pipeline/config/serverjson.py (and build.package in manifest.py): what `check` says about servers
built from a published package, described by an mcp-server.yaml or by an official server.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.config import manifest, serverjson, settings
from pipeline.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "public"
PACKAGE = """name: time
version: 1.0.0
description: The time, from PyPI
transport: streamable-http
build:
  package: "pypi:mcp-server-time==2026.10.19"
run:
  port: 8080
"""


def _settings(tmp_path: Path, *grants: settings.SecretGrant) -> settings.Settings:
    """Settings of one repo granting `grants`."""
    return settings.Settings(
        config_path=tmp_path / "deploy.yaml",
        state_dir=tmp_path / "state",
        repos=(settings.Repo("central-mcp", secrets=grants),),
    )


def _write(root: Path, folder: str, name: str, text: str) -> Path:
    """Write `text` as root/servers/<folder>/<name>."""
    where = root / "servers" / folder
    where.mkdir(parents=True, exist_ok=True)
    (where / name).write_text(text)
    return where / name


def _check(tmp_path: Path, *grants: settings.SecretGrant) -> manifest.CheckReport:
    return manifest.check_tree(tmp_path, _settings(tmp_path, *grants))


def _fixture(name: str) -> dict[str, object]:
    data: dict[str, object] = json.loads((FIXTURES / name).read_text())
    return data


def test_a_package_manifest_needs_no_dockerfile(tmp_path: Path) -> None:
    """build.package alone passes check with no Dockerfile in the folder; the Manifest carries it."""
    _write(tmp_path, "time", manifest.MANIFEST_NAME, PACKAGE)
    report = _check(tmp_path)
    assert report.ok, [p.render() for p in report.problems]
    [server] = report.manifests
    assert server.package == "pypi:mcp-server-time==2026.10.19"
    assert server.package_spec is not None and server.package_spec.name == "mcp-server-time"


@pytest.mark.parametrize(
    ("package", "fragment"),
    [
        ("pypi:mcp-server-time>=2026.1", "asks for a range of versions"),
        ("pypi:mcp-server-time", "gives no version"),
        ("npm:@modelcontextprotocol/server-everything@^2026.8.31", "a range or a tag"),
        ("oci:ghcr.io/x/y:1", "unknown registry 'oci'"),
        ("npm:Bad Name@1.0.0", "not an npm package name"),
        ("pypi:--extra-index-url==1", "not a PyPI project name"),
    ],
)
def test_a_package_that_is_not_one_exact_version_is_located_at_build_package(
    tmp_path: Path, package: str, fragment: str
) -> None:
    """A range, a missing version, an unknown registry or a bad name is one problem at $.build.package,
    on its line, with a hint."""
    _write(
        tmp_path, "time", manifest.MANIFEST_NAME, PACKAGE.replace("pypi:mcp-server-time==2026.10.19", package)
    )
    [problem] = _check(tmp_path).problems
    assert (problem.path, problem.line) == ("$.build.package", 6)
    assert fragment in problem.message
    assert problem.hint


@pytest.mark.parametrize("extra", ["  dockerfile: Dockerfile\n", "  context: .\n", "  args: {A: b}\n"])
def test_a_package_and_a_dockerfile_together_are_refused(tmp_path: Path, extra: str) -> None:
    """build.package with build.context, dockerfile or args is one clear problem at $.build."""
    text = PACKAGE.replace("build:\n", "build:\n" + extra)
    folder = _write(tmp_path, "time", manifest.MANIFEST_NAME, text).parent
    (folder / "Dockerfile").write_text("FROM scratch\n")
    [problem] = _check(tmp_path).problems
    assert problem.path == "$.build"
    assert "cannot be combined" in problem.message
    assert "keep build.package alone" in problem.hint


def test_run_args_go_with_a_package_and_never_with_run_command(tmp_path: Path) -> None:
    """run.args follow the package's entry command; with run.command too they are refused."""
    _write(tmp_path, "ok", manifest.MANIFEST_NAME, PACKAGE + "  args: [--local-timezone, UTC]\n")
    both = PACKAGE.replace("name: time", "name: both") + "  args: [x]\n  command: [mcp-server-time]\n"
    _write(tmp_path, "both", manifest.MANIFEST_NAME, both)
    report = _check(tmp_path)
    [problem] = report.problems
    assert (problem.file, problem.path) == ("servers/both/mcp-server.yaml", "$.run.args")
    [server] = report.manifests
    assert server.args == ("--local-timezone", "UTC")


def test_run_args_without_a_package_are_refused(tmp_path: Path) -> None:
    """A Dockerfile server has no package entry command for run.args to follow."""
    text = PACKAGE.replace('  package: "pypi:mcp-server-time==2026.10.19"\n', "  dockerfile: Dockerfile\n")
    folder = _write(tmp_path, "time", manifest.MANIFEST_NAME, text + "  args: [x]\n").parent
    (folder / "Dockerfile").write_text("FROM central-mcp/python:3.11\n")
    [problem] = _check(tmp_path).problems
    assert problem.path == "$.run.args"


def test_the_official_example_with_a_package_reads_as_a_manifest(tmp_path: Path) -> None:
    """The registry's with-package example: its npm package is build.package, its named argument follows
    the entry command, its granted secret is run.secrets, and our defaults fill the rest."""
    shutil.copy(FIXTURES / "mcp-server-json-example-with-package.json", tmp_path / "server.json")
    _write(tmp_path, "weather", "x", "")  # an unrelated file; the glob below finds server.json
    folder = tmp_path / "servers" / "weather"
    shutil.move(tmp_path / "server.json", folder / "server.json")
    report = _check(tmp_path, settings.SecretGrant("API_KEY", ("local-weather",)))
    assert report.ok, [p.render() for p in report.problems]
    [server] = report.manifests
    assert server.name == "local-weather"
    assert server.package == "npm:@modelcontextprotocol/server-weather@1.0.0"
    assert (server.transport, server.port, server.path) == ("stdio", serverjson.DEFAULT_PORT, "/mcp")
    assert server.args == (
        "--port",
        "8080",
    )  # the positional with only a valueHint (not required) is left out
    assert server.secrets == ("API_KEY",)
    assert server.access == ("all",)
    assert server.folder == "servers/weather"


def test_a_secret_server_json_variable_must_be_granted(tmp_path: Path) -> None:
    """An isSecret, isRequired variable not granted in deploy.yaml is located at its name, with the fix."""
    _write(
        tmp_path,
        "weather",
        "server.json",
        (FIXTURES / "mcp-server-json-example-with-package.json").read_text(),
    )
    [problem] = _check(tmp_path).problems
    assert problem.path == "$.packages[0].environmentVariables[0].name"
    assert "secret API_KEY is not granted to server 'local-weather'" in problem.message
    assert "central-mcp secret set API_KEY" in problem.hint


def test_latest_is_refused_by_the_official_schema(tmp_path: Path) -> None:
    """The registry's own invalid example (version 'latest') is refused at its version."""
    _write(
        tmp_path,
        "bad",
        "server.json",
        (FIXTURES / "mcp-server-json-invalid-package-version-latest.json").read_text(),
    )
    problems = _check(tmp_path).problems
    assert [p.path for p in problems] == ["$.packages[0].version"]


def test_a_server_json_with_no_buildable_package_says_what_it_has(tmp_path: Path) -> None:
    """The GitHub server.json (an oci package and a remote) names the registry types it found."""
    text = (FIXTURES / "mcp-server-json-github-mcp-server.json").read_text()
    _write(tmp_path, "github", "server.json", text)
    [problem] = _check(tmp_path).problems
    assert problem.path == "$.packages"
    assert "registry types: oci" in problem.message


def test_a_range_in_server_json_is_refused_at_the_package_version(tmp_path: Path) -> None:
    """A server.json package version that is a range fails like build.package does."""
    data = _fixture("mcp-server-json-example-with-package.json")
    data["packages"][0]["version"] = "^1.0.0"  # type: ignore[index]
    data["packages"][0]["environmentVariables"] = []  # type: ignore[index]
    _write(tmp_path, "w", "server.json", json.dumps(data, indent=2))
    [problem] = _check(tmp_path).problems
    assert problem.path == "$.packages[0].version"
    assert "a range or a tag" in problem.message


def test_an_mcp_server_yaml_beside_server_json_wins(tmp_path: Path) -> None:
    """A folder holding both is described by its mcp-server.yaml; server.json is not read."""
    _write(tmp_path, "time", manifest.MANIFEST_NAME, PACKAGE)
    _write(tmp_path, "time", "server.json", "{ not json")
    found = manifest.discover(tmp_path, settings.DEFAULT_MANIFESTS)
    assert [p.name for p in found] == [manifest.MANIFEST_NAME]
    assert _check(tmp_path).ok


def test_a_server_json_name_that_makes_no_dns_label_is_refused(tmp_path: Path) -> None:
    """io.github.x/___ gives no server name: located at $.name, pointing at mcp-server.yaml."""
    data = _fixture("mcp-server-json-example-with-package.json")
    data["name"] = "io.github.user/___"
    data["packages"][0]["environmentVariables"] = []  # type: ignore[index]
    _write(tmp_path, "w", "server.json", json.dumps(data))
    [problem] = _check(tmp_path).problems
    assert problem.path == "$.name"
    assert "mcp-server.yaml" in problem.hint


def test_environment_values_arguments_and_variables_are_filled_in(tmp_path: Path) -> None:
    """Plain variables become run.env (value or default, {vars} filled), a required positional without a
    value is refused, and runtimeArguments for npx are ignored."""
    data = _fixture("mcp-server-json-example-with-package.json")
    package = data["packages"][0]  # type: ignore[index]
    package["environmentVariables"] = [
        {"name": "LOG_LEVEL", "default": "info"},
        {"name": "URL", "value": "https://{host}/x", "variables": {"host": {"default": "example.com"}}},
        {"name": "OPTIONAL_KEY", "isSecret": True},
    ]
    package["runtimeArguments"] = [{"type": "named", "name": "-y"}]
    _write(tmp_path, "w", "server.json", json.dumps(data))
    [server] = _check(tmp_path).manifests
    assert dict(server.env) == {"LOG_LEVEL": "info", "URL": "https://example.com/x"}
    assert server.secrets == ()  # optional and not granted: left out
    package["packageArguments"][0]["isRequired"] = True
    package["runtimeHint"] = "docker"
    _write(tmp_path, "w", "server.json", json.dumps(data))
    problems = _check(tmp_path).problems
    assert {p.path for p in problems} == {
        "$.packages[0].runtimeArguments",
        "$.packages[0].packageArguments[0]",
    }


def test_read_of_a_bad_server_json_raises_every_problem(tmp_path: Path) -> None:
    """manifest.read raises ConfigError for a server.json as for a manifest."""
    file = _write(tmp_path, "bad", "server.json", '{"name": "x"}')
    with pytest.raises(ConfigError) as caught:
        manifest.read(file, tmp_path, _settings(tmp_path))
    assert {p.path for p in caught.value.problems} == {"$", "$.name"}  # two required keys missing; a bad name


def test_the_readme_package_example_passes_check(tmp_path: Path) -> None:
    """The README's build.package example is a valid manifest: a stdio package needs no run.command."""
    from tests.support.readme import yaml_example

    _write(tmp_path, "time", manifest.MANIFEST_NAME, yaml_example("Servers from a published package"))
    report = _check(tmp_path)
    assert not report.problems, [p.render() for p in report.problems]
