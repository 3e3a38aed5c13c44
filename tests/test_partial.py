"""A push unpacks what changed (partial.py, source.take's `select`), with real git: a real `git push`
into a bare repo whose pre-receive hook takes the snapshot inside git's quarantine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline import source, webhook
from pipeline.config.settings import Repo, Settings, Webhook
from pipeline.deploylog import DeployLog
from pipeline.source import Snapshot
from pipeline.store import Store
from tests.support.provider import FIXTURES

ROOT = Path(__file__).resolve().parent.parent
GIT_USER = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
VENDOR_FILES = 20
VENDOR_FILE_BYTES = 256 * 1024  # 5 MiB of incompressible vendored files: more than the bound below
MAX_BYTES = 4 * 1024 * 1024
MAX_FILES = 200
SHARED_CONTEXT = "../../shared"  # servers/b builds from `shared/`, outside its folder: see _server_b


@dataclass
class Repo2:
    """A work tree, its bare remote with the test hook, and the hook's config."""

    work: Path
    config: Path
    out: Path
    bare: Path

    def git(self, *args: str) -> str:
        """Run git in the work tree."""
        return subprocess.run(
            ["git", "-C", str(self.work), *GIT_USER, *args], check=True, capture_output=True, text=True
        ).stdout

    def commit_push(self, message: str) -> tuple[bool, str, dict[str, Any]]:
        """Commit everything and push; return whether git accepted it, its output and the hook's report."""
        self.out.unlink(missing_ok=True)
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        proc = subprocess.run(
            ["git", "-C", str(self.work), "push", "--quiet", "origin", "HEAD:main"],
            capture_output=True,
            text=True,
        )
        report = json.loads(self.out.read_text()) if self.out.exists() else {}
        return proc.returncode == 0, proc.stderr, report

    def go_live(self, report: dict[str, Any]) -> None:
        """Make the hook see every server of `report` live at its fingerprint (as after a deploy)."""
        config = json.loads(self.config.read_text())
        config["live"] = report["prints"]
        self.config.write_text(json.dumps(config))


@pytest.fixture
def big(tmp_path: Path) -> Repo2:
    """Servers a and b (b's build context is the repo root, with `shared/`), docs, and 5 MiB in vendor/,
    pushed once with nothing live."""
    bare, work = tmp_path / "bare.git", tmp_path / "work"
    source.init_bare(bare, "main")
    out, config = tmp_path / "report.json", tmp_path / "hook.json"
    state = tmp_path / "state"
    config.write_text(
        json.dumps(
            {"out": str(out), "state": str(state), "live": {}, "max_bytes": MAX_BYTES, "max_files": MAX_FILES}
        )
    )
    shim = bare / "hooks" / "pre-receive"
    shim.write_text(
        f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m tests.support.partial_hook {config}\n"
    )
    shim.chmod(0o755)
    subprocess.run(["git", "init", "--quiet", "--initial-branch=main", str(work)], check=True)
    repo = Repo2(work, config, out, bare)
    repo.git("remote", "add", "origin", str(bare))
    for name in ("a", "b"):
        shutil.copytree(
            FIXTURES / "echo", work / "servers" / name, ignore=shutil.ignore_patterns("Dockerfile.slow")
        )
        manifest = work / "servers" / name / "mcp-server.yaml"
        manifest.write_text(manifest.read_text().replace("name: echo", f"name: {name}"))
    _server_b(work)
    (work / "docs").mkdir()
    (work / "docs" / "index.md").write_text("# docs\n")
    (work / "vendor").mkdir()
    for i in range(VENDOR_FILES):
        (work / "vendor" / f"blob{i}.bin").write_bytes(os.urandom(VENDOR_FILE_BYTES))
    ok, output, report = repo.commit_push("first")
    assert ok, output  # nothing live: every server is unpacked, vendor/ is not (it would pass the bound)
    assert report["problems"] == []
    assert report["exported"] == ["servers/a", "servers/b", "shared"]
    assert not [f for f in report["files"] if f.startswith(("vendor/", "docs/"))]
    repo.go_live(report)
    return repo


def _server_b(work: Path) -> None:
    """servers/b builds from `shared/` (its Dockerfile and code live there, outside servers/b)."""
    manifest = work / "servers" / "b" / "mcp-server.yaml"
    manifest.write_text(manifest.read_text() + f"build: {{context: {SHARED_CONTEXT}}}\n")
    shutil.copytree(
        FIXTURES / "echo", work / "shared", ignore=shutil.ignore_patterns("Dockerfile.slow", "*.yaml")
    )
    (work / "shared" / "util.py").write_text("X = 1\n")


def test_a_docs_only_push_in_a_big_repo_unpacks_no_server_folder(big: Repo2) -> None:
    """Every server live and unchanged: the snapshot holds the manifests alone, not 5 MiB of vendor/
    (more than the 4 MiB bound, so unpacking it would have refused the push)."""
    (big.work / "docs" / "index.md").write_text("# docs, edited\n")

    ok, output, report = big.commit_push("docs only")

    assert ok, output
    assert report["exported"] == []
    assert report["files"] == ["servers/a/mcp-server.yaml", "servers/b/mcp-server.yaml"]
    assert report["problems"] == []
    assert report["prints"] == json.loads(big.config.read_text())["live"]  # the plan: all unchanged


def test_a_change_in_one_server_unpacks_that_one_only(big: Repo2) -> None:
    """a's server.py changes: a's folder is unpacked, b's is not; only a's fingerprint moves."""
    live = json.loads(big.config.read_text())["live"]
    (big.work / "servers" / "a" / "server.py").write_text("# changed\n", encoding="utf-8")

    ok, output, report = big.commit_push("change a")

    assert ok, output
    assert report["exported"] == ["servers/a"]
    assert {f.partition("/a/")[0] for f in report["files"] if not f.endswith("mcp-server.yaml")} == {
        "servers"
    }
    assert "servers/a/server.py" in report["files"]
    assert report["prints"]["a"] != live["a"] and report["prints"]["b"] == live["b"]


def test_a_change_in_a_shared_context_outside_the_folder_rebuilds_its_server(big: Repo2) -> None:
    """b builds from `shared/` (its context, outside servers/b): a change there changes b alone."""
    repo = big
    live = json.loads(repo.config.read_text())["live"]
    (repo.work / "shared" / "util.py").write_text("X = 2\n")

    ok, output, report = repo.commit_push("change shared")

    assert ok, output
    assert report["exported"] == ["servers/b", "shared"]
    assert "shared/util.py" in report["files"] and "servers/a/server.py" not in report["files"]
    assert report["prints"]["b"] != live["b"] and report["prints"]["a"] == live["a"]
    assert report["problems"] == []


def test_an_oversized_changed_server_is_still_refused_naming_the_bound(big: Repo2) -> None:
    """A changed server past limits.snapshot_size is refused, though unchanged vendor/ is not counted."""
    (big.work / "servers" / "a" / "big.bin").write_bytes(os.urandom(MAX_BYTES + 1))

    ok, output, _ = big.commit_push("big a")

    assert not ok
    assert "unpacks to more than 4m (limits.snapshot_size in deploy.yaml" in output


def test_too_many_files_in_a_changed_server_are_refused_naming_the_bound(big: Repo2) -> None:
    """Past limits.snapshot_files in the changed server's folder: refused."""
    for i in range(MAX_FILES + 1):
        (big.work / "servers" / "a" / f"f{i}.txt").write_text(str(i))

    ok, output, _ = big.commit_push("many files in a")

    assert not ok
    assert f"holds more than {MAX_FILES} files and folders (limits.snapshot_files" in output


def test_manifest_globs_match_as_path_glob_does() -> None:
    """Only files `manifest.discover` would find are unpacked first (server.json beside the yaml)."""
    globs = Repo(name="r").manifests
    assert source._is_manifest("servers/a/mcp-server.yaml", globs)
    assert source._is_manifest("servers/a/server.json", globs)
    assert not source._is_manifest("vendor/x/mcp-server.yaml.bak", globs)
    assert source._is_manifest("deep/x/y/mcp-server.yaml", ("**/mcp-server.yaml",))
    assert source._is_manifest("mcp-server.yaml", ("**/mcp-server.yaml",))
    assert not source._is_manifest("a/b/mcp-server.yaml", ("*/mcp-server.yaml",))


def test_a_webhook_fetch_of_a_docs_only_push_unpacks_no_server_folder(big: Repo2, tmp_path: Path) -> None:
    """The webhook intake (fetch_tip) takes the same partial snapshot from its mirror."""
    (big.work / "docs" / "index.md").write_text("# docs, edited\n")
    ok, output, _ = big.commit_push("docs only")
    assert ok, output
    repo = Repo(name="big", branch="main", clone_url=str(big.bare), webhook=Webhook("github", "S"))
    settings = Settings(config_path=tmp_path / "deploy.yaml", state_dir=tmp_path / "vm", repos=(repo,))
    log = DeployLog(Store(tmp_path / "vm" / "db.sqlite"), 1)
    live = json.loads(big.config.read_text())["live"]

    snap = Snapshot.load(webhook.fetch_tip(settings, repo, str(big.bare), "0" * 40, log, {}, live))

    assert snap.exported == ()
    files = sorted(p.relative_to(snap.root).as_posix() for p in snap.root.rglob("*") if p.is_file())
    assert files == ["servers/a/mcp-server.yaml", "servers/b/mcp-server.yaml"]


def test_a_context_outside_the_folder_is_named_by_its_own_tree() -> None:
    """`servers/b/../../shared` (a manifest's context as written) is the tree `shared`: before, its
    tree hash was "", so a change in a shared context did not change the server's fingerprint."""
    snap = Snapshot(
        "r", "refs/heads/main", "c" * 40, Path("."), {".": "t0", "shared": "t1"}, exported=("shared",)
    )

    assert snap.tree_hash("servers/b/../../shared") == "t1"
    assert snap.holds("servers/b/../../shared/sub") and not snap.holds("servers/b")
    assert snap.tree_hash("../outside") == ""


def test_many_manifests_are_unpacked_over_several_archives(
    big: Repo2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past PATHS_PER_ARCHIVE manifests, git archive is run again for the rest: none is left out."""
    monkeypatch.setattr(source, "PATHS_PER_ARCHIVE", 1)
    commit = big.git("rev-parse", "HEAD").strip()

    snap = source.take(
        big.work,
        "big",
        "refs/heads/main",
        commit,
        tmp_path / "snap",
        manifests=Repo(name="big").manifests,
        select=lambda _snapshot: [],
    )

    files = sorted(p.relative_to(snap.root).as_posix() for p in snap.root.rglob("*") if p.is_file())
    assert files == ["servers/a/mcp-server.yaml", "servers/b/mcp-server.yaml"]


def test_a_build_whose_files_were_not_unpacked_is_refused_clearly() -> None:
    """A server that changed against its live release after the push was read (a rollback in between)
    is planned for a build the partial snapshot has no files for: the deploy says so, builds nothing."""
    import yaml

    from pipeline.config.manifest import from_data
    from pipeline.deploy import _unpacked
    from pipeline.errors import DeployError
    from pipeline.plan import Action, Entry, Plan, ReleaseSpec

    manifest = from_data(yaml.safe_load((FIXTURES / "echo" / "mcp-server.yaml").read_text()), "servers/echo")
    spec = ReleaseSpec(manifest, 2, "image", "print", "c" * 40, "big")
    plan = Plan((Entry("echo", Action.BUILD, "changed", 2, spec),))
    held = Snapshot("big", "refs/heads/main", "c" * 40, Path("."), {}, exported=("servers/echo",))

    assert _unpacked(plan, held) is plan
    with pytest.raises(DeployError, match="the push did not bring its files: push again"):
        _unpacked(plan, Snapshot("big", "refs/heads/main", "c" * 40, Path("."), {}, exported=()))
