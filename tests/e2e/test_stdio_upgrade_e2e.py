"""End to end: a change to the provider's stdio bridge redeploys its stdio servers on the next push,
and leaves its HTTP servers alone.

The serve process runs from a copy of the `pipeline` package (PYTHONPATH), so the test can change
that copy's bridge as an upgrade of the provider's checkout would, restart serve, and push a commit
that touches no server folder: the stdio server is rebuilt (its fingerprint holds the bridge's
version) with the new bridge inside its image, the HTTP server stays unchanged.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import pipeline
from pipeline import stdio
from pipeline.dockerhost import LABEL_INSTANCE, LABEL_RELEASE, LABEL_SERVER, DockerHost
from tests.support.provider import Provider, VMSecrets, running_provider

pytestmark = pytest.mark.docker

MARK = "# a newer bridge (test_stdio_upgrade_e2e)"


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the provider's checkout (the package, its schemas and hooks) for serve to run from."""
    root = tmp_path_factory.mktemp("code")
    checkout = Path(pipeline.__file__).resolve().parents[1]
    for part in ("pipeline", "schemas", "hooks"):
        shutil.copytree(checkout / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def upgraded(
    code: Path, tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost
) -> Iterator[Provider]:
    """A provider running from `code`."""
    root = tmp_path_factory.mktemp("upgrade")
    # PYTHONSAFEPATH: `python -m pipeline` would otherwise import the package from its cwd first
    env = {"PYTHONPATH": str(code), "PYTHONSAFEPATH": "1"}
    with running_provider(root, docker_host, vm=VMSecrets(env=env)) as provider:
        yield provider


def test_a_changed_bridge_rebuilds_stdio_servers_only(upgraded: Provider, code: Path) -> None:
    """After the bridge changes and serve restarts, a push that changes no server folder rebuilds the
    stdio server (r2, the new bridge in its container) and leaves the HTTP server unchanged."""
    work = upgraded.clone(upgraded.root / "work")
    piped, plain = work.put("stdio"), work.put("echo")
    work.commit("a stdio and an HTTP server")
    first = work.push()
    assert first.ok, first.output
    assert upgraded.releases(piped) == {"r1": "live"} and upgraded.releases(plain) == {"r1": "live"}

    bridge = code / "pipeline" / "bridge" / "app.py"
    before = stdio.bridge_version(bridge.parent)
    bridge.write_text(bridge.read_text() + f"\n{MARK}\n")
    assert stdio.bridge_version(bridge.parent) != before
    upgraded.stop()
    upgraded.start()

    (work.root / "NOTES.md").write_text("touches no server folder\n")
    work.commit("an unrelated change")
    second = work.push()
    assert second.ok, second.output
    assert f"{piped}: changed since r1 → r2" in second.output
    assert f"{plain}: unchanged (live r1)" in second.output
    assert upgraded.releases(piped)["r2"] == "live"
    # r1 may still be draining beside it: the container to read is r2's
    labels = {LABEL_INSTANCE: upgraded.instance, LABEL_SERVER: piped, LABEL_RELEASE: "r2"}
    [running] = [c.id for c in upgraded.docker.containers(labels) if c.status == "running"]
    container = upgraded.docker.client.containers.get(running)
    copied = f"{stdio.BRIDGE_DIR}/{stdio.BRIDGE_PACKAGE}/app.py"
    code_, output = container.exec_run(["tail", "-n", "1", copied])
    assert isinstance(output, bytes)
    assert (code_, output.decode().strip()) == (0, MARK)
    assert upgraded.tool_names(piped) == ["ask", "echo", "pid", "recall", "remember", "slow"]
