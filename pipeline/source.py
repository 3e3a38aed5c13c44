"""Source snapshots: a commit's files and tree hashes, read with git (quarantine-aware).

In a pre-receive hook git keeps the pushed objects in a quarantine directory that only the
hook's own process tree can read (GIT_QUARANTINE_PATH, GIT_OBJECT_DIRECTORY and
GIT_ALTERNATE_OBJECT_DIRECTORIES are set in its environment). The hook therefore takes the
snapshot itself — `git archive` into a directory and `git ls-tree` for the tree hashes —
and hands the directory to the deploy engine, which never needs the objects.

How the package runs git, one way per kind of operation:

    kind                          way        where                         why
    resolve a ref to a commit     GitPython  resolve (cli, deploy, up,     a plain query
                                         webhook)
    tree hashes, author, message  GitPython  _trees, _describe             plain queries (with the
                                                                           hook's quarantine env)
    create a bare repo            CLI        init_bare (hook, webhook)     it writes
    fetch with credentials        CLI        fetch (webhook)               it writes; env and `-c`
                                                                           carry the token
    archive a commit (snapshot)   CLI        _extract                      streams the tar to a file
    push a work tree's HEAD       CLI        serve._push (`up`)            writes; git's and the
                                                                           hook's output reach the
                                                                           terminal as they come

Queries use GitPython; whatever writes or streams uses the CLI with an explicit `-C <dir>` or
path, because GitPython's runner silently runs in the process's own directory when its folder is
missing, and expands `$VARS` in paths. Nothing goes through a shell. An argument from outside
(a ref, a commit, a URL, a path) comes after `--end-of-options` (revisions; git >= 2.31 for
rev-parse) or `--` (init, fetch, push), so a value starting with `-` is never an option.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import git

from pipeline.config.manifest import MANIFEST_NAME
from pipeline.config.serverjson import SERVER_JSON
from pipeline.config.settings import DEFAULT_MAX_SNAPSHOT_FILES, DEFAULT_MAX_SNAPSHOT_SIZE, Settings
from pipeline.config.units import format_size
from pipeline.errors import SourceError

ZERO_SHA = "0" * 40
SNAPSHOT_META = "snapshot.json"
EXPECT_OLD = "expect_old"
GIT_DIR = "git_dir"
SNAPSHOTS = "snapshots"
TAR_TAIL_BYTES = 1024 * 1024  # past the end-of-archive marker git writes at most one 10 KiB record
ERROR_BYTES = 8192  # of git's stderr, quoted in the error
PATHS_PER_ARCHIVE = 500  # paths named to one `git archive` (a repo may hold thousands of manifests)


def folder_key(folder: str) -> str:
    """`folder` as the snapshot names it: relative to the root, `..` resolved (a manifest's build
    context `servers/b/../../shared` is `shared`), "." for the root."""
    return posixpath.normpath(folder.strip("/") or ".")


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
    exported: tuple[str, ...] | None = None  # the folders unpacked besides the manifests; None: all

    def holds(self, folder: str) -> bool:
        """Whether `folder`'s files were unpacked (a partial snapshot holds only what a deploy needs)."""
        if self.exported is None:
            return True
        path = folder_key(folder)
        return any(e == "." or path == e or path.startswith(e + "/") for e in self.exported)

    def tree_hash(self, folder: str) -> str:
        """Return the git tree hash of `folder` (relative to the repo root)."""
        return self.trees.get(folder_key(folder), "")

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
            "exported": None if self.exported is None else list(self.exported),
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
            None if meta.get("exported") is None else tuple(meta["exported"]),
        )


@dataclass(frozen=True)
class Bounds:
    """The most a snapshot may unpack to (deploy.yaml's limits.snapshot_size and snapshot_files)."""

    max_bytes: int = DEFAULT_MAX_SNAPSHOT_SIZE
    max_files: int = DEFAULT_MAX_SNAPSHOT_FILES


def bounds(settings: Settings) -> Bounds:
    """The snapshot bounds deploy.yaml sets."""
    return Bounds(settings.limits.snapshot_size, settings.limits.snapshot_files)


Select = Callable[["Snapshot"], Collection[str]]


def take(
    repo_path: Path,
    repo_name: str,
    ref: str,
    commit: str,
    into: Path,
    env: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    bounds: Bounds | None = None,
    manifests: Sequence[str] = (),
    select: Select | None = None,
) -> Snapshot:
    """Export `commit` of the repository at `repo_path` into `into`/tree and describe it; past
    `bounds` stop unpacking at once and raise SourceError naming the limit.

    With `select`, only the files matching the `manifests` globs are unpacked first; `select` is
    then shown that partial snapshot and names the folders to unpack besides (a push's changed
    servers), so a push costs what it changed, not the size of the repository.
    """
    env = dict(os.environ if env is None else env)
    root = into / "tree"
    root.mkdir(parents=True, exist_ok=False)
    try:
        trees, files = _listing(repo_path, commit, env)
        author, message = _describe(repo_path, commit, env)
        base = Snapshot(repo_name, ref, commit, root, trees, author, message, dict(extra or {}))
        budget = _Budget(bounds or Bounds())
        if select is None:
            _extract(repo_path, commit, root, env, budget)
            snapshot = base
        else:
            _extract(repo_path, commit, root, env, budget, [f for f in files if _is_manifest(f, manifests)])
            partial = replace(base, exported=())
            folders = _outermost({folder_key(f) for f in select(partial)} & set(trees))
            _extract(repo_path, commit, root, env, budget, folders)
            snapshot = replace(base, exported=tuple(folders))
    except SourceError:
        shutil.rmtree(into, ignore_errors=True)
        raise
    except (git.GitCommandError, tarfile.TarError, OSError) as exc:
        shutil.rmtree(into, ignore_errors=True)
        raise SourceError(f"cannot read commit {commit[:12]} of {repo_path}: {_why(exc)}") from exc
    snapshot.save()
    return snapshot


def _is_manifest(path: str, globs: Sequence[str]) -> bool:
    """Whether `path` is a file `manifest.discover` may find with `globs` (server.json beside)."""
    for pattern in globs:
        head, _, last = pattern.rpartition("/")
        patterns = [pattern]
        if last == MANIFEST_NAME:
            patterns.append(f"{head}/{SERVER_JSON}" if head else SERVER_JSON)
        if any(_glob_match(path.split("/"), each.strip("/").split("/")) for each in patterns):
            return True
    return False


def _glob_match(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Path.glob's matching of one path: `**` spans any number of folders, `*` one name."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(parts[i:], pattern[1:]) for i in range(len(parts)))
    if pattern[0] in ("", "."):
        return _glob_match(parts, pattern[1:])
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(parts[1:], pattern[1:])


def _outermost(folders: Collection[str]) -> list[str]:
    """`folders` without those inside another of them, sorted."""
    if "." in folders:
        return ["."]
    kept: list[str] = []
    for folder in sorted(folders):
        if not any(folder.startswith(k + "/") for k in kept):
            kept.append(folder)
    return kept


def resolve(repo_path: Path, ref: str, *, discover: bool = False) -> str:
    """Return the commit sha that `ref` names in the repository at `repo_path`.

    With `discover`, `repo_path` may be any folder of a work tree (as `git -C` finds it);
    without, it must be the repository itself, so a missing repo never resolves in a parent.
    """
    try:
        repo = git.Repo(repo_path, search_parent_directories=discover)
        return str(repo.git.rev_parse("--verify", "--end-of-options", f"{ref}^{{commit}}"))
    except (git.GitCommandError, git.NoSuchPathError, git.InvalidGitRepositoryError) as exc:
        raise SourceError(f"cannot resolve {ref!r} in {repo_path}: {_why(exc)}") from exc


def init_bare(path: Path, branch: str) -> None:
    """Create the bare repository `path` (and its folders) unless it exists; `branch` names HEAD."""
    if (path / "HEAD").exists():
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        _run(["git", "init", "--quiet", "--bare", f"--initial-branch={branch}", "--", str(path)])
    except (git.GitCommandError, OSError) as exc:
        raise SourceError(
            f"cannot create the bare repository {path}: {_why(exc)}; check that git is installed "
            f"and that {path.parent} is writable"
        ) from exc


def fetch(
    mirror: Path,
    url: str,
    refspec: str,
    env: Mapping[str, str],
    options: list[str],
    timeout: float | None = None,
) -> None:
    """Fetch `refspec` from `url` into the bare `mirror`; `env` and `-c` `options` carry credentials;
    git is stopped after `timeout` seconds (a server that accepts and then sends nothing).

    Raises git.GitCommandError, whose stderr the caller masks before it shows it.
    """
    args = ["git", "-C", str(mirror), *options, "fetch", "--quiet", "--", url, refspec]
    _run(args, {**os.environ, **env}, timeout)


def snapshots_dir(state_dir: Path) -> Path:
    """Where pushes' snapshots are left for their deploys: <state>/snapshots."""
    return state_dir / SNAPSHOTS


def new_workdir(parent: Path) -> Path:
    """Return a fresh directory under `parent` for a snapshot."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="snap-", dir=parent))


def _run(args: list[str], env: Mapping[str, str] | None = None, timeout: float | None = None) -> None:
    """Run a git command that writes (no shell); raise git.GitCommandError with its stderr (saying
    so when it did not end within `timeout` seconds)."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise git.GitCommandError("git", -1, f"no answer within {timeout:g}s (proxy.deploy_timeout)") from exc
    if proc.returncode != 0:
        raise git.GitCommandError(
            "git", proc.returncode, proc.stderr
        )  # not `args`: they may hold credentials


def _git(repo_path: Path, env: Mapping[str, str]) -> git.Git:
    runner = git.Git(str(repo_path))
    runner.update_environment(**env)
    return runner


class _Budget:
    """What unpacking may still use of the bounds, over every archive of one snapshot."""

    def __init__(self, bounds: Bounds) -> None:
        self.bounds = bounds
        self.files = 0
        self.bytes = 0


def _extract(
    repo_path: Path,
    commit: str,
    root: Path,
    env: Mapping[str, str],
    budget: _Budget,
    paths: Sequence[str] | None = None,
) -> None:
    """Unpack `git archive` (of `paths` only, if given) as it streams: each entry's size is in its
    header, so the bounds are checked before anything of it is written, and git is stopped at the
    first one past them."""
    if paths is not None and not paths:
        return
    if paths is not None and len(paths) > PATHS_PER_ARCHIVE:  # never past the system's argument size
        for start in range(0, len(paths), PATHS_PER_ARCHIVE):
            _extract(repo_path, commit, root, env, budget, paths[start : start + PATHS_PER_ARCHIVE])
        return
    args = ["git", "-C", str(repo_path), "archive", "--format=tar", "--end-of-options", commit]
    if paths is not None and paths != ["."]:
        args += paths  # after --end-of-options: a path starting with `-` is never an option
    env = {**env, "GIT_LITERAL_PATHSPECS": "1"}  # a folder's name is never a pattern
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=errors, env=env)
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                _unpack(archive, root, commit, budget)
            proc.stdout.read(TAR_TAIL_BYTES)  # the archive's padding, so that git ends on its own
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()  # only past a bound or a tar error: git's own end is awaited above
            proc.wait()
        if proc.returncode != 0:
            errors.seek(0)
            stderr = errors.read(ERROR_BYTES).decode("utf-8", "replace")
            raise git.GitCommandError(["git", "archive"], proc.returncode, stderr)


def _unpack(archive: tarfile.TarFile, root: Path, commit: str, budget: _Budget) -> None:
    bounds = budget.bounds
    for member in archive:
        budget.files += 1
        budget.bytes += member.size
        if budget.files > bounds.max_files:
            raise SourceError(
                f"commit {commit[:12]} holds more than {bounds.max_files} files and folders "
                "(limits.snapshot_files in deploy.yaml); nothing was deployed: keep generated or "
                "vendored trees out of the repository, or raise the limit"
            )
        if budget.bytes > bounds.max_bytes:
            raise SourceError(
                f"commit {commit[:12]} unpacks to more than {format_size(bounds.max_bytes)} "
                f"(limits.snapshot_size in deploy.yaml; stopped at {member.name}); nothing was "
                "deployed: keep large files out of the repository, or raise the limit"
            )
        archive.extract(member, root, filter=_no_links_out)


def _no_links_out(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """Python's `data` filter (nothing outside the snapshot, no special files or high mode bits),
    except that a link to an absolute path or out of the snapshot is left out instead of failing
    the whole commit: nothing read from a snapshot may lead to a host file."""
    try:
        return tarfile.data_filter(member, dest)
    except tarfile.FilterError:
        if member.issym() or member.islnk():
            return None
        raise


def _listing(repo_path: Path, commit: str, env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The tree hash of every folder of `commit`, and the path of every other entry."""
    out = _git(repo_path, env).ls_tree("-r", "-t", "-z", "--end-of-options", commit)
    trees = {".": _git(repo_path, env).rev_parse("--verify", "--end-of-options", f"{commit}^{{tree}}")}
    files = []
    for entry in out.split("\0"):
        if not entry:
            continue
        info, _, path = entry.partition("\t")
        _, kind, sha = info.split()
        if kind == "tree":
            trees[path] = sha
        else:
            files.append(path)
    return trees, files


def _describe(repo_path: Path, commit: str, env: Mapping[str, str]) -> tuple[str, str]:
    out = _git(repo_path, env).log("-1", "--format=%an <%ae>%x00%s", "--end-of-options", commit)
    author, _, message = out.partition("\0")
    return author, message


def _why(exc: Exception) -> str:
    if isinstance(exc, git.GitCommandError):
        return str(exc.stderr or exc).strip().removeprefix("stderr: ").strip("'\n ")
    return str(exc)
