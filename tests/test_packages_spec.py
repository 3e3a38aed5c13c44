"""pipeline/packages/spec.py: package specs are exact versions of pypi or npm packages, or refused."""

from __future__ import annotations

import pytest

from pipeline.errors import PackageSpecError
from pipeline.packages import spec
from pipeline.packages.spec import Registry

GOOD = [
    ("pypi:mcp-server-time==2026.10.19", Registry.PYPI, "mcp-server-time", "2026.10.19"),
    ("pypi:mcp_server.x==1.0rc1", Registry.PYPI, "mcp_server.x", "1.0rc1"),
    ("pypi:a==2!1.0.post3.dev4", Registry.PYPI, "a", "2!1.0.post3.dev4"),
    (
        "npm:@modelcontextprotocol/server-everything@2026.8.31",
        Registry.NPM,
        "@modelcontextprotocol/server-everything",
        "2026.8.31",
    ),
    ("npm:server-memory@1.2.3-beta.1+build.5", Registry.NPM, "server-memory", "1.2.3-beta.1+build.5"),
]

BAD = [
    ("pypi:mcp-server-time", "gives no version", "pypi:mcp-server-time==<version>"),
    ("pypi:mcp-server-time>=1.0", "a range of versions", "pypi:mcp-server-time==<version>"),
    ("pypi:mcp-server-time~=1.0", "a range of versions", "pypi:mcp-server-time==<version>"),
    ("pypi:mcp-server-time==1.*", "a range or a wildcard", "exact version"),
    ("pypi:mcp-server-time==1.0,<2", "a range or a wildcard", "exact version"),
    ("pypi:x==1.0;rm -rf /", "not an exact PEP 440 version", "exact version"),
    ("pypi:-rf==1.0", "not a PyPI project name", "letters"),
    ("pypi:--index-url=http://evil==1.0", "not a PyPI project name", "letters"),
    ("npm:@modelcontextprotocol/server-everything", "gives no version", "@<version>"),
    ("npm:server-memory@^1.2.3", "a range or a tag", "npm:server-memory@1.2.3"),
    ("npm:server-memory@~1.2.3", "a range or a tag", "exact version"),
    ("npm:server-memory@1.x", "a range or a tag", "exact version"),
    ("npm:server-memory@latest", "a range or a tag", "exact version"),
    ("npm:server-memory@1.2", "not an exact semantic version", "exact version"),
    ("npm:Server-Memory@1.2.3", "not an npm package name", "lowercase"),
    ("npm:-g@1.2.3", "not an npm package name", "lowercase"),
    ("npm:@scope/../x@1.2.3", "not an npm package name", "lowercase"),
    ("oci:ghcr.io/github/github-mcp-server:1.0", "unknown registry 'oci'", "use pypi: or npm:"),
    ("mcp-server-time==1.0", "names no registry", "pypi:NAME==VERSION"),
]


@pytest.mark.parametrize(("text", "registry", "name", "version"), GOOD)
def test_an_exact_version_parses_and_prints_back(
    text: str, registry: Registry, name: str, version: str
) -> None:
    """An exact spec gives its registry, name and version, and prints as it was written."""
    found = spec.parse(text)
    assert (found.registry, found.name, found.version) == (registry, name, version)
    assert str(found) == text


@pytest.mark.parametrize(("text", "message", "hint"), BAD)
def test_a_range_a_tag_or_a_bad_name_is_refused_with_the_fix(text: str, message: str, hint: str) -> None:
    """Ranges, tags, missing versions, unknown registries and names that could be options are refused,
    each saying what to write instead."""
    with pytest.raises(PackageSpecError) as caught:
        spec.parse(text)
    assert message in str(caught.value)
    assert hint in caught.value.hint


def test_an_overlong_spec_is_refused_before_it_is_read() -> None:
    """A spec past MAX_SPEC_LENGTH is refused by its length alone."""
    with pytest.raises(PackageSpecError, match="characters long"):
        spec.parse("pypi:" + "a" * spec.MAX_SPEC_LENGTH + "==1.0")


def test_the_requirement_is_what_pip_and_npm_are_given() -> None:
    """The argv item asks each client for exactly one version; npm's unscoped name drops the scope."""
    assert spec.parse("pypi:mcp-server-time==2026.10.19").requirement == "mcp-server-time==2026.10.19"
    npm = spec.parse("npm:@modelcontextprotocol/server-everything@2026.8.31")
    assert npm.requirement == "@modelcontextprotocol/server-everything@2026.8.31"
    assert npm.unscoped == "server-everything"


def test_build_makes_a_spec_from_server_json_fields() -> None:
    """server.json's registryType, identifier and version make the same spec, checked the same way."""
    assert str(spec.build("npm", "@a/b", "1.0.0")) == "npm:@a/b@1.0.0"
    with pytest.raises(PackageSpecError, match="a range or a tag"):
        spec.build("npm", "@a/b", "latest")
