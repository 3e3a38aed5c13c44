"""A real serve process: `serve --port` moves its public URLs with it, and deploy.yaml reloads live
(`central-mcp reload` and SIGHUP), validated first, keeping the running config on error."""

from __future__ import annotations

import http.client
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, running_provider, wait_for

pytestmark = pytest.mark.docker
BODY = b"{" + b" " * 2048 + b"}"  # 2 KiB: over a 1k webhooks.max_body


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Provider]:
    """A serve process started with --port other than its deploy.yaml's listen.port."""
    with running_provider(tmp_path_factory.mktemp("reload"), docker_host) as running:
        yield running


def _hook_status(provider: Provider) -> int:
    """POST a 2 KiB unsigned delivery: 413 when over webhooks.max_body, else 401 (no signature)."""
    conn = http.client.HTTPConnection("127.0.0.1", provider.port, timeout=10)
    try:
        conn.request("POST", "/hooks/github", body=BODY, headers={"X-GitHub-Event": "push"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_serve_port_is_where_the_registry_and_client_configs_point(
    provider: Provider, tmp_path: Path
) -> None:
    """With no public_url, mcp.json names the port serve listens on (--port), not listen.port."""
    ws = provider.clone(tmp_path / "work")
    echo = ws.put("echo")
    ws.commit("add echo")
    assert ws.push().ok
    status, _, body = provider.get("/mcp.json?per_server=1")
    assert status == 200
    assert json.loads(body)["mcpServers"][echo]["url"] == f"http://127.0.0.1:{provider.port}/mcp/{echo}"
    assert f"http://127.0.0.1:{provider.port}/mcp/{echo}" in provider.get("/")[2]


def test_reload_applies_a_valid_config_and_keeps_the_running_one_on_error(provider: Provider) -> None:
    """`central-mcp reload` applies a new limit at once; a broken deploy.yaml is refused, logged and
    returned, and the old config keeps serving; SIGHUP reloads too, naming what needs a restart."""
    good = provider.config.read_text()
    assert _hook_status(provider) == 401
    provider.config.write_text(good + "webhooks: {max_body: 1k}\n")
    done = provider.cli("reload")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reloaded deploy.yaml: applied webhook_max_body" in done.stdout
    assert _hook_status(provider) == 413

    provider.config.write_text(good + "webhooks: {max_body: 1k}\ncolour: blue\n")
    done = provider.cli("reload")
    assert done.returncode == 1
    assert "$.colour" in done.stderr and "reload refused" in done.stderr
    assert "the running configuration is unchanged" in done.stderr
    assert _hook_status(provider) == 413, "the running config must be kept"
    assert "reload refused" in provider.serve_log() and "$.colour" in provider.serve_log()

    provider.config.write_text(good.replace("host: 127.0.0.1", "host: localhost"))
    assert provider.proc is not None
    provider.proc.send_signal(signal.SIGHUP)
    wait_for("SIGHUP to reload deploy.yaml", lambda: _hook_status(provider) == 401, 10)
    assert provider.proc.poll() is None, "SIGHUP must not stop serve"
    # The log line follows the change it reports: wait for it rather than race it.
    wait_for("the reload's log line", lambda: "needs a restart to change: host" in provider.serve_log(), 10)
    assert provider.get("/healthz")[0] == 200
