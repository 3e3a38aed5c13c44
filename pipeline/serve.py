"""Running the provider: `serve` (the app under uvicorn) and `up` (what `make run` starts)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn

from pipeline import logs, source
from pipeline.app import create_app
from pipeline.config.settings import Listen, Settings, listen_url
from pipeline.dockerhost import DockerHost
from pipeline.errors import ServeError, SourceError
from pipeline.hook import init_repo
from pipeline.proxy import front
from pipeline.proxy.access import create_key
from pipeline.store import DATABASE, Store

STARTUP_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


def server(settings: Settings, listen: Listen | None = None) -> uvicorn.Server:
    """A uvicorn server for the provider (not yet started); raises if it could not start.

    `settings` already carry `listen` (serve's --host/--port/--public-url, see
    `settings.listening`); a reload of deploy.yaml applies `listen` again.
    """
    _preflight(settings)
    logs.configure()
    config = front.config(
        create_app(settings, listen=listen),
        settings.proxy,
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(settings.proxy.drain_timeout) or None,
        lifespan="on",
    )
    return uvicorn.Server(config)


def up(settings: Settings, workdir: Path, say: Callable[[str], None], listen: Listen | None = None) -> None:
    """Serve, and push `workdir`'s HEAD into the VM's bare repo so its servers are deployed."""
    repo = settings.repo()
    path, remotes = init_repo(settings, repo.name)
    srv = server(settings, listen)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    base = listen_url(settings.host, settings.port)
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            what = "stopped while starting" if not thread.is_alive() else "did not start in time"
            raise ServeError(
                f"the provider on {base} {what}; the log above says why "
                "(often the port is taken: stop the other process or pass --port)"
            )
        time.sleep(0.1)
    say(f"central-mcp is serving on {base}")
    _push(workdir, path, repo.branch, say)
    say(f"deploys:   {base}/deploys")
    say(f"registry:  {base}/registry.json   {base}/mcp.json")
    say(f"one entry: {base}/mcp   (every server a project's key may use, as <server>__<tool>)")
    say(f"servers:   {base}/mcp/<server>")
    _first_key(settings, say)
    for line in remotes:
        say(f"add vm:    {line}")
    say("press Ctrl-C to stop")
    while thread.is_alive() and not stop.wait(0.5):
        pass
    srv.should_exit = True
    thread.join(STOP_TIMEOUT)


def _preflight(settings: Settings) -> None:
    """Open the database and ping Docker before uvicorn runs the lifespan.

    uvicorn turns an error raised in the lifespan into a logged traceback and exit status 3;
    raised here, it reaches the CLI, which prints its message (what is wrong and the fix).
    """
    store = Store(settings.state_dir / DATABASE)
    try:
        store.verify()  # damage past the header would otherwise surface mid-lifespan, as a traceback
    finally:
        store.close()
    DockerHost().ping()


def _first_key(settings: Settings, say: Callable[[str], None]) -> None:
    """With projects configured and no key yet, make one so the quick start can call a server."""
    if not settings.projects:
        return
    store = Store(settings.state_dir / DATABASE)
    if any(k["revoked_at"] is None for k in store.api_keys()):
        return
    project = settings.projects[0].name
    token = create_key(store, settings, project)
    say(f"api key:   {token}   (project {project}; shown once — `central-mcp keys create` makes more)")


def _push(workdir: Path, bare: Path, branch: str, say: Callable[[str], None]) -> None:
    try:
        source.resolve(workdir, "HEAD", discover=True)
    except SourceError:
        say(f"{workdir} has no git commit to deploy; serving what is live")
        return
    say(f"pushing {workdir} HEAD to {bare} ({branch}); the deploy follows")
    result = subprocess.run(
        ["git", "-C", str(workdir), "push", "--force", "--", str(bare), f"HEAD:refs/heads/{branch}"],
        check=False,
    )
    if result.returncode != 0:
        say("the push was rejected (see the deploy output above); the live servers are unchanged")
