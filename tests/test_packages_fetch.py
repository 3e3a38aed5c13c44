"""pipeline/packages/fetch.py: the host's download of a package — bounded, cached, wheels only, npm
scripts off — against a fake index on loopback, then the real PyPI and npm registries."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from pipeline.config.settings import Packages
from pipeline.errors import BuildError
from pipeline.packages import fetch, spec
from tests.support.package_index import Hosted, Index, NpmRegistry, serving, serving_npm, tiny_wheel

MIB = 1024 * 1024
TIME = "pypi:mcp-server-time==2026.10.19"
EVERYTHING = "npm:@modelcontextprotocol/server-everything@2026.8.31"
PIP_WHEEL = Hosted("pip-25.3-py3-none-any.whl", body=tiny_wheel("pip", "25.3"))


def _index(**projects: list[Hosted]) -> Index:
    """A fake index with `projects` and the pip wheel every download also asks for."""
    return Index({"pip": [PIP_WHEEL], **projects})


def _fetch(text: str, cache: Path, **bounds: object) -> tuple[fetch.Staged, list[str]]:
    said: list[str] = []
    staged = fetch.fetch(spec.parse(text), dataclasses.replace(Packages(), **bounds), cache, said.append)  # type: ignore[arg-type]
    return staged, said


def test_a_wheel_is_staged_with_hashes_and_its_console_script(tmp_path: Path) -> None:
    """From the fake index: wheels land in the cache, requirements.txt pins each by SHA-256, the entry
    command is the console script named like the package, and a second fetch reads the cache."""
    wheel = tiny_wheel("tinypkg", "1.0", {"tinypkg": "tinypkg:main", "other": "tinypkg:other"})
    index = _index(tinypkg=[Hosted("tinypkg-1.0-py3-none-any.whl", body=wheel)])
    with serving(index) as url:
        staged, said = _fetch("pypi:tinypkg==1.0", tmp_path, pypi_index=url)
        again, said_again = _fetch("pypi:tinypkg==1.0", tmp_path, pypi_index=url)
    assert staged.root == tmp_path / "pypi" / "tinypkg" / "1.0"
    assert staged.command == ("/opt/server/bin/tinypkg",)
    assert staged.pip_wheel == "pip-25.3-py3-none-any.whl"
    lines = (staged.root / fetch.WHEELS / fetch.REQUIREMENTS).read_text().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["pip==25.3", "tinypkg==1.0"]
    assert all(" --hash=sha256:" in line for line in lines)
    assert "downloading on the host" in said[0]
    assert again.command == staged.command and "cached" in said_again[0]
    assert index.requests.count("tinypkg-1.0-py3-none-any.whl") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["pypi"]  # no half-finished work left


def test_an_oversized_wheel_is_stopped_while_it_downloads(tmp_path: Path) -> None:
    """A 64 MiB wheel against max_bytes of 2 MiB: the download is killed (prlimit's file size or the
    watcher), the error names the bound, and nothing reaches the cache."""
    index = _index(bigpkg=[Hosted("bigpkg-1.0-py3-none-any.whl", size=64 * MIB)])
    started = time.monotonic()
    with serving(index) as url, pytest.raises(BuildError) as caught:
        _fetch("pypi:bigpkg==1.0", tmp_path, pypi_index=url, max_bytes=2 * MIB)
    assert "packages.max_bytes" in str(caught.value)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "pypi").exists()


def test_a_download_with_too_many_files_is_refused(tmp_path: Path) -> None:
    """max_files counts every file a download writes: two wheels against a bound of one."""
    index = _index(tinypkg=[Hosted("tinypkg-1.0-py3-none-any.whl", body=tiny_wheel("tinypkg", "1.0"))])
    with serving(index) as url, pytest.raises(BuildError, match="more than 1 files"):
        _fetch("pypi:tinypkg==1.0", tmp_path, pypi_index=url, max_files=1)


def test_a_download_that_hangs_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    """A wheel whose body never ends is stopped at packages.timeout, and the error says which bound."""
    index = _index(slowpkg=[Hosted("slowpkg-1.0-py3-none-any.whl", size=MIB, hang=True)])
    started = time.monotonic()
    with serving(index) as url, pytest.raises(BuildError, match=r"within 3s \(packages.timeout"):
        _fetch("pypi:slowpkg==1.0", tmp_path, pypi_index=url, timeout=3.0)
    assert time.monotonic() - started < 15


def test_an_sdist_only_package_is_refused_and_never_built(tmp_path: Path) -> None:
    """A package with only an sdist is refused (--only-binary): its setup.py is never even fetched."""
    index = _index(srconly=[Hosted("srconly-1.0.tar.gz", body=b"not fetched")])
    with serving(index) as url, pytest.raises(BuildError) as caught:
        _fetch("pypi:srconly==1.0", tmp_path, pypi_index=url)
    assert "could not download pypi:srconly==1.0" in str(caught.value)
    assert "srconly" in str(caught.value)
    assert "srconly-1.0.tar.gz" not in index.requests


def test_a_package_without_a_console_script_has_no_command(tmp_path: Path) -> None:
    """A wheel with several console scripts, none named like it, leaves the command to run.command."""
    wheel = tiny_wheel("libpkg", "2.0", {"a": "libpkg:a", "b": "libpkg:b"})
    with serving(_index(libpkg=[Hosted("libpkg-2.0-py3-none-any.whl", body=wheel)])) as url:
        staged, _ = _fetch("pypi:libpkg==2.0", tmp_path, pypi_index=url)
    assert staged.command == ()


def test_the_platform_tags_cover_bookworms_glibc() -> None:
    """Wheels for manylinux 2.17 through 2.36 (and manylinux2014) are accepted."""
    tags = fetch.platform_tags("x86_64")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert tags[-1] == "manylinux2014_x86_64"


def test_the_real_mcp_server_time_downloads_as_wheels(package_cache: Path) -> None:
    """pip download of mcp-server-time from PyPI: only wheels, each hashed, and its console script."""
    staged, _ = _fetch(TIME, package_cache)
    wheels = sorted(p.name for p in (staged.root / fetch.WHEELS).glob("*.whl"))
    assert any(w.startswith("mcp_server_time-2026.10.19-") for w in wheels)
    assert any(w.startswith("mcp-") for w in wheels)  # its dependencies came with it
    assert staged.command == ("/opt/server/bin/mcp-server-time",)
    record = json.loads((staged.root / fetch.STAGED_FILE).read_text())
    assert sorted(record["sha256"]) == wheels


def test_the_real_server_everything_installs_with_scripts_off(package_cache: Path) -> None:
    """npm install of server-everything from npm: its tree is laid out, the lock records integrity,
    and the command is node with its bin."""
    staged, _ = _fetch(EVERYTHING, package_cache)
    app = staged.root / fetch.APP
    lock = json.loads((app / "package-lock.json").read_text())
    entry = lock["packages"]["node_modules/@modelcontextprotocol/server-everything"]
    assert entry["version"] == "2026.8.31" and entry["integrity"].startswith("sha512-")
    assert staged.command[0] == "node"
    assert staged.command[1].startswith("/opt/server/node_modules/@modelcontextprotocol/server-everything/")
    assert not (staged.root / "tmp").exists()  # npm's cache was left behind on the host


def test_work_left_by_a_killed_download_is_swept(tmp_path: Path) -> None:
    """A `.fetch-*` folder older than twice the timeout (its provider was killed) goes at the next fetch;
    a younger one (a download in progress) stays."""
    old, young = tmp_path / ".fetch-old", tmp_path / ".fetch-young"
    for folder in (old, young):
        (folder / "out").mkdir(parents=True)
    long_ago = time.time() - 3600
    os.utime(old, (long_ago, long_ago))
    index = _index(tinypkg=[Hosted("tinypkg-1.0-py3-none-any.whl", body=tiny_wheel("tinypkg", "1.0"))])
    with serving(index) as url:
        _fetch("pypi:tinypkg==1.0", tmp_path, pypi_index=url, timeout=60.0)
    assert not old.exists() and young.exists()


def test_no_lifecycle_script_of_an_npm_package_runs_on_the_host(tmp_path: Path) -> None:
    """A package whose preinstall, install and postinstall scripts would leave a marker is laid out with
    none of them run; its bin is the entry command."""
    marker = tmp_path / "ran"
    script = f"node -e \"require('fs').writeFileSync('{marker}', 'x')\""
    manifest = {
        "name": "evil-pkg",
        "version": "1.0.0",
        "bin": {"evil-pkg": "./index.js"},
        "scripts": {"preinstall": script, "install": script, "postinstall": script, "prepare": script},
    }
    registry = NpmRegistry(
        {"evil-pkg": {"package.json": json.dumps(manifest), "index.js": "console.log(1)\n"}}
    )
    with serving_npm(registry) as url:
        staged, _ = _fetch("npm:evil-pkg@1.0.0", tmp_path / "cache", npm_registry=url)
    assert not marker.exists()
    assert staged.command == ("node", "/opt/server/node_modules/evil-pkg/index.js")
    assert (staged.root / fetch.APP / "node_modules" / "evil-pkg" / "index.js").is_file()


def test_a_staged_tree_is_opened_to_every_user_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 077 a download's files would be root's alone in the image (COPY keeps modes) and
    the container's user could not read them: folders 755, files 644, the owner's executables 755,
    symlinks untouched."""
    old = os.umask(0o077)
    try:
        (tmp_path / "lib").mkdir()
        (tmp_path / "lib" / "index.js").write_text("x")
        (tmp_path / "lib" / "cli.js").write_text("#!/usr/bin/env node\n")
        (tmp_path / "lib" / "cli.js").chmod(0o700)
        (tmp_path / "bin").symlink_to("lib")
    finally:
        os.umask(old)
    fetch.open_to_all(tmp_path)
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in tmp_path.rglob("*")}
    assert (modes["lib"], modes["index.js"], modes["cli.js"]) == (0o755, 0o644, 0o755)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_a_package_json_nested_past_the_parsers_depth_is_a_build_error(tmp_path: Path) -> None:
    """A downloaded package.json too deep for the parser is refused by name, not a crash."""
    folder = tmp_path / "node_modules" / "deep"
    folder.mkdir(parents=True)
    (folder / "package.json").write_text("[" * 100_000)
    with pytest.raises(BuildError, match="not JSON"):
        fetch._npm_bin(spec.parse("npm:deep@1.0.0"), tmp_path)


def _host_sources(root: Path) -> dict[str, str]:
    """Things on the host a published package's dependencies may name: a git repository (as a
    provider holds every project's), a tarball and a folder, each with a marker file."""
    folder = root / "folder"
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(json.dumps({"name": "hostdir", "version": "1.0.0"}))
    (folder / "secret.txt").write_text("HOST-SECRET\n")
    tarball = root / "secret.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(folder, arcname="package")
    work = root / "work"
    shutil.copytree(folder, work)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "x"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "repo.git")], check=True)
    return {
        "git": f"git+file://{root / 'repo.git'}",
        "tarball": f"file:{tarball}",
        "folder": f"file:{folder}",
    }


@pytest.mark.parametrize("kind", ["git", "tarball", "folder"])
def test_a_dependency_from_outside_the_registry_is_refused(tmp_path: Path, kind: str) -> None:
    """A published package whose dependency names a host git repository, tarball or folder (npm
    installs those as readily as registry packages) is refused, naming it: the host's files never
    reach the image."""
    source = _host_sources(tmp_path / "host")[kind]
    manifest = {"name": "evil-pkg", "version": "1.0.0", "bin": "index.js", "dependencies": {"dep": source}}
    registry = NpmRegistry({"evil-pkg": {"package.json": json.dumps(manifest), "index.js": "1\n"}})
    with serving_npm(registry) as url, pytest.raises(BuildError, match="'dep' is not from the registry"):
        _fetch("npm:evil-pkg@1.0.0", tmp_path / "cache", npm_registry=url)
    assert not list((tmp_path / "cache").rglob("secret.txt"))


def test_npm_through_a_linked_cache_keys_its_lock_by_the_trees_own_paths(tmp_path: Path) -> None:
    """A cache reached through a link (a state dir moved to another disk) still gives a lock whose
    entries are node_modules/<name>: npm runs in the real folder."""
    manifest = {"name": "plain-pkg", "version": "1.0.0", "bin": {"plain-pkg": "./index.js"}}
    registry = NpmRegistry({"plain-pkg": {"package.json": json.dumps(manifest), "index.js": "1\n"}})
    real = tmp_path / "disk" / "cache"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    with serving_npm(registry) as url:
        staged, _ = _fetch("npm:plain-pkg@1.0.0", tmp_path / "link", npm_registry=url)
    lock = json.loads((staged.root / fetch.APP / "package-lock.json").read_text())
    assert "node_modules/plain-pkg" in lock["packages"], list(lock["packages"])
