"""A package spec (`pypi:mcp-server-time==2026.10.19`, `npm:@scope/name@1.2.3`), parsed strictly.

Exact versions only: a range, a tag (`latest`) or a missing version is refused with what to write,
since the same push must always build the same thing. Names and versions are held to patterns that
cannot start with `-` or hold a space, so they are safe argv items after `--`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pipeline.errors import PackageSpecError


class Registry(StrEnum):
    """Where a package comes from."""

    PYPI = "pypi"
    NPM = "npm"


MAX_SPEC_LENGTH = 300
PYPI_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?")
# PEP 440 public versions in the forms people publish: 1.2, 2026.10.19, 1.0rc1, 1.0.post2, 2!1.0.dev3
PYPI_VERSION = re.compile(
    r"(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?"
)
NPM_NAME = re.compile(r"(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*")
NPM_MAX_NAME = 214
SEMVER = re.compile(
    r"(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
)
_RANGE_MARKS = ("<", ">", "~", "^", "*", "!=", ",", " ", "||", "x", "X")


@dataclass(frozen=True)
class PackageSpec:
    """One exact version of one package of one registry."""

    registry: Registry
    name: str
    version: str

    def __str__(self) -> str:
        sep = "==" if self.registry is Registry.PYPI else "@"
        return f"{self.registry}:{self.name}{sep}{self.version}"

    @property
    def requirement(self) -> str:
        """The argv item that asks the registry's client for exactly this version."""
        return (
            f"{self.name}=={self.version}"
            if self.registry is Registry.PYPI
            else f"{self.name}@{self.version}"
        )

    @property
    def unscoped(self) -> str:
        """The name without an npm scope (`@modelcontextprotocol/x` → `x`)."""
        return self.name.rsplit("/", 1)[-1]


def parse(text: str) -> PackageSpec:
    """Parse `pypi:NAME==VERSION` or `npm:NAME@VERSION`; raise PackageSpecError saying what is wrong."""
    if len(text) > MAX_SPEC_LENGTH:
        raise PackageSpecError(
            f"the package spec is {len(text)} characters long", f"at most {MAX_SPEC_LENGTH}"
        )
    registry, colon, rest = text.partition(":")
    if not colon:
        raise PackageSpecError(
            f"{text!r} names no registry",
            'write "pypi:NAME==VERSION" or "npm:NAME@VERSION", e.g. "pypi:mcp-server-time==2026.10.19"',
        )
    if registry == Registry.PYPI:
        return _pypi(rest)
    if registry == Registry.NPM:
        return _npm(rest)
    raise PackageSpecError(
        f"unknown registry {registry!r}",
        "use pypi: or npm: (an image of its own is built from a Dockerfile: build.context/dockerfile)",
    )


def build(registry: str, name: str, version: str) -> PackageSpec:
    """The spec of `name` at `version` in `registry` (as server.json gives them), validated."""
    sep = "==" if registry == Registry.PYPI else "@"
    return parse(f"{registry}:{name}{sep}{version}")


def _pypi(rest: str) -> PackageSpec:
    name, sep, version = rest.partition("==")
    if not sep:
        cut = next((i for i, c in enumerate(rest) if c in "<>=~!,;[ "), len(rest))
        if cut < len(rest):
            raise PackageSpecError(
                f"{rest!r} asks for a range of versions, not one",
                f'pin one exact version: "pypi:{rest[:cut]}==<version>"',
            )
        raise PackageSpecError(
            f"{rest!r} gives no version", f'pin one exact version: "pypi:{rest}==<version>"'
        )
    if not PYPI_NAME.fullmatch(name):
        raise PackageSpecError(
            f"{name!r} is not a PyPI project name", "letters, digits, '.', '_' and '-' only"
        )
    if not PYPI_VERSION.fullmatch(version):
        ranged = any(m in version for m in "*,<>=~!")
        what = "a range or a wildcard, not one version" if ranged else "not an exact PEP 440 version"
        raise PackageSpecError(
            f"version {version!r} of {name} is {what}", f'pin one exact version: "pypi:{name}==1.2.0"'
        )
    return PackageSpec(Registry.PYPI, name, version)


def _npm(rest: str) -> PackageSpec:
    at = rest.rfind("@")
    if at <= 0:  # none, or only a scope's leading @
        raise PackageSpecError(f"{rest!r} gives no version", f'pin one exact version: "npm:{rest}@<version>"')
    name, version = rest[:at], rest[at + 1 :]
    if len(name) > NPM_MAX_NAME or not NPM_NAME.fullmatch(name):
        raise PackageSpecError(
            f"{name!r} is not an npm package name",
            "lowercase letters, digits, '.', '_', '~' and '-', with an optional @scope/",
        )
    if not SEMVER.fullmatch(version):
        ranged = version == "" or any(m in version for m in _RANGE_MARKS) or not version[:1].isdigit()
        raise PackageSpecError(
            f"version {version!r} of {name} is "
            + ("a range or a tag, not one version" if ranged else "not an exact semantic version"),
            f'pin one exact version, e.g. "npm:{name}@1.2.3"',
        )
    return PackageSpec(Registry.NPM, name, version)
