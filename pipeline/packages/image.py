"""The Dockerfile the provider writes for a package: installed with no network on a base image.

The build context is the staged download itself (fetch.py). PyPI: a venv at /opt/server made by the
image's own Python (Debian's refuses system installs, PEP 668), filled by pip run from its wheel
(`--no-index --require-hashes`), byte-compiled (containers cannot write bytecode), then copied into
a clean stage so no wheel stays in the image. npm: the tree laid out on the host, copied. The base
image is a build arg (`BASE_IMAGE`), so a VM with a registry names `python:3.12-slim` or `node:22`
in deploy.yaml's `packages` section instead of the offline `central-mcp/*` images.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence

from pipeline.config.settings import Packages
from pipeline.packages.fetch import APP, IMAGE_ROOT, REQUIREMENTS, WHEELS, Staged
from pipeline.packages.spec import Registry

BASE_ARG = "BASE_IMAGE"
LABEL_PACKAGE = "central-mcp.package"


def base_image(staged: Staged, packages: Packages) -> str:
    """The base image a package of this registry builds on (deploy.yaml's `packages`)."""
    return packages.python_image if staged.spec.registry is Registry.PYPI else packages.node_image


def build_args(staged: Staged, packages: Packages) -> Mapping[str, str]:
    """The build args of the generated Dockerfile."""
    return {BASE_ARG: base_image(staged, packages)}


def dockerfile(staged: Staged, packages: Packages, args: Sequence[str] = ()) -> str:
    """The Dockerfile text that installs `staged` with no network; its command is the package's entry
    command followed by `args`."""
    head = [
        f"# Written by central-mcp for {staged.spec}: installed from what the host downloaded, no network.",
        f"ARG {BASE_ARG}={base_image(staged, packages)}",
    ]
    body = _python(staged) if staged.spec.registry is Registry.PYPI else _node()
    tail = [f"LABEL {LABEL_PACKAGE}={json.dumps(str(staged.spec))}"]
    if staged.command:
        tail.append(f"CMD {json.dumps([*staged.command, *args])}")
    return "\n".join([*head, *body, *tail]) + "\n"


def _python(staged: Staged) -> list[str]:
    venv = IMAGE_ROOT
    pip = shlex.quote(f"/pkg/{WHEELS}/{staged.pip_wheel}/pip")  # a file name the index chose: quoted
    return [
        f"FROM ${{{BASE_ARG}}} AS install",
        f"COPY {WHEELS} /pkg/{WHEELS}",
        f"RUN python3 -m venv --without-pip {venv} \\",
        f" && {venv}/bin/python {pip} install --no-index --no-cache-dir --disable-pip-version-check \\",
        f"      --quiet --find-links /pkg/{WHEELS} --require-hashes -r /pkg/{WHEELS}/{REQUIREMENTS} \\",
        f" && {venv}/bin/python -m compileall -q -j 0 {venv}/lib",
        f"FROM ${{{BASE_ARG}}}",
        f"COPY --from=install {venv} {venv}",
        f"ENV PATH={venv}/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
    ]


def _node() -> list[str]:
    return [
        f"FROM ${{{BASE_ARG}}}",
        f"COPY {APP} {IMAGE_ROOT}",
        f"ENV PATH={IMAGE_ROOT}/node_modules/.bin:$PATH",
    ]
