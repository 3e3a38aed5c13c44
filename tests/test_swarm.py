"""The Swarm engine's decisions without an engine: names, the task template, task states.

The real engine's behaviour (services, the relay, secrets, two nodes) is proven in
tests/e2e (tests marked `swarm`) and tests/e2e/test_swarm_nodes_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config.settings import Settings
from pipeline.dockerhost import RunSpec
from pipeline.swarm import (
    DNS_LABEL,
    SECRETS_SHIM,
    SwarmHost,
    overlay_name,
    service_name,
)


class _Api:
    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.listed = tasks

    def tasks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return self.listed


class _Client:
    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        self.api = _Api(tasks)


def _host(tasks: list[dict[str, Any]] | None = None) -> SwarmHost:
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=Path("/tmp/x"))
    return SwarmHost(settings, "abcd1234", _Client(tasks or []))  # type: ignore[arg-type]


def _task(state: str, created: str) -> dict[str, Any]:
    return {"CreatedAt": created, "Status": {"State": state, "Message": state}}


def test_overlay_names_are_dns_labels_apart_for_egress_and_per_server() -> None:
    names = {overlay_name("abcd1234", s, e) for s in ("a", "a-egress", "b") for e in (False, True)}
    assert len(names) == 6
    assert all(len(n) <= DNS_LABEL and "." not in n for n in names)
    assert overlay_name("abcd1234", "a", True).endswith("-e")


def test_a_long_container_name_becomes_a_distinct_dns_label() -> None:
    short = "cmcp-abcd1234-echo-r1-d3"
    assert service_name(short) == short
    long_a = f"cmcp-abcd1234-{'x' * 63}-r12-d345"
    long_b = f"cmcp-abcd1234-{'x' * 63}-r12-d346"
    assert len(service_name(long_a)) <= DNS_LABEL
    assert service_name(long_a) != service_name(long_b)


def _spec(**extra: Any) -> RunSpec:
    return RunSpec("img", "cmcp-abcd1234-echo-r1-d1", 8000, {}, {"A": "1"}, 256 * 1024**2, 0.5, **extra)


def test_the_task_template_keeps_the_plain_engines_hardening() -> None:
    task = _host()._task(_spec(command=("python3", "server.py")), {"Config": {}}, [], [])
    assert (task["read_only"], task["cap_drop"], task["init"], task["user"]) == (
        True,
        ["ALL"],
        True,
        "65534:65534",
    )
    assert task["command"] is None and task["args"] == ["python3", "server.py"]
    assert task["resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 256 * 1024**2, "Pids": 256}
    assert [m["Target"] for m in task["mounts"]] == ["/tmp"]
    assert "A=1" in task["env"]


def test_secrets_are_files_read_by_the_shim_never_environment_in_the_spec() -> None:
    image = {"Config": {"Entrypoint": ["tini", "--"], "Cmd": ["node", "index.js"], "Volumes": {"/data": {}}}}
    task = _host()._task(_spec(secret_env={"TOKEN": "s3cret"}), image, [object()], [])
    assert task["command"] == ["/bin/sh", "-c", SECRETS_SHIM, "central-mcp-secrets"]
    assert task["args"] == ["tini", "--", "node", "index.js"]
    assert not any("s3cret" in e for e in task["env"])
    assert [m["Target"] for m in task["mounts"]] == ["/tmp", "/data"]


@pytest.mark.parametrize(
    ("tasks", "status"),
    [
        ([], "missing"),
        ([_task("preparing", "1")], "starting"),
        ([_task("running", "1")], "running"),
        ([_task("failed", "1"), _task("running", "2")], "restarting"),
        ([_task("failed", "1")], "failed"),
    ],
)
def test_the_gate_sees_a_task_that_ever_ended_as_restarting(tasks: list[dict[str, Any]], status: str) -> None:
    assert _host(tasks).status("svc") == status
