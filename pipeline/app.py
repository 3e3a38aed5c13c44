"""The serve process: the proxy, the deploy control API and the deploy pages, in one app."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline import control as control_mod
from pipeline import pages, registry, surfaces
from pipeline import reload as reload_mod
from pipeline.canary import Canaries
from pipeline.config.settings import ENGINE_SWARM, Listen, Settings, listen_url
from pipeline.context import Context, DeployRequest, instance_id
from pipeline.deploylog import DeployLog, Event
from pipeline.dispatch import Dispatcher
from pipeline.dockerhost import DockerHost
from pipeline.errors import CentralMCPError, DeployError
from pipeline.firewall import Guard
from pipeline.hostrelay import HostRelays
from pipeline.idle import Idler
from pipeline.monitor import Health, Monitor
from pipeline.network import Networks
from pipeline.proxy.access import Gatekeeper
from pipeline.proxy.aggregate import Aggregate
from pipeline.proxy.exchange import mcp_target
from pipeline.proxy.relay import Proxy
from pipeline.proxy.router import Router
from pipeline.proxy.usage import Usage
from pipeline.reconcile import reconcile
from pipeline.secrets import Secrets
from pipeline.source import snapshots_dir
from pipeline.states import DeploySource
from pipeline.store import DATABASE, Store
from pipeline.swarm import SwarmHost
from pipeline.webhook import PROVIDERS, Delivery, Receiver

log = logging.getLogger("central-mcp")
MCP_METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]
MCP_METHOD_SET = frozenset(MCP_METHODS)
AGGREGATE_PATHS = ("/mcp", "/mcp/")
FOLLOW_WAIT = 1.0
FLUSH_SECONDS = 5.0  # usage counters and session bindings are saved this often, and at shutdown
CANARY_COMMANDS = ("promote", "rollback")  # what `central-mcp promote|rollback SERVER` say to a canary


@dataclass
class Services:
    """Everything the app holds while it runs."""

    ctx: Context
    dispatcher: Dispatcher
    proxy: Proxy
    usage: Usage
    monitor: Monitor
    webhooks: Receiver
    control: control_mod.Control
    pages: PageSources
    aggregate: Aggregate
    idler: Idler
    listen: Listen = field(default_factory=Listen)
    scheduler: BackgroundScheduler | None = None
    reloading: threading.Lock = field(default_factory=threading.Lock)

    def reload(self) -> reload_mod.Outcome:
        """Read deploy.yaml again and apply what may change live; on a problem keep the running one."""
        with self.reloading:
            settings, outcome = reload_mod.read(self.ctx.settings, self.listen)
            if outcome.ok and outcome.applied:
                self._apply(settings)
        level = logging.WARNING if not outcome.ok or outcome.restart or outcome.warnings else logging.INFO
        log.log(level, "%s", outcome.summary())
        for line in (*outcome.problems, *outcome.warnings):
            log.log(level, "  %s", line)
        return outcome

    def _apply(self, settings: Settings) -> None:
        """Hand `settings` to every part that reads them; each takes them in one assignment."""
        old = self.ctx.settings
        self.ctx.settings = settings
        self.webhooks.settings = settings
        self.pages.settings = settings
        self.proxy.gatekeeper.configure(settings)
        self.proxy.keepalive = settings.proxy.keepalive
        self.aggregate.reconfigured()  # a project's servers or tools may have changed: views, list_changed
        if self.scheduler is not None and (settings.monitor, settings.idle) != (old.monitor, old.idle):
            _reschedule(self.scheduler, settings)
        try:  # the namespace or the public URL may have changed; like any listener, never undo
            registry.write_files(settings, self.ctx.store.live_releases())
        except (OSError, sqlite3.Error) as exc:
            log.warning("after the reload, writing the registry files failed: %s", exc)


def create_app(
    settings: Settings,
    *,
    listen: Listen | None = None,
    docker: DockerHost | None = None,
    schedule: bool = True,
) -> App:
    """Build the ASGI app for `settings` (with `serve`'s overrides `listen` already applied, and
    applied again on every reload); services start in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        services = await asyncio.to_thread(_start_services, settings, docker)
        services.listen = listen or Listen()
        services.ctx.router.loop = asyncio.get_running_loop()
        await services.proxy.start()
        await services.aggregate.start()
        app.state.services = services
        app.proxy = services.proxy
        app.aggregate = services.aggregate
        services.control.save(settings.state_dir)
        flusher = asyncio.create_task(_flush_periodically(services))
        services.scheduler = scheduler = _scheduler(services, settings) if schedule else None
        hangup = _on_hangup(services)
        try:
            yield
        finally:
            if hangup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            flusher.cancel()
            (settings.state_dir / control_mod.CONTROL_FILE).unlink(missing_ok=True)
            app.proxy = app.aggregate = None
            await services.aggregate.stop()
            await services.proxy.stop()
            await asyncio.to_thread(_flush, services)
            if services.ctx.networks is not None:
                await asyncio.to_thread(services.ctx.networks.relays.close_all)

    def services(request: Request) -> Services:
        found: Services = request.app.state.services
        return found

    async def submit_deploy(request: Request) -> Response:
        s = services(request)
        if not _authorized(request, s.control):
            return JSONResponse({"error": "bad or missing control token"}, status_code=403)
        try:
            body = await request.json()
            deploy_request = _deploy_request(body, snapshots_dir(settings.state_dir))
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad deploy request: {exc}"}, status_code=400)
        deploy_id = await asyncio.to_thread(s.dispatcher.submit, deploy_request)
        return _follow(s, deploy_id)

    async def webhook(request: Request) -> Response:
        s = services(request)
        provider = request.path_params["provider"]
        if provider not in PROVIDERS:
            return JSONResponse({"error": f"unknown webhook provider {provider!r}"}, status_code=404)
        limit = s.ctx.settings.webhook_max_body
        body = await _read_limited(request, limit)
        if body is None:
            return JSONResponse({"error": f"body over {limit} bytes"}, status_code=413)
        delivery = Delivery(provider, {k.lower(): v for k, v in request.headers.items()}, body)
        answer = await asyncio.to_thread(s.webhooks.handle, delivery)
        return JSONResponse(answer.body, status_code=answer.status, headers=dict(answer.headers or {}))

    async def canary(request: Request) -> Response:
        s = services(request)
        if not _authorized(request, s.control):
            return JSONResponse({"error": "bad or missing control token"}, status_code=403)
        server, command = request.path_params["server"], request.path_params["command"]
        if command not in CANARY_COMMANDS:
            return JSONResponse({"error": f"say promote or rollback, not {command!r}"}, status_code=404)
        try:
            found = await asyncio.to_thread(s.ctx.canaries.say, server, command)
        except DeployError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(found.view())

    async def reload(request: Request) -> Response:
        s = services(request)
        if not _authorized(request, s.control):
            return JSONResponse({"error": "bad or missing control token"}, status_code=403)
        outcome = await asyncio.to_thread(s.reload)
        return JSONResponse(outcome.as_json(), status_code=200 if outcome.ok else 422)

    async def healthz(request: Request) -> Response:
        s = services(request)
        checks = await asyncio.to_thread(_self_check, s)
        ok = all(v == "ok" for v in checks.values())
        admin = pages.admin_denied(request, s.ctx.settings) is None
        shown = _servers_shown(s, admin)
        return JSONResponse({"ok": ok, "checks": checks, **shown}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        s = services(request)
        denied = pages.admin_denied(request, s.ctx.settings)  # its labels name every server and project
        if denied is not None:
            return denied
        s.ctx.metrics.live.set(len(s.ctx.router.table))
        return Response(s.ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def contract(request: Request) -> Response:
        s = services(request)
        denied = pages.admin_denied(request, s.ctx.settings)  # every server's tools and schemas
        if denied is not None:
            return denied
        return JSONResponse(await asyncio.to_thread(surfaces.live_json, s.ctx.store))

    async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
        await scope["app"].state.services.proxy.handle(scope, receive, send)

    async def aggregate(scope: Scope, receive: Receive, send: Send) -> None:
        await scope["app"].state.services.aggregate.handle(scope, receive, send)

    routes = [
        *aggregate_routes(aggregate),
        *proxy_routes(mcp),
        Route("/api/deploys", submit_deploy, methods=["POST"]),
        Route("/api/reload", reload, methods=["POST"]),
        Route("/api/canaries/{server}/{command}", canary, methods=["POST"]),
        Route(surfaces.CONTRACT_PATH, contract),
        *pages.routes(lambda request: services(request).pages),
        Route("/hooks/{provider}", webhook, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ]
    return App(routes=routes, lifespan=lifespan)


class App(Starlette):
    """Starlette, except that proxy requests skip its middleware and route matching.

    Once `proxy` is set (the lifespan sets it), `/mcp/<server>` and `/mcp/<server>/...` go straight
    to `proxy.handle` with the path params that `proxy_routes` would give them; every other request
    is routed as usual, and `proxy_routes` stays mounted for requests the shortcut leaves alone.
    """

    proxy: Proxy | None = None
    aggregate: Aggregate | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        proxy = self.proxy
        if (
            proxy is not None
            and scope["type"] == "http"
            and scope["method"] in MCP_METHOD_SET
            and not scope.get("root_path")
        ):
            if scope["path"] in AGGREGATE_PATHS and self.aggregate is not None:
                scope["app"] = self
                await self.aggregate.handle(scope, receive, send)
                return
            target = mcp_target(scope["path"])
            if target is not None:
                scope["app"] = self
                scope["path_params"] = {"server": target[0], "rest": target[1]}
                await proxy.handle(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


@dataclass
class PageSources:
    """What the pages read: settings, the store, key checks, and the logs of running deploys."""

    settings: Settings
    store: Store
    gatekeeper: Gatekeeper
    logs: dict[int, DeployLog]
    health: Mapping[str, Health] = field(default_factory=dict)
    canaries: Canaries = field(default_factory=Canaries)

    def live_log(self, deploy_id: int) -> DeployLog | None:
        """The in-memory log of a deploy this process runs or ran."""
        return self.logs.get(deploy_id)

    def canary(self, deploy_id: int) -> dict[str, Any] | None:
        """The canary rollout a deploy started (its step and both releases' figures, live), if any."""
        found = self.canaries.of_deploy(deploy_id)
        return found.view() if found is not None else None


def aggregate_routes(endpoint: ASGIApp) -> list[Route]:
    """The aggregate endpoint's routes: `/mcp` and `/mcp/` (no slash redirect)."""
    app = _RawASGI(endpoint)
    return [Route(path, app, methods=MCP_METHODS) for path in AGGREGATE_PATHS]


def proxy_routes(endpoint: ASGIApp) -> list[Route]:
    """The proxy's two routes: `/mcp/<server>` and `/mcp/<server>/...` (no slash redirect).

    `endpoint` is a raw ASGI callable (`Proxy.handle`) that finds `server` and `rest` in
    `scope["path_params"]`; it is mounted as is, without Starlette's Request/Response layer.
    """
    app = _RawASGI(endpoint)
    return [
        Route("/mcp/{server}", app, methods=MCP_METHODS),
        Route("/mcp/{server}/{rest:path}", app, methods=MCP_METHODS),
    ]


class _RawASGI:
    """Wraps an ASGI function so that Starlette's Route calls it as an app, not as an endpoint."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def _start_services(settings: Settings, docker: DockerHost | None) -> Services:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.state_dir / DATABASE)
    instance = instance_id(settings.state_dir)
    host = _engine(settings, instance, docker)
    host.ping()
    ctx = Context(settings, store, host, Router(), Secrets(settings.state_dir), instance)
    ctx.networks = Networks(host, settings, instance, HostRelays(settings.network))
    if isinstance(host, SwarmHost):
        host.server_networks = ctx.networks
    ctx.firewall = Guard(settings)
    firewall = ctx.firewall.status
    if not firewall.ok:
        log.error(
            "NO HOST FIREWALL FOR SERVER NETWORKS: %s. No server container is started until then.",
            firewall.detail,
        )
    routed = reconcile(ctx, log.info)
    log.info("routes: %s", ", ".join(u.server for u in routed) or "none")
    url = listen_url(settings.host, settings.port)
    usage = Usage(store, ctx.metrics)
    _restore_sessions(ctx)
    proxy = Proxy(
        ctx.router,
        Gatekeeper(settings, store),
        usage,
        settings.proxy.keepalive,
        settings.proxy.session_idle_timeout,
        max_body=settings.proxy.max_body,
        max_upstream_header=settings.proxy.max_upstream_header,
        dialer=ctx.dialer,
    )
    dispatcher = Dispatcher(ctx)
    monitor = Monitor(ctx, dispatcher.submit, dispatcher.busy, usage)
    idler = Idler(ctx, usage, monitor.health, _server_busy(ctx, dispatcher.busy))
    idler.restore()
    proxy.waker = idler
    receiver = Receiver(settings, dispatcher.submit_delivery, dispatcher.waiting)
    registry.write_files(settings, store.live_releases())
    sources = PageSources(settings, store, proxy.gatekeeper, dispatcher.logs, monitor.health, ctx.canaries)
    aggregate = Aggregate(proxy, settings.proxy.session_idle_timeout, settings.aggregate)
    control = control_mod.new_control(url)
    return Services(ctx, dispatcher, proxy, usage, monitor, receiver, control, sources, aggregate, idler)


def _engine(settings: Settings, instance: str, docker: DockerHost | None) -> DockerHost:
    """This VM's Docker engine, or with `engine: swarm` the same engine acting through Swarm."""
    if settings.engine != ENGINE_SWARM:
        return docker or DockerHost()
    host = SwarmHost(settings, instance, docker.client if docker is not None else None)
    host.node_id()  # refuses an engine that is no swarm manager, naming the command that makes it one
    return host


def _server_busy(ctx: Context, busy: Callable[[str], bool]) -> Callable[[str], bool]:
    """Whether a deploy of a server's repo runs or waits (the idle job leaves such a server be)."""

    def server_busy(server: str) -> bool:
        release = next((r for r in ctx.store.live_releases() if r.server == server), None)
        return release is not None and busy(release.repo)

    return server_busy


def _scheduler(services: Services, settings: Settings) -> BackgroundScheduler:
    """Start the monitor's jobs: each never overlaps itself; a late run is coalesced."""
    monitor = services.monitor
    scheduler = BackgroundScheduler(job_defaults={"max_instances": 1, "coalesce": True})
    scheduler.add_job(services.idler.sweep, "interval", seconds=settings.idle.check_interval, id="idle")
    scheduler.add_job(monitor.probe_all, "interval", seconds=settings.monitor.probe_interval, id="probe")
    scheduler.add_job(
        monitor.retention, "interval", seconds=settings.monitor.retention_interval, id="retention"
    )
    scheduler.add_job(monitor.autoscale, "interval", seconds=settings.scale.interval, id="autoscale")
    scheduler.start()
    return scheduler


def _reschedule(scheduler: BackgroundScheduler, settings: Settings) -> None:
    """Give the monitor's jobs the intervals of reloaded settings."""
    scheduler.reschedule_job("probe", trigger="interval", seconds=settings.monitor.probe_interval)
    scheduler.reschedule_job("retention", trigger="interval", seconds=settings.monitor.retention_interval)
    scheduler.reschedule_job("idle", trigger="interval", seconds=settings.idle.check_interval)
    scheduler.reschedule_job("autoscale", trigger="interval", seconds=settings.scale.interval)


def _on_hangup(services: Services) -> bool:
    """Reload deploy.yaml on SIGHUP; return whether the handler is installed (only a process's main
    thread may take signals: under `up` the app runs in a thread, and `central-mcp reload` remains)."""
    loop = asyncio.get_running_loop()

    def hangup() -> None:
        loop.run_in_executor(None, services.reload)

    try:
        loop.add_signal_handler(signal.SIGHUP, hangup)
    except (ValueError, RuntimeError, NotImplementedError):
        log.info("SIGHUP does not reload here (not the main thread); use `central-mcp reload`")
        return False
    return True


def _servers_shown(s: Services, admin: bool) -> dict[str, Any]:
    """The routes and server health /healthz lists: every server for the admin (or when no admin
    token is set), else, as the registry without a key, only those whose manifest allows `all` (a
    restricted server's name and state are its projects' business)."""
    table = s.ctx.router.table
    shown = {name for name, upstream in table.items() if admin or "all" in upstream.access}
    health = {name: h.summary() for name, h in s.monitor.health.items() if admin or name in shown}
    processes = {
        name: h.processes.as_json()
        for name, h in s.monitor.health.items()
        if h.processes is not None and (admin or name in shown)
    }
    return {"routes": sorted(shown), "servers": health, **({"stdio": processes} if processes else {})}


def _self_check(s: Services) -> dict[str, str]:
    checks = {}
    try:
        s.ctx.store.deploys(1, 0)
        s.ctx.store.heartbeat()  # read and written: a database that takes no writes wedges every deploy
        checks["database"] = "ok"
    except sqlite3.Error as exc:
        checks["database"] = f"failing: {exc}"
    try:
        s.ctx.docker.ping()
        checks["docker"] = "ok"
    except CentralMCPError as exc:
        checks["docker"] = f"failing: {exc}"
    checks.update(s.ctx.docker.checks())
    if s.ctx.firewall is not None:
        status = s.ctx.firewall.status
        checks["firewall"] = "ok" if status.ok else f"failing: {status.detail}"
    return checks


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """Read the body, or return None as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _flush_periodically(services: Services) -> None:
    while True:
        await asyncio.sleep(FLUSH_SECONDS)
        await asyncio.to_thread(_flush, services)


def _flush(services: Services) -> None:
    """Save the sessions opened and ended since the last flush, and the usage counters; a failing
    write is logged (the next flush tries again with what is new by then)."""
    opened, ended = services.ctx.router.take_session_changes()
    try:
        services.ctx.store.save_sessions(opened, ended)
        services.usage.flush()
    except sqlite3.Error as exc:
        log.warning("saving sessions and usage failed: %s", exc)


def _restore_sessions(ctx: Context) -> None:
    """Take back the sessions of live containers saved before a restart; forget the rest. A
    session's id then still belongs to the key it was issued to (unknown ids answer 404)."""
    restored, gone = ctx.router.restore_sessions(ctx.store.sessions())
    ctx.store.save_sessions([], gone)
    log.info("sessions: %d restored, %d of containers no longer live forgotten", restored, len(gone))


def _authorized(request: Request, control: control_mod.Control) -> bool:
    given = request.headers.get(control_mod.TOKEN_HEADER, "")
    return hmac.compare_digest(given.encode(), control.token.encode())


def _deploy_request(body: dict[str, Any], snapshots: Path) -> DeployRequest:
    rollback = body.get("rollback")
    return DeployRequest(
        source=DeploySource(str(body["source"])),
        repo=str(body["repo"]),
        ref=str(body.get("ref", "")),
        commit=str(body.get("commit", "")),
        snapshot_dir=_snapshot_dir(str(body["snapshot_dir"]), snapshots)
        if body.get("snapshot_dir")
        else None,
        author=str(body.get("author", "")),
        message=str(body.get("message", "")),
        rollback=(str(rollback[0]), int(rollback[1])) if rollback else None,
    )


def _snapshot_dir(given: str, snapshots: Path) -> Path:
    """A snapshot the hook made: a `snap-*` folder right under <state>/snapshots, nothing else
    (the deploy reads it and removes it at its end)."""
    path = Path(given)
    if path.name.startswith("snap-") and path.is_dir() and path.resolve().parent == snapshots.resolve():
        return path
    raise ValueError(f"snapshot_dir {given!r} is not a snapshot under {snapshots}")


def _follow(s: Services, deploy_id: int) -> Response:
    deploy_log = s.dispatcher.logs[deploy_id]

    async def lines() -> AsyncIterator[bytes]:
        async for event in deploy_log.follow(0):
            yield _event_line(deploy_id, event)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _event_line(deploy_id: int, event: Event) -> bytes:
    return (
        json.dumps({"deploy": deploy_id, "seq": event.seq, "kind": event.kind, "text": event.text}) + "\n"
    ).encode()
