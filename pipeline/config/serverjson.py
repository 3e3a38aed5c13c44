"""An official registry `server.json` (schema 2025-12-11) read as a server manifest.

A folder that holds `server.json` and no `mcp-server.yaml` deploys from its own description: the
first `packages[]` entry of registryType pypi or npm is built as `build.package`, its
`packageArguments` follow the package's entry command, its `environmentVariables` become `run.env`
(a value or default) or `run.secrets` (`isSecret`: granted in deploy.yaml like any server secret).
What server.json does not say takes our defaults: port 8080, path /mcp, health, resources, access
`[all]`. `runtimeArguments` configure a client's runner (`npx`, `uvx`), which the image replaces:
they are ignored for those runners and refused for any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pipeline.config import schema
from pipeline.config.settings import PROVIDER_ENV_PREFIX, Repo, Settings
from pipeline.config.yamlsrc import Document, JsonPath
from pipeline.errors import PackageSpecError, Problem
from pipeline.packages import spec as package_spec

SERVER_JSON = "server.json"
SCHEMA = "mcp-server-json-2025-12-11"
DEFAULT_PORT = 8080  # where the stdio bridge (or a package's own HTTP server) listens in the container
DEFAULT_PATH = "/mcp"
IGNORED_RUNNERS = ("", "npx", "uvx", "pipx", "pnpm", "bunx")
MAX_ARGS = 100
MAX_ARG_LENGTH = 4096
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_VARIABLE = re.compile(r"\{([A-Za-z0-9_.-]+)\}")


@dataclass
class _Reading:
    """What one server.json turns into, and what was wrong with it."""

    doc: Document
    settings: Settings
    repo: Repo
    problems: list[Problem] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)

    def fault(self, path: JsonPath, message: str, hint: str = "") -> None:
        self.problems.append(self.doc.problem(path, message, hint))


def to_manifest(doc: Document, settings: Settings, repo: Repo) -> tuple[dict[str, Any], list[Problem]]:
    """The manifest data (our schema's shape) a server.json describes, and its problems."""
    problems = schema.validate(doc, SCHEMA)
    data = doc.data
    if problems or not isinstance(data, dict):
        return {}, problems
    reading = _Reading(doc, settings, repo)
    name = _server_name(reading, str(data["name"]))
    index, package = _package(reading, data.get("packages", []))
    if package is None:
        return {}, reading.problems
    spec = _spec(reading, index, package)
    transport, port, path = _transport(reading, index, package.get("transport", {}))
    _runtime_arguments(reading, index, package)
    _arguments(reading, (*_at(index), "packageArguments"), package.get("packageArguments", []))
    _environment(reading, index, package.get("environmentVariables", []), name)
    run: dict[str, Any] = {"port": port, "path": path, "env": reading.env, "secrets": reading.secrets}
    if reading.args:
        run["args"] = reading.args
    manifest = {
        "name": name,
        "version": str(data["version"]),
        "description": str(data["description"]),
        "transport": transport,
        "build": {"package": str(spec) if spec else ""},
        "run": run,
        "access": ["all"],
    }
    return manifest, reading.problems


def _at(index: int) -> JsonPath:
    return ("packages", index)


def _server_name(reading: _Reading, full: str) -> str:
    """`io.github.user/Weather_API` → `weather-api`: the part after the slash, as a DNS label."""
    name = re.sub(r"[._]+", "-", full.split("/", 1)[-1].lower()).strip("-")[:63].strip("-")
    if not DNS_LABEL.fullmatch(name):
        reading.fault(
            ("name",),
            f"server.json name {full!r} gives no usable server name ({name!r} is not a DNS label)",
            "put an mcp-server.yaml beside it that names the server and says build.package",
        )
    return name


def _package(reading: _Reading, packages: list[Any]) -> tuple[int, dict[str, Any] | None]:
    for index, package in enumerate(packages):
        if package.get("registryType") in tuple(package_spec.Registry):
            return index, package
    kinds = ", ".join(sorted({str(p.get("registryType")) for p in packages})) or "none"
    reading.fault(
        ("packages",),
        f"server.json lists no pypi or npm package (registry types: {kinds})",
        "central-mcp builds pypi and npm packages; for others write an mcp-server.yaml and a Dockerfile",
    )
    return 0, None


def _spec(reading: _Reading, index: int, package: dict[str, Any]) -> package_spec.PackageSpec | None:
    registry = str(package["registryType"])
    if "version" not in package:
        reading.fault(
            _at(index), f"package {package['identifier']!r} gives no version", "add one exact version"
        )
        return None
    try:
        spec = package_spec.build(registry, str(package["identifier"]), str(package["version"]))
    except PackageSpecError as exc:
        reading.fault((*_at(index), "version"), str(exc), exc.hint)
        return None
    base = package.get("registryBaseUrl")
    ours = (
        reading.settings.packages.pypi_index if registry == "pypi" else reading.settings.packages.npm_registry
    )
    if isinstance(base, str) and urlsplit(base).hostname != urlsplit(ours).hostname:
        key = "pypi_index" if registry == "pypi" else "npm_registry"
        reading.fault(
            (*_at(index), "registryBaseUrl"),
            f"the package comes from {base}, but this VM downloads {registry} packages from {ours}",
            f"set packages.{key} in deploy.yaml, or drop registryBaseUrl",
        )
    return spec


def _transport(reading: _Reading, index: int, transport: dict[str, Any]) -> tuple[str, int, str]:
    kind = transport.get("type")
    if kind == "stdio":
        return "stdio", DEFAULT_PORT, DEFAULT_PATH
    url = urlsplit(_substituted(str(transport.get("url", "")), {}))
    if kind == "streamable-http" and url.scheme == "http" and url.port:
        return "streamable-http", url.port, url.path or DEFAULT_PATH
    reading.fault(
        (*_at(index), "transport"),
        f"transport {kind!r} with url {transport.get('url')!r} cannot be served here",
        "use stdio, or streamable-http with a url such as http://localhost:8080/mcp",
    )
    return "stdio", DEFAULT_PORT, DEFAULT_PATH


def _runtime_arguments(reading: _Reading, index: int, package: dict[str, Any]) -> None:
    hint = str(package.get("runtimeHint", ""))
    if package.get("runtimeArguments") and hint not in IGNORED_RUNNERS:
        reading.fault(
            (*_at(index), "runtimeArguments"),
            f"runtimeArguments for runtime {hint!r} cannot be applied: the image runs the package itself",
            "drop them, or write an mcp-server.yaml with run.command",
        )


def _arguments(reading: _Reading, where: JsonPath, arguments: list[dict[str, Any]]) -> None:
    for i, argument in enumerate(arguments):
        value = _value(argument)
        if value is None:
            if argument.get("isRequired"):
                what = argument.get("valueHint") or argument.get("name")
                reading.fault(
                    (*where, i),
                    f"argument {what!r} is required but server.json gives it no value",
                    "give it a value (or default), or write an mcp-server.yaml with run.args",
                )
            continue
        words = [str(argument["name"]), value] if argument.get("type") == "named" else [value]
        if any(len(w) > MAX_ARG_LENGTH for w in words) or len(reading.args) + len(words) > MAX_ARGS:
            reading.fault(
                (*where, i), "too many or too long arguments", f"at most {MAX_ARGS} of {MAX_ARG_LENGTH}"
            )
            return
        reading.args += words


def _environment(reading: _Reading, index: int, variables: list[dict[str, Any]], server: str) -> None:
    granted = reading.repo.granted(server)
    for i, variable in enumerate(variables):
        where = (*_at(index), "environmentVariables", i, "name")
        name = str(variable["name"])
        if not ENV_NAME.fullmatch(name):
            reading.fault(where, f"{name!r} is not an environment variable name", "letters, digits and '_'")
        elif variable.get("isSecret"):
            _secret(reading, where, name, server, required=bool(variable.get("isRequired")), granted=granted)
        elif (value := _value(variable)) is not None:
            reading.env[name] = value
        elif variable.get("isRequired"):
            reading.fault(
                where,
                f"{name} is required but server.json gives it no value",
                "give it a value or default, or mark it isSecret and store it as a server secret",
            )


def _secret(
    reading: _Reading, where: JsonPath, name: str, server: str, *, required: bool, granted: frozenset[str]
) -> None:
    """A secret variable: from the server-secret store when deploy.yaml grants it (required ones must be)."""
    settings, repo = reading.settings, reading.repo
    if name in settings.credential_names() or name.startswith(PROVIDER_ENV_PREFIX):
        reading.fault(
            where,
            f"{name} is one of the provider's own credentials, which no server ever receives",
            "rename the variable the server reads",
        )
    elif name in granted:
        reading.secrets.append(name)
    elif required:
        index = settings.repos.index(repo) if repo in settings.repos else 0
        reading.fault(
            where,
            f"secret {name} is not granted to server {server!r} of repo {repo.name!r}",
            f"in {settings.config_path}, under repos[{index}].secrets add "
            f"`- {{name: {name}, servers: [{server}]}}`; store it: `central-mcp secret set {name}`",
        )


def _value(item: dict[str, Any]) -> str | None:
    """An input's value (or default) with its `{variables}` filled in; None when it has none."""
    raw = item.get("value", item.get("default"))
    if raw is None:
        return None
    return _substituted(str(raw), item.get("variables") or {})


def _substituted(text: str, variables: dict[str, Any]) -> str:
    def fill(found: re.Match[str]) -> str:
        variable = variables.get(found[1])
        value = variable.get("value", variable.get("default")) if isinstance(variable, dict) else None
        return str(value) if value is not None else found[0]  # the spec: an unknown {name} stays as it is

    return _VARIABLE.sub(fill, text)
