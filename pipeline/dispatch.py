"""Deploy queueing: one deploy at a time per repo, newest-wins coalescing, same-commit dedupe."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.context import Context, DeployRequest
from pipeline.deploy import Runbook
from pipeline.deploylog import DeployLog
from pipeline.errors import CentralMCPError
from pipeline.states import DeployStatus

LOGS_KEPT = 50
log = logging.getLogger("central-mcp.dispatch")

RunDeploy = Callable[[Context, int, DeployRequest, DeployLog], None]
"""Runs one queued deploy to its end: the Runbook, or a fake that tests queueing without Docker."""


@dataclass
class _Lane:
    """The deploys of one repo: the one running and those waiting."""

    running: tuple[int, DeployRequest] | None = None
    waiting: list[tuple[int, DeployRequest]] = field(default_factory=list)
    worker: threading.Thread | None = None


class Dispatcher:
    """Accepts deploy requests and runs them, serialized per repo, on worker threads."""

    def __init__(self, ctx: Context, run: RunDeploy | None = None) -> None:
        self.ctx = ctx
        self._run = run or _run_runbook
        self.logs: dict[int, DeployLog] = {}
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._deliveries = threading.Lock()

    def submit(self, request: DeployRequest) -> int:
        """Queue a deploy; return its id (an active deploy's id for a repeated commit)."""
        with self._lock:
            lane = self._lanes.setdefault(request.repo, _Lane())
            same = self._same_commit(lane, request)
            if same is not None:
                if request.snapshot_dir is not None:
                    shutil.rmtree(request.snapshot_dir, ignore_errors=True)
                self.logs[same].line(
                    f"the same commit was submitted again ({request.source}); following this deploy"
                )
                return same
            deploy_id = self.ctx.store.create_deploy(
                source=request.source,
                repo=request.repo,
                ref=request.ref,
                commit_sha=request.commit,
                author=request.author,
                message=request.message,
            )
            log = DeployLog(
                self.ctx.store,
                deploy_id,
                self.ctx.secrets.masker(self.ctx.settings),
                max_lines=self.ctx.settings.limits.log_lines,
            )
            self.logs[deploy_id] = log
            log.line(
                f"deploy #{deploy_id}: {request.source} of {request.repo}@{request.ref} {request.commit[:12]}"
            )
            self._coalesce(lane, request, deploy_id)
            lane.waiting.append((deploy_id, request))
            if lane.running is not None:
                log.line(f"waiting: deploy #{lane.running[0]} of {request.repo} is running")
            if lane.worker is None:
                lane.worker = threading.Thread(
                    target=self._work, args=(request.repo,), name=f"deploys-{request.repo}", daemon=True
                )
                lane.worker.start()
            return deploy_id

    def submit_delivery(self, request: DeployRequest, delivery_id: str) -> int:
        """Submit a webhook's deploy once per delivery id (a redelivery returns the same deploy)."""
        with self._deliveries:
            if delivery_id:
                known = self.ctx.store.delivery(delivery_id)
                if known is not None:
                    return known
            deploy_id = self.submit(request)
            if delivery_id:
                self.ctx.store.add_delivery(delivery_id, deploy_id)
            return deploy_id

    def busy(self, repo: str) -> bool:
        """Whether a deploy of `repo` runs or waits."""
        with self._lock:
            lane = self._lanes.get(repo)
            return lane is not None and (lane.running is not None or bool(lane.waiting))

    def waiting(self) -> int:
        """Return how many deploys wait in every lane."""
        with self._lock:
            return sum(len(lane.waiting) for lane in self._lanes.values())

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no deploy runs or waits; return whether that happened in time."""
        with self._idle:
            return self._idle.wait_for(
                lambda: all(lane.worker is None for lane in self._lanes.values()), timeout
            )

    def _same_commit(self, lane: _Lane, request: DeployRequest) -> int | None:
        if request.rollback is not None:
            return None
        active = ([lane.running] if lane.running else []) + lane.waiting
        for deploy_id, other in active:
            if other.rollback is None and other.commit == request.commit and other.ref == request.ref:
                return deploy_id
        return None

    def _coalesce(self, lane: _Lane, request: DeployRequest, deploy_id: int) -> None:
        if request.rollback is not None:
            return
        keep = []
        for other_id, other in lane.waiting:
            if other.rollback is None and other.ref == request.ref:
                self.ctx.store.update_deploy(
                    other_id, status=DeployStatus.CANCELED, error=f"superseded by deploy #{deploy_id}"
                )
                self.logs[other_id].finish(
                    DeployStatus.CANCELED, f"superseded by deploy #{deploy_id} ({request.commit[:12]})"
                )
                if other.snapshot_dir is not None:
                    shutil.rmtree(other.snapshot_dir, ignore_errors=True)
            else:
                keep.append((other_id, other))
        lane.waiting = keep

    def _work(self, repo: str) -> None:
        while True:
            with self._lock:
                lane = self._lanes[repo]
                if not lane.waiting:
                    lane.running = None
                    lane.worker = None
                    self._idle.notify_all()
                    return
                lane.running = lane.waiting.pop(0)
            deploy_id, request = lane.running
            try:
                self._run(self.ctx, deploy_id, request, self.logs[deploy_id])
            except Exception as exc:  # the lane must go on: a wedged lane would block every later push
                log.exception("deploy #%d ended with an internal error", deploy_id)
                self._fail(deploy_id, f"internal error: {exc!r}")
            self._forget_old_logs()

    def _fail(self, deploy_id: int, error: str) -> None:
        """Best effort: record a deploy that raised as failed, so its pusher is answered."""
        deploy_log = self.logs[deploy_id]
        if deploy_log.finished:  # it ended (perhaps succeeded) before the error: its record stands
            return
        deploy_log.finish(DeployStatus.FAILED, error)
        with contextlib.suppress(sqlite3.Error, CentralMCPError):  # the store may be what failed
            self.ctx.store.update_deploy(deploy_id, status=DeployStatus.FAILED, error=error)

    def _forget_old_logs(self) -> None:
        """Keep the in-memory logs of recent deploys only; older ones are read from SQLite."""
        with self._lock:
            finished = sorted(i for i, log in self.logs.items() if log.finished)
            for deploy_id in finished[:-LOGS_KEPT]:
                del self.logs[deploy_id]


def _run_runbook(ctx: Context, deploy_id: int, request: DeployRequest, log: DeployLog) -> None:
    Runbook(ctx, deploy_id, request, log).run()
