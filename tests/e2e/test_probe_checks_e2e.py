"""End to end: a live release's read-only smoke checks run in its health probes (`probe_checks`).

The echo fixture's `greet` starts throwing a few seconds after its container starts: the gate's
check passes, then the monitor's probes (every second) run the read-only check, fail it twice, and
submit a restart deploy whose reason names the check and what came back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, running_provider, wait_for

pytestmark = pytest.mark.docker

MONITOR = "monitor: {probe_interval: 1s, probe_timeout: 5s, failure_threshold: 2}\n"
BREAK_AFTER = 8.0  # seconds after the start: past the gate and the push, before the probes give up


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Provider]:
    """A serve process whose monitor probes every second and restarts after two failures."""
    with running_provider(tmp_path_factory.mktemp("probe-checks"), docker_host, MONITOR) as running:
        yield running


def test_a_read_only_check_that_starts_failing_gets_the_release_restarted(provider: Provider) -> None:
    """The gate's check passes; once greet throws, the probes' check fails and a restart names it."""
    workspace = provider.clone(provider.root / "clone")

    def probed(data: dict[str, Any]) -> None:
        data["probe_checks"] = True
        data["checks"] = [
            {"name": "greets", "tool": "greet", "arguments": {"name": "Ada"}, "read_only": True},
            {"name": "not-in-probes", "tool": "greet", "arguments": {"name": "Bob"}},
        ]

    echo = workspace.put("echo", env={"BREAK_AFTER": str(BREAK_AFTER)}, manifest=probed)
    workspace.commit("echo whose greet breaks after a while")
    push = workspace.push()
    assert push.ok, push.output
    assert "check 'greets'" in push.output and "check 'not-in-probes'" in push.output
    started = time.monotonic()
    restarts: list[dict[str, Any]] = []

    def restarted() -> bool:
        restarts[:] = [d for d in provider.deploys() if d["source"] == "restart"]
        return bool(restarts)

    wait_for("a restart deploy", restarted, BREAK_AFTER + 30)
    assert time.monotonic() - started >= BREAK_AFTER - 3  # not before greet broke
    message = restarts[-1]["message"]
    assert message.startswith(f"restart {echo} r1: CheckFailed: check 'greets' (tools/call greet"), message
    assert "got isError=true, text: 'Error executing tool greet'" in message  # what the SDK says of a throw
    assert "not-in-probes" not in message
