"""Prepare: build, start and gate every changed server of a plan in parallel.

Any failure stops the others before their next stage; `discard` then removes every candidate
started, so nothing of a failed deploy is left running and what is live keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline import buildrules, contract, dockerfile, launch, stdio, surfaces
from pipeline.context import Context
from pipeline.deploylog import DeployLog
from pipeline.dockerhost import LABEL_COMMIT, LABEL_FINGERPRINT, LABEL_RELEASE, LABEL_SERVER, Running
from pipeline.errors import BuildError, CentralMCPError, DeployError, StateError
from pipeline.gate import GateResult
from pipeline.packages import fetch as package_fetch
from pipeline.packages import image as package_image
from pipeline.plan import Action, Plan, ReleaseSpec
from pipeline.source import Snapshot
from pipeline.states import ReleaseStatus, ServerOutcome
from pipeline.store import Release

PACKAGE_CACHE = "packages"  # under the state dir: one folder per registry, name and exact version
OFFLINE_BASE_PREFIX = "central-mcp/"  # base images made here (baseimage.py), never pulled
NO_NETWORK = "none"  # the build network of a package's image and its bridge layer
MAX_PREPARE_THREADS = 64  # servers waiting for a build or start slot each hold a thread


@dataclass
class Outcome:
    """What happened to one server in one deploy (stored with the deploy, shown on its page)."""

    outcome: ServerOutcome
    release: int | None = None
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    tools: list[str] = field(default_factory=list)
    contract: list[str] = field(default_factory=list)  # the diff with the live release, one line each

    def as_json(self, mask: Callable[[str], str]) -> dict[str, Any]:
        """The stored form, secrets masked: only the fields that say something."""
        data: dict[str, Any] = {"outcome": self.outcome}
        if self.release is not None:
            data["release"] = self.release
        if self.reason:
            data["reason"] = mask(self.reason)
        if self.outcome in (ServerOutcome.GATED, ServerOutcome.SWAPPED, ServerOutcome.CANARY):
            data |= {"timings": self.timings, "tools": self.tools}
        if self.contract:
            data["contract"] = [mask(line) for line in self.contract]
        return data


@dataclass
class Candidate:
    """A server being prepared: built (or reused), started and gated, not yet live."""

    spec: ReleaseSpec
    build: bool  # a new release (built, unless it is a remote server), not an earlier one reused
    running: Running | None = None
    replicas: list[Running] = field(default_factory=list)  # its other replicas (scale.min > 1)
    tools: list[dict[str, object]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    contract: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The server's name."""
        return self.spec.server

    @property
    def started(self) -> list[Running]:
        """Every replica started so far, the first one first."""
        return [self.running, *self.replicas] if self.running is not None else list(self.replicas)


class Preparation:
    """The candidates of one deploy: started in parallel, gated, and removed if the deploy fails."""

    def __init__(
        self,
        ctx: Context,
        deploy_id: int,
        log: DeployLog,
        outcomes: dict[str, Outcome],
        snapshot_dir: Path,
        deadline: float,
    ) -> None:
        self.ctx = ctx
        self.deadline = deadline  # on the monotonic clock: the deploy's proxy.deploy_timeout
        self.deploy_id = deploy_id
        self.log = log
        self.outcomes = outcomes
        self.snapshot_dir = snapshot_dir
        self.candidates: list[Candidate] = []
        self.abort = threading.Event()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    def run(self, plan: Plan) -> list[Candidate]:
        """Build, start and gate every changed server in parallel; raise on the first failure.

        At most `build.parallel` builds and `build.starts` starts-and-gates run at once, each server
        taking a start slot as soon as its own image is built: a gate mostly waits for the server's
        own start-up, so holding a build slot meanwhile left the builder idle."""
        self.candidates = [Candidate(e.spec, e.action is Action.BUILD) for e in plan.to_prepare if e.spec]
        if not self.candidates:
            return []
        settings = self.ctx.settings
        self._slots = {
            "build": threading.BoundedSemaphore(settings.build_parallel),
            "start": threading.BoundedSemaphore(settings.build_starts),
        }
        with (
            self.log.step(f"build, start and gate {len(self.candidates)} server(s)"),
            ThreadPoolExecutor(max_workers=min(len(self.candidates), MAX_PREPARE_THREADS) + 1) as pool,
        ):
            pool.submit(self._networks_ahead)
            futures = [pool.submit(self._prepare, c) for c in self.candidates]
            failures = [e for e in (f.exception() for f in futures) if e is not None]
            if failures:
                first = failures[0]
                if isinstance(first, CentralMCPError):
                    raise first
                raise DeployError(f"unexpected error while preparing: {first!r}") from first
        return self.candidates

    def _prepare(self, c: Candidate) -> None:
        try:
            if c.build and c.spec.manifest.remote is None:  # a remote server has nothing to build
                with self._slots["build"]:
                    self._timed(c, "build", lambda: self._build(c))
            with self._slots["start"]:
                self._timed(c, "start", lambda: self._start(c))
                self._timed(c, "gate", lambda: self._gate(c))
        except CentralMCPError as exc:
            self.abort.set()
            self.outcomes[c.name] = Outcome(
                ServerOutcome.FAILED, c.spec.number, reason=str(exc), contract=c.contract
            )
            self.log.line(f"{c.name}: FAILED — {exc}")
            raise
        tools = [str(t.get("name")) for t in c.tools]
        self.outcomes[c.name] = Outcome(
            ServerOutcome.GATED, c.spec.number, timings=c.timings, tools=tools, contract=c.contract
        )

    def _networks_ahead(self) -> None:
        """Make the candidates' missing networks while their images build, one after another (the
        engine creates networks one at a time anyway): off each server's way from build to start."""
        for c in self.candidates:
            m = c.spec.manifest
            if m.remote is not None or self.abort.is_set():
                continue
            try:
                self.ctx.server_networks().ensure(m.name, m.network == launch.EGRESS)
            except CentralMCPError:
                return  # the server's own start makes its network again, and reports what fails

    def _timed(self, c: Candidate, stage: str, action: Callable[[], None]) -> None:
        if self.abort.is_set():
            raise DeployError(f"{c.name}: stopped before {stage}, another server failed")
        if time.monotonic() >= self.deadline:
            limit = self.ctx.settings.proxy.deploy_timeout
            raise DeployError(
                f"{c.name}: the deploy ran past proxy.deploy_timeout ({limit:g}s) before {stage}"
            )
        started = time.monotonic()
        action()
        c.timings[stage] = round(time.monotonic() - started, 3)
        if stage == "build":
            self.ctx.metrics.build_seconds.labels(c.name).observe(c.timings[stage])
        self.log.line(f"{c.name}: {stage} ok in {c.timings[stage]:.2f}s")

    @cached_property
    def snapshot_root(self) -> Path:
        """The pushed commit's files (read once; built servers share it)."""
        return Snapshot.load(self.snapshot_dir).root

    @cached_property
    def snapshot_message(self) -> str:
        """The pushed commit's message (where [allow-breaking] may be)."""
        return Snapshot.load(self.snapshot_dir).message

    def _build(self, c: Candidate) -> None:
        snapshot_root = self.snapshot_root
        m = c.spec.manifest
        args = {**self.ctx.settings.build_args, **m.build_args}
        labels = {
            LABEL_SERVER: m.name,
            LABEL_RELEASE: f"r{c.spec.number}",
            LABEL_COMMIT: c.spec.commit,
            LABEL_FINGERPRINT: c.spec.fingerprint,
        }
        prefix = f"{m.name} | "
        if m.package:
            self._build_package(c, labels, prefix)
            return
        context = snapshot_root / m.context
        found = dockerfile.read(snapshot_root, context, m.dockerfile)
        settings = self.ctx.settings
        named: list[tuple[int, str]] = []
        refused = buildrules.problems(
            found, args, settings.build_base_images, settings.build_remote_add, named
        )
        refused += [
            (line, f"{image}: a server image this provider built; build on a base image instead")
            for line, image in named
            if LABEL_SERVER in self.ctx.docker.image_labels(image)  # whatever its tag or id says
        ]
        if refused:  # check refused these already; a build never runs on a file that slipped past it
            raise BuildError(
                f"{m.name}: the Dockerfile would make the daemon fetch: "
                + "; ".join(f"line {line}: {message}" for line, message in refused)
            )
        for note in found.notes:
            self.log.line(prefix + note)
        own_id = self.ctx.docker.build(
            c.spec.image,
            context,
            found.text,
            dockerfile.ignore_patterns(context),
            args,
            labels,
            lambda line: self.log.output(prefix + line),
            network=settings.build_network,
            timeout=max(0.1, self.deadline - time.monotonic()),
        )
        if stdio.is_stdio(m):
            self.log.line(f"{m.name}: adding the stdio bridge ({m.sessions})")
            stdio.add_bridge(
                self.ctx.docker,
                c.spec.image,
                stdio.program(m),
                labels,
                lambda line: self.log.output(prefix + line),
                settings.build_network,
                max(0.1, self.deadline - time.monotonic()),
                own_id,
            )

    def _build_package(self, c: Candidate, labels: dict[str, str], prefix: str) -> None:
        """Download the package on the host (bounded, cached), then install it with no network."""
        m, settings = c.spec.manifest, self.ctx.settings
        spec = m.package_spec
        assert spec is not None
        staged = package_fetch.fetch(
            spec,
            settings.packages,
            settings.state_dir / PACKAGE_CACHE,
            lambda line: self.log.line(prefix + line),
            timeout=max(0.1, self.deadline - time.monotonic()),
        )
        if not staged.command and not m.command:
            raise BuildError(
                f"{m.name}: {spec} names no entry point to run (a console script named like it, or an "
                "npm bin); set run.command in its manifest"
            )
        base = package_image.base_image(staged, settings.packages)
        if base.startswith(OFFLINE_BASE_PREFIX) and not self.ctx.docker.image_exists(base):
            runtime = "node" if base.startswith(OFFLINE_BASE_PREFIX + "node") else "python"
            raise BuildError(
                f"{m.name}: the base image {base} for {spec.registry} packages is missing on this VM: "
                f"make it with `central-mcp base-image --runtime {runtime}` (or name another in "
                "deploy.yaml's packages section)"
            )
        labels = {**labels, package_image.LABEL_PACKAGE: str(spec)}
        own_id = self.ctx.docker.build(
            c.spec.image,
            staged.root,
            package_image.dockerfile(staged, settings.packages, m.args),
            [],
            package_image.build_args(staged, settings.packages),
            labels,
            lambda line: self.log.output(prefix + line),
            network=NO_NETWORK,  # everything it installs is in the context: no build of a package has network
            timeout=max(0.1, self.deadline - time.monotonic()),
        )
        if stdio.is_stdio(m):  # the same layer as a Dockerfile's, the package's argv recorded in it
            self.log.line(f"{m.name}: adding the stdio bridge ({m.sessions})")
            stdio.add_bridge(
                self.ctx.docker,
                c.spec.image,
                stdio.program(m, staged.command),
                labels,
                lambda line: self.log.output(prefix + line),
                NO_NETWORK,
                max(0.1, self.deadline - time.monotonic()),
                own_id,
            )

    def _start(self, c: Candidate) -> None:
        """Start the release's `scale.min` replicas (named `d<deploy>`, `d<deploy>-2`, ...)."""
        c.running = launch.start(self.ctx, c.spec, f"d{self.deploy_id}")
        wanted, _ = launch.replicas(self.ctx, c.spec)
        for n in range(2, wanted + 1):
            if self.abort.is_set():
                raise DeployError(f"{c.name}: another server failed; its replicas are not started")
            c.replicas.append(launch.start(self.ctx, c.spec, f"d{self.deploy_id}-{n}"))

    def _gate(self, c: Candidate) -> None:
        """Gate every replica; the first one's answer gives the release's tools."""
        assert c.running is not None
        result = launch.wait_healthy(self.ctx, c.spec, c.running, self.log.line, self.deadline)
        for running in c.replicas:
            launch.wait_healthy(self.ctx, c.spec, running, self.log.line, self.deadline)
        if c.replicas:
            self.log.line(f"{c.name}: {len(c.started)} replicas passed the gate")
        c.tools = self.log.masker.data(list(result.tools))  # stored, shown and listed in the registry
        names = ", ".join(str(t.get("name")) for t in c.tools)
        self.log.line(f"{c.name}: speaks MCP {result.protocol_version}, {len(c.tools)} tool(s): {names}")
        surface = self._surface(c, result)
        if c.build:  # recorded first: a candidate the contract refuses is kept as a failed release
            self.ctx.store.add_release(_candidate_release(c, self.deploy_id))
        try:
            self.ctx.store.save_surface(c.name, c.spec.number, surface.as_json())
        except StateError as exc:  # the release stands; only its lists are not kept for the next diff
            self.log.line(f"{c.name}: its lists are not kept: {exc}")
        self._compare(c, surface)

    def _surface(self, c: Candidate, result: GateResult) -> contract.Surface:
        """The candidate's tools, prompts and resources as the gate read them, secrets masked."""
        mask = self.log.masker.data
        return contract.Surface(
            c.tools,
            mask(result.prompts) if result.prompts is not None else None,
            mask(result.resources) if result.resources is not None else None,
        )

    def _compare(self, c: Candidate, surface: contract.Surface) -> None:
        """Show how the candidate's contract differs from the live release's; refuse a breaking change
        without a major version bump in a pushed release (a rollback goes back on purpose)."""
        live = next((r for r in self.ctx.store.live_releases() if r.server == c.name), None)
        if live is None or live.number == c.spec.number:
            return
        differences = contract.diff(surfaces.of_release(self.ctx.store, live), surface)
        versions = (live.version, c.spec.manifest.version)
        c.contract = [d.render() for d in differences]
        said = f"{c.name}: r{c.spec.number} ({versions[1]}) vs live r{live.number} ({versions[0]}), contract"
        self.log.line(f"{said}: {len(differences) or 'no'} change(s)")
        for line in c.contract:
            self.log.line(f"{c.name}:   {line}")
        if not c.build:
            return
        m = c.spec.manifest
        refused = contract.refusal(differences, c.name, versions, m.contract, self.snapshot_message)
        if refused is not None:
            raise refused
        if any(d.breaking for d in differences):
            self.log.line(f"{c.name}: breaking change(s) accepted ({_why_accepted(versions, m.contract)})")

    def discard(self) -> None:
        """Stop and remove every candidate started so far (the deploy failed before its commit)."""
        for c in self.candidates:
            if c.running is None:
                continue
            for running in c.started:
                if not launch.is_remote(running.id):
                    self.ctx.docker.stop_and_remove(running.id, grace=1)
            if c.build and self.ctx.store.release(c.name, c.spec.number):
                self.ctx.store.set_release_status(c.name, c.spec.number, ReleaseStatus.FAILED)
            live = self.ctx.router.get(c.name)
            keeps = "the live release keeps serving" if live else "nothing of it was live"
            self.log.line(f"{c.name}: candidate r{c.spec.number} removed; {keeps}")
        self.candidates = []


def _why_accepted(versions: tuple[str, str], mode: str) -> str:
    if contract.is_major_bump(*versions):
        return f"major version bump {versions[0]} -> {versions[1]}"
    return (
        "contract: warn in the manifest"
        if mode == "warn"
        else f"{contract.ALLOW_BREAKING} in the commit message"
    )


def _candidate_release(c: Candidate, deploy_id: int) -> Release:
    assert c.running is not None
    m = c.spec.manifest
    return Release(
        server=m.name,
        number=c.spec.number,
        repo=c.spec.repo,
        commit_sha=c.spec.commit,
        fingerprint=c.spec.fingerprint,
        image=c.spec.image,
        version=m.version,
        status=ReleaseStatus.CANDIDATE,
        deploy_id=deploy_id,
        container_id=c.running.id,
        host_port=c.running.port,
        path=m.path,
        tools=c.tools,
        manifest=dict(m.raw),
    )
