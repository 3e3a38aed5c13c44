"""What people read: the deploy pages (live over SSE), the registry files, client configs.

Everything shown from a build or a server is escaped by Jinja2's autoescaping, and ANSI
colour codes are stripped, so a log line holding `<script>` shows as text.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from pipeline import registry
from pipeline.config.settings import Settings
from pipeline.deploylog import DeployLog, Event
from pipeline.monitor import Health
from pipeline.proxy.access import Caller, Denied, Gatekeeper
from pipeline.states import FINISHED, DeployStatus
from pipeline.store import Deploy, Store

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape(["html"])
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
PAGE_SIZE = 25
STATUSES = tuple(DeployStatus)
FOLLOW_WAIT = 1.0
ADMIN_COOKIE = "central_mcp_admin"
# One cookie per page path, never `/`: the admin token is not sent to `/mcp/`, `/hooks/` or `/api/`.
ADMIN_COOKIE_PATHS = ("/servers", "/deploys", "/deploys.json", "/client-config")
REGISTRY_HEADERS = {"Cache-Control": "no-cache", "Vary": "Authorization", "X-Content-Type-Options": "nosniff"}
# The pages run only the style and script they were served with (a nonce per answer), load nothing
# else, cannot be framed, and send no Referer (a first visit carries ?token= in its URL).
PAGE_POLICY = (
    "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class Sources(Protocol):
    """What the pages read from the running app."""

    settings: Settings
    store: Store
    gatekeeper: Gatekeeper
    health: Mapping[str, Health]

    def live_log(self, deploy_id: int) -> DeployLog | None:
        """The in-memory log of a deploy this process runs, if any."""

    def canary(self, deploy_id: int) -> dict[str, Any] | None:
        """The canary rollout a deploy started (its step and both releases' figures, live), if any."""


Getter = Callable[[Request], Sources]


Handler = Callable[[Request, Sources], Awaitable[Response]]


def routes(get: Getter) -> list[Route]:
    """The page and registry routes."""

    def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            src = get(request)
            request.state.nonce = secrets.token_urlsafe(16)
            response = admin_denied(request, src.settings) or await handler(request, src)
            response.headers.update(PAGE_HEADERS)
            response.headers["Content-Security-Policy"] = PAGE_POLICY.format(nonce=request.state.nonce)
            if request.query_params.get("token") and src.settings.admin_token and response.status_code != 401:
                _set_admin_cookie(response, request.query_params["token"], src.settings)
            return response

        return guarded

    async def root(request: Request) -> Response:
        query = request.url.query
        return RedirectResponse("/servers" + (f"?{query}" if query else ""), status_code=303)

    async def registry_json(request: Request) -> Response:
        return await _registry(request, get(request), "registry")

    async def mcp_json(request: Request) -> Response:
        return await _registry(request, get(request), "mcp")

    return [
        Route("/", root),
        Route("/servers", page(_index)),
        Route("/deploys", page(_deploys)),
        Route("/deploys.json", page(_deploys_json)),
        Route("/deploys/{id:int}", page(_deploy_page)),
        Route("/deploys/{id:int}.json", page(_deploy_json)),
        Route("/deploys/{id:int}/log", page(_deploy_log)),
        Route("/deploys/{id:int}/events", page(_deploy_events)),
        Route("/registry.json", registry_json),
        Route("/mcp.json", mcp_json),
        Route("/client-config/{project}/{fmt}", page(_client_config)),
    ]


def deploy_view(d: Deploy) -> dict[str, Any]:
    """A deploy as the templates and the JSON endpoints show it."""
    view = asdict(d)
    end = d.finished_at or time.time()
    view["branch"] = d.ref.removeprefix("refs/heads/")
    view["took"] = f"{end - (d.started_at or d.created_at):.1f}s" if d.started_at else "—"
    view["created_iso"] = datetime.fromtimestamp(d.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    view["ago"] = _ago(time.time() - d.created_at)
    return view


async def _index(request: Request, src: Sources) -> Response:
    releases = await asyncio.to_thread(src.store.live_releases)
    html = TEMPLATES.get_template("index.html").render(
        nonce=request.state.nonce,
        releases=releases,
        projects=src.settings.projects,
        formats=registry.FORMATS,
        base_url=src.settings.base_url,
    )
    return HTMLResponse(html)


async def _deploys(request: Request, src: Sources) -> Response:
    server, status = request.query_params.get("server", ""), request.query_params.get("status", "")
    page = max(1, _number(request.query_params.get("page", "1"), 1))
    rows = await asyncio.to_thread(
        src.store.deploys, PAGE_SIZE + 1, (page - 1) * PAGE_SIZE, status or None, server or None
    )
    html = TEMPLATES.get_template("deploys.html").render(
        nonce=request.state.nonce,
        deploys=[deploy_view(d) for d in rows[:PAGE_SIZE]],
        server=server,
        status=status,
        statuses=STATUSES,
        page=page,
        more=len(rows) > PAGE_SIZE,
    )
    return HTMLResponse(html)


async def _deploys_json(request: Request, src: Sources) -> Response:
    rows = await asyncio.to_thread(src.store.deploys, 50, 0)
    return JSONResponse({"deploys": [_record(d, src.canary(d.id)) for d in rows]})


async def _deploy_page(request: Request, src: Sources) -> Response:
    found = await _find(src, request)
    if found is None:
        return HTMLResponse("<h1>No such deploy</h1>", status_code=404)
    events = await asyncio.to_thread(src.store.events, found.id)
    view = deploy_view(found)
    view["servers"] = _with_tool_changes(src, found)
    view["canary"] = src.canary(found.id)
    html = TEMPLATES.get_template("deploy.html").render(
        nonce=request.state.nonce,
        d=view,
        events=[{"kind": k, "text": _clean(t)} for _, _, k, t in events],
        last_seq=events[-1][0] if events else 0,
    )
    return HTMLResponse(html)


async def _deploy_json(request: Request, src: Sources) -> Response:
    found = await _find(src, request)
    if found is None:
        return JSONResponse({"error": "no such deploy"}, status_code=404)
    return JSONResponse(_record(found, src.canary(found.id)))


async def _deploy_log(request: Request, src: Sources) -> Response:
    """The whole log as text; a running deploy's log streams until it ends (`curl -N`)."""
    deploy_id = int(request.path_params["id"])
    if await _find(src, request) is None:
        return PlainTextResponse("no such deploy\n", status_code=404)

    async def lines() -> AsyncIterator[bytes]:
        async for event in _follow(src, deploy_id, 0, end=False):
            yield (_clean(event.text) + "\n").encode()

    return StreamingResponse(
        lines(),
        media_type="text/plain; charset=utf-8",
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )


async def _deploy_events(request: Request, src: Sources) -> Response:
    """Server-sent events of a deploy after `?after=N`, ending with its `end` event."""
    deploy_id = int(request.path_params["id"])
    if await _find(src, request) is None:
        return JSONResponse({"error": "no such deploy"}, status_code=404)
    after = _number(request.query_params.get("after", "0"), 0)

    async def events() -> AsyncIterator[bytes]:
        async for event in _follow(src, deploy_id, after):
            data = json.dumps({"seq": event.seq, "kind": event.kind, "text": _clean(event.text)})
            yield f"id: {event.seq}\ndata: {data}\n\n".encode()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"},
    )


async def _follow(src: Sources, deploy_id: int, after: int, *, end: bool = True) -> AsyncIterator[Event]:
    """Yield a deploy's events after `after`, live while this process runs it.

    With `end`, a finished deploy whose log has no `end` event (one cut off by a restart) gets
    one, so that a browser's EventSource stops instead of reconnecting forever.
    """
    live = src.live_log(deploy_id)
    if live is not None:
        async for event in live.follow(after):
            yield event
        return
    stored = await asyncio.to_thread(src.store.events, deploy_id, max(after, 0))
    for seq, ts, kind, text in stored:
        yield Event(seq, ts, kind, text)
    if not end or (stored and stored[-1][2] == "end"):
        return
    found = await asyncio.to_thread(src.store.deploy, deploy_id)
    if found is not None and found.status in FINISHED:
        # Deploys cut off by a restart have no `end` event of their own: end the stream anyway.
        seq = stored[-1][0] + 1 if stored else max(after, 0) + 1
        yield Event(seq, found.finished_at or time.time(), "end", f"{found.status}: {found.error}")


async def _registry(request: Request, src: Sources, which: str) -> Response:
    caller = _optional_caller(request, src)
    if isinstance(caller, Denied):
        return JSONResponse({"error": caller.message}, status_code=caller.status, headers=caller.headers)
    releases = await asyncio.to_thread(src.store.live_releases)
    project = caller.project if caller else None
    # Without a key only `access: [all]` servers are listed: a restricted server's name, tools and
    # URL are its projects' business.
    shown = registry.visible(releases, project) if project is not None else registry.public(releases)
    health = {name: h.summary() for name, h in src.health.items()}
    document = (
        registry.registry(src.settings, shown, health, project)
        if which == "registry"
        else registry.mcp_json(src.settings, shown, per_server=_per_server(request))
    )
    body, tag = registry.etag(document)
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"ETag": tag, **REGISTRY_HEADERS})
    return Response(body, media_type="application/json", headers={"ETag": tag, **REGISTRY_HEADERS})


async def _client_config(request: Request, src: Sources) -> Response:
    project = src.settings.project(request.path_params["project"])
    if project is None:
        return JSONResponse({"error": "no such project"}, status_code=404)
    releases = registry.visible(await asyncio.to_thread(src.store.live_releases), project)
    try:
        fmt = request.path_params["fmt"]
        document = registry.client_config(src.settings, releases, fmt, per_server=_per_server(request))
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return JSONResponse(document)


def _per_server(request: Request) -> bool:
    """Whether `?per_server=1` asks for one entry per server instead of the aggregate's."""
    return request.query_params.get("per_server", "") in ("1", "true", "yes")


def _optional_caller(request: Request, src: Sources) -> Caller | Denied | None:
    """A project key narrows the registry; without one, the whole registry is shown."""
    if not request.headers.get("authorization") or not src.gatekeeper.required:
        return None
    return src.gatekeeper.identify(request.headers["authorization"])


def admin_denied(request: Request, settings: Settings) -> Response | None:
    """None when the request carries the admin token (or none is set), else the 401 to answer."""
    token = settings.admin_token
    if not token:
        return None
    offered = (
        request.query_params.get("token", ""),
        request.cookies.get(ADMIN_COOKIE, ""),
        request.headers.get("authorization", "").removeprefix("Bearer ").strip(),
    )
    if any(hmac.compare_digest(given.encode(), token.encode()) for given in offered if given):
        return None
    return PlainTextResponse(
        "admin token required: open this page once with ?token=...\n",
        status_code=401,
        headers={"WWW-Authenticate": 'Bearer realm="central-mcp admin"'},
    )


def _set_admin_cookie(response: Response, token: str, settings: Settings) -> None:
    """Keep the admin in on every page path, and nowhere else (Secure when served over https)."""
    secure = settings.base_url.startswith("https://")
    for path in ADMIN_COOKIE_PATHS:
        response.set_cookie(ADMIN_COOKIE, token, path=path, httponly=True, samesite="strict", secure=secure)


async def _find(src: Sources, request: Request) -> Deploy | None:
    return await asyncio.to_thread(src.store.deploy, int(request.path_params["id"]))


def _record(d: Deploy, canary: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {k: v for k, v in deploy_view(d).items() if k not in ("ago",)}
    return {**record, "canary": canary} if canary is not None else record


def _with_tool_changes(src: Sources, d: Deploy) -> dict[str, Any]:
    servers: dict[str, Any] = {}
    for name, outcome in d.servers.items():
        entry = dict(outcome)
        release = outcome.get("release")
        if isinstance(release, int) and outcome.get("outcome") in ("swapped", "gated"):
            before = src.store.previous_tools(name, release)
            after = set(outcome.get("tools") or [])
            if before is not None:
                entry["tools_added"] = sorted(after - before)
                entry["tools_removed"] = sorted(before - after)
        servers[name] = entry
    return servers


def _number(text: str, default: int) -> int:
    """A non-negative decimal from a query parameter, or `default`."""
    return int(text) if re.fullmatch(r"[0-9]{1,9}", text or "") else default


def _clean(text: str) -> str:
    return ANSI.sub("", text)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
