"""The base images servers build on, made offline with debootstrap: Python, and Node for npm packages.

No container registry answers on these machines, so `FROM python:3.12-slim` cannot be
pulled. `make` builds `central-mcp/python:3.11` instead: Debian bookworm (minbase) with
python3, plus the official `mcp` SDK installed from wheels downloaded on the host. On a VM
with a registry, set the build arg BASE_IMAGE=python:3.12-slim and this step is not needed.

`central-mcp base-image --runtime node` makes `central-mcp/node:18` the same way with Debian's
`nodejs` (18, which needs `--experimental-global-webcrypto` for current npm servers: set in
NODE_OPTIONS) — and python3 with the SDK too, so the provider's stdio bridge (Python) runs in it.
npm packages are laid out on the host (pipeline/packages/fetch.py), so the image needs no npm.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.dockerhost import LABEL_ROLE, DockerHost
from pipeline.errors import DockerError

BASE_IMAGE = "central-mcp/python:3.11"
# Raised whenever what goes into the image changes, so an older image on a machine is made again.
# 2: the SDK is byte-compiled (a server's first import of it took ~1.4 s at 0.5 CPU, ~0.7 s after).
# 3: its bytecode is checked against the sources' timestamps, so a server that patches one is seen.
BASE_VERSION = "3"
LABEL_BASE_VERSION = "central-mcp.base-version"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PYTHON_VERSION = "3.11"
NODE_IMAGE = "central-mcp/node:18"
# The Node image's own version, raised like BASE_VERSION: 1, Debian's nodejs + python3 and the SDK.
NODE_BASE_VERSION = "1"
NODE_OPTIONS = "--experimental-global-webcrypto"  # bookworm's Node 18: globalThis.crypto for npm servers
SDK_REQUIREMENT = "mcp>=2.0,<3"
_ARCH = platform.machine()
_PLATFORM = (
    "--only-binary=:all:",
    "--python-version",
    PYTHON_VERSION,
    "--platform",
    f"manylinux_2_34_{_ARCH}",
    "--platform",
    f"manylinux_2_17_{_ARCH}",
    "--platform",
    f"manylinux2014_{_ARCH}",
)
PRUNED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
    "var/cache/apt",
    "var/lib/apt/lists",
)


@dataclass(frozen=True)
class Runtime:
    """One base image: its tag, version, Debian packages, and what its image config adds."""

    name: str
    tag: str
    version: str
    include: tuple[str, ...]
    env: tuple[str, ...] = ()
    cmd: str = "python3"


PYTHON = Runtime("python", BASE_IMAGE, BASE_VERSION, ("python3", "ca-certificates"))
NODE = Runtime(
    "node",
    NODE_IMAGE,
    NODE_BASE_VERSION,
    ("nodejs", "python3", "ca-certificates"),
    (f"NODE_OPTIONS={NODE_OPTIONS}",),
    "node",
)
RUNTIMES = {r.name: r for r in (PYTHON, NODE)}


def ensure_base_image(
    host: DockerHost,
    cache: Path,
    say: Callable[[str], None],
    *,
    force: bool = False,
    tag: str | None = None,
    runtime: Runtime = PYTHON,
) -> bool:
    """Make the runtime's image (as `tag`, default its own) unless it exists; return whether it was made."""
    tag = tag or runtime.tag
    if not force and host.image_exists(tag):
        found = host.image_labels(tag).get(LABEL_BASE_VERSION, "1")
        if not found.isdigit() or int(found) >= int(runtime.version):  # never replace a newer one
            say(f"base image {tag} is present")
            return False
        say(f"base image {tag} is version {found}; making version {runtime.version}")
    packages = " + ".join(runtime.include[:-1])
    say(f"making base image {tag}: debootstrap {SUITE} + {packages} + {SDK_REQUIREMENT} (about a minute)")
    wheels = download_wheels(cache / "wheels", say)
    with tempfile.TemporaryDirectory(prefix="central-mcp-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _debootstrap(rootfs, runtime.include, say)
        _install_sdk(rootfs, wheels)
        for part in PRUNED:
            shutil.rmtree(rootfs / part, ignore_errors=True)
        tarball = Path(tmp) / "rootfs.tar"
        _check(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], "pack the root file system")
        host.import_rootfs(tarball, tag, _changes(runtime))
    say(f"base image {tag} is ready")
    return True


def _changes(runtime: Runtime) -> list[str]:
    """The image config `docker import` gives the root file system."""
    return [
        "ENV PYTHONUNBUFFERED=1",
        "ENV PYTHONDONTWRITEBYTECODE=1",
        *(f"ENV {pair}" for pair in runtime.env),
        "WORKDIR /app",
        f'LABEL {LABEL_ROLE}="base" {LABEL_BASE_VERSION}="{runtime.version}"',
        f'CMD ["{runtime.cmd}"]',
    ]


def download_wheels(target: Path, say: Callable[[str], None]) -> Path:
    """Download the SDK and its dependencies as wheels for the image's Python into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    say(f"downloading wheels for {SDK_REQUIREMENT} into {target}")
    _check(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--dest",
            str(target),
            *_PLATFORM,
            SDK_REQUIREMENT,
        ],
        "download the SDK wheels",
    )
    return target


def _debootstrap(rootfs: Path, include: tuple[str, ...], say: Callable[[str], None]) -> None:
    if shutil.which("debootstrap") is None:
        if os.geteuid() != 0:
            raise DockerError(
                "debootstrap is missing and installing it needs root: `sudo apt-get install debootstrap`"
            )
        say("installing debootstrap (apt-get, running as root)")
        _check(["apt-get", "update", "-qq"], "update the package lists")
        _check(["apt-get", "install", "-y", "-qq", "debootstrap"], "install debootstrap")
    _check(
        ["debootstrap", "--variant=minbase", f"--include={','.join(include)}", SUITE, str(rootfs), MIRROR],
        "debootstrap the base file system",
    )


def _install_sdk(rootfs: Path, wheels: Path) -> None:
    site = rootfs / "usr/local/lib" / f"python{PYTHON_VERSION}" / "dist-packages"
    _check(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-compile",
            "--find-links",
            str(wheels),
            "--target",
            str(site),
            *_PLATFORM,
            SDK_REQUIREMENT,
        ],
        "install the SDK into the image",
    )
    shutil.rmtree(site / "bin", ignore_errors=True)
    # Servers run as an unprivileged user on a read-only image and cannot write bytecode, so
    # compile it here, with the image's own interpreter.
    _check(
        [
            "chroot",
            str(rootfs),
            "python3",
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            f"/usr/local/lib/python{PYTHON_VERSION}/dist-packages",
        ],
        "byte-compile the SDK in the image",
    )


def _check(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DockerError(
            f"could not {what}: `{argv[0]}` exited {result.returncode}: {result.stderr.strip()[-1500:]}"
        )
