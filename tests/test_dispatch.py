"""The dispatcher's queueing without Docker: fake runs stand in for the Runbook and end when told.

Each fake run blocks on its own `threading.Event`, so a test decides exactly which deploy is
running while it submits more; nothing here sleeps or races. The same behaviours are proven again
against real pushes and real Docker in tests/e2e/.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from pipeline.config.settings import Settings
from pipeline.context import Context, DeployRequest
from pipeline.deploylog import DeployLog
from pipeline.dispatch import Dispatcher
from pipeline.proxy.router import Router
from pipeline.secrets import Secrets
from pipeline.states import DeploySource, DeployStatus
from pipeline.store import Store

REPO = "central"
MAIN, DEV = "refs/heads/main", "refs/heads/dev"
WAIT = 5.0  # the longest a test waits for a worker thread; passing tests never get near it

# Each test takes milliseconds; a deadlock in the dispatcher shows as a timeout with every thread's stack.
pytestmark = pytest.mark.timeout(10)


class NoDocker:
    """Stands in for Docker, which neither the dispatcher nor the fake runs may touch."""

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"the dispatcher used docker.{name}")


class FakeRuns:
    """A runner for the Dispatcher: each deploy starts, then blocks until the test finishes it."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self._finish: dict[int, threading.Event] = {}
        self._finish_all = False
        self._changed = threading.Condition()

    def __call__(self, ctx: Context, deploy_id: int, request: DeployRequest, log: DeployLog) -> None:
        ctx.store.update_deploy(deploy_id, status=DeployStatus.RUNNING)
        with self._changed:
            self.started.append(deploy_id)
            self._changed.notify_all()
        self._event(deploy_id).wait(WAIT)
        ctx.store.update_deploy(deploy_id, status=DeployStatus.SUCCEEDED)
        log.finish(DeployStatus.SUCCEEDED, "fake run")

    def wait_started(self, deploy_id: int) -> None:
        """Wait until deploy `deploy_id` runs; fail after WAIT seconds."""
        with self._changed:
            assert self._changed.wait_for(lambda: deploy_id in self.started, WAIT), (
                f"deploy #{deploy_id} never started; started: {self.started}"
            )

    def finish(self, deploy_id: int) -> None:
        """Let deploy `deploy_id` end (now if it runs, at once when it starts otherwise)."""
        self._event(deploy_id).set()

    def finish_all(self) -> None:
        """Let every deploy end, those running and those still to start."""
        with self._changed:
            self._finish_all = True
            for event in self._finish.values():
                event.set()

    def _event(self, deploy_id: int) -> threading.Event:
        with self._changed:
            event = self._finish.setdefault(deploy_id, threading.Event())
            if self._finish_all:
                event.set()
            return event


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real Store on a temporary SQLite file."""
    store = Store(tmp_path / "central-mcp.db")
    yield store
    store.close()


@pytest.fixture
def runs() -> FakeRuns:
    """The fake runs the dispatcher under test starts."""
    return FakeRuns()


@pytest.fixture
def dispatcher(tmp_path: Path, store: Store, runs: FakeRuns) -> Iterator[Dispatcher]:
    """A Dispatcher on a real Store whose deploys are fake runs; every run is let end afterwards."""
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=tmp_path)
    ctx = Context(settings, store, NoDocker(), Router(), Secrets(tmp_path, {}), "test")  # type: ignore[arg-type]
    dispatcher = Dispatcher(ctx, run=runs)
    yield dispatcher
    runs.finish_all()
    assert dispatcher.wait_idle(WAIT)


def push(commit: str, ref: str = MAIN, repo: str = REPO, snapshot: Path | None = None) -> DeployRequest:
    """A push of `commit` (one character, repeated to a sha's length) to `ref`."""
    return DeployRequest(DeploySource.PUSH, repo, ref, commit * 40, snapshot_dir=snapshot)


def rollback(server: str, release: int) -> DeployRequest:
    """A rollback of `server` to release `release` of REPO."""
    return DeployRequest(DeploySource.ROLLBACK, REPO, MAIN, "", rollback=(server, release))


def status(store: Store, deploy_id: int) -> tuple[str, str]:
    """The stored status and error of a deploy."""
    deploy = store.deploy(deploy_id)
    assert deploy is not None, f"no deploy #{deploy_id}"
    return deploy.status, deploy.error


def snapshot(tmp_path: Path, name: str) -> Path:
    """A snapshot directory, as intake leaves one for a queued deploy."""
    folder = tmp_path / "snapshots" / name
    folder.mkdir(parents=True)
    return folder


def test_deploys_of_one_repo_run_one_at_a_time_in_order(dispatcher: Dispatcher, runs: FakeRuns) -> None:
    """A second deploy of a repo waits, queued, until the running one ends; then it runs."""
    first = dispatcher.submit(push("a"))
    runs.wait_started(first)
    second = dispatcher.submit(push("b", ref=DEV))
    assert dispatcher.waiting() == 1
    assert status(dispatcher.ctx.store, second) == (DeployStatus.QUEUED, "")
    assert runs.started == [first]

    runs.finish(first)
    runs.wait_started(second)
    assert runs.started == [first, second]
    assert dispatcher.waiting() == 0


def test_deploys_of_different_repos_run_at_the_same_time(dispatcher: Dispatcher, runs: FakeRuns) -> None:
    """Each repo has its own lane: a running deploy of one repo does not hold up another repo's."""
    first = dispatcher.submit(push("a", repo="one"))
    second = dispatcher.submit(push("b", repo="two"))
    runs.wait_started(first)
    runs.wait_started(second)
    assert dispatcher.waiting() == 0


def test_queued_deploys_of_one_branch_coalesce_to_the_newest(
    dispatcher: Dispatcher, runs: FakeRuns, store: Store
) -> None:
    """Pushes queued behind a running deploy of the same branch are canceled, each superseded by the next."""
    running = dispatcher.submit(push("a"))
    runs.wait_started(running)
    older, old, newest = (dispatcher.submit(push(commit)) for commit in "bcd")

    assert status(store, older) == (DeployStatus.CANCELED, f"superseded by deploy #{old}")
    assert status(store, old) == (DeployStatus.CANCELED, f"superseded by deploy #{newest}")
    assert status(store, running) == (DeployStatus.RUNNING, "")
    assert dispatcher.logs[old].finished
    assert dispatcher.logs[old].events[-1].text == f"canceled: superseded by deploy #{newest} ({'d' * 12})"
    runs.finish(running)
    runs.wait_started(newest)
    assert runs.started == [running, newest]


def test_a_superseded_deploy_has_its_snapshot_removed(
    dispatcher: Dispatcher, runs: FakeRuns, tmp_path: Path
) -> None:
    """The snapshot of a deploy canceled by a newer push is deleted; the newer one's is kept."""
    running = dispatcher.submit(push("a"))
    runs.wait_started(running)
    superseded, kept = snapshot(tmp_path, "b"), snapshot(tmp_path, "c")
    dispatcher.submit(push("b", snapshot=superseded))
    dispatcher.submit(push("c", snapshot=kept))
    assert not superseded.exists()
    assert kept.exists()


def test_a_queued_deploy_of_another_branch_is_not_coalesced(
    dispatcher: Dispatcher, runs: FakeRuns, store: Store
) -> None:
    """Only deploys of the same ref coalesce: a queued push of dev survives a newer push of main."""
    running = dispatcher.submit(push("a"))
    runs.wait_started(running)
    dev = dispatcher.submit(push("b", ref=DEV))
    main = dispatcher.submit(push("c"))
    assert status(store, dev) == (DeployStatus.QUEUED, "")
    runs.finish(running)
    runs.finish(dev)
    runs.wait_started(main)
    assert runs.started == [running, dev, main]


def test_the_same_commit_submitted_while_it_runs_is_the_same_deploy(
    dispatcher: Dispatcher, runs: FakeRuns, store: Store, tmp_path: Path
) -> None:
    """Submitting the running commit again returns its id, logs the repeat and drops the new snapshot."""
    first = dispatcher.submit(push("a"))
    runs.wait_started(first)
    repeated = snapshot(tmp_path, "again")
    assert dispatcher.submit(push("a", snapshot=repeated)) == first
    assert not repeated.exists()
    assert dispatcher.waiting() == 0
    assert [d.id for d in store.deploys()] == [first]
    assert any("the same commit was submitted again (push)" in e.text for e in dispatcher.logs[first].events)


def test_the_same_commit_submitted_while_it_waits_is_the_same_deploy(
    dispatcher: Dispatcher, runs: FakeRuns
) -> None:
    """A repeated commit that is still queued returns the queued deploy's id and queues nothing more."""
    running = dispatcher.submit(push("a"))
    runs.wait_started(running)
    queued = dispatcher.submit(push("b"))
    assert dispatcher.submit(push("b")) == queued
    assert dispatcher.waiting() == 1


def test_the_same_commit_on_another_branch_is_another_deploy(dispatcher: Dispatcher, runs: FakeRuns) -> None:
    """One commit pushed to two refs is two deploys: the dedupe is by commit and ref."""
    main = dispatcher.submit(push("a"))
    runs.wait_started(main)
    assert dispatcher.submit(push("a", ref=DEV)) != main
    assert dispatcher.waiting() == 1


def test_rollbacks_never_coalesce(dispatcher: Dispatcher, runs: FakeRuns, store: Store) -> None:
    """Queued rollbacks are neither superseded by a push nor merged with an identical rollback."""
    running = dispatcher.submit(push("a"))
    runs.wait_started(running)
    first = dispatcher.submit(rollback("svc", 1))
    second = dispatcher.submit(rollback("svc", 1))
    pushed = dispatcher.submit(push("b"))

    assert len({first, second, pushed}) == 3
    assert status(store, first) == (DeployStatus.QUEUED, "")
    assert status(store, second) == (DeployStatus.QUEUED, "")
    assert dispatcher.waiting() == 3


def test_a_rollback_does_not_cancel_a_queued_push(
    dispatcher: Dispatcher, runs: FakeRuns, store: Store
) -> None:
    """A rollback queued after a push of the same branch leaves that push queued."""
    running = dispatcher.submit(push("a"))
    runs.wait_started(running)
    pushed = dispatcher.submit(push("b"))
    dispatcher.submit(rollback("svc", 1))
    assert status(store, pushed) == (DeployStatus.QUEUED, "")
    assert dispatcher.waiting() == 2


def test_busy_while_a_deploy_runs_or_waits(dispatcher: Dispatcher, runs: FakeRuns) -> None:
    """`busy(repo)` holds from the first submit until the repo's last deploy has ended, for that repo only."""
    assert not dispatcher.busy(REPO)
    first = dispatcher.submit(push("a"))
    runs.wait_started(first)
    second = dispatcher.submit(push("b", ref=DEV))
    assert dispatcher.busy(REPO)
    assert not dispatcher.busy("other")

    runs.finish(first)
    runs.wait_started(second)
    assert dispatcher.busy(REPO)
    runs.finish(second)
    assert dispatcher.wait_idle(WAIT)
    assert not dispatcher.busy(REPO)


def test_wait_idle_times_out_while_a_deploy_runs(dispatcher: Dispatcher, runs: FakeRuns) -> None:
    """`wait_idle` returns False at its timeout while a deploy runs, and True once every lane is empty."""
    assert dispatcher.wait_idle(0)
    first = dispatcher.submit(push("a"))
    runs.wait_started(first)
    assert not dispatcher.wait_idle(0.05)
    runs.finish(first)
    assert dispatcher.wait_idle(WAIT)


def test_a_redelivered_webhook_returns_the_first_deploy(
    dispatcher: Dispatcher, runs: FakeRuns, store: Store
) -> None:
    """A delivery id seen before returns its deploy, even after that deploy ended, and queues nothing."""
    first = dispatcher.submit_delivery(push("a"), "delivery-1")
    runs.finish(first)
    assert dispatcher.wait_idle(WAIT)
    assert dispatcher.submit_delivery(push("b"), "delivery-1") == first
    assert [d.id for d in store.deploys()] == [first]
    assert not dispatcher.busy(REPO)


def test_deliveries_without_an_id_are_never_deduplicated(dispatcher: Dispatcher, runs: FakeRuns) -> None:
    """An empty delivery id is not remembered: two such deliveries of different commits are two deploys."""
    first = dispatcher.submit_delivery(push("a"), "")
    second = dispatcher.submit_delivery(push("b", ref=DEV), "")
    assert first != second


def test_a_run_that_raises_fails_its_deploy_and_the_lane_goes_on(
    tmp_path: Path, store: Store, runs: FakeRuns
) -> None:
    """A runner that raises marks its deploy failed and ends its log; the next deploy still runs."""
    broken: list[int] = []

    def run(ctx: Context, deploy_id: int, request: DeployRequest, log: DeployLog) -> None:
        if not broken:
            broken.append(deploy_id)
            raise RuntimeError("a bug in the runbook")
        runs(ctx, deploy_id, request, log)

    settings = Settings(config_path=Path("deploy.yaml"), state_dir=tmp_path)
    ctx = Context(settings, store, NoDocker(), Router(), Secrets(tmp_path, {}), "test")  # type: ignore[arg-type]
    dispatcher = Dispatcher(ctx, run=run)
    first = dispatcher.submit(push("a"))
    second = dispatcher.submit(push("b", ref=DEV))  # another branch: never coalesced with the first
    runs.wait_started(second)
    runs.finish(second)
    assert dispatcher.wait_idle(WAIT)

    assert broken == [first]
    assert status(store, first) == (
        DeployStatus.FAILED,
        "internal error: RuntimeError('a bug in the runbook')",
    )
    assert dispatcher.logs[first].finished
    assert status(store, second)[0] == DeployStatus.SUCCEEDED
