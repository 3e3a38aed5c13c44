"""End to end: a remote server deployed by a push, served through the proxy, watched by the probes.

The remote is the TLS stand-in on 127.0.0.1 (tests/support/remote.py), its CA made in the test and
named in deploy.yaml's remotes.ca_file, its host allowed in remotes.allow_hosts; the secret header's
value lives in the VM's server-secret store, granted to the repo.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, VMSecrets, Workspace, running_provider, wait_for
from tests.support.remote import TOKEN, StandIn, stand_in

SECRET = "WEATHER_TOKEN"
MANIFEST = """name: {name}
version: {version}
description: A remote weather server
transport: streamable-http
remote:
  url: {url}
  headers:
    Authorization: {{secret: {secret}}}
health: {{timeout: 3s}}
"""


@pytest.fixture(scope="module")
def remote_vm(
    tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost
) -> Iterator[tuple[Provider, StandIn]]:
    """A provider allowing the stand-in's hosts and trusting its CA, and the stand-in itself."""
    root = tmp_path_factory.mktemp("remote-vm")
    with stand_in(root) as running:
        config = (
            f"remotes: {{allow_hosts: [localhost], ca_file: {running.cert.ca_file}}}\n"
            "monitor: {probe_interval: 1s, failure_threshold: 1, probe_timeout: 1s}\n"
        )
        vm = VMSecrets(store={SECRET: TOKEN}, grants=(SECRET,))
        with running_provider(root / "vm", docker_host, config, vm=vm) as provider:
            yield provider, running


def _put(workspace: Workspace, name: str, url: str, version: str = "1.0.0") -> None:
    """Write the remote's manifest into the clone."""
    folder = workspace.root / "servers" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mcp-server.yaml").write_text(
        MANIFEST.format(name=name, version=version, url=url, secret=SECRET)
    )


@pytest.mark.docker
def test_a_remote_deploys_serves_and_its_failure_shows_and_blocks_deploys(
    remote_vm: tuple[Provider, StandIn], tmp_path: Path
) -> None:
    """Push → gated over TLS → tools listed and called through /mcp/<name>; a second release rolled
    back; called again after serve restarts;
    the remote stops → /healthz says so; a push changing it is rejected because its gate fails."""
    provider, running = remote_vm
    workspace = provider.clone(tmp_path / "work")
    name = provider.name("weather")
    _put(workspace, name, running.url())
    workspace.commit("a remote server")
    push = workspace.push()
    assert push.ok, push.output
    assert "whoami" in provider.tool_names(name)
    assert provider.call(name, "whoami") == {"result": "weather"}
    assert all(values == [TOKEN] for values in running.app.values("authorization"))
    assert not provider.containers(name)  # nothing ran on the VM for it
    status, _, listing = provider.get("/registry.json")
    assert status == 200 and f"/mcp/{name}" in listing  # listed, with our URL as its remote
    assert running.url() not in listing and TOKEN not in listing

    _put(workspace, name, running.url(), version="1.0.1")  # a second release, then back to the first
    workspace.commit("remote v1.0.1")
    assert workspace.push().ok
    back = provider.cli("rollback", name)
    assert back.returncode == 0, back.stdout + back.stderr
    assert provider.releases(name) == {"r1": "live", "r2": "previous"}

    provider.stop()  # a new serve process gates the remote again and routes to it
    provider.start()
    assert provider.call(name, "whoami") == {"result": "weather"}

    running.app.down = True  # the remote stops answering as MCP

    def down() -> bool:
        _, _, body = provider.get("/healthz")
        state = str(json.loads(body).get("servers", {}).get(name, ""))
        return state.startswith(("failing", "down"))

    wait_for("the remote's failure in /healthz", down, timeout=15)
    _, _, listing = provider.get("/registry.json")
    [entry] = [e for e in json.loads(listing)["servers"] if e["server"]["name"].endswith(f"/{name}")]
    live = json.dumps(entry["_meta"])
    assert "failing" in live or "down" in live, live  # the registry's live state says so too

    _put(workspace, name, running.url(), version="1.0.2")
    workspace.commit("change the remote while it is down")
    push = workspace.push()
    assert not push.ok
    assert "failed the MCP health gate" in push.output
