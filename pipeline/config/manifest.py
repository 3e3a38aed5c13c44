"""Server manifests (`<folder>/mcp-server.yaml`): discovery, validation, the Manifest value.

A folder may be named anything git allows (`PROJECT_airbnsearch/`); the server's name comes from
its manifest alone — a DNS label, unique across the repository — and is what images, containers,
routes (`/mcp/<name>`) and the registry use. The folder only locates the build input.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline import buildrules
from pipeline import dockerfile as dockerfile_mod
from pipeline import remote as remote_mod
from pipeline.config import checkspec, rolloutspec, schema, serverjson, yamlsrc
from pipeline.config.checkspec import Check
from pipeline.config.settings import PROVIDER_ENV_PREFIX, Repo, Settings
from pipeline.config.units import format_size, parse_duration, parse_size
from pipeline.errors import BuildError, ConfigError, PackageSpecError, Problem
from pipeline.packages import spec as package_spec

MANIFEST_NAME = "mcp-server.yaml"
DEFAULT_PATH = "/mcp"
DEFAULT_HEALTH_TIMEOUT = 30.0
DEFAULT_HEALTH_INTERVAL = 1.0
DEFAULT_MEMORY = "256m"
DEFAULT_CPUS = 0.5
MIN_MEMORY = 6 * 1024 * 1024
# Headers the provider sets itself on a request to a remote: a manifest may not set them.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "mcp-session-id",
        "mcp-protocol-version",
        "content-type",
        "accept",
    }
)
LOOPBACK_NAMES = frozenset({"localhost"})
STDIO = "stdio"
DEFAULT_SESSIONS = "per-session"
DEFAULT_MAX_PROCESSES = 16  # a Node server runs ~11 threads; the container's pids limit is 256
DEFAULT_POOL = 1
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # what the schema allows; it reports the rest


@dataclass(frozen=True)
class Remote:
    """Where a remote server lives, and the headers the proxy adds on the way there."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)  # literal values, from git
    secret_headers: Mapping[str, str] = field(default_factory=dict)  # header -> secret name

    @property
    def host(self) -> str:
        """The URL's host name (what SNI, Host and the address check use)."""
        return urlsplit(self.url).hostname or ""


@dataclass(frozen=True)
class Scale:
    """A manifest's `scale`: what it says, None where deploy.yaml's `scale` decides."""

    min: int | None = None
    max: int | None = None
    target_inflight: float | None = None
    window: float | None = None
    cooldown: float | None = None


@dataclass(frozen=True)
class Manifest:
    """One server's validated manifest, with paths resolved inside the repository."""

    name: str
    version: str
    description: str
    transport: str
    folder: str
    context: str
    dockerfile: str
    build_args: Mapping[str, str]
    port: int
    path: str
    env: Mapping[str, str]
    secrets: tuple[str, ...]
    command: tuple[str, ...]
    health_timeout: float
    health_interval: float
    memory_bytes: int
    cpus: float
    access: tuple[str, ...]
    restart: str = "on-failure"
    network: str = "internal"
    host_services: tuple[str, ...] = ()
    remote: Remote | None = None
    sessions: str = DEFAULT_SESSIONS
    max_processes: int = DEFAULT_MAX_PROCESSES
    pool: int = DEFAULT_POOL
    package: str = ""  # `pypi:NAME==VERSION` / `npm:NAME@VERSION`: built by the provider, no Dockerfile
    args: tuple[str, ...] = ()  # after the package's entry command
    checks: tuple[Check, ...] = ()  # smoke calls the gate makes after the handshake
    probe_checks: bool = False  # the read-only checks run in the health probes too
    contract: str = checkspec.CONTRACT_ENFORCE  # or warn: a breaking change is shown, not refused
    scale: Scale = Scale()
    rollout: rolloutspec.Rollout = rolloutspec.SWAP  # all at once, or a canary
    raw: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def package_spec(self) -> package_spec.PackageSpec | None:
        """The package this server is built from, or None for a Dockerfile."""
        return package_spec.parse(self.package) if self.package else None


@dataclass(frozen=True)
class CheckReport:
    """The result of checking a tree: the manifests that passed and every problem found."""

    manifests: tuple[Manifest, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """Whether nothing was wrong."""
        return not self.problems


def discover(root: Path, globs: Iterable[str]) -> list[Path]:
    """Return the manifest files under `root` matching `globs`, sorted, without duplicates.

    A glob whose last part is `mcp-server.yaml` also finds `server.json` in the same places; a
    folder holding both is described by its mcp-server.yaml alone.
    """
    found: set[Path] = set()
    for pattern in globs:
        head, _, last = pattern.rpartition("/")
        patterns = [pattern]
        if last == MANIFEST_NAME:
            patterns.append(f"{head}/{serverjson.SERVER_JSON}" if head else serverjson.SERVER_JSON)
        for each in patterns:
            found.update(p for p in root.glob(each) if p.is_file() and ".git" not in p.parts)
    return sorted(
        p for p in found if p.name != serverjson.SERVER_JSON or (p.parent / MANIFEST_NAME) not in found
    )


Held = Callable[[str], bool]  # whether a folder (relative to the root) was unpacked


def _all(_folder: str) -> bool:
    return True


def check_tree(
    root: Path,
    settings: Settings,
    globs: Iterable[str] | None = None,
    repo: Repo | None = None,
    held: Held = _all,
) -> CheckReport:
    """Validate every manifest under `root` (of `repo`, default the first in deploy.yaml); report
    every problem, never stop at the first. A server whose build context is not `held` (a partial
    snapshot: it did not change) has its manifest checked, not its build files."""
    if not root.is_dir():
        raise ConfigError([Problem(str(root), 0, 0, "$", "no such directory", "give the repository's root")])
    root = root.resolve()
    repo = repo or settings.repo()
    globs = tuple(globs) if globs is not None else repo.manifests
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for file in discover(root, globs):
        rel = file.relative_to(root).as_posix()
        if not file.resolve().is_relative_to(root):  # a link to a host file is never read
            problems.append(
                Problem(
                    rel, 0, 0, "$", "the manifest is a link out of the repository", "commit the file itself"
                )
            )
            continue
        try:
            manifest, doc = _read(file, root, settings, repo, held)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if manifest.name in seen:
            problems.append(
                doc.problem(
                    ("name",),
                    f"server name {manifest.name!r} is also used by {seen[manifest.name]}",
                    f"server names must be unique in the repository: rename the server in {rel} "
                    f"or in {seen[manifest.name]}",
                )
            )
            continue
        seen[manifest.name] = rel
        manifests.append(manifest)
    return CheckReport(tuple(manifests), tuple(problems))


def read(file: Path, root: Path, settings: Settings, repo: Repo | None = None) -> Manifest:
    """Load and validate one manifest file; raise ConfigError listing all of its problems."""
    return _read(file, root, settings, repo or settings.repo())[0]


def _read(
    file: Path, root: Path, settings: Settings, repo: Repo, held: Held = _all
) -> tuple[Manifest, yamlsrc.Document]:
    rel = file.relative_to(root).as_posix()
    doc = yamlsrc.load(file, display=rel)
    if file.name == serverjson.SERVER_JSON:
        data, problems = serverjson.to_manifest(doc, settings, repo)
        if problems:
            raise ConfigError(sorted(problems, key=lambda p: (p.line, p.column)))
        return from_data(data, file.parent.relative_to(root).as_posix()), doc
    if not isinstance(doc.data, dict):
        raise ConfigError(
            [
                doc.problem(
                    (), "a manifest must be a mapping", "start from servers/property-search/mcp-server.yaml"
                )
            ]
        )
    problems = schema.validate(doc, "server") + _semantic_problems(doc, file.parent, root, settings, held)
    problems += _secret_problems(doc, settings, repo)
    problems.sort(key=lambda p: (p.line, p.column))
    if problems:
        raise ConfigError(problems)
    return from_data(doc.data, file.parent.relative_to(root).as_posix()), doc


def _semantic_problems(
    doc: yamlsrc.Document, folder: Path, root: Path, settings: Settings, held: Held = _all
) -> list[Problem]:
    """What a schema cannot say; written to run on any shape, so every fault shows at once."""
    data = doc.data
    problems: list[Problem] = []
    problems += _stdio_problems(doc)
    if "remote" in data:
        problems += _remote_problems(doc, settings)
    elif "run" not in data:
        problems.append(
            doc.problem((), "a server needs `run` (a container) or `remote` (a URL)", "add run.port")
        )
    else:
        problems += _build_problems(doc, folder, root, settings, held)
    memory = _section(data, "resources").get("memory")
    if isinstance(memory, str):
        try:
            size = parse_size(memory)
        except ValueError:
            size = None  # reported by the schema's pattern
        if size is not None and size < MIN_MEMORY:
            problems.append(
                doc.problem(
                    ("resources", "memory"),
                    f"memory {memory!r} is below Docker's 6m minimum",
                    "give it at least 64m",
                )
            )
        elif size is not None and size > settings.limits.memory:
            problems.append(
                doc.problem(
                    ("resources", "memory"),
                    f"server {data.get('name')!r} asks for memory {memory!r}, more than this VM allows "
                    f"({format_size(settings.limits.memory)}, limits.memory in deploy.yaml)",
                    "ask for less, or raise limits.memory in deploy.yaml",
                )
            )
    problems += _health_problems(doc, settings)
    problems += checkspec.problems(doc, settings.proxy.deploy_timeout)
    problems += _scale_problems(doc, settings)
    problems += rolloutspec.problems(doc)
    problems += _access_problems(doc, settings)
    problems += _host_service_problems(doc, settings)
    return problems


def _scale_problems(doc: yamlsrc.Document, settings: Settings) -> list[Problem]:
    """`scale.max` may not be below `scale.min` (deploy.yaml's when the manifest has none); a remote server is
    one endpoint elsewhere, so it has no replicas to scale."""
    scale = _section(doc.data, "scale")
    if not scale:
        return []
    if "remote" in doc.data:
        return [
            doc.problem(
                ("scale",),
                f"remote server {doc.data.get('name')!r} has no replicas and no container to stop "
                "when idle: it runs elsewhere",
                "remove scale",
            )
        ]
    low, high = scale.get("min", settings.scale.min), scale.get("max")
    if isinstance(low, int) and isinstance(high, int) and high < low:
        return [
            doc.problem(
                ("scale", "max"),
                f"server {doc.data.get('name')!r} has scale.max {high} below scale.min {low}",
                "raise scale.max to at least scale.min",
            )
        ]
    return []


def _remote_problems(doc: yamlsrc.Document, settings: Settings) -> list[Problem]:
    """A remote has no build or run, speaks https (plain http only on loopback), names no address
    inside the VM (unless deploy.yaml allows the host) and sets no header the proxy owns."""
    problems = [
        doc.problem((key,), f"a remote server has no {key}: it runs elsewhere", f"remove {key}, or remote")
        for key in ("build", "run")
        if key in doc.data
    ]
    remote = _section(doc.data, "remote")
    url = remote.get("url")
    if isinstance(url, str):
        problems += _remote_url_problems(doc, url, remote_mod.Guard.from_settings(settings))
    for name in _section(remote, "headers"):
        if name.lower() in RESERVED_HEADERS:
            problems.append(
                doc.problem(
                    ("remote", "headers", name),
                    f"header {name} is set by the provider itself",
                    "remove it: the proxy sets Host, framing and MCP headers to the remote's",
                    key=True,
                )
            )
    return problems


def _remote_url_problems(doc: yamlsrc.Document, url: str, guard: remote_mod.Guard) -> list[Problem]:
    where = ("remote", "url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return [doc.problem(where, f"{url!r} is not a URL: {exc}", "write https://host[:port]/path")]
    host = parts.hostname or ""
    if not host or parts.username or parts.password or parts.fragment:
        return [
            doc.problem(
                where,
                f"{url!r} needs a host, and no user, password or #fragment",
                "write https://host[:port]/path; credentials go in remote.headers as a secret",
            )
        ]
    if parts.scheme != "https" and not _loopback(host):
        return [
            doc.problem(
                where,
                f"remote {url!r} is not https: the secret headers would cross the network in clear",
                "use https:// (plain http is accepted only for a loopback host)",
            )
        ]
    why = remote_mod.literal_problem(host, guard)
    return [doc.problem(where, why, "point it at the server's public name")] if why else []


def _loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _stdio_problems(doc: yamlsrc.Document) -> list[Problem]:
    """stdio needs the program to run (a package brings its own); the sharing fields mean nothing
    to an HTTP server."""
    data = doc.data
    run = _section(data, "run")
    if data.get("transport") == STDIO:
        if "command" not in run and "package" not in _section(data, "build"):
            where = ("run",) if "run" in data else ("transport",)
            return [
                doc.problem(
                    where,
                    "transport 'stdio' needs run.command: the program the bridge starts for each session",
                    'add e.g. `command: ["python3", "-m", "my_server"]` under run (an argv list, no shell)',
                )
            ]
        if run.get("sessions") == "shared" and "pool" in run:
            return [
                doc.problem(
                    ("run", "pool"),
                    "run.pool is for per-session servers: a shared server has one process",
                    "remove run.pool, or use sessions: per-session",
                    key=True,
                )
            ]
        return []
    return [
        doc.problem(
            ("run", field),
            f"run.{field} is for transport 'stdio' only; this server speaks {data.get('transport')!r}",
            f"remove run.{field}, or set transport: stdio",
            key=True,
        )
        for field in ("sessions", "max_processes", "pool")
        if field in run
    ]


def _health_problems(doc: yamlsrc.Document, settings: Settings) -> list[Problem]:
    """A gate may not wait longer than a whole deploy may take (proxy.deploy_timeout)."""
    timeout = _section(doc.data, "health").get("timeout")
    try:
        seconds = parse_duration(timeout) if isinstance(timeout, str | int | float) else None
    except ValueError:
        return []  # reported by the schema's pattern
    limit = settings.proxy.deploy_timeout
    if seconds is None or seconds <= limit:
        return []
    return [
        doc.problem(
            ("health", "timeout"),
            f"health.timeout {timeout} is longer than a whole deploy may take "
            f"({limit:g}s, proxy.deploy_timeout)",
            "shorten it, or raise proxy.deploy_timeout in deploy.yaml",
        )
    ]


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _build_problems(
    doc: yamlsrc.Document, folder: Path, root: Path, settings: Settings, held: Held = _all
) -> list[Problem]:
    build = _section(doc.data, "build")
    if "package" in build:  # no Dockerfile to check; the schema refuses context/dockerfile/args with it
        return _package_problems(doc, build["package"])
    problems: list[Problem] = []
    if "args" in _section(doc.data, "run"):
        problems.append(
            doc.problem(
                ("run", "args"),
                "run.args follow the entry command of build.package, and this server builds a Dockerfile",
                "write the whole command in run.command (or the Dockerfile's CMD)",
            )
        )
    context_value = build.get("context", ".")
    dockerfile_value = build.get("dockerfile", "Dockerfile")
    if not isinstance(context_value, str) or not isinstance(dockerfile_value, str):
        return problems
    context = _inside(doc, ("build", "context"), context_value, folder, root, problems)
    if context is None or not held(context.relative_to(root).as_posix()):
        return problems  # not unpacked: unchanged since its live release, whose build was checked
    dockerfile = _inside(doc, ("build", "dockerfile"), dockerfile_value, context, root, problems)
    where = ("build", "dockerfile") if "dockerfile" in build else ("name",)
    if dockerfile is not None and not dockerfile.is_file():
        problems.append(
            doc.problem(
                where,
                f"no Dockerfile at {dockerfile.relative_to(root).as_posix()}",
                "add it or fix build.dockerfile",
            )
        )
    elif dockerfile is not None:
        problems += _fetch_problems(doc, where, root, context, dockerfile_value, settings)
    for line, message in dockerfile_mod.ignore_problems(context):
        name = (context / ".dockerignore").relative_to(root).as_posix()
        problems.append(doc.problem(where, f"{name}:{line}: {message}", "simplify or remove the pattern"))
    args = build.get("args")
    if isinstance(args, dict) and dockerfile_mod.FRONTEND_ARG in args:
        problems.append(
            doc.problem(
                ("build", "args", dockerfile_mod.FRONTEND_ARG),
                f"{dockerfile_mod.FRONTEND_ARG} would make BuildKit fetch and run a frontend image "
                "of the pusher's choice",
                "remove it: builds use the engine's built-in Dockerfile frontend",
                key=True,
            )
        )
    return problems


def _package_problems(doc: yamlsrc.Document, value: object) -> list[Problem]:
    """build.package must name one exact version of a PyPI or npm package."""
    if not isinstance(value, str):
        return []  # reported by the schema
    try:
        package_spec.parse(value)
    except PackageSpecError as exc:
        return [doc.problem(("build", "package"), str(exc), exc.hint)]
    run = _section(doc.data, "run")
    if "args" in run and "command" in run:
        return [
            doc.problem(
                ("run", "args"),
                "run.args follow the package's entry command, which run.command replaces",
                "put the arguments in run.command, or drop run.command",
            )
        ]
    return []


def _fetch_problems(
    doc: yamlsrc.Document, where: tuple[str, ...], root: Path, context: Path, name: str, settings: Settings
) -> list[Problem]:
    """What the Dockerfile would make the daemon fetch without deploy.yaml's leave (buildrules.py)."""
    try:
        found = dockerfile_mod.read(root, context, name)
    except BuildError as exc:
        return [doc.problem(where, str(exc), "fix build.dockerfile")]
    build = _section(doc.data, "build")
    args = {**settings.build_args, **{k: _text(v) for k, v in _section(build, "args").items()}}
    file = (context / name).relative_to(root).as_posix()
    hint = (
        "name an allowed base image, or allow more with build.base_images / build.remote_add in deploy.yaml"
    )
    return [
        doc.problem(where, f"{file}:{line}: {message}", hint)
        for line, message in buildrules.problems(
            found, args, settings.build_base_images, settings.build_remote_add
        )
    ]


def _secret_problems(doc: yamlsrc.Document, settings: Settings, repo: Repo) -> list[Problem]:
    """run.secrets may name only what deploy.yaml grants this server, never a provider credential;
    and no build arg may share a secret's name (build args are literal, kept in the image)."""
    listed = _section(doc.data, "run").get("secrets")
    named: dict[tuple[str | int, ...], object] = {
        ("run", "secrets", i): n for i, n in enumerate(listed if isinstance(listed, list) else [])
    }
    for header, value in _section(_section(doc.data, "remote"), "headers").items():
        if isinstance(value, dict):
            named[("remote", "headers", header, "secret")] = value.get("secret")
    names = {path: n for path, n in named.items() if isinstance(n, str) and _secret_name(n)}
    server = doc.data.get("name")
    granted = repo.granted(server) if isinstance(server, str) else frozenset()
    index = settings.repos.index(repo) if repo in settings.repos else 0
    problems: list[Problem] = []
    for path, name in names.items():
        if name in settings.credential_names() or name.startswith(PROVIDER_ENV_PREFIX):
            problems.append(
                doc.problem(
                    path,
                    f"{name} is one of the provider's own credentials, which no server ever receives",
                    "give the server a secret of its own: `central-mcp secret set NAME` on the VM, "
                    f"granted in deploy.yaml's repos[{index}].secrets",
                )
            )
        elif name not in granted:
            problems.append(
                doc.problem(
                    path,
                    f"secret {name} is not granted to server {server!r} of repo {repo.name!r}",
                    f"in {settings.config_path}, under repos[{index}].secrets add `- {name}` (the whole "
                    f"repo) or `- {{name: {name}, servers: [{server}]}}`; store its value with "
                    f"`central-mcp secret set {name}`",
                )
            )
    args = _section(_section(doc.data, "build"), "args")
    for name in sorted(set(names.values()) & set(args)):
        problems.append(
            doc.problem(
                ("build", "args", name),
                f"build arg {name} has the name of a secret of this server, but build args are literal "
                "values from git, kept in the image's history: a secret never goes into a build",
                f"remove the build arg; the container gets {name} from run.secrets when it starts",
                key=True,
            )
        )
    return problems


def _secret_name(value: object) -> bool:
    return isinstance(value, str) and SECRET_NAME.fullmatch(value) is not None


def _access_problems(doc: yamlsrc.Document, settings: Settings) -> list[Problem]:
    access = doc.data.get("access")
    known = {p.name for p in settings.projects}
    problems: list[Problem] = []
    for i, name in enumerate(access if isinstance(access, list) else []):
        if isinstance(name, str) and name != "all" and name not in known:
            hint = (
                f"known projects: {', '.join(sorted(known))}"
                if known
                else "deploy.yaml has no projects; use [all] or add the project there"
            )
            problems.append(doc.problem(("access", i), f"unknown project {name!r}", hint))
    return problems


def _host_service_problems(doc: yamlsrc.Document, settings: Settings) -> list[Problem]:
    """A manifest may name only host services deploy.yaml declares and grants to this server."""
    names = _section(doc.data, "run").get("host_services")
    server = doc.data.get("name")
    problems: list[Problem] = []
    for i, name in enumerate(names if isinstance(names, list) else []):
        if not isinstance(name, str):
            continue
        service = settings.host_service(name)
        if service is None:
            known = ", ".join(h.name for h in settings.host_services) or "none"
            problems.append(
                doc.problem(
                    ("run", "host_services", i),
                    f"no host service named {name!r} in deploy.yaml (known: {known})",
                    "declare it under host_services in deploy.yaml, or remove it here",
                )
            )
        elif not service.grants(str(server)):
            problems.append(
                doc.problem(
                    ("run", "host_services", i),
                    f"deploy.yaml does not grant host service {name!r} to server {server!r}",
                    f"add {server!r} to host_services.{name}.servers in deploy.yaml",
                )
            )
    return problems


def _inside(
    doc: yamlsrc.Document, path: tuple[str, str], value: str, base: Path, root: Path, problems: list[Problem]
) -> Path | None:
    """Resolve `value` against `base`; record a problem and return None if it leaves the repo."""
    where = path if path[1] in _section(doc.data, "build") else ("name",)
    if Path(value).is_absolute():
        problems.append(
            doc.problem(
                where,
                f"{path[1]} {value!r} is an absolute path",
                "use a path relative to the server's folder",
            )
        )
        return None
    target = (base / value).resolve()
    if target != root and root not in target.parents:
        why = "a symlink that leads" if ".." not in Path(value).parts else "'..' that leads"
        problems.append(
            doc.problem(
                where,
                f"{path[1]} {value!r} uses {why} outside the repository",
                "keep the build inside the repository",
            )
        )
        return None
    return target


def from_data(data: dict[str, Any], folder: str) -> Manifest:
    """Build a Manifest from already validated data found in `folder`."""
    build = data.get("build", {})
    run = data.get("run", {})
    health = data.get("health", {})
    resources = data.get("resources", {})
    context = (Path(folder) / build.get("context", ".")).as_posix()
    return Manifest(
        name=data["name"],
        version=data["version"],
        description=data["description"],
        transport=data["transport"],
        folder=folder,
        context=str(Path(context)),
        dockerfile=build.get("dockerfile", "Dockerfile"),
        build_args={k: _text(v) for k, v in build.get("args", {}).items()},
        port=run.get("port", 0),
        path=run.get("path", DEFAULT_PATH),
        env={k: _text(v) for k, v in run.get("env", {}).items()},
        secrets=tuple(dict.fromkeys([*run.get("secrets", ()), *_header_secrets(data)])),
        command=tuple(run.get("command", ())),
        health_timeout=parse_duration(health.get("timeout", DEFAULT_HEALTH_TIMEOUT)),
        health_interval=parse_duration(health.get("interval", DEFAULT_HEALTH_INTERVAL)),
        memory_bytes=parse_size(resources.get("memory", DEFAULT_MEMORY)),
        cpus=float(resources.get("cpus", DEFAULT_CPUS)),
        access=tuple(data.get("access", ("all",))),
        restart=run.get("restart", "on-failure"),
        network=run.get("network", "internal"),
        host_services=tuple(run.get("host_services", ())),
        remote=_remote(data["remote"]) if "remote" in data else None,
        sessions=run.get("sessions", DEFAULT_SESSIONS),
        max_processes=run.get("max_processes", DEFAULT_MAX_PROCESSES),
        pool=run.get("pool", DEFAULT_POOL),
        package=build.get("package", ""),
        args=tuple(run.get("args", ())),
        checks=checkspec.parse(data),
        probe_checks=bool(data.get("probe_checks", False)),
        contract=str(data.get("contract", checkspec.CONTRACT_ENFORCE)),
        scale=scale_of(data),
        rollout=rolloutspec.parse(data),
        raw=data,
    )


def scale_of(data: Mapping[str, Any]) -> Scale:
    """The `scale` of validated manifest data (a stored release's manifest too)."""
    scale = data.get("scale") or {}
    window, cooldown, target = scale.get("window"), scale.get("cooldown"), scale.get("target_inflight")
    return Scale(
        min=scale.get("min"),
        max=scale.get("max"),
        target_inflight=float(target) if target is not None else None,
        window=parse_duration(window) if window is not None else None,
        cooldown=parse_duration(cooldown) if cooldown is not None else None,
    )


def _header_secrets(data: dict[str, Any]) -> list[str]:
    """The secrets a remote's headers name: checked granted and stored like run.secrets."""
    headers = data.get("remote", {}).get("headers", {})
    return [v["secret"] for v in headers.values() if isinstance(v, dict)]


def _remote(data: dict[str, Any]) -> Remote:
    headers = data.get("headers", {})
    return Remote(
        url=data["url"],
        headers={k: v for k, v in headers.items() if isinstance(v, str)},
        secret_headers={k: v["secret"] for k, v in headers.items() if isinstance(v, dict)},
    )


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
