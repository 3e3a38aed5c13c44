"""The host's download of a package, bounded, cached per exact version, running no package code.

PyPI: `pip download --only-binary=:all:` for the image's Python and platform (a package with no
wheel is refused: an sdist would run its build code here), every wheel's SHA-256 written to a
requirements file that the image installs with `--require-hashes`. npm: `npm install
--ignore-scripts` into a staging directory (the tree is laid out here, its lifecycle scripts never
run; `package-lock.json` records each tarball's integrity), so the image build only copies it.

Each download runs as argv (never a shell), isolated from the operator's own pip/npm config, with
only a few environment variables (no provider secret), under `prlimit --fsize` (a file over
`packages.max_bytes` kills it), watched for its total size and file count, and stopped at
`packages.timeout`. What it leaves is moved into `<state>/packages/<registry>/<name>/<version>/` in
one rename, so a half-finished download is never mistaken for a cached one.
"""

from __future__ import annotations

import configparser
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config.settings import Packages
from pipeline.errors import BuildError
from pipeline.packages.spec import PackageSpec, Registry

IMAGE_ROOT = "/opt/server"  # where the image holds the installed package (a venv, or node_modules)
STAGED_FILE = "staged.json"
WHEELS = "wheels"
REQUIREMENTS = "requirements.txt"
APP = "app"
PIP_REQUIREMENT = "pip==25.3"  # runs from its wheel inside the build: a base image needs no pip
POLL_SECONDS = 0.25
LOG_TAIL_BYTES = 2000
MAX_METADATA_BYTES = 1024 * 1024  # entry_points.txt or package.json read from a download
# What open_to_all leaves: root owns the image's copy, any user reads it, nobody else writes it.
DIR_MODE, FILE_MODE, EXEC_MODE = 0o755, 0o644, 0o755
GLIBC_MINOR = 36  # Debian bookworm's glibc 2.36: manylinux_2_17 … manylinux_2_36 wheels run on it
PASSED_ENV = (
    "PATH",
    "LANG",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
)
SCRIPT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
BIN_PATH = re.compile(r"[A-Za-z0-9._@-]+(?:/[A-Za-z0-9._@-]+)*")
WHEEL_FILE = re.compile(
    r"(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.!+]+)(?:-[0-9][A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl"
)


@dataclass(frozen=True)
class Staged:
    """A downloaded package, ready to be a build context: its files and its entry command."""

    spec: PackageSpec
    root: Path
    command: tuple[str, ...]  # inside the image; () when the package names no entry point
    files: int
    size: int
    pip_wheel: str = ""  # PyPI: the pip wheel that installs the others inside the build


def fetch(
    spec: PackageSpec,
    bounds: Packages,
    cache: Path,
    say: Callable[[str], None],
    *,
    timeout: float | None = None,
) -> Staged:
    """The staged download of `spec`: from the cache, or downloaded now within `bounds`."""
    # npm keys its lock by paths relative to the real folder: through a link (a state dir on
    # another disk, say) they would climb out of the tree and name no package.
    cache = cache.resolve()
    target = cache / spec.registry / spec.name / spec.version
    if (target / STAGED_FILE).is_file():
        staged = _load(spec, target)
        say(f"{spec}: cached ({staged.files} files, {staged.size / 1024**2:.1f} MiB)")
        return staged
    cache.mkdir(parents=True, exist_ok=True)
    _sweep(cache, bounds.timeout)
    limit = min(bounds.timeout, timeout) if timeout is not None else bounds.timeout
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        out = work / "out"
        out.mkdir()
        say(f"{spec}: downloading on the host (no package code runs here)")
        started = time.monotonic()
        runner = _Runner(work, out, bounds, started + limit, limit)
        if spec.registry is Registry.PYPI:
            record = _pypi(spec, bounds, runner, out)
        else:
            record = _npm(spec, bounds, runner, out)
        shutil.rmtree(out / "tmp", ignore_errors=True)
        open_to_all(out)
        files, size = measure(out)
        record |= {"spec": str(spec), "files": files, "bytes": size}
        (out / STAGED_FILE).write_text(json.dumps(record, indent=1) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            out.rename(target)
        except OSError:  # another deploy finished the same download first: theirs is as good
            if not (target / STAGED_FILE).is_file():
                raise
        say(f"{spec}: {files} files, {size / 1024**2:.1f} MiB in {time.monotonic() - started:.1f}s")
        return _load(spec, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sweep(cache: Path, timeout: float) -> None:
    """Remove work folders a killed provider left: none is older than its download's timeout."""
    for work in cache.glob(".fetch-*"):
        try:
            stale = time.time() - work.stat().st_mtime > 2 * timeout
        except OSError:
            continue
        if stale:
            shutil.rmtree(work, ignore_errors=True)


def open_to_all(root: Path) -> None:
    """Make every folder and file under `root` readable by any user (folders and the owner's
    executables searchable and runnable too): a build's COPY keeps the modes the host's umask left,
    and the container runs as an unprivileged user (containers.user). Symlinks are left alone."""
    for folder, _, names in os.walk(root):
        os.chmod(folder, DIR_MODE)
        for name in names:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, EXEC_MODE if mode & stat.S_IXUSR else FILE_MODE)


def measure(root: Path) -> tuple[int, int]:
    """How many files (of any kind) and bytes are under `root`."""
    files = size = 0
    for folder, dirs, names in os.walk(root):
        for name in names + dirs:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:
                continue  # removed while we looked (a download moves its temporary files)
            files += 1
            size += info.st_size
    return files, size


def platform_tags(machine: str = "") -> list[str]:
    """pip's --platform arguments for wheels that run on Debian bookworm (glibc 2.36)."""
    arch = machine or platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 16, -1)]
    return [*tags, f"manylinux2014_{arch}"]


def _load(spec: PackageSpec, root: Path) -> Staged:
    record = json.loads((root / STAGED_FILE).read_text())
    return Staged(
        spec,
        root,
        tuple(record.get("command", ())),
        int(record["files"]),
        int(record["bytes"]),
        pip_wheel=str(record.get("pip_wheel", "")),
    )


class _Runner:
    """Runs one download command within the bounds, watching what it writes under `watch`."""

    def __init__(self, work: Path, watch: Path, bounds: Packages, deadline: float, limit: float) -> None:
        self.work, self.watch, self.bounds = work, watch, bounds
        self.deadline, self.limit = deadline, limit
        self.home = work / "home"
        self.home.mkdir()
        (watch / "tmp").mkdir()

    def run(self, argv: list[str], what: str) -> None:
        """Run `argv`; raise BuildError when it fails or goes past a bound."""
        prlimit = shutil.which("prlimit")
        full = [prlimit, f"--fsize={self.bounds.max_bytes}", "--", *argv] if prlimit else argv
        env = {k: v for k, v in os.environ.items() if k in PASSED_ENV}
        env |= {"HOME": str(self.home), "TMPDIR": str(self.watch / "tmp"), "LC_ALL": "C.UTF-8"}
        log = self.work / "log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                full, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env,
                cwd=self.work, start_new_session=True,
            )  # fmt: skip
            try:
                code = self._wait(proc, what)
            finally:
                if proc.poll() is None:
                    _kill(proc)
        tail = _tail(log) if code != 0 else ""
        # Killed by SIGXFSZ, or (Python ignores that signal) a write that failed with EFBIG.
        if code in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or os.strerror(errno.EFBIG) in tail:
            raise BuildError(self._over(f"a file over {self._mib(self.bounds.max_bytes)}"))
        if code != 0:
            raise BuildError(f"could not {what}: `{Path(argv[0]).name}` exited {code}:\n{tail}")
        self._bounded()  # a download quicker than one poll is measured here

    def _bounded(self) -> None:
        files, size = measure(self.watch)
        if size > self.bounds.max_bytes:
            raise BuildError(self._over(f"more than {self._mib(self.bounds.max_bytes)} in all"))
        if files > self.bounds.max_files:
            raise BuildError(self._over(f"more than {self.bounds.max_files} files"))

    def _wait(self, proc: subprocess.Popen[bytes], what: str) -> int:
        while True:
            try:
                return proc.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > self.deadline:
                _kill(proc)
                raise BuildError(
                    f"could not {what} within {self.limit:g}s (packages.timeout in deploy.yaml, "
                    "or what is left of proxy.deploy_timeout); the download was stopped"
                )
            try:
                self._bounded()
            except BuildError:
                _kill(proc)
                raise

    def _over(self, what: str) -> str:
        return (
            f"the download wrote {what} (packages.max_bytes / max_files in deploy.yaml) and was stopped; "
            "raise the bound if this package really is that large"
        )

    @staticmethod
    def _mib(size: int) -> str:
        return f"{size / 1024**2:g} MiB"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    proc.wait()


def _tail(log: Path) -> str:
    with log.open("rb") as found:
        found.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
        return found.read().decode("utf-8", "replace").strip()


def _pypi(spec: PackageSpec, bounds: Packages, runner: _Runner, out: Path) -> dict[str, object]:
    wheels = out / WHEELS
    platforms = [arg for tag in platform_tags() for arg in ("--platform", tag)]
    runner.run(
        [
            sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir",
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", bounds.python_version,
            *platforms, "--index-url", bounds.pypi_index, "--dest", str(wheels),
            "--", spec.requirement, PIP_REQUIREMENT,
        ],
        f"download {spec} and its dependencies as wheels",
    )  # fmt: skip
    hashes = _lock(wheels)
    return {
        "command": list(_console_script(spec, wheels)),
        "pip_wheel": next(n for n in hashes if _normal(n.split("-", 1)[0]) == "pip"),
        "sha256": hashes,
    }


def _lock(wheels: Path) -> dict[str, str]:
    """Write requirements.txt pinning every wheel by version and SHA-256; return the hashes."""
    hashes: dict[str, str] = {}
    lines = []
    for wheel in sorted(wheels.iterdir()):
        found = WHEEL_FILE.fullmatch(wheel.name)
        if found is None or not wheel.is_file() or wheel.is_symlink():
            raise BuildError(f"the download left {wheel.name!r}, which is not a wheel: refused")
        digest = hashlib.sha256()
        with wheel.open("rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
        hashes[wheel.name] = digest.hexdigest()
        lines.append(f"{found['name']}=={found['version']} --hash=sha256:{hashes[wheel.name]}")
    (wheels / REQUIREMENTS).write_text("\n".join(lines) + "\n")
    return hashes


def _console_script(spec: PackageSpec, wheels: Path) -> tuple[str, ...]:
    """The package's console script named like it (or its only one); () when it has none."""
    wheel = next(
        (w for w in wheels.glob("*.whl") if _normal(w.name.split("-", 1)[0]) == _normal(spec.name)), None
    )
    if wheel is None:
        raise BuildError(f"{spec}: the download holds no wheel of {spec.name}")
    scripts = _entry_points(wheel)
    script = (
        scripts[0]
        if len(scripts) == 1
        else next((s for s in scripts if _normal(s) == _normal(spec.name)), "")
    )
    return (f"{IMAGE_ROOT}/bin/{script}",) if script else ()


def _entry_points(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        members = [
            i for i in archive.infolist() if re.fullmatch(r"[^/]+\.dist-info/entry_points\.txt", i.filename)
        ]
        if len(members) != 1 or members[0].file_size > MAX_METADATA_BYTES:
            return []
        text = archive.read(members[0]).decode("utf-8", "replace")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return []
    if not parser.has_section("console_scripts"):
        return []
    return sorted(name for name in parser["console_scripts"] if SCRIPT_NAME.fullmatch(name))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _npm(spec: PackageSpec, bounds: Packages, runner: _Runner, out: Path) -> dict[str, object]:
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError("npm is not installed on this VM, and npm packages are downloaded on the host: "
                         "`sudo apt-get install npm`")  # fmt: skip
    app = out / APP
    app.mkdir()
    manifest = {"name": "central-mcp-package", "private": True, "dependencies": {spec.name: spec.version}}
    (app / "package.json").write_text(json.dumps(manifest, indent=1) + "\n")
    npmrc = runner.work / "npmrc"
    npmrc.write_text("")
    runner.run(
        [
            npm, "install", "--prefix", str(app), "--ignore-scripts", "--no-audit", "--no-fund",
            "--omit=dev", "--no-update-notifier", "--userconfig", str(npmrc),
            "--cache", str(out / "tmp" / "npm-cache"), "--registry", bounds.npm_registry,
            "--omit-lockfile-registry-resolved=false",
        ],
        f"download {spec} and its dependencies (lifecycle scripts off)",
    )  # fmt: skip
    _from_registry(spec, app, bounds.npm_registry)
    return {"command": list(_npm_bin(spec, app))}


def _from_registry(spec: PackageSpec, app: Path, registry: str) -> None:
    """Refuse a tree with a package npm took from anywhere but the registry: a published package's
    dependency may name a git repository, tarball or folder on the host (the provider holds every
    project's repositories), which npm installs as readily, and the image would carry it."""
    lock = app / "package-lock.json"
    try:
        packages = json.loads(lock.read_text("utf-8")).get("packages")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError) as exc:
        raise BuildError(f"{spec}: npm left no readable package-lock.json ({exc})") from exc
    home = urlsplit(registry)
    found_in = packages if isinstance(packages, dict) else {}
    # node_modules/<name> first: a linked folder's own entry is keyed by its path, not its name
    for where, entry in sorted(found_in.items(), key=lambda item: not item[0].startswith("node_modules/")):
        if not where or (isinstance(entry, dict) and entry.get("inBundle") is True):
            continue  # the staging package itself; a package bundled in a registry tarball
        resolved = entry.get("resolved") if isinstance(entry, dict) else None
        found = urlsplit(resolved) if isinstance(resolved, str) else None
        linked = isinstance(entry, dict) and entry.get("link")
        if linked or found is None or (found.scheme, found.netloc) != (home.scheme, home.netloc):
            name = where.rpartition("node_modules/")[2]
            raise BuildError(
                f"{spec}: its dependency {name!r} is not from the registry "
                f"({resolved or 'a link to a folder'}): only {registry} packages are installed"
            )


def _npm_bin(spec: PackageSpec, app: Path) -> tuple[str, ...]:
    """`node <its bin>`: the bin named like the package (or its only one); () when it has none."""
    folder = app / "node_modules" / spec.name
    meta = folder / "package.json"
    if not meta.is_file() or meta.is_symlink() or meta.stat().st_size > MAX_METADATA_BYTES:
        raise BuildError(f"{spec}: the download holds no readable package.json of {spec.name}")
    try:
        data = json.loads(meta.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BuildError(f"{spec}: its package.json is not JSON ({exc})") from exc
    found = data.get("bin") if isinstance(data, dict) else None
    bins = {spec.unscoped: found} if isinstance(found, str) else found if isinstance(found, dict) else {}
    path = (
        bins.get(spec.unscoped)
        if spec.unscoped in bins
        else next(iter(bins.values()))
        if len(bins) == 1
        else None
    )
    if not isinstance(path, str):
        return ()
    path = path.removeprefix("./")
    target = (folder / path).resolve()
    if not BIN_PATH.fullmatch(path) or ".." in path.split("/") or not target.is_relative_to(app.resolve()):
        raise BuildError(f"{spec}: its bin {path!r} is not a plain path inside the package")
    if not target.is_file():
        raise BuildError(f"{spec}: its bin {path!r} is not in the package")
    return ("node", f"{IMAGE_ROOT}/node_modules/{spec.name}/{path}")
