"""Source snapshots: a commit's files and tree hashes, read with git (quarantine-aware).

In a pre-receive hook git keeps the pushed objects in a quarantine directory that only the
hook's own process tree can read (GIT_QUARANTINE_PATH, GIT_OBJECT_DIRECTORY and
GIT_ALTERNATE_OBJECT_DIRECTORIES are set in its environment). The hook therefore takes the
snapshot itself — `git archive` into a directory and `git ls-tree` for the tree hashes —
and hands the directory to the deploy engine, which never needs the objects.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import git

from pipeline.errors import SourceError

ZERO_SHA = "0" * 40
SNAPSHOT_META = "snapshot.json"
EXPECT_OLD = "expect_old"
GIT_DIR = "git_dir"


@dataclass(frozen=True)
class Snapshot:
    """A commit's files on disk, with the git tree hash of every directory."""

    repo: str
    ref: str
    commit: str
    root: Path
    trees: Mapping[str, str]
    author: str = ""
    message: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    def tree_hash(self, folder: str) -> str:
        """Return the git tree hash of `folder` (relative to the repo root)."""
        return self.trees.get(folder.strip("/") or ".", "")

    def save(self) -> None:
        """Write the metadata beside the files so another process can load the snapshot."""
        meta = {
            "repo": self.repo,
            "ref": self.ref,
            "commit": self.commit,
            "trees": dict(self.trees),
            "author": self.author,
            "message": self.message,
            "extra": dict(self.extra),
        }
        (self.root.parent / SNAPSHOT_META).write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path) -> Snapshot:
        """Load a snapshot that `save` wrote into `folder`."""
        try:
            meta = json.loads((folder / SNAPSHOT_META).read_text())
        except (OSError, ValueError) as exc:
            raise SourceError(f"no readable snapshot in {folder}: {exc}") from exc
        return cls(
            meta["repo"],
            meta["ref"],
            meta["commit"],
            folder / "tree",
            meta["trees"],
            meta["author"],
            meta["message"],
            meta.get("extra", {}),
        )


def take(
    repo_path: Path,
    repo_name: str,
    ref: str,
    commit: str,
    into: Path,
    env: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> Snapshot:
    """Export `commit` of the repository at `repo_path` into `into`/tree and describe it."""
    env = dict(os.environ if env is None else env)
    root = into / "tree"
    root.mkdir(parents=True, exist_ok=False)
    try:
        _extract(repo_path, commit, root, env)
        trees = _trees(repo_path, commit, env)
        author, message = _describe(repo_path, commit, env)
    except (git.GitCommandError, tarfile.TarError, OSError) as exc:
        shutil.rmtree(into, ignore_errors=True)
        raise SourceError(f"cannot read commit {commit[:12]} of {repo_path}: {_why(exc)}") from exc
    snapshot = Snapshot(repo_name, ref, commit, root, trees, author, message, dict(extra or {}))
    snapshot.save()
    return snapshot


def resolve(repo_path: Path, ref: str) -> str:
    """Return the commit sha that `ref` names in the repository."""
    try:
        return str(git.Repo(repo_path).git.rev_parse("--verify", f"{ref}^{{commit}}"))
    except (git.GitCommandError, git.NoSuchPathError, git.InvalidGitRepositoryError) as exc:
        raise SourceError(f"cannot resolve {ref!r} in {repo_path}: {_why(exc)}") from exc


def new_workdir(parent: Path) -> Path:
    """Return a fresh directory under `parent` for a snapshot."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="snap-", dir=parent))


def _git(repo_path: Path, env: Mapping[str, str]) -> git.Git:
    runner = git.Git(str(repo_path))
    runner.update_environment(**env)
    return runner


def _extract(repo_path: Path, commit: str, root: Path, env: Mapping[str, str]) -> None:
    with tempfile.TemporaryFile() as tar:
        proc = subprocess.run(
            ["git", "-C", str(repo_path), "archive", "--format=tar", commit],
            stdout=tar,
            stderr=subprocess.PIPE,
            env=dict(env),
            check=False,
        )
        if proc.returncode != 0:
            raise git.GitCommandError(["git", "archive"], proc.returncode, proc.stderr)
        tar.seek(0)
        with tarfile.open(fileobj=tar) as archive:
            archive.extractall(root, filter="tar")


def _trees(repo_path: Path, commit: str, env: Mapping[str, str]) -> dict[str, str]:
    out = _git(repo_path, env).ls_tree("-r", "-t", "-z", commit)
    trees = {".": _git(repo_path, env).rev_parse(f"{commit}^{{tree}}")}
    for entry in out.split("\0"):
        if not entry:
            continue
        info, _, path = entry.partition("\t")
        _, kind, sha = info.split()
        if kind == "tree":
            trees[path] = sha
    return trees


def _describe(repo_path: Path, commit: str, env: Mapping[str, str]) -> tuple[str, str]:
    out = _git(repo_path, env).log("-1", "--format=%an <%ae>%x00%s", commit)
    author, _, message = out.partition("\0")
    return author, message


def _why(exc: Exception) -> str:
    if isinstance(exc, git.GitCommandError):
        return str(exc.stderr or exc).strip().removeprefix("stderr: ").strip("'\n ")
    return str(exc)
