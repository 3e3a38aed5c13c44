"""The Swarm engine (deploy.yaml `engine: swarm`): each replica is a Swarm service of one task.

The pipeline above is the plain engine's: a deploy starts replicas, gates them, swaps, drains
and removes; the monitor probes and replaces. Only what "a container" is changes, so this is a
DockerHost whose container calls act on services:

- A replica is a service of one task (`endpoint_mode: dnsrr`, no published port), never Swarm's
  own rolling update: our gate decides when a replica takes traffic and our drain when it
  leaves. Swarm places it (on a node that holds its image), restarts its task and moves it when
  its node dies.
- Its overlay network is its server's own (`internal` unless `run.network: egress`), `encrypted`
  (IPsec between nodes) with `swarm.encrypt` (the default), and always while this node is the swarm's only
  one: the host takes VXLAN (udp 4789) from anyone, and only for an encrypted overlay does Docker
  drop what is not IPsec, so no machine outside the VM puts frames on it (IPsec costs nothing here:
  no overlay traffic leaves the node).
- The proxy is a host process and cannot join an overlay: one relay container (swarmrelay.py)
  on this node joins every server's overlay and a bridge network of its own from network.pool.
  Each replica gets a relay port (a service label); the proxy, gate and probes reach
  `<relay address>:<port>`, which the relay forwards to the service's name, resolved at each
  connection (a task Swarm moved is found again). It accepts only the host's address on its
  bridge, so no server reaches another through it.
- Images reach the other nodes without any registry: each new image is copied to every node of
  deploy.yaml `swarm.nodes` (docker save | docker load over their Docker endpoints, ssh:// by
  docker-py) and the service names it by image ID, which no node ever pulls; a node that could
  not take it is kept out by a placement constraint.
- What Swarm lacks, made up for: services cannot set `no-new-privileges` (engine API 1.41), so
  every capability is dropped (a setuid binary gains none), the root stays read-only and the
  user non-root; secrets go in as Swarm secrets (files, in memory, on the task's node only)
  read into the environment by a two-line shell shim, not as plain environment in the service
  spec every manager stores; a start-up CPU boost would need a spec update, which replaces the
  task, so a replica starts at its manifest's CPU limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import posixpath
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import docker
import docker.errors
import docker.types

from pipeline import swarmrelay
from pipeline.config.settings import Settings
from pipeline.dockerhost import (
    CPU_PERIOD,
    LABEL_INSTANCE,
    LABEL_NETWORK,
    LABEL_PORT,
    LABEL_RELEASE,
    LABEL_ROLE,
    LABEL_SERVER,
    LOG_FILE_SIZE,
    LOG_FILES,
    STOP_GRACE_SECONDS,
    SWARM_TASK_LABEL,
    TMP_DIR,
    DockerHost,
    Running,
    RunSpec,
    network_address,
    translated,
)
from pipeline.errors import CentralMCPError, DockerError
from pipeline.network import Networks

log = logging.getLogger(__name__)

LABEL_RELAY_PORT = "central-mcp.relay-port"
LABEL_OVERLAY = "central-mcp.overlay-instance"  # not LABEL_INSTANCE: the bridge networks' prune skips them
LABEL_SECRET_OF = "central-mcp.service"
RELAY_OWNER = "swarm.relay"  # the relay network's owner: no server name holds a dot
RELAY_ROLE = "swarm-relay"
RELAY_CONTROL_PORT = 7999
RELAY_WAY_BYTES = 2 * swarmrelay.CHUNK  # a backpressured way: asyncio's 64 KiB mark + a read
RELAY_RUNTIME_MEMORY = 64 * 1024**2  # the interpreter and its idle connections


# Every connection the relay admits stalled both ways (a server that never reads, a client that never
# reads its answer) still fits: at 128 MiB, 1024 of them (256 MiB) got the relay, every server's way in,
# killed for memory. A limit, not a reservation. Kernel socket buffers are more on a cgroup v2 host.
def relay_memory(max_connections: int) -> int:
    """The relay's memory limit for `max_connections` (swarm.relay_max_connections)."""
    return max_connections * 2 * RELAY_WAY_BYTES + RELAY_RUNTIME_MEMORY


RELAY_MEMORY = relay_memory(swarmrelay.DEFAULT_MAX_CONNECTIONS)
RELAY_TIMEOUT = 5.0  # one control request to the relay
RELAY_START_TIMEOUT = 15.0  # for a new relay to answer
EGRESS_MARK = ".egress"
EGRESS_END = "-e"
OVERLAY_DIGEST = 32  # hex digits of sha256 (128 bits): no server name can be searched for another's overlay
DNS_LABEL = 63
SECRETS_SHIM = 'for f in /run/secrets/*; do [ -f "$f" ] && export "${f##*/}=$(cat "$f")"; done; exec "$@"'
SHIM_NAME = "central-mcp-secrets"
RESTART_CONDITIONS = {"always": "any", "on-failure": "on-failure", "never": "none"}
RESTART_ATTEMPTS = 5
RESTART_DELAY_NS = 1_000_000_000
PIDS_LIMIT = 256
ENDED_STATES = {"failed", "complete", "rejected", "orphaned", "shutdown"}
TASK_POLL = 0.1
NODE_DOWN = "down"
TASK_ERROR_CHARS = 500  # of why a task ended, as the deploy log shows it
RUNNING = "running"
STARTING_STATES = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}


def overlay_name(instance: str, server: str, egress: bool) -> str:
    """A server's overlay network, `cmcp-<instance>-ov-<hash>` (Swarm names are DNS labels: no dot
    marks egress here; the hash of server and egress does), ending `-e` when it has egress."""
    mark = EGRESS_MARK if egress else ""
    digest = hashlib.sha256(f"{server}{mark}".encode()).hexdigest()[:OVERLAY_DIGEST]
    return f"cmcp-{instance}-ov-{digest}{EGRESS_END if egress else ''}"


def service_name(container_name: str) -> str:
    """A replica's service name: its container name when that is a DNS label (at most 63
    characters), else its first 46 characters and a hash of the whole."""
    if len(container_name) <= DNS_LABEL:
        return container_name
    digest = hashlib.sha1(container_name.encode()).hexdigest()[:16]
    return f"{container_name[: DNS_LABEL - len(digest) - 1].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class _Relay:
    container_id: str
    host: str
    client: swarmrelay.RelayClient


@dataclass
class ServiceView:
    """A replica's service seen as the pipeline sees a container (id, name, labels, status, attrs)."""

    id: str
    name: str
    labels: dict[str, str]
    status: str
    attrs: dict[str, Any]


class SwarmHost(DockerHost):
    """A DockerHost whose containers are Swarm services; images and builds stay this engine's."""

    def __init__(self, settings: Settings, instance: str, client: docker.DockerClient | None = None) -> None:
        super().__init__(client)
        self.settings = settings
        self.instance = instance
        self.server_networks: Networks | None = None
        self._lock = threading.RLock()
        self._relay: _Relay | None = None
        self._nodes: dict[str, DockerHost] = {}
        self._node_ids: dict[str, str] = {}  # swarm.nodes name -> its swarm node id, once it answered

    @property
    def _api(self) -> Any:
        """The engine's low-level API (its service, task, secret and node calls are untyped)."""
        return self.client.api

    # replicas -------------------------------------------------------------------------------
    def run(self, spec: RunSpec) -> Running:
        """Make `spec`'s service (one task) and wait until its task runs; host "" when it failed."""
        if not spec.network:
            raise DockerError(f"{spec.name}: no network to start it on")
        with translated(f"start {spec.name}"):
            image = self.client.images.get(spec.image)
        constraints = self._placement(str(image.id), spec)
        egress = spec.network.endswith(EGRESS_END)
        with self._lock:  # prune_overlays takes the same lock: the overlay stays until the service uses it
            self._overlay(spec.network, egress, spec.labels.get(LABEL_SERVER, ""))
            relay = self.relay()
            self._connect(relay, spec.network)
            port = self._free_port()
            labels = {**spec.labels, LABEL_RELAY_PORT: str(port), LABEL_NETWORK: spec.network}
            refs = self._secrets(spec)
            try:
                with translated(f"create service {spec.name}"):
                    service = cast(Any, self.client.services).create(
                        str(image.id),
                        name=service_name(spec.name),
                        hostname=service_name(spec.name),
                        labels=labels,
                        container_labels=labels,
                        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
                        networks=[spec.network],
                        **self._task(spec, image.attrs, refs, constraints),
                    )
            except DockerError:
                with contextlib.suppress(DockerError):  # no service holds them: none is left behind
                    self._remove_secrets(service_name(spec.name))
                raise
            self.sync()
        return self._started(str(service.id), spec.name, relay, port)

    def _task(
        self, spec: RunSpec, image: Mapping[str, Any], refs: list[Any], constraints: list[str]
    ) -> dict[str, Any]:
        """The service's task template: the plain engine's hardening, as far as Swarm has it."""
        config = image.get("Config") or {}
        args = list(spec.command) or None
        command = None
        if refs:  # the shim reads the secret files into the environment, then runs the server
            command = ["/bin/sh", "-c", SECRETS_SHIM, SHIM_NAME]
            entry = list(config.get("Entrypoint") or [])
            args = entry + (list(spec.command) or list(config.get("Cmd") or []))
        # One tmpfs per folder: Swarm refuses a spec naming a mount point twice (an image's `VOLUME /tmp`).
        paths = dict.fromkeys(posixpath.normpath(p) for p in [TMP_DIR, *sorted(config.get("Volumes") or {})])
        mounts = [
            docker.types.Mount(path, "", type="tmpfs", tmpfs_size=spec.tmpfs_bytes, tmpfs_mode=0o1777)
            for path in paths
        ]
        resources = docker.types.Resources(cpu_limit=int(spec.cpus * 1e9), mem_limit=spec.memory_bytes)
        resources["Limits"]["Pids"] = PIDS_LIMIT
        return {
            "command": command,
            "args": args,
            "env": [f"{k}={v}" for k, v in {"HOME": TMP_DIR, **spec.env}.items()],
            "user": spec.user,
            "read_only": True,
            "cap_drop": ["ALL"],
            "init": True,
            "mounts": mounts,
            "secrets": refs or None,
            "resources": resources,
            "stop_grace_period": STOP_GRACE_SECONDS * 1_000_000_000,
            "restart_policy": docker.types.RestartPolicy(
                condition=cast(Any, RESTART_CONDITIONS[spec.restart]),
                delay=RESTART_DELAY_NS,
                max_attempts=RESTART_ATTEMPTS,
            ),
            "log_driver": "json-file",
            "log_driver_options": {"max-size": LOG_FILE_SIZE, "max-file": LOG_FILES},
            "constraints": constraints or None,
        }

    def _started(self, service_id: str, name: str, relay: _Relay, port: int) -> Running:
        """Wait for the service's task to run (bounded by swarm.start_timeout)."""
        deadline = time.monotonic() + self.settings.swarm.start_timeout
        while True:
            state, message = self._task_state(service_id)
            if state == RUNNING:
                return Running(service_id, name, relay.host, port)
            if state not in STARTING_STATES and state != "missing":
                log.info("%s: its task is %s (%s)", name, state, message)
                return Running(service_id, name, "", 0)  # the gate reads its logs and removes it
            if time.monotonic() > deadline:
                self.stop_and_remove(service_id)  # a task left pending would wait for a node forever
                raise DockerError(
                    f"service {name}: its task did not start within {self.settings.swarm.start_timeout:g}s "
                    f"(state {state}: {message or 'no message'}); is a node with its image up?"
                )
            time.sleep(TASK_POLL)

    def _tasks(self, service_id: str) -> list[dict[str, Any]]:
        """The service's tasks (none when the service is gone)."""
        try:
            with translated(f"tasks of {service_id[:12]}"):
                return list(self._api.tasks(filters={"service": service_id}))
        except DockerError as exc:
            if "not found" in str(exc):
                return []
            raise

    def _task_state(self, service_id: str, tasks: list[dict[str, Any]] | None = None) -> tuple[str, str]:
        """The newest task's state and message, or ("missing", "") without service or task."""
        tasks = self._tasks(service_id) if tasks is None else tasks
        if not tasks:
            return "missing", ""
        newest = max(tasks, key=_created)
        status = newest.get("Status") or {}
        return str(status.get("State", "missing")), str(status.get("Err") or status.get("Message") or "")

    def status(self, container_id: str) -> str:
        """running, starting, restarting (a task of it ended: the gate's "it exited", though Swarm
        starts another), the newest task's end state, or missing."""
        tasks = self._tasks(container_id)
        state, _ = self._task_state(container_id, tasks)
        ended = any(str((t.get("Status") or {}).get("State", "")) in ENDED_STATES for t in tasks)
        if state == RUNNING and ended:
            return "restarting"
        return "starting" if state in STARTING_STATES else state

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        """The service as container attributes (its relay address as its address), or None."""
        view = self._view(container_id)
        return None if view is None else view.attrs

    def _view(self, service_id: str) -> ServiceView | None:
        try:
            with translated(f"inspect service {service_id[:12]}"):
                attrs = self._api.inspect_service(service_id)
        except DockerError as exc:
            if "not found" in str(exc):
                return None
            raise
        return self._seen(attrs)

    def _seen(self, attrs: Mapping[str, Any]) -> ServiceView:
        spec = attrs.get("Spec") or {}
        labels = {str(k): str(v) for k, v in (spec.get("Labels") or {}).items()}
        state, _ = self._task_state(str(attrs["ID"]))
        # as a container would read: a task that ended is "exited" (retention removes it unless live)
        status = "starting" if state in STARTING_STATES else "exited" if state in ENDED_STATES else state
        relay = self._relay
        host = relay.host if relay is not None and status == RUNNING else ""
        view_labels = {**labels, LABEL_NETWORK: RELAY_OWNER, LABEL_PORT: labels.get(LABEL_RELAY_PORT, "")}
        container = {
            "State": {"Status": status, "ExitCode": 0},
            "Config": {"Labels": view_labels},
            "NetworkSettings": {"Networks": {RELAY_OWNER: {"IPAddress": host}}},
        }
        return ServiceView(str(attrs["ID"]), str(spec.get("Name", "")), labels, status, container)

    def containers(self, labels: Mapping[str, str]) -> list[Any]:
        """Every service carrying these labels, seen as containers (the relay is made to hold their
        routes first: the addresses these views give are the relay's); then the plain engine's
        containers with them, left by a run before `engine: swarm`, seen as exited: start-up and
        retention remove them like any leftover."""
        self.sync()
        with translated("list services"):
            found = self._api.services(filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        return [self._seen(s) for s in found] + [self._stray(c) for c in self._plain(labels)]

    def _plain(self, labels: Mapping[str, str]) -> list[Any]:
        """Containers with these labels that are neither a replica's task nor the relay."""
        return [
            c
            for c in DockerHost.containers(self, labels)
            if SWARM_TASK_LABEL not in c.labels and c.labels.get(LABEL_ROLE) != RELAY_ROLE
        ]

    def _stray(self, container: Any) -> ServiceView:
        labels = {str(k): str(v) for k, v in (container.labels or {}).items()}
        attrs = {"State": {"Status": "exited", "ExitCode": 0}, "Config": {"Labels": labels}}
        return ServiceView(str(container.id), str(container.name), labels, "exited", attrs)

    def logs_tail(self, container_id: str, lines: int = 30) -> list[str]:
        """The service's last log lines, then why its newest task ended when Swarm says (a task that
        never started, say for want of /bin/sh for the secrets shim, logs nothing); empty when gone."""
        try:
            with translated(f"logs of {container_id[:12]}"):
                raw = self._api.service_logs(container_id, stdout=True, stderr=True, tail=str(lines))
                text = b"".join(raw if isinstance(raw, (list, tuple)) else list(raw))
            state, message = self._task_state(container_id)
        except DockerError:
            return []
        tail = text.decode("utf-8", "replace").splitlines()[-lines:]
        if state in ENDED_STATES and message:
            tail.append(f"(its task is {state}: {message[:TASK_ERROR_CHARS]})")
        return tail

    def stop_and_remove(self, container_id: str, grace: float = STOP_GRACE_SECONDS) -> None:
        """Remove the service (Swarm stops its task with the grace it was made with), its secrets
        and its relay port; a missing service is fine."""
        del grace  # a service's stop grace is part of its spec: changing it would replace the task
        with self._lock:
            try:
                with translated(f"remove service {container_id[:12]}"):
                    attrs = self._api.inspect_service(container_id)
                    self._api.remove_service(container_id)
            except DockerError as exc:
                if "not found" not in str(exc):
                    raise
                DockerHost.stop_and_remove(self, container_id, grace=1)  # a plain engine's leftover
                return
            self._remove_secrets(str((attrs.get("Spec") or {}).get("Name", "")))
            self.sync()

    def remove_container_named(self, name: str) -> None:
        """Remove a service by name if one exists (a leftover of an earlier run)."""
        wanted = service_name(name)
        with translated("list services"):
            found = self._api.services(filters={"name": wanted})
        for service in found:
            if (service.get("Spec") or {}).get("Name") == wanted:
                self.stop_and_remove(str(service["ID"]))

    def hostname(self, container_id: str) -> str:
        """A replica's task runs with its service's name as its host name (its logs say which)."""
        view = self._view(container_id)
        return view.name if view is not None else ""

    def limit_cpus(self, container_id: str, cpus: float) -> None:
        """Nothing: a service's limits are its spec, and updating them replaces its task."""

    def tend(self) -> None:
        """Make sure the relay runs and holds every replica's route (after the relay restarted), and
        remove the overlays of servers that have no replica left."""
        self.sync()
        self.prune_overlays()
        self.prune_secrets()

    def checks(self) -> dict[str, str]:
        """/healthz's `swarm` check: still a manager, and the relay up and holding every route."""
        try:
            self.node_id()
            relay = self._relay
            if relay is None or not self._alive(relay):
                return {"swarm": "failing: the relay container is not running (the monitor starts it)"}
            if relay.client.digest() != swarmrelay.routes_digest(self.routes()):
                return {
                    "swarm": "failing: the relay holds other routes than the replicas' (the monitor resends)"
                }
        except (CentralMCPError, swarmrelay.RelayError, OSError) as exc:
            return {"swarm": f"failing: {exc}"}
        return {"swarm": "ok"}

    def prune_overlays(self) -> list[str]:
        """Remove this instance's overlays no service uses (the relay leaves them first)."""
        with self._lock:
            with translated("list services"):
                services = self._api.services(filters={"label": f"{LABEL_INSTANCE}={self.instance}"})
            used = {
                str(n.get("Target", ""))
                for s in services
                for n in ((s.get("Spec") or {}).get("TaskTemplate") or {}).get("Networks") or []
            }
            with translated("list overlay networks"):
                overlays = self._api.networks(filters={"label": f"{LABEL_OVERLAY}={self.instance}"})
            removed: list[str] = []
            for overlay in overlays:
                if overlay["Id"] in used or overlay["Name"] in used:
                    continue
                try:
                    with translated(f"remove network {overlay['Name']}"):
                        if self._relay is not None:
                            self._api.disconnect_container_from_network(
                                self._relay.container_id, overlay["Id"], force=True
                            )
                        self._api.remove_network(overlay["Id"])
                    removed.append(str(overlay["Name"]))
                except DockerError as exc:  # a task still leaving: next time
                    log.info("overlay %s kept for now: %s", overlay["Name"], exc)
            return removed

    # secrets --------------------------------------------------------------------------------
    def _secrets(self, spec: RunSpec) -> list[Any]:
        """The service's secrets as Swarm secrets (files under /run/secrets, readable by its user)."""
        refs: list[Any] = []
        uid, _, gid = spec.user.partition(":")
        for name, value in sorted(spec.secret_env.items()):
            digest = hashlib.sha256(f"{spec.name}\0{name}\0{value}".encode()).hexdigest()[:20]
            secret_name = f"cmcp-{self.instance}-{digest}"
            with translated(f"create secret {name} of {spec.name}"):
                try:
                    secret_id = self._api.create_secret(
                        secret_name,
                        value.encode(),
                        labels={LABEL_INSTANCE: self.instance, LABEL_SECRET_OF: service_name(spec.name)},
                    )["ID"]
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise
                    secret_id = self._api.inspect_secret(secret_name)["ID"]
            refs.append(
                docker.types.SecretReference(
                    secret_id, secret_name, filename=name, uid=uid, gid=gid or uid, mode=0o400
                )
            )
        return refs

    def prune_secrets(self) -> list[str]:
        """Remove this instance's Swarm secrets made for a service that is gone (serve stopped
        between making them and the service, or while removing it)."""
        with self._lock:  # run() makes a service's secrets, then the service, under the same lock
            with translated("list services"):
                services = self._api.services(filters={"label": f"{LABEL_INSTANCE}={self.instance}"})
            names = {str((s.get("Spec") or {}).get("Name", "")) for s in services}
            with translated("list secrets"):
                found = self._api.secrets(filters={"label": f"{LABEL_INSTANCE}={self.instance}"})
            removed: list[str] = []
            for secret in found:
                spec = secret.get("Spec") or {}
                if str((spec.get("Labels") or {}).get(LABEL_SECRET_OF, "")) in names:
                    continue
                try:
                    with translated(f"remove secret {spec.get('Name')}"):
                        self._api.remove_secret(secret["ID"])
                    removed.append(str(spec.get("Name", "")))
                except DockerError as exc:  # a task still holding it: next time
                    log.info("secret %s kept for now: %s", spec.get("Name"), exc)
            return removed

    def _remove_secrets(self, service_name: str) -> None:
        with translated("list secrets"):
            found = self._api.secrets(filters={"label": f"{LABEL_SECRET_OF}={service_name}"})
        for secret in found:
            try:
                with translated(f"remove secret of {service_name}"):
                    self._api.remove_secret(secret["ID"])
            except DockerError as exc:
                log.warning("secret of %s left: %s", service_name, exc)

    # placement and images ---------------------------------------------------------------------
    def remove_image(self, tag: str) -> None:
        """Remove an image here and the copy every node of swarm.nodes was given (retention keeps
        the nodes' disks to what it keeps here); a node that cannot is logged and left."""
        super().remove_image(tag)
        with translated("list nodes"):
            down = self._down(self._api.nodes())
        for name, url in sorted(self.settings.swarm.nodes.items()):
            if self._node_ids.get(name) in down:  # not dialled: retention would wait minutes on it
                log.warning("node %s is down: it keeps image %s", name, tag)
                continue
            try:
                self._node(name, url).remove_image(tag)
            except DockerError as exc:
                log.warning("node %s keeps image %s: %s", name, tag, exc)

    def _placement(self, image_id: str, spec: RunSpec) -> list[str]:
        """Copy the image to every node of swarm.nodes that lacks it; keep it off nodes without it.
        A node the swarm reports down is not dialled (an unreachable VM holds each start for as long as
        a TCP connect takes, minutes, just when its replicas are being replaced)."""
        holders = {self.node_id()}
        with translated("list nodes"):
            listed = self._api.nodes()
        down = self._down(listed)
        for name, url in sorted(self.settings.swarm.nodes.items()):
            if self._node_ids.get(name) in down:
                log.warning(
                    "%s: node %s is down: no image copied to it, no replica placed there", spec.name, name
                )
                continue
            try:
                node = self._node(name, url)
                self._node_ids[name] = node.copy_image_from(self, spec.image, image_id)
                holders.add(self._node_ids[name])
            except DockerError as exc:
                log.warning("%s: node %s cannot run it: %s", spec.name, name, exc)
        nodes = sorted(str(n["ID"]) for n in listed)
        out = [n for n in nodes if n not in holders or n in down]
        return [f"node.id!={n}" for n in out + self._beside(spec, set(nodes) - set(out))]

    def _beside(self, spec: RunSpec, eligible: set[str]) -> list[str]:
        """The nodes this release's other replicas run on, when a node without one can take this
        replica: each service holds one task, so Swarm's own spread does not see them as siblings.
        When the only node left holds a sibling, no constraint: a dead node's replica, held pending
        by its own, is replaced by the monitor with one that goes there."""
        siblings = {LABEL_INSTANCE: self.instance, LABEL_SERVER: spec.labels.get(LABEL_SERVER, "")}
        siblings[LABEL_RELEASE] = spec.labels.get(LABEL_RELEASE, "")
        with translated("list services"):
            found = self._api.services(filters={"label": [f"{k}={v}" for k, v in siblings.items()]})
        taken: set[str] = set()
        for service in found:
            with translated("list tasks"):
                tasks = self._api.tasks(filters={"service": service["ID"], "desired-state": "running"})
            taken |= {str(t.get("NodeID", "")) for t in tasks} & eligible
        return sorted(taken) if eligible - taken else []

    @staticmethod
    def _down(listed: list[dict[str, Any]]) -> set[str]:
        """The ids of the nodes the swarm reports down."""
        return {str(n["ID"]) for n in listed if (n.get("Status") or {}).get("State") == NODE_DOWN}

    def node_id(self) -> str:
        """This engine's swarm node id (DockerError when it is not in a swarm)."""
        with translated("ask the engine for its swarm node"):
            info = self.client.info().get("Swarm") or {}
        if info.get("LocalNodeState") != "active" or not info.get("ControlAvailable"):
            raise DockerError(
                "engine: swarm needs this engine to be a swarm manager: run `central-mcp engine --swarm`"
            )
        return str(info["NodeID"])

    def _node(self, name: str, url: str) -> NodeEngine:
        found = self._nodes.get(name)
        if found is None:
            with translated(f"connect to node {name} ({url})"):
                client = docker.DockerClient(
                    base_url=url, timeout=int(self.settings.swarm.image_copy_timeout), use_ssh_client=False
                )
            found = self._nodes[name] = NodeEngine(name, client)
        assert isinstance(found, NodeEngine)
        return found

    # networks and the relay -------------------------------------------------------------------
    def _overlay(self, name: str, egress: bool, server: str) -> None:
        """Make `server`'s overlay `name` when missing; refuse one of that name made for another."""
        with translated(f"inspect network {name}"):
            listed = self._api.networks(names=[name])  # Docker's name filter matches substrings
        found = [n for n in listed if n.get("Name") == name]
        if found:
            labels = found[0].get("Labels") or {}
            owner = (labels.get(LABEL_OVERLAY), labels.get(LABEL_SERVER))
            if owner != (self.instance, server):
                raise DockerError(
                    f"{server}: network {name} exists but is not this instance's overlay of {server} "
                    f"(labels {LABEL_OVERLAY}={owner[0]}, {LABEL_SERVER}={owner[1]}); no replica joins it"
                )
            return
        with translated(f"create network {name}"):
            self.client.networks.create(
                name,
                driver="overlay",
                attachable=True,
                internal=not egress,
                options={"encrypted": ""} if self.settings.swarm.encrypt or self._alone() else {},
                labels={LABEL_OVERLAY: self.instance, LABEL_SERVER: server},
            )

    def _alone(self) -> bool:
        """Whether the swarm has no node but this one."""
        with translated("list nodes"):
            return len(self._api.nodes()) <= 1

    def _connect(self, relay: _Relay, network: str) -> None:
        try:
            with translated(f"connect the relay to {network}"):
                self.client.networks.get(network).connect(relay.container_id)
        except DockerError as exc:
            if "already" not in str(exc):  # "already exists" or "is already attached"
                raise

    def relay(self) -> _Relay:
        """The running relay, started (and joined to every overlay) when missing."""
        with self._lock:
            relay = self._relay if self._relay is not None and self._alive(self._relay) else None
            relay = relay or self._running_relay() or self._start_relay()
            self._relay = relay
            return relay

    def _relay_name(self) -> str:
        return f"cmcp-{self.instance}-swarm-relay"

    def _alive(self, relay: _Relay) -> bool:
        return DockerHost.status(self, relay.container_id) == RUNNING

    def _running_relay(self) -> _Relay | None:
        attrs = DockerHost.inspect(self, self._relay_name())
        if attrs is None or (attrs.get("State") or {}).get("Status") != RUNNING:
            return None
        env = dict(e.split("=", 1) for e in (attrs.get("Config") or {}).get("Env") or [] if "=" in e)
        network = (attrs.get("Config") or {}).get("Labels", {}).get(LABEL_NETWORK, "")
        host = network_address(attrs, network)
        if not host or not env.get("RELAY_TOKEN"):
            return None
        wanted = self._relay_config(env["RELAY_TOKEN"], env.get("RELAY_PEER", "")).environment()
        if any(env.get(k) != v for k, v in wanted.items()):
            return None  # made with other settings (a restart after deploy.yaml changed): made again
        client = swarmrelay.RelayClient(host, RELAY_CONTROL_PORT, env["RELAY_TOKEN"], RELAY_TIMEOUT)
        return _Relay(str(attrs["Id"]), host, client)

    def _relay_config(self, token: str, peer: str) -> swarmrelay.RelayConfig:
        cfg = self.settings.swarm
        return swarmrelay.RelayConfig(
            token,
            peer,
            RELAY_CONTROL_PORT,
            max_connections=cfg.relay_max_connections,
            connect_timeout=cfg.relay_connect_timeout,
        )

    def _start_relay(self) -> _Relay:
        if self.server_networks is None:
            raise DockerError("the swarm relay needs the provider's networks")
        net = self.server_networks.ensure(RELAY_OWNER, egress=False)
        token = secrets.token_urlsafe(32)
        name = self._relay_name()
        DockerHost.remove_container_named(self, name)
        with translated("start the swarm relay"):
            container = self.client.containers.run(
                self.settings.packages.python_image,
                command=swarmrelay.command(),
                name=name,
                detach=True,
                labels={LABEL_INSTANCE: self.instance, LABEL_ROLE: RELAY_ROLE, LABEL_NETWORK: net.name},
                environment=self._relay_config(token, net.gateway).environment(),
                network=net.name,
                read_only=True,
                user=self.settings.containers.user,
                mem_limit=relay_memory(self.settings.swarm.relay_max_connections),
                cpu_period=CPU_PERIOD,
                cpu_quota=CPU_PERIOD,
                security_opt=["no-new-privileges"],
                cap_drop=["ALL"],
                pids_limit=PIDS_LIMIT,
                init=True,
                restart_policy={"Name": "always"},
            )
        host = self._address(container, net.name)
        client = swarmrelay.RelayClient(host, RELAY_CONTROL_PORT, token, RELAY_TIMEOUT)
        relay = _Relay(str(container.id), host, client)
        with translated("list overlay networks"):
            overlays = self._api.networks(filters={"label": f"{LABEL_OVERLAY}={self.instance}"})
        for overlay in overlays:
            self._connect(relay, str(overlay["Name"]))
        self._await_relay(relay)
        return relay

    def _await_relay(self, relay: _Relay) -> None:
        deadline = time.monotonic() + RELAY_START_TIMEOUT
        while True:
            try:
                relay.client.digest()
                return
            except (swarmrelay.RelayError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise DockerError(
                        f"the swarm relay did not answer within {RELAY_START_TIMEOUT:g}s: {exc}"
                    ) from exc
                time.sleep(0.1)

    def routes(self) -> dict[int, tuple[str, int]]:
        """relay port -> (service name, server port) for every replica of this instance."""
        with translated("list services"):
            found = self._api.services(filters={"label": f"{LABEL_INSTANCE}={self.instance}"})
        table: dict[int, tuple[str, int]] = {}
        for service in found:
            spec = service.get("Spec") or {}
            labels = spec.get("Labels") or {}
            port, target = str(labels.get(LABEL_RELAY_PORT, "")), str(labels.get(LABEL_PORT, ""))
            if port.isdigit() and target.isdigit():
                table[int(port)] = (str(spec.get("Name", "")), int(target))
        return table

    def _free_port(self) -> int:
        low, high = self.settings.swarm.relay_ports
        used = set(self.routes())
        for port in range(low, high + 1):
            if port not in used and port != RELAY_CONTROL_PORT:
                return port
        raise DockerError(f"no free relay port in swarm.relay_ports {low}-{high}: {len(used)} replicas run")

    def sync(self) -> None:
        """Give the relay the whole route table when it holds another one."""
        with self._lock:
            relay = self.relay()
            table = self.routes()
            try:
                if relay.client.digest() != swarmrelay.routes_digest(table):
                    relay.client.put(table)
            except (swarmrelay.RelayError, OSError) as exc:
                raise DockerError(f"the swarm relay refused its routes: {exc}") from exc


def _created(task: Mapping[str, Any]) -> tuple[str, str]:
    """A task's creation time, sortable: Docker trims a fraction's trailing zeros (`16.5Z` is after
    `16.45Z` but sorts before it as text), so the fraction is padded to nanoseconds."""
    whole, _, fraction = str(task.get("CreatedAt", "")).rstrip("Z").partition(".")
    return whole, fraction.ljust(9, "0")


class NodeEngine(DockerHost):
    """Another node's Docker engine, reached for one thing: receiving images."""

    def __init__(self, name: str, client: docker.DockerClient) -> None:
        super().__init__(client)
        self.name = name

    def copy_image_from(self, source: DockerHost, tag: str, image_id: str) -> str:
        """Make sure this node holds `image_id` (docker save | docker load); return its node id."""
        with translated(f"node {self.name}: ask for its swarm node"):
            node_id = str((self.client.info().get("Swarm") or {}).get("NodeID") or "")
        if not node_id:
            raise DockerError(f"node {self.name} is in no swarm")
        try:
            with translated(f"node {self.name}: look for image {tag}"):
                self.client.images.get(image_id)
            return node_id
        except DockerError as exc:
            if "not found" not in str(exc):
                raise
        with translated(f"copy image {tag} to node {self.name}"):
            stream = cast(Any, source.client.api).get_image(tag)
            for _ in cast(Any, self.client.api).load_image(stream, quiet=True):
                pass
            self.client.images.get(image_id)
        return node_id
