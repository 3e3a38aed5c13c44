"""pipeline/config/manifest.py: `remote:` manifests, and how `check` explains their mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import manifest, settings

REMOTE = """name: weather
version: 1.0.0
description: A remote server
transport: streamable-http
remote:
  url: {url}
  headers:
    Authorization: {{secret: WEATHER_TOKEN}}
    X-Client: central-mcp
"""


def _settings(tmp_path: Path, allow: tuple[str, ...] = ()) -> settings.Settings:
    """Settings granting WEATHER_TOKEN to the whole repo, allowing `allow` as remote hosts."""
    return settings.Settings(
        config_path=tmp_path / "deploy.yaml",
        state_dir=tmp_path / "state",
        repos=(settings.Repo("central-mcp", secrets=(settings.SecretGrant("WEATHER_TOKEN"),)),),
        remotes=settings.RemotesConfig(allow_hosts=allow),
    )


def _check(tmp_path: Path, text: str, allow: tuple[str, ...] = ()) -> manifest.CheckReport:
    """Write `text` as servers/weather/mcp-server.yaml (no Dockerfile) and check the tree."""
    folder = tmp_path / "repo" / "servers" / "weather"
    folder.mkdir(parents=True)
    (folder / manifest.MANIFEST_NAME).write_text(text)
    return manifest.check_tree(tmp_path / "repo", _settings(tmp_path, allow))


def _messages(report: manifest.CheckReport) -> list[tuple[str, str]]:
    """Each problem as (JSON path, message)."""
    return [(p.path, p.message) for p in report.problems]


def test_a_remote_manifest_needs_no_build_and_no_run(tmp_path: Path) -> None:
    """A remote manifest passes with no Dockerfile, and carries its URL, literal and secret headers."""
    report = _check(tmp_path, REMOTE.format(url="https://weather.example.com/mcp"))
    assert report.ok, report.problems
    [server] = report.manifests
    assert server.remote == manifest.Remote(
        "https://weather.example.com/mcp", {"X-Client": "central-mcp"}, {"Authorization": "WEATHER_TOKEN"}
    )
    assert server.remote.host == "weather.example.com"


def test_a_remote_without_https_is_refused_outside_loopback(tmp_path: Path) -> None:
    """http:// to a public name is refused at remote.url, saying the secret would cross in clear."""
    report = _check(tmp_path, REMOTE.format(url="http://weather.example.com/mcp"))
    [(path, message)] = _messages(report)
    assert path == "$.remote.url"
    assert "not https" in message


def test_plain_http_on_an_allowed_loopback_host_is_accepted(tmp_path: Path) -> None:
    """http://127.0.0.1 passes when deploy.yaml allows that host (a test's stand-in remote)."""
    report = _check(tmp_path, REMOTE.format(url="http://127.0.0.1:9/mcp"), allow=("127.0.0.1",))
    assert report.ok, report.problems


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("https://127.0.0.1/mcp", "loopback"),
        ("https://169.254.169.254/latest", "metadata"),
        ("https://10.213.0.5/mcp", "server network pool"),
        ("https://192.168.1.10/mcp", "private"),
        ("https://[::1]/mcp", "loopback"),
    ],
)
def test_a_literal_address_inside_the_vm_is_refused(tmp_path: Path, url: str, words: str) -> None:
    """A URL naming a loopback, metadata, pool or private address is refused naming what it is."""
    [(path, message)] = _messages(_check(tmp_path, REMOTE.format(url=url)))
    assert path == "$.remote.url"
    assert words in message


def test_a_header_secret_not_granted_is_refused_at_its_header(tmp_path: Path) -> None:
    """A header naming a secret deploy.yaml does not grant is located at remote.headers.<name>.secret."""
    text = REMOTE.format(url="https://weather.example.com/mcp").replace("WEATHER_TOKEN", "OTHER")
    [(path, message)] = _messages(_check(tmp_path, text))
    assert path == "$.remote.headers.Authorization.secret"
    assert "OTHER is not granted" in message


def test_a_remote_with_build_or_run_is_refused(tmp_path: Path) -> None:
    """build and run make no sense for a server that runs elsewhere: each is named."""
    text = REMOTE.format(url="https://w.example.com/") + "run:\n  port: 8080\nbuild:\n  context: .\n"
    paths = sorted(p for p, _ in _messages(_check(tmp_path, text)))
    assert paths == ["$.build", "$.run"]


def test_a_header_the_proxy_owns_is_refused(tmp_path: Path) -> None:
    """A manifest may not set Host (or framing and MCP headers) for its remote."""
    text = REMOTE.format(url="https://w.example.com/").replace("X-Client", "Host")
    [(path, message)] = _messages(_check(tmp_path, text))
    assert path == "$.remote.headers.Host"
    assert "set by the provider" in message


def test_a_server_with_neither_run_nor_remote_is_refused(tmp_path: Path) -> None:
    """Without run and without remote there is nothing to serve: check says which to add."""
    text = REMOTE.format(url="x").split("remote:")[0]
    [(path, message)] = _messages(_check(tmp_path, text))
    assert (path, "`run`" in message and "`remote`" in message) == ("$", True)


def test_a_remote_cannot_scale_to_zero(tmp_path: Path) -> None:
    """`scale` (min 0 included) on a remote is refused at scale, naming the server: nothing to stop."""
    text = REMOTE.format(url="https://weather.example.com/mcp") + "scale: {min: 0, idle_after: 5m}\n"
    [(path, message)] = _messages(_check(tmp_path, text))
    assert path == "$.scale"
    assert "'weather' has no replicas and no container to stop when idle" in message
