"""One deploy, as a runbook: validate → plan → build/start/gate (parallel) → swap → drain.

Any failure before the swap removes the candidates and leaves every live release serving
untouched; the deploy is `failed` and, in attached mode, the push is rejected.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import gate, registry
from pipeline.config.manifest import Manifest, check_tree, from_data
from pipeline.context import Context, DeployRequest
from pipeline.deploylog import DeployLog
from pipeline.dockerhost import (
    LABEL_COMMIT,
    LABEL_INSTANCE,
    LABEL_PORT,
    LABEL_RELEASE,
    LABEL_ROLE,
    LABEL_SERVER,
    Running,
    RunSpec,
)
from pipeline.errors import CentralMCPError, ConfigError, DeployError, GateError, SourceError
from pipeline.proxy.router import Upstream
from pipeline.secrets import Masker, Secrets, load_file
from pipeline.source import EXPECT_OLD, GIT_DIR, ZERO_SHA, Snapshot, resolve
from pipeline.store import Release

STOP_GRACE_SECONDS = 10.0
LOG_TAIL_LINES = 30
LABEL_FINGERPRINT = "central-mcp.fingerprint"
OVERTAKE_LOOKBACK = 50  # recent deploys searched for one that moved a waiting push's branch


@dataclass
class Candidate:
    """A server being prepared: built, started and gated, not yet live."""

    manifest: Manifest
    number: int
    image: str
    fingerprint: str
    commit: str
    repo: str
    build: bool = True
    running: Running | None = None
    tools: list[dict[str, object]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Runbook:
    """Runs one deploy from its request to its final status."""

    def __init__(self, ctx: Context, deploy_id: int, request: DeployRequest, log: DeployLog) -> None:
        self.ctx = ctx
        self.id = deploy_id
        self.request = request
        self.log = log
        self.candidates: list[Candidate] = []
        self.outcomes: dict[str, dict[str, object]] = {}
        self.abort = threading.Event()
        self.snapshot_dir = request.snapshot_dir

    def run(self) -> str:
        """Run the deploy; return its final status (succeeded or failed)."""
        started = time.monotonic()
        self.ctx.store.update_deploy(self.id, status="running", started_at=time.time())
        try:
            summary = self._run()
        except CentralMCPError as exc:
            self._discard_candidates()
            return self._end("failed", str(exc), started)
        except Exception as exc:  # a bug must fail this deploy, not wedge the repo's queue
            self._discard_candidates()
            return self._end("failed", f"internal error: {exc!r}", started)
        return self._end("succeeded", summary, started)

    def _run(self) -> str:
        if self.request.rollback:
            server, number = self.request.rollback
            verb = "restart" if self.request.source == "restart" else "rollback"
            with self.log.step(
                f"{verb} {server} r{number}" if verb == "restart" else f"rollback {server} to r{number}"
            ):
                candidates, removed = [self._rollback_candidate(server, number)], list[str]()
        else:
            if self.request.fetch is not None:
                with self.log.step("fetch"):
                    self.snapshot_dir = self.request.fetch(self.log)
            snapshot = Snapshot.load(self.snapshot_dir or Path("."))
            self._refuse_if_overtaken(snapshot)
            with self.log.step("validate manifests"):
                manifests = self._validate(snapshot)
            with self.log.step("plan"):
                candidates, removed = self._plan(manifests, snapshot)
            if not candidates and not removed:
                self.log.line("nothing to deploy: every server matches its live release")
                return "nothing to deploy"
        if candidates:
            with self.log.step(f"build, start and gate {len(candidates)} server(s)"):
                self._prepare_all(candidates)
        with self.log.step("swap"):
            old = self._swap(candidates, removed)
            if self.request.source == "auto-rollback":
                for bad in old:
                    self.ctx.store.set_release_status(bad.server, bad.release, "rolled-back")
            live = self.ctx.store.live_releases()
            registry.write_files(self.ctx.settings, live)
            self.ctx.metrics.live.set(len(live))
        for listener in self.ctx.on_swap:
            listener(self.request.source, [(c.manifest.name, c.number) for c in candidates])
        self._drain_later(old)
        changed = ", ".join(f"{c.manifest.name} r{c.number}" for c in candidates)
        gone = ", ".join(f"{name} removed" for name in removed)
        return "live: " + "; ".join(x for x in (changed, gone) if x)

    # validate and plan ------------------------------------------------------------------
    def _refuse_if_overtaken(self, snapshot: Snapshot) -> None:
        """Refuse a push whose branch moved while it waited: git could never move the branch to it."""
        expected = snapshot.extra.get(EXPECT_OLD, "")
        if not expected:
            return
        mine = self.ctx.store.deploy(self.id)
        since = mine.created_at if mine else 0.0
        # The deploy ahead of this one may have finished before its pusher's git moved the
        # branch, so its record counts as much as the branch itself.
        same = (self.request.repo, self.request.ref, "succeeded")
        moved = [
            (d.commit_sha, f"deploy #{d.id}")
            for d in self.ctx.store.deploys(OVERTAKE_LOOKBACK, 0)
            if d.id != self.id and (d.repo, d.ref, d.status) == same and (d.finished_at or 0.0) > since
        ]
        if snapshot.extra.get(GIT_DIR):
            try:
                moved.append((resolve(Path(snapshot.extra[GIT_DIR]), self.request.ref), "the branch"))
            except SourceError:
                moved.append((ZERO_SHA, "the branch"))
        for commit, where in moved:
            if commit != expected:
                raise DeployError(
                    f"{self.request.ref} moved to {commit[:12]} ({where}) while this push "
                    f"waited; the push was based on {expected[:12]}, so git could not move "
                    "the branch to it: fetch, merge or rebase, and push again"
                )

    def _validate(self, snapshot: Snapshot) -> list[Manifest]:
        repo = self.ctx.settings.repo(self.request.repo)
        report = check_tree(snapshot.root, self.ctx.settings, repo.manifests)
        if report.problems:
            for problem in report.problems:
                self.log.line(problem.render())
            raise ConfigError(list(report.problems))
        names = [n for m in report.manifests for n in m.secrets]
        self.log.masker = Masker([*self.log.masker.values, *self.ctx.secrets.masker(names).values])
        self.log.line(
            f"{len(report.manifests)} manifest(s) valid: " + ", ".join(m.name for m in report.manifests)
        )
        return list(report.manifests)

    def _plan(self, manifests: list[Manifest], snapshot: Snapshot) -> tuple[list[Candidate], list[str]]:
        live = {r.server: r for r in self.ctx.store.live_releases()}
        candidates: list[Candidate] = []
        for manifest in manifests:
            current = live.get(manifest.name)
            if current and current.repo != self.request.repo:
                raise DeployError(
                    f"server {manifest.name!r} is already deployed from repo "
                    f"{current.repo!r}; rename one of them"
                )
            self.ctx.secrets.values(manifest.name, manifest.secrets)
            fingerprint = self._fingerprint(manifest, snapshot)
            held = self._rolled_back(manifest.name, fingerprint)
            if held is not None:
                self.log.line(
                    f"{manifest.name}: held back — r{held.number}, built from this same input, "
                    "was rolled back automatically; change the server to deploy it again"
                )
                self.outcomes[manifest.name] = {"outcome": "held back", "release": held.number}
                continue
            if current and current.fingerprint == fingerprint:
                self.log.line(f"{manifest.name}: unchanged (live r{current.number})")
                self.outcomes[manifest.name] = {"outcome": "unchanged", "release": current.number}
                continue
            earlier = self._reusable(manifest.name, fingerprint)
            if earlier is not None:
                self.log.line(f"{manifest.name}: same as earlier r{earlier.number}; reusing its image")
                candidates.append(
                    Candidate(
                        manifest,
                        earlier.number,
                        earlier.image,
                        fingerprint,
                        snapshot.commit,
                        self.request.repo,
                        build=False,
                    )
                )
                continue
            number = self.ctx.store.next_release_number(manifest.name)
            why = "new server" if current is None else f"changed since r{current.number}"
            self.log.line(f"{manifest.name}: {why} → r{number}")
            image = f"central-mcp/{manifest.name}:r{number}-{self.ctx.instance}"
            candidates.append(
                Candidate(manifest, number, image, fingerprint, snapshot.commit, self.request.repo)
            )
        names = {m.name for m in manifests}
        removed = sorted(s for s, r in live.items() if r.repo == self.request.repo and s not in names)
        for server in removed:
            self.log.line(f"{server}: its folder is gone → drain and remove")
        return candidates, removed

    def _rolled_back(self, server: str, fingerprint: str) -> Release | None:
        """A release of exactly this input that the watch window rolled back, if any."""
        return next(
            (
                r
                for r in self.ctx.store.releases(server)
                if r.fingerprint == fingerprint and r.status == "rolled-back"
            ),
            None,
        )

    def _reusable(self, server: str, fingerprint: str) -> Release | None:
        """An earlier good release built from exactly this input whose image still exists."""
        for release in self.ctx.store.releases(server):
            if (
                release.fingerprint == fingerprint
                and release.status in ("previous", "retired")
                and self.ctx.docker.image_exists(release.image)
            ):
                return release
        return None

    def _fingerprint(self, manifest: Manifest, snapshot: Snapshot) -> str:
        args = {**self.ctx.settings.build_args, **manifest.build_args}
        parts = [
            snapshot.tree_hash(manifest.folder),
            snapshot.tree_hash(manifest.context),
            json.dumps(manifest.raw, sort_keys=True, default=str),
            json.dumps(args, sort_keys=True),
        ]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def _rollback_candidate(self, server: str, number: int) -> Candidate:
        release = self.ctx.store.release(server, number)
        if release is None:
            raise DeployError(f"server {server!r} has no release r{number}")
        if not self.ctx.docker.image_exists(release.image):
            raise DeployError(
                f"the image {release.image} of {server} r{number} was pruned; push the old commit instead"
            )
        manifest = _manifest_from(release)
        return Candidate(
            manifest,
            number,
            release.image,
            release.fingerprint,
            release.commit_sha,
            release.repo,
            build=False,
        )

    # build, start, gate -------------------------------------------------------------------
    def _prepare_all(self, candidates: list[Candidate]) -> None:
        self.candidates = candidates
        with ThreadPoolExecutor(max_workers=self.ctx.settings.build_parallel) as pool:
            futures = [pool.submit(self._prepare, c) for c in candidates]
            errors = [f.exception() for f in futures]
        failures = [e for e in errors if e is not None]
        if failures:
            first = failures[0]
            if isinstance(first, CentralMCPError):
                raise first
            raise DeployError(f"unexpected error while preparing: {first!r}") from first

    def _prepare(self, c: Candidate) -> None:
        name = c.manifest.name
        try:
            if c.build:
                self._timed(c, "build", lambda: self._build(c))
            self._timed(c, "start", lambda: self._start(c))
            self._timed(c, "gate", lambda: self._gate(c))
        except CentralMCPError as exc:
            self.abort.set()
            self.outcomes[name] = {"outcome": "failed", "release": c.number, "reason": str(exc)}
            self.log.line(f"{name}: FAILED — {exc}")
            raise
        self.outcomes[name] = {
            "outcome": "gated",
            "release": c.number,
            "timings": c.timings,
            "tools": [t.get("name") for t in c.tools],
        }

    def _timed(self, c: Candidate, stage: str, action: Callable[[], None]) -> None:
        if self.abort.is_set():
            raise DeployError(f"{c.manifest.name}: stopped before {stage}, another server failed")
        started = time.monotonic()
        action()
        c.timings[stage] = round(time.monotonic() - started, 3)
        if stage == "build":
            self.ctx.metrics.build_seconds.labels(c.manifest.name).observe(c.timings[stage])
        self.log.line(f"{c.manifest.name}: {stage} ok in {c.timings[stage]:.2f}s")

    def _build(self, c: Candidate) -> None:
        snapshot_root = Snapshot.load(self.snapshot_dir or Path(".")).root
        args = {**self.ctx.settings.build_args, **c.manifest.build_args}
        labels = {
            LABEL_SERVER: c.manifest.name,
            LABEL_RELEASE: f"r{c.number}",
            LABEL_COMMIT: c.commit,
            LABEL_FINGERPRINT: c.fingerprint,
        }
        prefix = f"{c.manifest.name} | "
        self.ctx.docker.build(
            c.image,
            snapshot_root / c.manifest.context,
            c.manifest.dockerfile,
            args,
            labels,
            lambda line: self.log.line(prefix + line),
            network=self.ctx.settings.build_network,
        )

    def _start(self, c: Candidate) -> None:
        m = c.manifest
        env = {**m.env, **self.ctx.secrets.values(m.name, m.secrets)}
        labels = {
            LABEL_SERVER: m.name,
            LABEL_RELEASE: f"r{c.number}",
            LABEL_COMMIT: c.commit,
            LABEL_PORT: str(m.port),
            LABEL_INSTANCE: self.ctx.instance,
            LABEL_ROLE: "server",
            LABEL_FINGERPRINT: c.fingerprint,
        }
        name = f"cmcp-{self.ctx.instance}-{m.name}-r{c.number}-d{self.id}"
        c.running = self.ctx.docker.run(
            RunSpec(c.image, name, m.port, labels, env, m.memory_bytes, m.cpus, m.command, m.restart)
        )

    def _gate(self, c: Candidate) -> None:
        assert c.running is not None
        running = c.running
        url = f"http://127.0.0.1:{running.host_port}{c.manifest.path}"
        try:
            result = gate.wait_until_healthy(
                url,
                timeout=c.manifest.health_timeout,
                interval=c.manifest.health_interval,
                alive=lambda: self.ctx.docker.status(running.id) == "running",
            )
        except GateError as exc:
            for line in self.ctx.docker.logs_tail(running.id, LOG_TAIL_LINES):
                self.log.line(f"{c.manifest.name} (container) | {line}")
            raise GateError(f"{c.manifest.name} r{c.number} failed the MCP health gate: {exc}") from exc
        c.tools = list(result.tools)
        self.log.line(
            f"{c.manifest.name}: speaks MCP {result.protocol_version}, "
            f"{len(result.tools)} tool(s): " + ", ".join(str(t.get("name")) for t in result.tools)
        )
        if not c.build:
            self.ctx.store.set_container(c.manifest.name, c.number, running.id, running.host_port)
            return
        self.ctx.store.add_release(
            Release(
                server=c.manifest.name,
                number=c.number,
                repo=c.repo,
                commit_sha=c.commit,
                fingerprint=c.fingerprint,
                image=c.image,
                version=c.manifest.version,
                status="candidate",
                deploy_id=self.id,
                container_id=running.id,
                host_port=running.host_port,
                path=c.manifest.path,
                tools=c.tools,
                manifest=dict(c.manifest.raw),
            )
        )

    # swap and drain -----------------------------------------------------------------------
    def _swap(self, candidates: list[Candidate], removed: list[str]) -> list[Upstream]:
        live = [self._as_release(c) for c in candidates]
        self.ctx.store.commit_swap(live, removed)
        changes: dict[str, Upstream | None] = {
            c.manifest.name: Upstream(
                c.manifest.name,
                c.number,
                c.running.id,
                "127.0.0.1",
                c.running.host_port,
                c.manifest.path,
                c.manifest.access,
            )
            for c in candidates
            if c.running is not None
        }
        changes.update({name: None for name in removed})
        replaced = self.ctx.router.swap(changes)
        for c in candidates:
            self.outcomes[c.manifest.name]["outcome"] = "swapped"
            self.log.line(f"{c.manifest.name}: r{c.number} is live")
        for name in removed:
            self.outcomes[name] = {"outcome": "removed"}
        self.candidates = []
        return list(replaced.values())

    def _as_release(self, c: Candidate) -> Release:
        assert c.running is not None
        found = self.ctx.store.release(c.manifest.name, c.number)
        assert found is not None
        return Release(**{**found.__dict__, "container_id": c.running.id, "host_port": c.running.host_port})

    def _drain_later(self, old: list[Upstream]) -> None:
        """Let old upstreams finish their requests and sessions, then retire and stop them."""
        if not old:
            return
        proxy = self.ctx.settings.proxy

        def drain(upstream: Upstream) -> None:
            drained = self.ctx.router.drain(
                upstream.container_id, proxy.drain_timeout, proxy.session_drain_timeout
            )
            closed = self.ctx.router.retire(upstream.container_id)
            self.ctx.docker.stop_and_remove(upstream.container_id, STOP_GRACE_SECONDS)
            how = "drained" if drained else f"drain deadline passed ({closed} session(s) closed)"
            self.log.line(f"{upstream.server}: old r{upstream.release} {how}, stopped and removed")

        for upstream in old:
            threading.Thread(
                target=drain, args=(upstream,), name=f"drain-{upstream.server}", daemon=True
            ).start()

    def _discard_candidates(self) -> None:
        for c in self.candidates:
            if c.running is not None:
                self.ctx.docker.stop_and_remove(c.running.id, grace=1)
                if c.build and self.ctx.store.release(c.manifest.name, c.number):
                    self.ctx.store.set_release_status(c.manifest.name, c.number, "failed")
                keeps = (
                    "the live release keeps serving"
                    if self.ctx.router.get(c.manifest.name)
                    else "nothing of it was live"
                )
                self.log.line(f"{c.manifest.name}: candidate r{c.number} removed; {keeps}")
        self.candidates = []

    def _end(self, status: str, text: str, started: float) -> str:
        seconds = time.monotonic() - started
        self.ctx.store.update_deploy(
            self.id,
            status=status,
            error="" if status == "succeeded" else self.log.masker(text),
            finished_at=time.time(),
            servers=self.outcomes,
        )
        self.log.finish(status, f"{text} ({seconds:.1f}s)")
        self.ctx.metrics.deploys.labels(status, self.request.source).inc()
        self.ctx.metrics.deploy_seconds.observe(seconds)
        if self.snapshot_dir is not None:
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)
        return status


def _manifest_from(release: Release) -> Manifest:
    """Rebuild the Manifest a release was made from (for rollbacks)."""
    return from_data(release.manifest, release.manifest.get("name", release.server))


def file_masker(secrets: Secrets) -> Masker:
    """A masker for every value in the VM's secrets file."""
    return Masker(load_file(secrets.path).values())
