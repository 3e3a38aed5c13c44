"""source.py against real git: bare repos, refs, fetches and snapshots, with hostile arguments."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path
from typing import Any

import git
import pytest

from pipeline import source
from pipeline.errors import SourceError

GIT_USER = ["-c", "user.name=t", "-c", "user.email=t@example.com"]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A work tree with one commit holding `app/main.py`."""
    root = tmp_path / "work"
    _git("init", "--quiet", "--initial-branch=main", str(root))
    (root / "app").mkdir()
    (root / "app" / "main.py").write_text("print('hi')\n")
    _git("-C", str(root), "add", ".")
    _git("-C", str(root), *GIT_USER, "commit", "--quiet", "-m", "first")
    return root


def test_init_bare_makes_a_bare_repo_on_the_named_branch(tmp_path: Path) -> None:
    """init_bare creates missing folders and a bare repo whose HEAD names the branch."""
    path = tmp_path / "deep" / "repos" / "a.git"
    source.init_bare(path, "trunk")
    assert (path / "HEAD").read_text().strip() == "ref: refs/heads/trunk"
    source.init_bare(path, "other")  # an existing repo is left as it is
    assert (path / "HEAD").read_text().strip() == "ref: refs/heads/trunk"


def test_init_bare_where_it_cannot_write_is_a_source_error(tmp_path: Path) -> None:
    """A repo path under a file raises SourceError naming the path, never a raw OSError."""
    (tmp_path / "file").write_text("")
    with pytest.raises(SourceError, match=r"cannot create the bare repository .*file/a.git"):
        source.init_bare(tmp_path / "file" / "a.git", "main")


def test_resolve_reads_an_option_like_ref_as_a_ref(work: Path) -> None:
    """A ref that looks like an option is resolved (and fails) as a ref, not obeyed as an option."""
    with pytest.raises(SourceError, match="cannot resolve '--git-dir=/nowhere'"):
        source.resolve(work, "--git-dir=/nowhere")


def test_resolve_discovers_the_work_tree_only_when_asked(work: Path) -> None:
    """From a subfolder, resolve finds the work tree with discover and refuses without it."""
    head = source.resolve(work, "HEAD")
    assert source.resolve(work / "app", "HEAD", discover=True) == head
    with pytest.raises(SourceError):
        source.resolve(work / "app", "HEAD")


def test_fetch_then_take_snapshots_the_commit(work: Path, tmp_path: Path) -> None:
    """A fetched commit of a fresh mirror snapshots to its files, tree hashes and message."""
    mirror = tmp_path / "mirror.git"
    source.init_bare(mirror, "main")
    source.fetch(mirror, str(work), "+refs/heads/main:refs/heads/main", {}, [])
    commit = source.resolve(mirror, "main")
    snap = source.take(mirror, "work", "refs/heads/main", commit, tmp_path / "snap")
    assert (snap.root / "app" / "main.py").read_text() == "print('hi')\n"
    assert snap.tree_hash("app") and snap.tree_hash(".")
    assert snap.message == "first"


def test_a_snapshot_leaves_out_links_to_host_files_and_keeps_links_inside(work: Path, tmp_path: Path) -> None:
    """Absolute links and links out of the tree are not unpacked; a link inside the tree is."""
    (work / "app" / "hostname").symlink_to("/etc/hostname")
    (work / "app" / "up").symlink_to("../../../../../../etc/passwd")
    (work / "app" / "same.py").symlink_to("main.py")
    _git("-C", str(work), "add", ".")
    _git("-C", str(work), *GIT_USER, "commit", "--quiet", "-m", "links")

    snap = source.take(work, "work", "refs/heads/main", source.resolve(work, "HEAD"), tmp_path / "snap")

    app = snap.root / "app"
    assert not (app / "hostname").is_symlink() and not (app / "hostname").exists()
    assert not (app / "up").is_symlink() and not (app / "up").exists()
    assert (app / "same.py").read_text() == "print('hi')\n"


def test_fetch_reads_an_option_like_url_as_a_url(tmp_path: Path) -> None:
    """A URL that looks like an option fails as a repository name, so git never runs it as one."""
    mirror = tmp_path / "mirror.git"
    source.init_bare(mirror, "main")
    marker = tmp_path / "ran"
    with pytest.raises(git.GitCommandError, match="strange pathname"):
        source.fetch(mirror, f"--upload-pack=touch {marker}", "+refs/heads/main:refs/heads/main", {}, [])
    assert not marker.exists()


def _git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True)


def _commit_files(work: Path, files: dict[str, bytes]) -> str:
    """Commit these files into the work tree; return the commit."""
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    _git("-C", str(work), "add", ".")
    _git("-C", str(work), *GIT_USER, "commit", "--quiet", "-m", "files")
    return source.resolve(work, "HEAD")


def test_a_snapshot_past_its_size_stops_before_writing_the_big_file(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 64 MiB file of zeros (a few KiB in git) past an 8 MiB bound: SourceError naming the limit,
    the file is never written (sizes are checked from the tar headers), and nothing is left."""
    commit = _commit_files(work, {"a-small.txt": b"x" * 1000, "big.bin": bytes(64 * 1024 * 1024)})
    written: list[tuple[str, int]] = []
    extract = tarfile.TarFile.extract

    def spy(self: tarfile.TarFile, member: tarfile.TarInfo, *args: Any, **kwargs: Any) -> None:
        written.append((member.name, member.size))
        extract(self, member, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", spy)
    bounds = source.Bounds(max_bytes=8 * 1024 * 1024, max_files=100)
    with pytest.raises(SourceError, match=r"unpacks to more than 8m \(limits.snapshot_size in deploy.yaml; "):
        source.take(work, "work", "refs/heads/main", commit, tmp_path / "snap", bounds=bounds)
    assert ("big.bin", 64 * 1024 * 1024) not in written
    assert sum(size for _, size in written) <= bounds.max_bytes
    assert not (tmp_path / "snap").exists()


def test_a_snapshot_with_too_many_files_is_refused_naming_the_limit(work: Path, tmp_path: Path) -> None:
    """More files than the bound: SourceError naming limits.snapshot_files, nothing left."""
    commit = _commit_files(work, {f"many/f{i}.txt": b"" for i in range(30)})
    bounds = source.Bounds(max_bytes=1024 * 1024, max_files=10)
    with pytest.raises(SourceError, match=r"more than 10 files and folders \(limits.snapshot_files"):
        source.take(work, "work", "refs/heads/main", commit, tmp_path / "snap", bounds=bounds)
    assert not (tmp_path / "snap").exists()


def test_a_snapshot_within_its_bounds_unpacks_whole(work: Path, tmp_path: Path) -> None:
    """Exactly at the bounds is allowed: every file is there with its content."""
    commit = _commit_files(work, {"data/blob.bin": bytes(1024)})
    bounds = source.Bounds(max_bytes=1024 + len("print('hi')\n"), max_files=5)  # app, main.py, data, blob
    snap = source.take(work, "work", "refs/heads/main", commit, tmp_path / "snap", bounds=bounds)
    assert (snap.root / "data" / "blob.bin").read_bytes() == bytes(1024)
    assert (snap.root / "app" / "main.py").read_text() == "print('hi')\n"
