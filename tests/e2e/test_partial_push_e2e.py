"""A push costs what changed (issue 16): through the real pre-receive hook into real Docker, a
docs-only push in a repo with vendored files unpacks no server folder and deploys nothing; a change in
a shared build context outside a server's folder rebuilds that server alone."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from tests.support.provider import FIXTURES, Provider, Workspace

pytestmark = pytest.mark.docker

VENDOR_FILES = 8  # of 512 KiB random each: vendored files no server builds from


def _shared_context(data: dict[str, Any]) -> None:
    data["build"] = {"context": "../../shared"}


def test_a_docs_only_push_unpacks_and_deploys_nothing_and_a_shared_context_rebuilds_its_server(
    provider: Provider, workspace: Workspace
) -> None:
    """First push: both servers built. Docs-only: nothing unpacked or deployed. shared/ changed: only the
    server building from it is rebuilt, its folder and shared/ unpacked."""
    alone = workspace.put("echo")
    shared = workspace.put("echo", name=provider.name("shared"), manifest=_shared_context)
    shutil.copytree(
        FIXTURES / "echo", workspace.root / "shared", ignore=shutil.ignore_patterns("*.yaml", "__pycache__")
    )
    (workspace.root / "vendor").mkdir()
    for i in range(VENDOR_FILES):
        (workspace.root / "vendor" / f"blob{i}.bin").write_bytes(os.urandom(512 * 1024))
    (workspace.root / "docs").mkdir()
    (workspace.root / "docs" / "index.md").write_text("# docs\n")
    workspace.commit("two servers, one building from shared/")
    first = workspace.push()
    assert first.ok, first.output
    assert {provider.deploy(first.deploy_id)["servers"][s]["outcome"] for s in (alone, shared)} == {"swapped"}

    (workspace.root / "docs" / "index.md").write_text("# docs, edited\n")
    workspace.commit("docs only")
    docs = workspace.push()

    assert docs.ok, docs.output
    record = provider.deploy(docs.deploy_id)
    assert {record["servers"][s]["outcome"] for s in (alone, shared)} == {"unchanged"}
    assert "unpacked the manifests and no server folder" in provider.log(docs.deploy_id)

    with (workspace.root / "shared" / "server.py").open("a") as file:
        file.write("# a change in the shared context\n")
    workspace.commit("shared/ changed")
    changed = workspace.push()

    assert changed.ok, changed.output
    record = provider.deploy(changed.deploy_id)
    assert record["servers"][alone]["outcome"] == "unchanged"
    assert (record["servers"][shared]["outcome"], record["servers"][shared]["release"]) == ("swapped", 2)
    assert f"unpacked the manifests and servers/{shared}, shared " in provider.log(changed.deploy_id)
