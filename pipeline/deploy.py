"""One deploy, as a runbook: plan → prepare → commit → tell, then drain.

- plan: validate the manifests and decide, purely, what changes (pipeline/plan.py).
- prepare: build, start and gate every changed server in parallel. It may fail; a failure
  removes every candidate and leaves every live release serving untouched.
- commit: one SQLite transaction, then one assignment of the route table. Nothing else, so it
  cannot half-fail: once it returns, the deploy has succeeded and the push is accepted.
- tell: listeners (registry files, metrics, the monitor's watch window) learn what went live.
  Each logs its own failure and none can fail a committed deploy.
- drain: old containers finish their requests and sessions in the background, then stop.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from pipeline import launch, registry
from pipeline.canary import Canary, Phase, Steps
from pipeline.config.manifest import Manifest, check_tree
from pipeline.context import Context, DeployRequest
from pipeline.deploylog import DeployLog
from pipeline.errors import CentralMCPError, ConfigError, DeployError, SecretsError, SourceError
from pipeline.partial import inputs
from pipeline.plan import REMOVE_ALL, Action, Plan, fingerprint, plan_push, plan_release
from pipeline.prepare import Candidate, Outcome, Preparation
from pipeline.proxy.router import TargetGroup, Upstream
from pipeline.source import EXPECT_OLD, GIT_DIR, ZERO_SHA, Snapshot, resolve
from pipeline.states import DeploySource, DeployStatus, ReleaseStatus, ServerOutcome
from pipeline.store import Placement, Release

CANARY_SOURCES = (DeploySource.PUSH, DeploySource.WEBHOOK, DeploySource.CLI)  # a new release, not a way back

STOP_GRACE_SECONDS = 10.0
OVERTAKE_LOOKBACK = 50  # recent deploys searched for one that moved a waiting push's branch


@dataclass(frozen=True)
class Committed:
    """What a commit changed: the candidates made live and the releases (groups of replicas) they
    replaced."""

    live: list[Candidate]
    removed: list[str]
    old: list[TargetGroup]
    canaries: list[Candidate] = field(default_factory=list)  # beside their stable releases, not swapped


class Runbook:
    """Runs one deploy from its request to its final status."""

    def __init__(self, ctx: Context, deploy_id: int, request: DeployRequest, log: DeployLog) -> None:
        self.ctx = ctx
        self.id = deploy_id
        self.request = request
        self.log = log
        self.outcomes: dict[str, Outcome] = {}
        self.snapshot_dir = request.snapshot_dir
        self.preparation: Preparation | None = None

    def run(self) -> DeployStatus:
        """Run the deploy; return its final status (succeeded or failed)."""
        started = time.monotonic()
        deadline = started + self.ctx.settings.proxy.deploy_timeout
        self.ctx.store.update_deploy(self.id, status=DeployStatus.RUNNING, started_at=time.time())
        try:
            # the store as it is now (a secret set while this deploy waited is masked too)
            self.log.masker = self.log.masker.extended(self.ctx.secrets.masker(self.ctx.settings).values)
            plan = self.plan()
            if plan.empty:
                if plan.entries or not self.request.fetch:
                    self.log.line("nothing to deploy: every server matches its live release")
                return self._end(DeployStatus.SUCCEEDED, "nothing to deploy", started)
            self.preparation = Preparation(
                self.ctx, self.id, self.log, self.outcomes, self.snapshot_dir or Path("."), deadline
            )
            candidates = self.preparation.run(plan)
            with self.log.step("swap"):
                committed = self.commit(candidates, plan.removed)
        except CentralMCPError as exc:
            self._discard()
            return self._end(DeployStatus.FAILED, str(exc), started)
        except Exception as exc:  # a bug must fail this deploy, not wedge the repo's queue
            self._discard()
            return self._end(DeployStatus.FAILED, f"internal error: {exc!r}", started)
        self._drain_later(committed.old)
        self.tell(committed)
        if committed.canaries and (rolled_back := self._start_canaries(committed.canaries)):
            return self._end(DeployStatus.FAILED, rolled_back, started)
        return self._end(DeployStatus.SUCCEEDED, _summary(committed), started)

    # plan ---------------------------------------------------------------------------------
    def plan(self) -> Plan:
        """Decide what this deploy does; a rollback or restart is a one-release plan."""
        if self.request.rollback:
            server, number = self.request.rollback
            restart = self.request.source == DeploySource.RESTART
            title = f"restart {server} r{number}" if restart else f"rollback {server} to r{number}"
            with self.log.step(title):
                return plan_release(self._stored_release(server, number), title)
        if self.request.fetch is not None:
            with self.log.step("fetch"):
                self.snapshot_dir = self.request.fetch(self.log)
        snapshot = Snapshot.load(self.snapshot_dir or Path("."))
        if snapshot.commit != self.request.commit:  # a webhook deploys its branch's tip, not its hint
            self.ctx.store.update_deploy(self.id, commit_sha=snapshot.commit)
        if self.request.fetch is not None and (earlier := self._deployed_before(snapshot.commit)):
            self.log.line(
                f"nothing to deploy: {snapshot.commit[:12]}, the tip of {self.request.ref}, was deployed "
                f"by deploy #{earlier}, the last of this branch; a delivery does not deploy it again, so a "
                "replayed one cannot undo a rollback (`central-mcp deploy` does it on purpose)"
            )
            return Plan(())
        self._refuse_if_overtaken(snapshot)
        with self.log.step("validate manifests"):
            if snapshot.exported is not None:
                unpacked = ", ".join(snapshot.exported) or "no server folder"
                self.log.line(f"unpacked the manifests and {unpacked} (what changed against live releases)")
            manifests = self._validate(snapshot)
        with self.log.step("plan"):
            plan = self._plan_push(manifests, snapshot)
            for entry in plan.entries:
                self.log.line(f"{entry.server}: {entry.why}")
                if entry.action in (Action.UNCHANGED, Action.HELD_BACK):
                    self.outcomes[entry.server] = Outcome(ServerOutcome(entry.action.value), entry.release)
            return plan

    def _plan_push(self, manifests: list[Manifest], snapshot: Snapshot) -> Plan:
        build_args = self.ctx.settings.build_args
        prints = {m.name: fingerprint(m, inputs(m, snapshot), build_args) for m in manifests}
        history = {server: self.ctx.store.releases(server) for server in _servers(self.ctx, manifests)}
        reusable = {
            r.image
            for m in manifests
            for r in history.get(m.name, ())
            if r.fingerprint == prints[m.name]
            and r.status in (ReleaseStatus.PREVIOUS, ReleaseStatus.RETIRED)
            and self.ctx.docker.image_exists(r.image)
        }
        plan = plan_push(
            manifests,
            prints,
            history,
            reusable,
            repo=self.request.repo,
            commit=snapshot.commit,
            instance=self.ctx.instance,
            remove_all=REMOVE_ALL in snapshot.message,
        )
        return _unpacked(plan, snapshot)

    def _stored_release(self, server: str, number: int) -> Release:
        release = self.ctx.store.release(server, number)
        if release is None:
            raise DeployError(f"server {server!r} has no release r{number}")
        if release.manifest.get("remote") is None and not self.ctx.docker.image_exists(release.image):
            raise DeployError(
                f"the image {release.image} of {server} r{number} was pruned; push the old commit instead"
            )
        return release

    def _deployed_before(self, commit: str) -> int | None:
        """The id of the last deploy of this repo and ref when it deployed `commit` (else None): what
        the branch last made live. An older deploy of `commit` does not count, so a force push back
        to it deploys it again."""
        same = (self.request.repo, self.request.ref, DeployStatus.SUCCEEDED)
        last = next(
            (
                d
                for d in self.ctx.store.deploys(OVERTAKE_LOOKBACK, 0)
                if d.id < self.id and (d.repo, d.ref, d.status) == same
            ),
            None,
        )
        return last.id if last is not None and last.commit_sha == commit else None

    def _refuse_if_overtaken(self, snapshot: Snapshot) -> None:
        """Refuse a push whose branch moved while it waited: git could never move the branch to it."""
        expected = snapshot.extra.get(EXPECT_OLD, "")
        if not expected:
            return
        mine = self.ctx.store.deploy(self.id)
        since = mine.created_at if mine else 0.0
        # The deploy ahead of this one may have finished before its pusher's git moved the
        # branch, so its record counts as much as the branch itself.
        same = (self.request.repo, self.request.ref, DeployStatus.SUCCEEDED)
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
        report = check_tree(snapshot.root, self.ctx.settings, repo.manifests, repo, snapshot.holds)
        if report.problems:
            for problem in report.problems:
                self.log.line(problem.render())
            raise ConfigError(list(report.problems))
        refused = []
        for manifest in report.manifests:  # a secret not granted or not stored fails before any build
            try:
                self.ctx.secrets.values(self.ctx.settings, repo.name, manifest.name, manifest.secrets)
            except SecretsError as exc:
                refused.append(str(exc))
        if refused:
            raise SecretsError("; ".join(refused))
        self.log.line(
            f"{len(report.manifests)} manifest(s) valid: " + ", ".join(m.name for m in report.manifests)
        )
        return list(report.manifests)

    # commit and tell ------------------------------------------------------------------------
    def commit(self, candidates: list[Candidate], removed: list[str]) -> Committed:
        """Make the candidates live and the removed servers gone: the store, then the routes."""
        live = [c for c in candidates if c.running is not None]
        self._supersede_canaries([c.name for c in live] + removed)
        canaries = [c for c in live if self._as_canary(c)]
        live = [c for c in live if c not in canaries]
        rolled_back: list[tuple[str, int]] = []
        if self.request.source == DeploySource.AUTO_ROLLBACK:
            rolled_back = [
                (u.server, u.release)
                for c in live
                if (u := self.ctx.router.get(c.name)) and u.release != c.spec.number  # not if already back
            ]
        self.ctx.store.commit_swap(
            [Placement(c.name, c.spec.number, c.running.id, c.running.port) for c in live if c.running],
            removed,
            rolled_back,
        )
        changes: dict[str, tuple[Upstream, ...] | None] = {
            c.name: tuple(launch.upstream(self.ctx, c.spec, r) for r in c.started) for c in live if c.running
        }
        changes.update(dict.fromkeys(removed))
        replaced = self.ctx.router.swap(changes)
        if self.preparation is not None:
            self.preparation.candidates = []  # they are live now: nothing left to discard
        for c in live:
            self.outcomes[c.name].outcome = ServerOutcome.SWAPPED
            self.log.line(f"{c.name}: r{c.spec.number} is live")
        for name in removed:
            self.outcomes[name] = Outcome(ServerOutcome.REMOVED)
        return Committed(live, removed, list(replaced.values()), canaries)

    def _as_canary(self, c: Candidate) -> bool:
        """Whether a candidate goes live as a canary: its manifest says so, a push brought it, and a
        release of its server is live to stand beside (a first release is swapped in)."""
        return (
            c.spec.manifest.rollout.canary
            and self.request.source in CANARY_SOURCES
            and c.name in self.ctx.router.groups
            and c.name not in self.ctx.router.splits
        )

    # canaries -------------------------------------------------------------------------------
    def _supersede_canaries(self, servers: list[str]) -> None:
        """Roll back the canary under way of each server this deploy changes (a newer push, a
        rollback, a removal supersedes it); a restart replaces a container and leaves it running."""
        if self.request.source == DeploySource.RESTART:
            return
        for server in servers:
            if self.ctx.canaries.running(server) is not None:
                self.log.line(
                    f"{server}: the canary under way is rolled back: deploy #{self.id} supersedes it"
                )
                with contextlib.suppress(DeployError):  # it ended meanwhile
                    self.ctx.canaries.say(server, "rollback", f"superseded by deploy #{self.id}")

    def _start_canaries(self, candidates: list[Candidate]) -> str:
        """Put each canary beside its stable release and wait for every first step's verdict (an
        attached push waits for that only); return why any was rolled back at it ('' if none)."""
        started = []
        for c in candidates:
            rollout = c.spec.manifest.rollout
            upstreams = [launch.upstream(self.ctx, c.spec, r) for r in c.started]
            split = self.ctx.router.start_split(c.name, upstreams, rollout.steps[0])
            steps = Steps(c.name, self.id, split.stable, c.spec.number, rollout)
            canary = Canary(
                split, steps, partial(self._promote, c), partial(self._roll_back, c), self.log.line
            )
            self.outcomes[c.name].outcome = ServerOutcome.CANARY
            self.ctx.canaries.start(canary)
            started.append(canary)
        for canary in started:
            canary.first_step.wait()
        for canary in started:
            s = canary.steps
            if s.phase is Phase.RUNNING:
                self.log.line(
                    f"{s.server}: canary r{s.canary} passed its first step; the rollout continues "
                    f"({'% → '.join(str(p) for p in s.rollout.steps)}%, every {s.rollout.step_interval:g}s): "
                    f"watch it at /deploys/{self.id}, or say `central-mcp promote {s.server}` / "
                    f"`central-mcp rollback {s.server}`"
                )
        return "; ".join(
            f"{k.steps.server}: canary r{k.steps.canary} rolled back: {k.steps.reason}"
            for k in started
            if k.steps.phase is Phase.ROLLED_BACK
        )

    def _promote(self, c: Candidate) -> None:
        """Make a canary the live release: the store, then the routes; the stable release drains."""
        assert c.running is not None
        self.ctx.store.commit_swap([Placement(c.name, c.spec.number, c.running.id, c.running.port)], [])
        old = self.ctx.router.end_split(c.name, promote=True)
        self._drain_later([old] if old is not None else [])
        self.tell(Committed([c], [], []))

    def _roll_back(self, c: Candidate, reason: str) -> None:
        """Take a canary out: it drains, the stable release keeps everything."""
        group = self.ctx.router.end_split(c.name, promote=False)
        self.ctx.store.set_release_status(c.name, c.spec.number, ReleaseStatus.ROLLED_BACK)
        self._drain_later([group] if group is not None else [])

    def tell(self, committed: Committed) -> None:
        """Tell the listeners what went live; a listener's failure is logged, never raised."""
        made_live = [(c.name, c.spec.number) for c in committed.live]
        listeners: list[tuple[str, Callable[[], None]]] = [
            ("registry", self._write_registry),
            *(
                (getattr(fn, "__qualname__", "listener"), partial(fn, self.request.source, made_live))
                for fn in self.ctx.on_swap
            ),
        ]
        for name, listener in listeners:
            try:
                listener()
            except Exception as exc:  # a listener never undoes a committed deploy
                self.log.line(
                    f"after the swap, {name} failed: {type(exc).__name__}: {exc} "
                    "(the deploy stands: what was swapped in is live)"
                )

    def _write_registry(self) -> None:
        live = self.ctx.store.live_releases()
        self.ctx.metrics.live.set(len(live))
        registry.write_files(self.ctx.settings, live)

    # drain and discard ----------------------------------------------------------------------
    def _drain_later(self, old: list[TargetGroup]) -> None:
        """Let every replica of the old releases finish its requests and sessions, then retire and
        stop it."""
        for group in old:
            for target in group.targets:
                upstream = target.upstream
                threading.Thread(
                    target=drain_and_stop,
                    args=(self.ctx, upstream, self.log.line, self._prune_networks),
                    name=f"drain-{upstream.server}",
                    daemon=True,
                ).start()

    def _prune_networks(self, server: str) -> None:
        """Remove the server's networks no container uses any more (all of them once it is gone)."""
        if self.ctx.networks is None:
            return
        live = next((r for r in self.ctx.store.live_releases() if r.server == server), None)
        wanted = {server: (live.manifest.get("run") or {}).get("host_services", ())} if live else {}
        try:
            for name in self.ctx.networks.prune(wanted, server):
                self.log.line(f"{server}: network {name} removed")
        except CentralMCPError as exc:  # retention tries again
            self.log.line(f"{server}: its unused networks could not be removed: {exc}")

    def _discard(self) -> None:
        if self.preparation is not None:
            self.preparation.discard()

    def _end(self, status: DeployStatus, text: str, started: float) -> DeployStatus:
        seconds = time.monotonic() - started
        servers = {name: o.as_json(self.log.masker) for name, o in self.outcomes.items()}
        error = "" if status == DeployStatus.SUCCEEDED else self.log.masker(text)
        try:
            self.ctx.store.update_deploy(
                self.id, status=status, error=error, finished_at=time.time(), servers=servers
            )
        except sqlite3.Error as exc:  # the outcome stands (and is live); only its record is missing
            self.log.line(f"the deploy record could not be saved: {exc}")
        self.log.finish(status, f"{text} ({seconds:.1f}s)")
        self.ctx.metrics.deploys.labels(status, self.request.source).inc()
        self.ctx.metrics.deploy_seconds.observe(seconds)
        if self.snapshot_dir is not None:
            shutil.rmtree(self.snapshot_dir, ignore_errors=True)
        return status


def drain_and_stop(
    ctx: Context, upstream: Upstream, say: Callable[[str], None], after: Callable[[str], None] | None = None
) -> bool:
    """Let a target out of rotation finish its requests and sessions (to the drain deadlines), retire
    it, stop and remove its container; return whether it emptied in time."""
    proxy = ctx.settings.proxy
    drained = ctx.router.drain(upstream.container_id, proxy.drain_timeout, proxy.session_drain_timeout)
    closed = ctx.router.retire(upstream.container_id)
    if not launch.is_remote(upstream.container_id):
        ctx.docker.stop_and_remove(upstream.container_id, STOP_GRACE_SECONDS)
    if after is not None:
        after(upstream.server)
    how = "drained" if drained else f"drain deadline passed ({closed} session(s) closed)"
    replica = upstream.container_id[:12]
    say(f"{upstream.server}: old r{upstream.release} ({replica}) {how}, stopped and removed")
    return drained


def _unpacked(plan: Plan, snapshot: Snapshot) -> Plan:
    """`plan`, once sure that every server it builds was unpacked (a partial snapshot holds only what
    changed against the live releases the push saw; a rollback since then may need more)."""
    missing = [
        e.server
        for e in plan.entries
        if e.action is Action.BUILD
        and e.spec is not None
        and not (snapshot.holds(e.spec.manifest.folder) and snapshot.holds(e.spec.manifest.context))
    ]
    if missing:
        raise DeployError(
            f"{', '.join(missing)} changed against the live release after the push was read (a rollback "
            "or another deploy in between), so the push did not bring its files: push again"
        )
    return plan


def _servers(ctx: Context, manifests: list[Manifest]) -> set[str]:
    """The servers a push plans for: its manifests and every server now live."""
    return {m.name for m in manifests} | {r.server for r in ctx.store.live_releases()}


def _summary(committed: Committed) -> str:
    changed = ", ".join(f"{c.name} r{c.spec.number}" for c in committed.live)
    gone = ", ".join(f"{name} removed" for name in committed.removed)
    canaries = ", ".join(f"{c.name} r{c.spec.number} as a canary" for c in committed.canaries)
    return "live: " + "; ".join(x for x in (changed, gone, canaries) if x)
