"""The owner's monorepo as it is: repo `owner/PROJECTS_all` (the README's example), server folders
named like `PROJECT_airbnsearch/`, deployed by a real `git push` through the pre-receive hook."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.dockerhost import DockerHost
from tests.support.provider import FIXTURES, Provider, Workspace, run_git, running_provider
from tests.support.readme import yaml_example

pytestmark = pytest.mark.docker
REPO = "owner/PROJECTS_all"


@pytest.fixture(scope="module")
def monorepo(
    tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost
) -> Iterator[tuple[Provider, Path]]:
    """A serve process configured with the README's webhook example repo, and that repo's bare path."""
    root = tmp_path_factory.mktemp("monorepo")
    with running_provider(root / "vm", docker_host) as provider:
        provider.stop()
        text = provider.config.read_text()
        example = yaml_example("Webhooks")
        assert f"name: {REPO}" in example
        provider.config.write_text(text[: text.index("repos:")] + example + text[text.index("proxy:") :])
        provider.start()
        init = provider.cli("init-repo", REPO)
        assert init.returncode == 0, init.stderr
        bare = provider.state / "repos" / "owner" / "PROJECTS_all.git"
        assert f"bare repo ready: {bare}" in init.stdout
        yield provider, bare


def test_a_folder_named_unlike_its_server_deploys_by_git_push(
    monorepo: tuple[Provider, Path], tmp_path: Path
) -> None:
    """`PROJECT_airbnsearch/mcp-server.yaml` naming `airbnsearch-…` deploys and answers at its name."""
    provider, bare = monorepo
    work = tmp_path / "PROJECTS_all"
    run_git(["clone", "--quiet", str(bare), str(work)], tmp_path)
    ws = Workspace(work, provider)
    ws.git("config", "user.name", "Owner")
    ws.git("config", "user.email", "owner@example.test")
    server = provider.name("airbnsearch")
    folder = work / "PROJECT_airbnsearch"
    shutil.copytree(FIXTURES / "echo", folder, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = yaml.safe_load((folder / "mcp-server.yaml").read_text())
    manifest["name"] = server
    manifest["run"]["env"] = {"GREETING": "monorepo"}
    (folder / "mcp-server.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    ws.commit("add PROJECT_airbnsearch")
    push = ws.push()
    assert push.ok, push.output
    assert f"{server}: r1 is live" in push.output
    assert provider.greeting(server) == "monorepo, Ada"
    assert provider.releases(server) == {"r1": "live"}
