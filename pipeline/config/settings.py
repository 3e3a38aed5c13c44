"""deploy.yaml: the one frozen Settings object of a VM, validated against its schema."""

from __future__ import annotations

import fnmatch
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.config import schema, yamlsrc
from pipeline.config.units import parse_duration, parse_size
from pipeline.errors import ConfigError, Problem

DEFAULT_CONFIG = Path("deploy.yaml")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8900
DEFAULT_STATE_DIR = ".central-mcp"
DEFAULT_BRANCH = "main"
DEFAULT_MANIFESTS = ("servers/*/mcp-server.yaml",)
DEFAULT_NAMESPACE = "local.central-mcp"
DEFAULT_DEPLOY_TIMEOUT = 300.0
DEFAULT_DRAIN_TIMEOUT = 30.0
DEFAULT_SESSION_DRAIN_TIMEOUT = 600.0
DEFAULT_SESSION_IDLE_TIMEOUT = 3600.0  # a session with no request and no open stream this long ends
DEFAULT_KEEPALIVE = 20.0
MAX_KEEPALIVE = 25.0
# What one client or one server may make the proxy hold (issue 12, items 7 and 8).
DEFAULT_MAX_BODY = 4 * 1024 * 1024  # an MCP request body
DEFAULT_MAX_HEADER = 32 * 1024  # a request's header lines (as nginx's 4 x 8k buffers, about)
DEFAULT_MAX_URL = 8 * 1024  # a request target (nginx's one 8k buffer)
DEFAULT_HEADER_TIMEOUT = 10.0  # from a connection's first byte (or a request's) to its blank line
DEFAULT_BODY_TIMEOUT = 60.0  # from a request's blank line to its body's last byte
DEFAULT_SEND_TIMEOUT = 60.0  # a client that reads nothing of an answer the proxy waits to write (nginx's)
DEFAULT_MAX_CONNECTIONS = 1000  # open client connections; a serve process needs ~2 descriptors each
DEFAULT_MAX_UPSTREAM_HEADER = 64 * 1024  # an upstream answer's status line and headers
DEFAULT_MAX_HANDSHAKE = 4 * 1024 * 1024  # what the gate and a probe read of one MCP handshake
DEFAULT_AGGREGATE_MAX_SESSIONS = 256  # /mcp client sessions one key may hold
DEFAULT_AGGREGATE_MAX_STREAMS = 64  # /mcp GET streams one key may hold (each: one upstream per server)
DEFAULT_AGGREGATE_UPSTREAM_TIMEOUT = 30.0  # the aggregate's own requests (initialize, lists), each
DEFAULT_AGGREGATE_LIST_TIMEOUT = 30.0  # a release's lists fetched within this in all
DEFAULT_AGGREGATE_LIST_RETRY = 10.0  # a release whose lists could not be fetched is left out this long
DEFAULT_RATE_PER_MINUTE = 600
DEFAULT_RATE_BURST = 60
DEFAULT_IMAGES_PER_SERVER = 5
DEFAULT_DEPLOYS_KEPT = 500
DEFAULT_DEPLOY_MAX_AGE = 90 * 86400.0
DEFAULT_BUILD_PARALLEL = 2
DEFAULT_BUILD_STARTS = 4  # changed servers starting and passing their gate at once (bench/README.md)
DEFAULT_BUILD_NETWORK = "default"
DEFAULT_BASE_IMAGES = ("central-mcp/python:*", "central-mcp/node:*")  # the offline base images, any tag
DEFAULT_PYPI_INDEX = "https://pypi.org/simple"
DEFAULT_NPM_REGISTRY = "https://registry.npmjs.org/"
DEFAULT_PYTHON_IMAGE = "central-mcp/python:3.11"  # pipeline/baseimage.py makes it offline
DEFAULT_PYTHON_VERSION = "3.11"  # Debian bookworm's, in that image
DEFAULT_NODE_IMAGE = "central-mcp/node:18"
DEFAULT_PACKAGE_MAX_BYTES = 512 * 1024**2  # one package's download, every file it writes
DEFAULT_PACKAGE_MAX_FILES = 50_000  # server-everything with its dependencies: ~4,500
DEFAULT_PACKAGE_TIMEOUT = 300.0
DEFAULT_WEBHOOK_MAX_BODY = 1024 * 1024
DEFAULT_WEBHOOK_QUEUE = 16
DEFAULT_PROBE_INTERVAL = 15.0
DEFAULT_PROBE_TIMEOUT = 5.0
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_WATCH_WINDOW = 300.0
DEFAULT_WATCH_ERROR_RATE = 0.5
DEFAULT_WATCH_MIN_REQUESTS = 10
DEFAULT_WATCH_RESTARTS = 2
DEFAULT_REPLICAS = 1  # scale.min and scale.max: one container per server
DEFAULT_TARGET_INFLIGHT = 4.0  # requests in flight per replica that autoscaling keeps under
DEFAULT_SCALE_WINDOW = 60.0  # load high (or low) this long before a replica is added (removed)
DEFAULT_SCALE_COOLDOWN = 120.0  # at least this long between two scaling steps of one server
DEFAULT_SCALE_INTERVAL = 2.0  # how often the monitor samples in-flight requests
DEFAULT_RETENTION_INTERVAL = 3600.0
DEFAULT_IDLE_AFTER = 600.0  # scale.min 0: unused this long, a server is stopped
DEFAULT_IDLE_CHECK_INTERVAL = 30.0
DEFAULT_WAKE_TIMEOUT = 30.0  # a first request held at most this long while its server starts
DEFAULT_WAKE_RETRY_AFTER = 5.0  # after a failed start, 503 this long before a request tries again
DEFAULT_CONTAINER_USER = "65534:65534"  # nobody:nogroup on Debian-based images
DEFAULT_CONTAINER_TMPFS = 64 * 1024 * 1024
DEFAULT_MAX_MEMORY = 2 * 1024**3
DEFAULT_MAX_SNAPSHOT_SIZE = 512 * 1024**2
DEFAULT_MAX_SNAPSHOT_FILES = 50_000
DEFAULT_MAX_LOG_LINES = 10_000
DEFAULT_NETWORK_POOL = (
    "10.213.0.0/16"  # clear of Docker's own pools (172.17-31/16, 192.168/16) and 10.0/16 VPCs
)
DEFAULT_SUBNET_PREFIX = 28  # 16 addresses: gateway, broadcast and 13 containers per server
DEFAULT_EGRESS_DENY = (
    "169.254.0.0/16",
    "100.100.100.200/32",
)  # link-local (AWS/GCP/Azure metadata), Alibaba's
DEFAULT_RELAY_MAX_CONNECTIONS = 64
DEFAULT_RELAY_IDLE_TIMEOUT = 300.0
DEFAULT_REMOTE_CONNECT_TIMEOUT = 5.0  # resolving and connecting to a remote server, TLS included
STATE_DIR_ENV = "CENTRAL_MCP_STATE_DIR"
PROVIDER_ENV_PREFIX = "CENTRAL_MCP_"  # the provider's own variables: never a server's secret


@dataclass(frozen=True)
class Webhook:
    """How one repo's pushes arrive by webhook."""

    provider: str
    secret_env: str
    paths: tuple[str, ...] = ()
    token_env: str = ""
    ssh_key: str = ""


@dataclass(frozen=True)
class SecretGrant:
    """One server secret given to a repo's servers: all of them, or only those named."""

    name: str
    servers: tuple[str, ...] = ()  # empty: every server of the repo

    def covers(self, server: str) -> bool:
        """Return whether this grant gives the secret to `server`."""
        return not self.servers or server in self.servers


@dataclass(frozen=True)
class Repo:
    """A git repository this VM deploys."""

    name: str
    branch: str = DEFAULT_BRANCH
    manifests: tuple[str, ...] = DEFAULT_MANIFESTS
    clone_url: str = ""
    webhook: Webhook | None = None
    secrets: tuple[SecretGrant, ...] = ()

    def granted(self, server: str) -> frozenset[str]:
        """The names of the server secrets deploy.yaml gives to `server` of this repo."""
        return frozenset(g.name for g in self.secrets if g.covers(server))


@dataclass(frozen=True)
class Project:
    """A client project: which servers its keys may reach and how fast."""

    name: str
    servers: tuple[str, ...] = ("all",)
    per_minute: int = DEFAULT_RATE_PER_MINUTE
    burst: int = DEFAULT_RATE_BURST
    tools_allow: tuple[str, ...] = ()  # `server:tool` globs; none: every tool of a reachable server
    tools_deny: tuple[str, ...] = ()  # `server:tool` globs taken out of what `tools_allow` lets in

    def may_use(self, server: str) -> bool:
        """Return whether this project may reach `server`."""
        return "all" in self.servers or server in self.servers

    def may_call(self, server: str, tool: str) -> bool:
        """Return whether this project's keys may list and call `tool` of `server`, on /mcp and on
        /mcp/<server> (deploy.yaml's `tools: {allow, deny}`; a pattern without `:` names a server)."""
        pair = f"{server}:{tool}"
        if self.tools_allow and not any(_matches(pair, p) for p in self.tools_allow):
            return False
        return not any(_matches(pair, p) for p in self.tools_deny)


def _matches(pair: str, pattern: str) -> bool:
    """Whether `server:tool` matches a `server:tool` glob (`server` alone: `server:*`)."""
    return fnmatch.fnmatchcase(pair, pattern if ":" in pattern else f"{pattern}:*")


@dataclass(frozen=True)
class ProxyTimeouts:
    """Seconds the proxy and the deploy engine wait for each phase, and the bytes and connections
    one client or one server may make the proxy hold."""

    deploy_timeout: float = DEFAULT_DEPLOY_TIMEOUT
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    session_drain_timeout: float = DEFAULT_SESSION_DRAIN_TIMEOUT
    session_idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT  # 0: sessions never expire
    keepalive: float = DEFAULT_KEEPALIVE
    allowed_origins: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    max_header: int = DEFAULT_MAX_HEADER
    max_url: int = DEFAULT_MAX_URL
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    send_timeout: float = DEFAULT_SEND_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_upstream_header: int = DEFAULT_MAX_UPSTREAM_HEADER
    max_handshake: int = DEFAULT_MAX_HANDSHAKE


@dataclass(frozen=True)
class AggregateConfig:
    """The aggregate endpoint `/mcp`: what one key may hold open there, and the bounds of the
    requests the aggregate makes of its own."""

    max_sessions_per_key: int = DEFAULT_AGGREGATE_MAX_SESSIONS
    max_streams_per_key: int = DEFAULT_AGGREGATE_MAX_STREAMS
    max_held: int = DEFAULT_MAX_HANDSHAKE  # one answer it reads whole, or one event it rewrites
    upstream_timeout: float = DEFAULT_AGGREGATE_UPSTREAM_TIMEOUT
    list_timeout: float = DEFAULT_AGGREGATE_LIST_TIMEOUT
    list_retry_after: float = DEFAULT_AGGREGATE_LIST_RETRY


@dataclass(frozen=True)
class Retention:
    """How much history is kept."""

    images_per_server: int = DEFAULT_IMAGES_PER_SERVER
    deploys: int = DEFAULT_DEPLOYS_KEPT
    deploy_max_age: float = DEFAULT_DEPLOY_MAX_AGE


@dataclass(frozen=True)
class MonitorConfig:
    """Health probes, the post-deploy watch window, and retention runs."""

    probe_interval: float = DEFAULT_PROBE_INTERVAL
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    watch_window: float = DEFAULT_WATCH_WINDOW
    watch_error_rate: float = DEFAULT_WATCH_ERROR_RATE
    watch_min_requests: int = DEFAULT_WATCH_MIN_REQUESTS
    watch_restarts: int = DEFAULT_WATCH_RESTARTS
    retention_interval: float = DEFAULT_RETENTION_INTERVAL


@dataclass(frozen=True)
class IdleConfig:
    """Scale to zero: when a `scale.min: 0` server stops, and how its first request waits for it."""

    after: float = DEFAULT_IDLE_AFTER
    check_interval: float = DEFAULT_IDLE_CHECK_INTERVAL
    wake_timeout: float = DEFAULT_WAKE_TIMEOUT
    retry_after: float = DEFAULT_WAKE_RETRY_AFTER


@dataclass(frozen=True)
class ScaleConfig:
    """deploy.yaml's `scale`: the defaults of each manifest's `scale`, and the sampling interval."""

    min: int = DEFAULT_REPLICAS
    max: int = DEFAULT_REPLICAS
    target_inflight: float = DEFAULT_TARGET_INFLIGHT
    window: float = DEFAULT_SCALE_WINDOW
    cooldown: float = DEFAULT_SCALE_COOLDOWN
    interval: float = DEFAULT_SCALE_INTERVAL


@dataclass(frozen=True)
class Containers:
    """How every server container runs, whatever its image says."""

    user: str = DEFAULT_CONTAINER_USER
    tmpfs: int = DEFAULT_CONTAINER_TMPFS


@dataclass(frozen=True)
class Packages:
    """Where servers built from a published package come from, what they run on, and the bounds
    of one host download."""

    pypi_index: str = DEFAULT_PYPI_INDEX
    npm_registry: str = DEFAULT_NPM_REGISTRY
    python_image: str = DEFAULT_PYTHON_IMAGE
    python_version: str = DEFAULT_PYTHON_VERSION
    node_image: str = DEFAULT_NODE_IMAGE
    max_bytes: int = DEFAULT_PACKAGE_MAX_BYTES
    max_files: int = DEFAULT_PACKAGE_MAX_FILES
    timeout: float = DEFAULT_PACKAGE_TIMEOUT


@dataclass(frozen=True)
class Limits:
    """The most a manifest or a push may ask for."""

    memory: int = DEFAULT_MAX_MEMORY
    snapshot_size: int = DEFAULT_MAX_SNAPSHOT_SIZE
    snapshot_files: int = DEFAULT_MAX_SNAPSHOT_FILES
    log_lines: int = DEFAULT_MAX_LOG_LINES


@dataclass(frozen=True)
class NetworkConfig:
    """Per-server networks: the subnet pool they come from, what egress may not reach, relay bounds."""

    pool: str = DEFAULT_NETWORK_POOL
    subnet_prefix: int = DEFAULT_SUBNET_PREFIX
    egress_deny: tuple[str, ...] = DEFAULT_EGRESS_DENY
    relay_max_connections: int = DEFAULT_RELAY_MAX_CONNECTIONS
    relay_idle_timeout: float = DEFAULT_RELAY_IDLE_TIMEOUT


@dataclass(frozen=True)
class RemotesConfig:
    """Remote servers: hosts allowed although they resolve inside the VM, the CA that verifies them."""

    allow_hosts: tuple[str, ...] = ()  # host names or literal addresses, matched exactly (lowercase)
    ca_file: Path | None = None  # CAs trusted for remotes besides the system's
    connect_timeout: float = DEFAULT_REMOTE_CONNECT_TIMEOUT

    def allows(self, host: str) -> bool:
        """Whether deploy.yaml lets remote servers reach `host` whatever it resolves to."""
        return host.lower().rstrip(".") in self.allow_hosts


@dataclass(frozen=True)
class HostService:
    """A service of the VM that the provider relays into the networks of the servers granted it."""

    name: str
    host: str
    port: int
    servers: tuple[str, ...] = ()

    def grants(self, server: str) -> bool:
        """Return whether `server` may use this service."""
        return server in self.servers


ENGINE_PLAIN = "plain"
ENGINE_SWARM = "swarm"
DEFAULT_SWARM_START_TIMEOUT = 60.0
DEFAULT_RELAY_PORTS = (20000, 29999)
DEFAULT_IMAGE_COPY_TIMEOUT = 600.0
DEFAULT_RELAY_CONNECTIONS = 1024  # every replica's connections through the Swarm relay together
DEFAULT_RELAY_CONNECT_TIMEOUT = 5.0  # the relay's lookup and connect to a replica


@dataclass(frozen=True)
class SwarmConfig:
    """deploy.yaml's `swarm`: the other nodes' Docker endpoints and the Swarm engine's bounds."""

    nodes: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = DEFAULT_SWARM_START_TIMEOUT
    relay_ports: tuple[int, int] = DEFAULT_RELAY_PORTS
    image_copy_timeout: float = DEFAULT_IMAGE_COPY_TIMEOUT
    relay_max_connections: int = DEFAULT_RELAY_CONNECTIONS
    relay_connect_timeout: float = DEFAULT_RELAY_CONNECT_TIMEOUT
    encrypt: bool = True  # an unencrypted overlay takes forged VXLAN from whoever reaches udp 4789


@dataclass(frozen=True)
class Settings:
    """Everything one VM is configured with; built once by `load` and passed explicitly."""

    config_path: Path
    state_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    public_url: str = ""
    namespace: str = DEFAULT_NAMESPACE
    registry_dir: Path | None = None
    repos: tuple[Repo, ...] = (Repo(name="central-mcp"),)
    proxy: ProxyTimeouts = field(default_factory=ProxyTimeouts)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    projects: tuple[Project, ...] = ()
    retention: Retention = field(default_factory=Retention)
    build_parallel: int = DEFAULT_BUILD_PARALLEL
    build_starts: int = DEFAULT_BUILD_STARTS
    build_args: Mapping[str, str] = field(default_factory=dict)
    build_network: str = DEFAULT_BUILD_NETWORK
    build_base_images: tuple[str, ...] = DEFAULT_BASE_IMAGES
    build_remote_add: bool = False
    packages: Packages = field(default_factory=Packages)
    webhook_max_body: int = DEFAULT_WEBHOOK_MAX_BODY
    webhook_queue: int = DEFAULT_WEBHOOK_QUEUE
    admin_token: str = field(default="", repr=False)
    admin_token_env: str = ""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    containers: Containers = field(default_factory=Containers)
    limits: Limits = field(default_factory=Limits)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    host_services: tuple[HostService, ...] = ()
    remotes: RemotesConfig = field(default_factory=RemotesConfig)
    engine: str = ENGINE_PLAIN
    swarm: SwarmConfig = field(default_factory=SwarmConfig)

    @property
    def base_url(self) -> str:
        """The public URL, or the listen address when none is set."""
        return (self.public_url or listen_url(self.host, self.port)).rstrip("/")

    def repo(self, name: str | None = None) -> Repo:
        """Return the named repo, or the first one when no name is given."""
        if name is None:
            return self.repos[0]
        for repo in self.repos:
            if repo.name == name:
                return repo
        known = ", ".join(r.name for r in self.repos)
        raise ConfigError(
            [
                Problem(
                    str(self.config_path), 0, 0, "$.repos", f"no repo named {name!r}", f"known repos: {known}"
                )
            ]
        )

    def credential_names(self) -> frozenset[str]:
        """The env names of the provider's own credentials: never a server's secret."""
        names = {self.admin_token_env}
        for repo in self.repos:
            if repo.webhook is not None:
                names |= {repo.webhook.secret_env, repo.webhook.token_env}
        return frozenset(n for n in names if n)

    def project(self, name: str) -> Project | None:
        """Return the named project, or None."""
        return next((p for p in self.projects if p.name == name), None)

    def host_service(self, name: str) -> HostService | None:
        """Return the named host service, or None."""
        return next((h for h in self.host_services if h.name == name), None)


@dataclass(frozen=True)
class Listen:
    """What `serve`'s command line overrides in deploy.yaml: the listen address and public URL."""

    host: str | None = None
    port: int | None = None
    public_url: str | None = None


def listening(settings: Settings, listen: Listen) -> tuple[Settings, list[str]]:
    """Apply `serve --host/--port/--public-url` to `settings`; return them and warnings to show.

    The public URL follows the listen address when deploy.yaml sets none, or sets one that names
    the configured listen address itself (`http://127.0.0.1:8900`); a public URL of a front
    elsewhere (`https://mcp.example.com`) is kept, with a warning, unless `--public-url` is given:
    the registry, mcp.json, client configs and deploy links all carry it.
    """
    host = listen.host or settings.host
    port = listen.port or settings.port
    moved = (host, port) != (settings.host, settings.port)
    public_url = settings.public_url
    warnings: list[str] = []
    if listen.public_url is not None:
        public_url = listen.public_url.rstrip("/")
    elif public_url and moved and _names_listen_address(public_url, settings.host, settings.port):
        parts = urlsplit(public_url)
        public_url = urlunsplit(parts._replace(netloc=_netloc(listen.host or parts.hostname or host, port)))
    elif public_url and moved:
        warnings.append(
            f"serving on {listen_url(host, port)}, but deploy.yaml's public_url {public_url} is kept: "
            "the registry, mcp.json, client configs and deploy links point there, not at this "
            "process; pass --public-url to point them here"
        )
    return replace(settings, host=host, port=port, public_url=public_url), warnings


def listen_url(host: str, port: int) -> str:
    """The http URL of a listen address (a wildcard address as 127.0.0.1)."""
    return f"http://{_netloc(host, port)}"


def _netloc(host: str, port: int) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _names_listen_address(url: str, host: str, port: int) -> bool:
    """Whether `url` is the listen address itself rather than a front in front of it."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    local = {host, "127.0.0.1", "localhost", "::1"}
    return parts.hostname in local and (parts.port or default) == port


def load(path: Path = DEFAULT_CONFIG, env: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and freeze deploy.yaml; a missing file gives the defaults."""
    env = os.environ if env is None else env
    doc = yamlsrc.load(path) if path.exists() else yamlsrc.Document(str(path), {})
    if not isinstance(doc.data, dict):
        raise ConfigError([doc.problem((), "deploy.yaml must be a mapping", "write key: value pairs")])
    problems = schema.validate(doc, "deploy") + _semantic_problems(doc) + _remotes_problems(doc, path)
    if problems:
        raise ConfigError(problems)
    return _build(doc.data, path, env)


def _semantic_problems(doc: yamlsrc.Document) -> list[Problem]:
    """What the schema cannot say; safe on any shape, so it runs beside the schema's own errors."""
    data = doc.data
    problems: list[Problem] = []
    for section in ("repos", "projects"):
        items = data.get(section)
        seen: set[str] = set()
        for i, item in enumerate(items if isinstance(items, list) else []):
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name in seen:
                problems.append(
                    doc.problem(
                        (section, i, "name"), f"duplicate {section[:-1]} {name!r}", "names must be unique"
                    )
                )
            seen.add(str(name))
    repos = data.get("repos")
    for i, item in enumerate(repos if isinstance(repos, list) else []):
        hook = item.get("webhook") if isinstance(item, dict) else None
        provider = hook.get("provider") if isinstance(hook, dict) else None
        if provider in ("gitea", "gitlab") and not item.get("clone_url"):
            problems.append(
                doc.problem(
                    ("repos", i, "webhook"),
                    f"a {provider} webhook needs repos[{i}].clone_url: the VM fetches only from the URL "
                    "deploy.yaml names, never from one a delivery carries",
                    "add clone_url: https://<your host>/<owner>/<repo>.git",
                )
            )
    problems += _grant_problems(doc)
    problems += _network_problems(doc)
    proxy = data.get("proxy")
    keepalive = proxy.get("keepalive") if isinstance(proxy, dict) else None
    try:
        too_long = keepalive is not None and parse_duration(keepalive) > MAX_KEEPALIVE
    except (ValueError, TypeError):
        too_long = False  # the schema reports a malformed duration
    if too_long:
        problems.append(
            doc.problem(
                ("proxy", "keepalive"),
                f"keep-alive longer than {MAX_KEEPALIVE:.0f}s",
                "SSE clients and fronts cut quiet streams; use 25s or less",
            )
        )
    return problems


def _grant_problems(doc: yamlsrc.Document) -> list[Problem]:
    """A grant may not hand a server one of the provider's own credentials."""
    data = doc.data
    repos = data.get("repos")
    credentials = {data.get("admin_token_env")}
    for item in repos if isinstance(repos, list) else []:
        hook = item.get("webhook") if isinstance(item, dict) else None
        if isinstance(hook, dict):
            credentials |= {hook.get("secret_env"), hook.get("token_env")}
    problems: list[Problem] = []
    for i, item in enumerate(repos if isinstance(repos, list) else []):
        grants = item.get("secrets") if isinstance(item, dict) else None
        for j, grant in enumerate(grants if isinstance(grants, list) else []):
            name = grant.get("name") if isinstance(grant, dict) else grant
            if isinstance(name, str) and (name in credentials or name.startswith(PROVIDER_ENV_PREFIX)):
                problems.append(
                    doc.problem(
                        ("repos", i, "secrets", j),
                        f"{name!r} is the name of one of the provider's own credentials "
                        f"(a webhook secret or token, admin_token_env, or {PROVIDER_ENV_PREFIX}*)",
                        "give the server a secret of its own under another name: "
                        "`central-mcp secret set NAME`, then grant NAME here",
                    )
                )
    return problems


def state_dir_of(path: Path, env: Mapping[str, str] | None = None) -> Path:
    """The state directory deploy.yaml at `path` names, read leniently: even a deploy.yaml that
    fails validation leads `central-mcp reload` to the serve process, which reports its problems."""
    env = os.environ if env is None else env
    try:
        data = yamlsrc.load(path).data if path.exists() else {}
    except ConfigError:
        data = {}
    named = data.get("state_dir") if isinstance(data, dict) else None
    return _state_dir(path, env, named if isinstance(named, str) else None)


def _state_dir(path: Path, env: Mapping[str, str], named: str | None) -> Path:
    return (path.resolve().parent / (env.get(STATE_DIR_ENV) or named or DEFAULT_STATE_DIR)).resolve()


def _network_problems(doc: yamlsrc.Document) -> list[Problem]:
    """The pool and the deny list must be real IPv4 networks, the pool bigger than a subnet."""
    network = doc.data.get("network")
    network = network if isinstance(network, dict) else {}
    problems: list[Problem] = []
    pool = _ipv4_network(network.get("pool", DEFAULT_NETWORK_POOL))
    if pool is None:
        problems.append(
            doc.problem(("network", "pool"), f"{network.get('pool')!r} is not an IPv4 network", _CIDR_HINT)
        )
    prefix = network.get("subnet_prefix", DEFAULT_SUBNET_PREFIX)
    if pool is not None and isinstance(prefix, int) and prefix <= pool.prefixlen:
        problems.append(
            doc.problem(
                ("network", "subnet_prefix"),
                f"subnet_prefix /{prefix} is not smaller than the pool {pool}",
                "use a longer prefix (28 gives each server 13 addresses)",
            )
        )
    deny = network.get("egress_deny")
    for i, value in enumerate(deny if isinstance(deny, list) else []):
        if _ipv4_network(value) is None:
            problems.append(
                doc.problem(("network", "egress_deny", i), f"{value!r} is not an IPv4 network", _CIDR_HINT)
            )
    services = doc.data.get("host_services")
    ports: dict[int, str] = {}
    for name, service in (services if isinstance(services, dict) else {}).items():
        address = service.get("address") if isinstance(service, dict) else None
        parsed = _address(address) if isinstance(address, str) else None
        if isinstance(address, str) and parsed is None:
            problems.append(
                doc.problem(
                    ("host_services", name, "address"),
                    f"{address!r} is not an IPv4 address and port",
                    "write it as 127.0.0.1:11434",
                )
            )
        elif parsed is not None and parsed[1] in ports:
            problems.append(
                doc.problem(
                    ("host_services", name, "address"),
                    f"port {parsed[1]} is also {ports[parsed[1]]!r}'s: a server reaches each service at "
                    "its own gateway on the service's port",
                    "give each host service a different port",
                )
            )
        if parsed is not None:
            ports.setdefault(parsed[1], str(name))
    return problems


_CIDR_HINT = "write it as address/prefix with the host bits zero, like 10.213.0.0/16"


def _remotes_problems(doc: yamlsrc.Document, path: Path) -> list[Problem]:
    """remotes.ca_file must be a readable file next to deploy.yaml (or an absolute path)."""
    remotes = doc.data.get("remotes")
    ca_file = remotes.get("ca_file") if isinstance(remotes, dict) else None
    if not isinstance(ca_file, str) or (path.resolve().parent / ca_file).is_file():
        return []
    return [
        doc.problem(
            ("remotes", "ca_file"),
            f"no CA file at {ca_file!r}",
            "give a PEM file of CA certificates, relative to deploy.yaml, or remove ca_file",
        )
    ]


def _ipv4_network(value: object) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _address(value: str) -> tuple[str, int] | None:
    host, _, port = value.rpartition(":")
    host = "127.0.0.1" if host == "localhost" else host
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return None
    return (host, int(port)) if port.isdigit() and 0 < int(port) < 65536 else None


def _build(data: dict[str, Any], path: Path, env: Mapping[str, str]) -> Settings:
    base = path.resolve().parent
    listen = data.get("listen", {})
    registry = data.get("registry", {})
    proxy = data.get("proxy", {})
    retention = data.get("retention", {})
    build = data.get("build", {})
    webhooks = data.get("webhooks", {})
    return Settings(
        config_path=path,
        state_dir=_state_dir(path, env, data.get("state_dir")),
        host=listen.get("host", DEFAULT_HOST),
        port=listen.get("port", DEFAULT_PORT),
        public_url=data.get("public_url", ""),
        namespace=registry.get("namespace", DEFAULT_NAMESPACE),
        registry_dir=(base / registry["output_dir"]).resolve() if "output_dir" in registry else None,
        repos=tuple(_repo(r) for r in data.get("repos", [{"name": "central-mcp"}])),
        proxy=_proxy(proxy),
        aggregate=_aggregate(data.get("aggregate", {})),
        projects=tuple(_project(p) for p in data.get("projects", [])),
        retention=Retention(
            images_per_server=retention.get("images_per_server", DEFAULT_IMAGES_PER_SERVER),
            deploys=retention.get("deploys", DEFAULT_DEPLOYS_KEPT),
            deploy_max_age=parse_duration(retention.get("deploy_max_age", DEFAULT_DEPLOY_MAX_AGE)),
        ),
        build_parallel=build.get("parallel", DEFAULT_BUILD_PARALLEL),
        build_starts=build.get("starts", DEFAULT_BUILD_STARTS),
        build_args={k: str(v) for k, v in build.get("args", {}).items()},
        build_network=build.get("network", DEFAULT_BUILD_NETWORK),
        build_base_images=tuple(build.get("base_images", DEFAULT_BASE_IMAGES)),
        build_remote_add=bool(build.get("remote_add", False)),
        packages=_packages(data.get("packages", {})),
        webhook_max_body=parse_size(webhooks.get("max_body", DEFAULT_WEBHOOK_MAX_BODY)),
        webhook_queue=webhooks.get("queue", DEFAULT_WEBHOOK_QUEUE),
        monitor=_monitor(data.get("monitor", {})),
        idle=_idle(data.get("idle", {})),
        scale=_scale(data.get("scale", {})),
        containers=_containers(data.get("containers", {})),
        engine=str(data.get("engine", ENGINE_PLAIN)),
        swarm=_swarm(data.get("swarm", {})),
        limits=_limits(data.get("limits", {})),
        network=_network(data.get("network", {})),
        host_services=tuple(_host_service(k, v) for k, v in sorted(data.get("host_services", {}).items())),
        remotes=_remotes(data.get("remotes", {}), base),
        admin_token=env.get(data["admin_token_env"], "") if "admin_token_env" in data else "",
        admin_token_env=data.get("admin_token_env", ""),
    )


def _proxy(data: dict[str, Any]) -> ProxyTimeouts:
    return ProxyTimeouts(
        deploy_timeout=parse_duration(data.get("deploy_timeout", DEFAULT_DEPLOY_TIMEOUT)),
        drain_timeout=parse_duration(data.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT)),
        session_drain_timeout=parse_duration(
            data.get("session_drain_timeout", DEFAULT_SESSION_DRAIN_TIMEOUT)
        ),
        session_idle_timeout=parse_duration(data.get("session_idle_timeout", DEFAULT_SESSION_IDLE_TIMEOUT)),
        keepalive=parse_duration(data.get("keepalive", DEFAULT_KEEPALIVE)),
        allowed_origins=tuple(data.get("allowed_origins", ())),
        max_body=parse_size(data.get("max_body", DEFAULT_MAX_BODY)),
        max_header=parse_size(data.get("max_header", DEFAULT_MAX_HEADER)),
        max_url=parse_size(data.get("max_url", DEFAULT_MAX_URL)),
        header_timeout=parse_duration(data.get("header_timeout", DEFAULT_HEADER_TIMEOUT)),
        body_timeout=parse_duration(data.get("body_timeout", DEFAULT_BODY_TIMEOUT)),
        send_timeout=parse_duration(data.get("send_timeout", DEFAULT_SEND_TIMEOUT)),
        max_connections=data.get("max_connections", DEFAULT_MAX_CONNECTIONS),
        max_upstream_header=parse_size(data.get("max_upstream_header", DEFAULT_MAX_UPSTREAM_HEADER)),
        max_handshake=parse_size(data.get("max_handshake", DEFAULT_MAX_HANDSHAKE)),
    )


def _aggregate(data: dict[str, Any]) -> AggregateConfig:
    return AggregateConfig(
        max_sessions_per_key=data.get("max_sessions_per_key", DEFAULT_AGGREGATE_MAX_SESSIONS),
        max_streams_per_key=data.get("max_streams_per_key", DEFAULT_AGGREGATE_MAX_STREAMS),
        max_held=parse_size(data.get("max_held", DEFAULT_MAX_HANDSHAKE)),
        upstream_timeout=parse_duration(data.get("upstream_timeout", DEFAULT_AGGREGATE_UPSTREAM_TIMEOUT)),
        list_timeout=parse_duration(data.get("list_timeout", DEFAULT_AGGREGATE_LIST_TIMEOUT)),
        list_retry_after=parse_duration(data.get("list_retry_after", DEFAULT_AGGREGATE_LIST_RETRY)),
    )


def _monitor(data: dict[str, Any]) -> MonitorConfig:
    return MonitorConfig(
        probe_interval=parse_duration(data.get("probe_interval", DEFAULT_PROBE_INTERVAL)),
        probe_timeout=parse_duration(data.get("probe_timeout", DEFAULT_PROBE_TIMEOUT)),
        failure_threshold=data.get("failure_threshold", DEFAULT_FAILURE_THRESHOLD),
        watch_window=parse_duration(data.get("watch_window", DEFAULT_WATCH_WINDOW)),
        watch_error_rate=float(data.get("watch_error_rate", DEFAULT_WATCH_ERROR_RATE)),
        watch_min_requests=data.get("watch_min_requests", DEFAULT_WATCH_MIN_REQUESTS),
        watch_restarts=data.get("watch_restarts", DEFAULT_WATCH_RESTARTS),
        retention_interval=parse_duration(data.get("retention_interval", DEFAULT_RETENTION_INTERVAL)),
    )


def _idle(data: dict[str, Any]) -> IdleConfig:
    return IdleConfig(
        after=parse_duration(data.get("after", DEFAULT_IDLE_AFTER)),
        check_interval=parse_duration(data.get("check_interval", DEFAULT_IDLE_CHECK_INTERVAL)),
        wake_timeout=parse_duration(data.get("wake_timeout", DEFAULT_WAKE_TIMEOUT)),
        retry_after=parse_duration(data.get("retry_after", DEFAULT_WAKE_RETRY_AFTER)),
    )


def _scale(data: dict[str, Any]) -> ScaleConfig:
    return ScaleConfig(
        min=data.get("min", DEFAULT_REPLICAS),
        max=max(data.get("max", DEFAULT_REPLICAS), data.get("min", DEFAULT_REPLICAS)),
        target_inflight=float(data.get("target_inflight", DEFAULT_TARGET_INFLIGHT)),
        window=parse_duration(data.get("window", DEFAULT_SCALE_WINDOW)),
        cooldown=parse_duration(data.get("cooldown", DEFAULT_SCALE_COOLDOWN)),
        interval=parse_duration(data.get("interval", DEFAULT_SCALE_INTERVAL)),
    )


def _swarm(data: dict[str, Any]) -> SwarmConfig:
    low, high = data.get("relay_ports", DEFAULT_RELAY_PORTS)
    return SwarmConfig(
        nodes={str(k): str(v) for k, v in (data.get("nodes") or {}).items()},
        start_timeout=parse_duration(data.get("start_timeout", DEFAULT_SWARM_START_TIMEOUT)),
        relay_ports=(min(low, high), max(low, high)),
        image_copy_timeout=parse_duration(data.get("image_copy_timeout", DEFAULT_IMAGE_COPY_TIMEOUT)),
        encrypt=bool(data.get("encrypt", True)),
        relay_max_connections=int(data.get("relay_max_connections", DEFAULT_RELAY_CONNECTIONS)),
        relay_connect_timeout=parse_duration(
            data.get("relay_connect_timeout", DEFAULT_RELAY_CONNECT_TIMEOUT)
        ),
    )


def _containers(data: dict[str, Any]) -> Containers:
    return Containers(
        user=str(data.get("user", DEFAULT_CONTAINER_USER)),
        tmpfs=parse_size(data.get("tmpfs", DEFAULT_CONTAINER_TMPFS)),
    )


def _packages(data: dict[str, Any]) -> Packages:
    return Packages(
        pypi_index=data.get("pypi_index", DEFAULT_PYPI_INDEX),
        npm_registry=data.get("npm_registry", DEFAULT_NPM_REGISTRY),
        python_image=data.get("python_image", DEFAULT_PYTHON_IMAGE),
        python_version=data.get("python_version", DEFAULT_PYTHON_VERSION),
        node_image=data.get("node_image", DEFAULT_NODE_IMAGE),
        max_bytes=parse_size(data.get("max_bytes", DEFAULT_PACKAGE_MAX_BYTES)),
        max_files=data.get("max_files", DEFAULT_PACKAGE_MAX_FILES),
        timeout=parse_duration(data.get("timeout", DEFAULT_PACKAGE_TIMEOUT)),
    )


def _limits(data: dict[str, Any]) -> Limits:
    return Limits(
        memory=parse_size(data.get("memory", DEFAULT_MAX_MEMORY)),
        snapshot_size=parse_size(data.get("snapshot_size", DEFAULT_MAX_SNAPSHOT_SIZE)),
        snapshot_files=data.get("snapshot_files", DEFAULT_MAX_SNAPSHOT_FILES),
        log_lines=data.get("log_lines", DEFAULT_MAX_LOG_LINES),
    )


def _network(data: dict[str, Any]) -> NetworkConfig:
    relay = data.get("relay", {})
    return NetworkConfig(
        pool=str(ipaddress.IPv4Network(data.get("pool", DEFAULT_NETWORK_POOL))),
        subnet_prefix=data.get("subnet_prefix", DEFAULT_SUBNET_PREFIX),
        egress_deny=tuple(
            str(ipaddress.IPv4Network(n)) for n in data.get("egress_deny", DEFAULT_EGRESS_DENY)
        ),
        relay_max_connections=relay.get("max_connections", DEFAULT_RELAY_MAX_CONNECTIONS),
        relay_idle_timeout=parse_duration(relay.get("idle_timeout", DEFAULT_RELAY_IDLE_TIMEOUT)),
    )


def _remotes(data: dict[str, Any], base: Path) -> RemotesConfig:
    ca_file = data.get("ca_file")
    return RemotesConfig(
        allow_hosts=tuple(h.lower().rstrip(".") for h in data.get("allow_hosts", ())),
        ca_file=(base / ca_file).resolve() if ca_file else None,
        connect_timeout=parse_duration(data.get("connect_timeout", DEFAULT_REMOTE_CONNECT_TIMEOUT)),
    )


def _host_service(name: str, data: dict[str, Any]) -> HostService:
    address = _address(data["address"])
    assert address is not None  # checked by _network_problems
    return HostService(name, address[0], address[1], tuple(data.get("servers", ())))


def _repo(data: dict[str, Any]) -> Repo:
    hook = data.get("webhook")
    return Repo(
        name=data["name"],
        branch=data.get("branch", DEFAULT_BRANCH),
        manifests=tuple(data.get("manifests", DEFAULT_MANIFESTS)),
        clone_url=data.get("clone_url", ""),
        webhook=Webhook(
            hook["provider"],
            hook["secret_env"],
            tuple(hook.get("paths", ())),
            hook.get("token_env", ""),
            hook.get("ssh_key", ""),
        )
        if hook
        else None,
        secrets=tuple(_grant(g) for g in data.get("secrets", ())),
    )


def _grant(data: str | dict[str, Any]) -> SecretGrant:
    if isinstance(data, str):
        return SecretGrant(data)
    return SecretGrant(data["name"], tuple(data.get("servers", ())))


def _project(data: dict[str, Any]) -> Project:
    rate = data.get("rate_limit", {})
    return Project(
        name=data["name"],
        servers=tuple(data.get("servers", ("all",))),
        per_minute=rate.get("per_minute", DEFAULT_RATE_PER_MINUTE),
        burst=rate.get("burst", DEFAULT_RATE_BURST),
        tools_allow=tuple(data.get("tools", {}).get("allow", ())),
        tools_deny=tuple(data.get("tools", {}).get("deny", ())),
    )
