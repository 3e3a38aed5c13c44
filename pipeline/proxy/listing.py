"""The aggregate's lists: each release's tools, prompts, resources and templates, fetched once.

A release's lists are fetched on a session of the aggregate's own (its in-memory token: no
client's rate limit pays for a cache fill), through `Proxy.serve` like every other request, then
the session is ended; whether the release speaks 2026-07-28 is asked once at the same time. They
are cached under the release's container id (catalog.py), so a swap invalidates them by naming a
new container. A caller's view is built from the releases its key reaches; a server whose lists
cannot be fetched within deploy.yaml's `aggregate.list_timeout` (both handshakes and every page)
is left out of the view instead of failing it, and asked again after `aggregate.list_retry_after`:
a server that answers slowly, or never, costs the callers of every other server's lists one wait
per retry period, not one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.config.settings import AggregateConfig
from pipeline.errors import UpstreamFailed
from pipeline.proxy.access import Caller
from pipeline.proxy.catalog import KINDS, Catalog, Lists, Releases, View
from pipeline.proxy.relay import Proxy
from pipeline.proxy.upstreams import DEFAULTS, Link, send, speaks_modern

log = logging.getLogger("central-mcp")
MAX_LIST_PAGES = 20  # a server's pages of one list followed at most
ASLEEP = "asleep:"  # + server: the lists of a server scaled to zero (pipeline/idle.py), kept while it sleeps
LIST_METHODS = {
    "tools": "tools/list",
    "prompts": "prompts/list",
    "resources": "resources/list",
    "resourceTemplates": "resources/templates/list",
}
CAPABILITY = {
    "tools": "tools",
    "prompts": "prompts",
    "resources": "resources",
    "resourceTemplates": "resources",
}


class Listing:
    """Release lists fetched once each, and the views callers get of them."""

    def __init__(self, proxy: Proxy, config: AggregateConfig = DEFAULTS) -> None:
        self.proxy = proxy
        self.config = config
        self.catalog = Catalog()
        self._fetching: dict[str, asyncio.Future[None]] = {}  # by container id
        self._failed: dict[str, float] = {}  # container id -> when its lists last failed
        self._server_of: dict[str, str] = {}  # container id -> its server, for those with lists

    async def view(self, caller: Caller, pinned: Mapping[str, str], kind: str = "tools") -> View:
        """The caller's view of `kind`, missing release lists fetched first (`pinned`: server ->
        the container a client session's upstream session is still on)."""
        releases = self.releases(caller, pinned)
        view = self.catalog.view(caller.project, releases, kind)
        if view is not None:
            return view
        await asyncio.gather(*(self.fetch(server, cid) for server, cid in releases))
        cached = tuple((s, c) for s, c in releases if self.catalog.has(c))
        found = self.catalog.view(caller.project, cached, kind)
        assert found is not None
        return found

    def releases(self, caller: Caller, pinned: Mapping[str, str]) -> Releases:
        """(server, container id) of every live server the caller reaches, pinned ones kept; a
        server scaled to zero with the lists it had (a call to it wakes it; a list never does)."""
        gatekeeper = self.proxy.gatekeeper
        found = [
            (server, pinned.get(server, up.container_id))
            for server, up in self.proxy.router.table.items()
            if gatekeeper.reaches(caller, server, up.access)
        ]
        waker = self.proxy.waker
        if waker is not None:
            found += [
                (server, ASLEEP + server)
                for server in waker.asleep
                if self.catalog.has(ASLEEP + server)
                and gatekeeper.reaches(caller, server, waker.access(server))
            ]
        return tuple(sorted(found))

    async def modern(self, server: str) -> bool:
        """Whether `server`'s live release speaks 2026-07-28 (learnt with its lists)."""
        live = self.proxy.router.get(server)
        if live is None:
            return False
        if live.container_id not in self.catalog.modern:
            await self.fetch(server, live.container_id)
        return self.catalog.modern.get(live.container_id, False)

    async def fetch(self, server: str, container_id: str) -> None:
        """Fetch and cache a release's lists once, however many requests wait for them."""
        if self.catalog.has(container_id):
            return
        retry = self.config.list_retry_after
        if time.monotonic() - self._failed.get(container_id, -retry) < retry:
            return
        fetching = self._fetching.get(container_id)
        if fetching is None:
            fetching = self._fetching[container_id] = asyncio.ensure_future(
                self._bounded(server, container_id)
            )
            fetching.add_done_callback(lambda _: self._fetching.pop(container_id, None))
        with contextlib.suppress(UpstreamFailed, OSError, TimeoutError):
            await asyncio.shield(fetching)

    def forget(self, container_id: str) -> None:
        """Forget one release's lists (its server said one changed): fetched again when next asked."""
        self.catalog.forget(container_id)
        self._failed.pop(container_id, None)

    def prune(self, keep: Iterable[str]) -> None:
        """Forget the lists of releases neither live nor held by a session (after a swap), but keep
        those of servers scaled to zero under ASLEEP + server."""
        kept = set(keep)
        waker = self.proxy.waker
        asleep = waker.asleep if waker is not None else frozenset()
        for container_id, server in list(self._server_of.items()):
            if server in asleep and container_id not in kept:
                self.catalog.alias(container_id, ASLEEP + server)
            if container_id not in kept:
                del self._server_of[container_id]
        kept |= {ASLEEP + server for server in asleep}
        self.catalog.prune(kept)
        self._failed = {cid: at for cid, at in self._failed.items() if cid in kept}

    async def _bounded(self, server: str, container_id: str) -> None:
        """`_fetch` within the list timeout; a failure is remembered for the retry period."""
        try:
            async with asyncio.timeout(self.config.list_timeout):
                await self._fetch(server)
        except (UpstreamFailed, OSError, TimeoutError):
            self._failed[container_id] = time.monotonic()
            raise

    async def _fetch(self, server: str) -> None:
        """The lists `server`'s live release advertises, on a session of the aggregate's own."""
        token = f"Bearer {self.proxy.gatekeeper.internal_token}".encode()
        link = Link(self.proxy, token, config=self.config)
        try:
            session = await link.session(server)
            held = self.proxy.router.session(session) if session else None
            live = self.proxy.router.get(server)
            container_id = held.container_id if held else live.container_id if live else ""
            offers = link.offers.get(server, {})
            lists: Lists = {}
            for kind in KINDS:
                lists[kind] = await self._pages(link, server, kind) if CAPABILITY[kind] in offers else []
            if container_id:
                modern = await speaks_modern(self.proxy, server, link.authorization, self.config)
                self.catalog.modern[container_id] = modern
                self.catalog.keep(container_id, lists)
                self._server_of[container_id] = server
        except (UpstreamFailed, OSError, TimeoutError) as exc:
            log.info("aggregate: listing what %s offers failed: %s", server, exc)
            raise
        finally:
            await link.close()

    async def _pages(self, link: Link, server: str, kind: str) -> list[dict[str, Any]]:
        """Every page of one list (at most MAX_LIST_PAGES)."""
        items: list[dict[str, Any]] = []
        cursor: object = None
        for page in range(MAX_LIST_PAGES):
            params = {"cursor": cursor} if cursor else {}
            method, headers = LIST_METHODS[kind], link.headers(server)
            answer = await send(self.proxy, server, headers, method, params, page + 1, self.config)
            found = answer.result.get(kind, [])
            if not isinstance(found, list):  # the server's own answer: any shape
                raise UpstreamFailed(
                    server, answer.status, f"its {LIST_METHODS[kind]} result has no {kind} list"
                )
            items.extend(i for i in found if isinstance(i, dict))
            cursor = answer.result.get("nextCursor")
            if not cursor:
                break
        return items
