"""The Docker adapter: every call into the docker SDK goes through here, errors translated.

Containers are started hardened (on their server's own network, no published port,
no-new-privileges, all capabilities dropped, memory and CPU limits, a read-only root with a
size-capped tmpfs at /tmp and at every VOLUME the image declares, a non-root user whatever the
image's USER says) and labelled so that what runs can be read back, the network they are reached on
included. overlay2 on ext4 has no per-container disk quota: a container writes only to
memory-backed tmpfs, counted in its memory limit, and never gets a Docker volume; what it prints
goes to a json-file log of LOG_FILES rotated files of LOG_FILE_SIZE (unbounded, it filled the disk).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import docker
import docker.errors
import docker.types
import docker.utils
import requests
import requests.exceptions

from pipeline import buildkit
from pipeline.config.settings import DEFAULT_CONTAINER_TMPFS, DEFAULT_CONTAINER_USER
from pipeline.dockerfile import FRONTEND_ARG
from pipeline.errors import BuildError, BuildKitUnavailable, DockerError, EngineUnavailable

LABEL_PREFIX = "central-mcp"
LABEL_SERVER = f"{LABEL_PREFIX}.server"
LABEL_RELEASE = f"{LABEL_PREFIX}.release"
LABEL_COMMIT = f"{LABEL_PREFIX}.commit"
LABEL_PORT = f"{LABEL_PREFIX}.port"
LABEL_ROLE = f"{LABEL_PREFIX}.role"
LABEL_INSTANCE = f"{LABEL_PREFIX}.instance"
LABEL_FINGERPRINT = f"{LABEL_PREFIX}.fingerprint"
LABEL_NETWORK = f"{LABEL_PREFIX}.network"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
SWARM_TASK_LABEL = "com.docker.swarm.service.id"  # on a Swarm task's container (swarm.py)
ADDRESS_TIMEOUT = 5.0  # for a started container to get its address on its network
ENGINE_TIMEOUT = 120
RESTART_POLICIES: dict[str, dict[str, Any]] = {
    "always": {"Name": "always"},
    "on-failure": {"Name": "on-failure", "MaximumRetryCount": 5},
    "never": {"Name": "no"},
}
STOP_GRACE_SECONDS = 10
ERROR_BODY_BYTES = 4096  # of an engine's refusal, quoted in the error
MAX_LINE_CHARS = 8192  # of one build output line, as logged
CPU_PERIOD = 100_000  # µs: the CFS period a container's CPU quota is counted in (Docker's default)
LOG_FILE_SIZE = "8m"  # a server's output kept on the host: at most LOG_FILES files of this size
LOG_FILES = "2"
TMP_DIR = "/tmp"  # the writable tmpfs every server container gets, and its HOME
TMPFS_OPTIONS = "rw,nosuid,nodev,noexec"


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to start one server container."""

    image: str
    name: str
    port: int
    labels: Mapping[str, str]
    env: Mapping[str, str]
    memory_bytes: int
    cpus: float
    command: tuple[str, ...] = ()
    restart: str = "on-failure"
    startup_cpus: float = 0.0
    """CPUs allowed until `limit_cpus` is called (never fewer than `cpus`): a start-up boost."""
    user: str = DEFAULT_CONTAINER_USER
    """uid:gid the server runs as, whatever the image's USER says."""
    tmpfs_bytes: int = DEFAULT_CONTAINER_TMPFS
    """Size of /tmp (and of a tmpfs at each VOLUME the image declares); the root is read-only."""
    network: str = ""
    """The one network the container joins (its server's own); required."""
    extra_hosts: Mapping[str, str] = field(default_factory=dict)
    """Names the container resolves to an address (host services, at its network's gateway)."""
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The server's granted secrets (environment here; files read by a shim on Swarm: swarm.py)."""


@dataclass(frozen=True)
class Running:
    """A started container and the address its server answers on (host "" and port 0: it already exited)."""

    id: str
    name: str
    host: str
    port: int


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Run a docker SDK call, its errors translated into DockerError (EngineUnavailable without an engine)."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise DockerError(f"{what}: image not found ({exc.explanation})") from exc
    except docker.errors.NotFound as exc:
        raise DockerError(f"{what}: not found ({exc.explanation})") from exc
    except docker.errors.APIError as exc:
        raise DockerError(f"{what}: Docker engine said {exc.explanation or exc}") from exc
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        raise EngineUnavailable(
            f"{what}: no Docker engine answers ({exc}); start dockerd or run `make run`"
        ) from exc


class DockerHost:
    """A thin, translated facade over one Docker engine."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        with translated("connect"):
            self.client = client or docker.from_env(timeout=ENGINE_TIMEOUT)
        self.buildkit = True  # until the engine refuses a BuildKit build
        self._cpus = 0

    def ping(self) -> None:
        """Raise EngineUnavailable unless the engine answers."""
        with translated("ping"):
            self.client.ping()

    def image_exists(self, tag: str) -> bool:
        """Return whether an image with this tag is present locally."""
        try:
            with translated(f"inspect image {tag}"):
                self.client.images.get(tag)
            return True
        except DockerError:
            return False

    def image_labels(self, tag: str) -> dict[str, str]:
        """Return an image's labels (empty when it is missing or has none)."""
        try:
            with translated(f"inspect image {tag}"):
                labels = self.client.images.get(tag).labels
        except DockerError:
            return {}
        return dict(labels or {})

    def build(
        self,
        tag: str,
        context: Path,
        dockerfile: str,
        exclude: list[str],
        args: Mapping[str, str],
        labels: Mapping[str, str],
        on_line: Callable[[str], None],
        network: str = "default",
        timeout: float | None = None,
    ) -> str:
        """Build `context` with the Dockerfile text `dockerfile` into `tag`, leaving out the
        `exclude` patterns; stream output lines to `on_line`; return the image id.

        BuildKit (the engine's build API with version=2; no buildx needed) unless the engine
        refuses it, then the legacy builder, which commits a container per instruction. The
        Dockerfile goes in the context under a name of our own, so no file of the context is
        taken for it. Past `timeout` seconds the build is abandoned (the engine cancels it).
        """
        name = f".central-mcp-dockerfile-{secrets.token_hex(4)}"
        params = {
            "t": tag,
            "dockerfile": name,
            # It names a frontend image BuildKit would fetch and run: never passed on.
            "buildargs": json.dumps({k: v for k, v in args.items() if k != FRONTEND_ARG}),
            "labels": json.dumps(dict(labels)),
            "networkmode": network,
            "rm": "1",
            "forcerm": "1",
        }
        request = _BuildRequest(tag, context, (name, dockerfile), exclude, timeout)
        if self.buildkit:
            try:
                return self._build(request, {**params, "version": "2"}, on_line)
            except BuildKitUnavailable as exc:
                self.buildkit = False
                on_line(f"the Docker engine refused a BuildKit build ({exc}); using the legacy builder")
        return self._build(request, {**params, "version": "1"}, on_line)

    def _build(self, request: _BuildRequest, params: dict[str, str], on_line: Callable[[str], None]) -> str:
        api = self.client.api
        progress = buildkit.Progress()
        tail: list[str] = []
        image_id = ""
        tag = request.tag
        with translated(f"build {tag}"), _context_tar(request) as body:
            response = api.post(
                f"{api.base_url}/v{api.api_version}/build",
                params=params,
                data=body,
                headers={"Content-Type": "application/x-tar"},
                stream=True,
                timeout=(ENGINE_TIMEOUT, None),  # a build may be quiet for long: the deadline is below
            )
            with (
                contextlib.closing(response),
                _deadline(request.timeout, lambda: _abort(response)) as expired,
            ):
                if response.status_code != 200:
                    detail = response.raw.read(ERROR_BODY_BYTES, decode_content=True).decode(
                        "utf-8", "replace"
                    )
                    if response.status_code == 400 and "buildkit" in detail.lower():
                        raise BuildKitUnavailable(detail.strip())
                    raise DockerError(f"build {tag}: Docker engine said {response.status_code}: {detail}")
                try:
                    for chunk in _json_lines(response.iter_lines()):
                        for line in _chunk_lines(chunk, progress):
                            line = line[:MAX_LINE_CHARS]
                            tail = [*tail[-19:], line]
                            on_line(line)
                        if "error" in chunk:
                            raise BuildError(
                                f"image {tag} failed to build: "
                                + str(chunk["error"]).strip()[:MAX_LINE_CHARS]
                                + "\n"
                                + "\n".join(tail)
                            )
                        aux = chunk.get("aux")
                        if isinstance(aux, dict) and "ID" in aux:
                            image_id = str(aux["ID"])
                except (requests.exceptions.RequestException, OSError, AttributeError, ValueError) as exc:
                    if expired.is_set():
                        raise BuildError(
                            f"image {tag} did not build within {request.timeout:g}s (proxy.deploy_timeout); "
                            "the build was stopped\n" + "\n".join(tail)
                        ) from exc
                    raise DockerError(f"build {tag}: the engine's answer broke off ({exc!r})") from exc
        return image_id or str(self.client.images.get(tag).id)

    def prune_build_cache(self, keep_bytes: int) -> int:
        """Trim BuildKit's build cache to about `keep_bytes`; return the bytes reclaimed."""
        with translated("prune the build cache"):
            result = self.client.api.prune_builds(keep_storage=keep_bytes)
        return int((result or {}).get("SpaceReclaimed") or 0)

    def run(self, spec: RunSpec) -> Running:
        """Start a hardened container for `spec` on its network, publishing no port."""
        if not spec.network:
            raise DockerError(f"{spec.name}: no network to start it on")
        policy: Any = RESTART_POLICIES[spec.restart]
        cpus = self.engine_cpus()
        if spec.cpus > cpus:
            raise DockerError(
                f"{spec.name}: resources.cpus {spec.cpus:g} is more than the engine's {cpus} CPUs"
            )
        with translated(f"start {spec.name}"):
            container = self.client.containers.run(
                spec.image,
                command=list(spec.command) or None,
                name=spec.name,
                detach=True,
                labels=dict(spec.labels),
                environment={"HOME": TMP_DIR, **spec.env, **spec.secret_env},
                read_only=True,
                tmpfs=self._tmpfs(spec),
                user=spec.user,
                network=spec.network,
                extra_hosts=dict(spec.extra_hosts) or None,
                mem_limit=spec.memory_bytes,
                cpu_period=CPU_PERIOD,
                cpu_quota=_quota(min(max(spec.cpus, spec.startup_cpus), cpus)),
                log_config=docker.types.LogConfig(
                    type="json-file", config={"max-size": LOG_FILE_SIZE, "max-file": LOG_FILES}
                ),
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                pids_limit=256,
                init=True,
                restart_policy=policy,
            )
            host = self._address(container, spec.network)
            return Running(str(container.id), spec.name, host, spec.port if host else 0)

    def _tmpfs(self, spec: RunSpec) -> dict[str, str]:
        """A size-capped tmpfs at /tmp and over every VOLUME of the image: no anonymous volume is
        made (none leaks, none escapes the memory limit), and what the image holds there is hidden."""
        volumes = self.client.images.get(spec.image).attrs.get("Config", {}).get("Volumes") or {}
        uid, _, gid = spec.user.partition(":")
        # Owned by the forced user: a tmpfs over an image's folder takes that folder's owner (root).
        options = f"{TMPFS_OPTIONS},uid={uid},gid={gid or uid},size={spec.tmpfs_bytes}"
        return {path: options for path in [TMP_DIR, *sorted(volumes)]}

    def engine_cpus(self) -> int:
        """How many CPUs the engine's host has (asked once)."""
        if self._cpus == 0:
            with translated("ask the engine for its CPUs"):
                self._cpus = int(self.client.info().get("NCPU") or 1)
        return self._cpus

    def limit_cpus(self, container_id: str, cpus: float) -> None:
        """Set a running container's CPU limit (ends its start-up boost)."""
        with translated(f"limit the CPUs of {container_id[:12]}"):
            self.client.api.update_container(container_id, cpu_period=CPU_PERIOD, cpu_quota=_quota(cpus))

    def _address(self, container: Any, network: str) -> str:
        deadline = time.monotonic() + ADDRESS_TIMEOUT
        while True:
            container.reload()
            host = network_address(container.attrs, network)
            if host:
                return host
            if container.status in ("exited", "dead", "restarting"):
                # Docker drops the address of a container that already exited. Report none and keep
                # the container, so the caller's health gate sees the exit, copies its last log
                # lines and removes it like any other failed candidate.
                return ""
            if time.monotonic() > deadline:
                raise DockerError(
                    f"container {container.name} got no address on network {network} "
                    f"(status {container.status})"
                )
            time.sleep(0.05)

    # networks -----------------------------------------------------------------------------
    def network(self, name: str) -> dict[str, Any] | None:
        """Return a network's attributes, or None when there is none of that name."""
        try:
            with translated(f"inspect network {name}"):
                attrs: dict[str, Any] = self.client.networks.get(name).attrs
                return attrs
        except DockerError as exc:
            if "not found" in str(exc):
                return None
            raise

    def networks(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Return the attributes (attached containers included) of every network with these labels."""
        with translated("list networks"):
            filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
            return [n.attrs for n in self.client.networks.list(filters=filters, greedy=True)]

    def subnets(self) -> list[str]:
        """Every subnet any network of the engine uses (another instance's and Docker's own too)."""
        with translated("list networks"):
            found = self.client.networks.list()
        return [
            str(config["Subnet"])
            for n in found
            for config in ((n.attrs.get("IPAM") or {}).get("Config") or [])
            if config.get("Subnet")
        ]

    def create_network(
        self, name: str, subnet: str, gateway: str, *, internal: bool, bridge: str, labels: Mapping[str, str]
    ) -> dict[str, Any]:
        """Create a bridge network with this subnet, gateway and bridge interface name."""
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway)])
        with translated(f"create network {name}"):
            created = self.client.networks.create(
                name,
                driver="bridge",
                internal=internal,
                ipam=ipam,
                labels=dict(labels),
                options={BRIDGE_NAME_OPTION: bridge},
                check_duplicate=True,
            )
            created.reload()
            attrs: dict[str, Any] = created.attrs
            return attrs

    def remove_network(self, name: str) -> None:
        """Remove a network; a missing one is fine."""
        try:
            with translated(f"remove network {name}"):
                self.client.networks.get(name).remove()
        except DockerError as exc:
            if "not found" not in str(exc):
                raise

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """Return the container's attributes, or None when it is gone; EngineUnavailable without an engine."""
        try:
            with translated(f"inspect {container_id[:12]}"):
                attrs: dict[str, Any] = self.client.containers.get(container_id).attrs
                return attrs
        except EngineUnavailable:
            raise
        except DockerError:
            return None

    def status(self, container_id: str) -> str:
        """Return the container's state (running, exited, ...) or 'missing'."""
        try:
            with translated(f"inspect {container_id[:12]}"):
                container = self.client.containers.get(container_id)
        except DockerError:
            return "missing"
        return str(container.status)

    def logs_tail(self, container_id: str, lines: int = 30) -> list[str]:
        """Return the container's last log lines (empty when it is gone)."""
        try:
            with translated(f"logs of {container_id[:12]}"):
                raw = self.client.containers.get(container_id).logs(tail=lines)
        except DockerError:
            return []
        return raw.decode("utf-8", "replace").splitlines()

    def stop_and_remove(self, container_id: str, grace: float = STOP_GRACE_SECONDS) -> None:
        """Send SIGTERM, wait up to `grace` seconds, then remove; a missing container is fine."""
        try:
            with translated(f"remove {container_id[:12]}"):
                container = self.client.containers.get(container_id)
                if container.status == "running":
                    container.stop(timeout=int(grace))
                container.remove(force=True, v=True)  # and its anonymous volumes, if any
        except DockerError as exc:
            if "not found" not in str(exc):
                raise

    def hostname(self, container_id: str) -> str:
        """The host name a server sees in its container: Docker's default, the id's first 12."""
        return container_id[:12]

    def checks(self) -> dict[str, str]:
        """What /healthz reports of this engine beyond answering pings: nothing here."""
        return {}

    def tend(self) -> None:
        """Housekeeping an engine needs between deploys (the Swarm engine's relay); none here."""

    def remove_container_named(self, name: str) -> None:
        """Remove a container by name if one exists (a leftover of an earlier run)."""
        try:
            with translated(f"remove {name}"):
                self.client.containers.get(name).remove(force=True, v=True)
        except DockerError as exc:
            if "not found" not in str(exc):
                raise

    def containers(self, labels: Mapping[str, str]) -> list[Any]:
        """Return every container (running or not) carrying all these labels, but a Swarm task's
        (engine: swarm; after a switch back, its services are removed by hand: README)."""
        with translated("list containers"):
            filters = [f"{k}={v}" for k, v in labels.items()]
            # ignore_removed: one removed between the list and its inspection (a drain) is left out
            found = self.client.containers.list(all=True, filters={"label": filters}, ignore_removed=True)
            return [c for c in found if SWARM_TASK_LABEL not in (c.labels or {})]

    def remove_image(self, tag: str) -> None:
        """Remove an image by tag; a missing image is fine."""
        if self.image_exists(tag):
            with translated(f"remove image {tag}"):
                self.client.images.remove(tag, force=True)

    def import_rootfs(self, tarball: Path, tag: str, changes: list[str]) -> None:
        """Import a root file system tarball as image `tag`."""
        repository, _, version = tag.partition(":")
        with translated(f"import {tag}"), tarball.open("rb") as data:
            self.client.api.import_image_from_data(
                data, repository=repository, tag=version or "latest", changes=changes
            )


def _chunk_lines(chunk: Mapping[str, Any], progress: buildkit.Progress) -> list[str]:
    if chunk.get("id") == "moby.buildkit.trace" and isinstance(chunk.get("aux"), str):
        try:
            return progress.lines(chunk["aux"])
        except ValueError:
            return []  # a progress message we cannot read is not a failed build
    text = str(chunk.get("stream") or chunk.get("status") or "")
    return [line for line in text.splitlines() if line.strip()]


def _json_lines(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    for raw in lines:
        if not raw.strip():
            continue
        try:
            chunk = json.loads(raw)
        except ValueError:
            continue
        if isinstance(chunk, dict):
            yield chunk


@dataclass(frozen=True)
class _BuildRequest:
    tag: str
    context: Path
    dockerfile: tuple[str, str]  # (name in the context, text)
    exclude: list[str]
    timeout: float | None


@contextmanager
def _context_tar(request: _BuildRequest) -> Iterator[IO[bytes]]:
    """The build context as a gzipped tar, without the `exclude` patterns, with our Dockerfile.

    Gzipped: BuildKit tells a context archive from a bare Dockerfile by its first bytes, and does
    not read past the PAX header Python's tar starts with (gzip's magic it knows).
    """
    body = cast(
        IO[bytes],
        docker.utils.tar(request.context, exclude=request.exclude, dockerfile=request.dockerfile, gzip=True),
    )
    try:
        yield body
    finally:
        body.close()


def _abort(response: requests.Response) -> None:
    """Cut a streamed answer from another thread: closing alone leaves a blocked read waiting."""
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    response.close()


@contextmanager
def _deadline(seconds: float | None, stop: Callable[[], None]) -> Iterator[threading.Event]:
    """Call `stop` once `seconds` pass (never with None); the event says whether it was called."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        stop()

    timer = threading.Timer(seconds, expire) if seconds is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield expired
    finally:
        if timer is not None:
            timer.cancel()


def network_address(attrs: Mapping[str, Any], network: str) -> str:
    """A container's IPv4 address on `network` ("" when it has none, e.g. it is not running)."""
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return str((networks.get(network) or {}).get("IPAddress") or "")


def container_address(attrs: Mapping[str, Any]) -> tuple[str, int]:
    """Where a labelled container's server answers: its address on its network and its port label."""
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    host = network_address(attrs, labels.get(LABEL_NETWORK, ""))
    port = str(labels.get(LABEL_PORT, ""))
    return (host, int(port)) if host and port.isdigit() else ("", 0)


def _quota(cpus: float) -> int:
    return max(1000, int(cpus * CPU_PERIOD))  # the kernel refuses a quota under 1 ms
