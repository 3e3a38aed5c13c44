"""The aggregate's upstream GET streams: what a server sends a client session outside any call.

A server speaks to a session outside a call on that session's GET stream: resources/updated after
resources/subscribe, its own tools|prompts|resources list_changed, log lines, a sampling or
elicitation request of its own. For each (client session, server) pair the aggregate opens that
stream (a `Feed`, a GET through `Proxy.serve` on the pair's upstream session, so the key, its scope
and rate limit and the session's release apply as to any request) once the client has a GET stream
open and the upstream session exists; each message is handed to the aggregate (which rewrites and
queues it on the client's streams). One `Feeds` per client session holds at most one feed per
server; they stop when the client's last GET stream closes or its session ends.

A feed that ended with the stream (the server closed it, its release was retired) is opened again
after RECONNECT_DELAY while the upstream session is the same, at most MAX_RECONNECTS times in a row
without a message between; an answer that is not a stream (405: the server offers none; 404: the
session is gone; 409, 429, ...) ends it until the next call opens the pair's session again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pipeline.proxy.exchange import Headers
from pipeline.proxy.relay import Proxy
from pipeline.proxy.upstreams import InnerExchange, Link, sse_messages

log = logging.getLogger("central-mcp")
RECONNECT_DELAY = 1.0  # before a feed whose stream ended is opened again
MAX_RECONNECTS = 5  # in a row, with no message heard between
STREAM_ACCEPT = (b"accept", b"text/event-stream")
Heard = Callable[[str, dict[str, Any]], None]  # (server, message) -> the aggregate deals with it


class Feed(InnerExchange):
    """One upstream GET stream: each whole event's JSON-RPC message handed to `heard`."""

    def __init__(self, server: str, headers: Headers, heard: Heard, max_event: int) -> None:
        super().__init__("GET", server, headers, b"")
        self.heard = heard
        self.max_event = max_event
        self.status = 0
        self.messages = 0
        self.stop = asyncio.Event()
        self._partial = b""

    async def answer(self, status: int, body: bytes, headers: Headers) -> None:
        """A whole answer: no stream (405, 404, 409, 429...)."""
        self.status = status

    async def start(self, status: int, headers: Headers) -> None:
        """The stream begins."""
        self.status = status

    async def write(self, chunk: bytes) -> None:
        """Hand on every whole event; an event longer than `max_event` ends the feed."""
        text = (self._partial + chunk).replace(b"\r\n", b"\n")
        whole, _, self._partial = text.rpartition(b"\n\n")
        if len(self._partial) > self.max_event:
            log.warning("aggregate: %s sent an event over %d bytes; feed ends", self.server, self.max_event)
            self.status, self._partial = 0, b""
            self.stop.set()
            return
        for message in sse_messages(whole) if whole else ():
            self.messages += 1
            self.heard(self.server, message)

    async def gone(self) -> None:
        """The feed is stopped (the client's streams or session ended)."""
        await self.stop.wait()


class Feeds:
    """The feeds of one client session, one per server at most."""

    def __init__(self, proxy: Proxy, link: Link, heard: Heard, max_event: int) -> None:
        self.proxy = proxy
        self.link = link
        self.heard = heard
        self.max_event = max_event
        self.running: dict[str, tuple[Feed | None, asyncio.Task[None]]] = {}
        self.delay = RECONNECT_DELAY

    def open(self, server: str) -> None:
        """Open the feed of `server` if the session has one there and no feed runs yet."""
        if server in self.running or not self.link.sessions.get(server):
            return
        task = asyncio.ensure_future(self._run(server))
        self.running[server] = (None, task)
        task.add_done_callback(lambda _: self._ended(server, task))

    def open_all(self) -> None:
        """Open a feed for every upstream session the client session has."""
        for server in list(self.link.sessions):
            self.open(server)

    def stop(self) -> None:
        """Stop every feed (the client has no GET stream left): a stream open ends as a client's
        leaving does (the proxy counts no failure); one waiting to be opened again is cancelled."""
        for feed, task in list(self.running.values()):
            if feed is not None:
                feed.stop.set()
            else:
                task.cancel()
        self.running = {}

    async def close(self) -> None:
        """Stop every feed and wait until they are gone (the client session ends)."""
        tasks = [task for _, task in self.running.values()]
        self.stop()
        if tasks:
            await asyncio.wait(tasks)  # each one's failure, if any, is logged by `_ended`

    def _ended(self, server: str, task: asyncio.Task[None]) -> None:
        """A feed's task ended: forget it; log why if it failed (a bug: the proxy answers errors)."""
        if server in self.running and self.running[server][1] is task:
            del self.running[server]
        if not task.cancelled() and task.exception() is not None:
            log.warning("aggregate: the feed of %s failed: %r", server, task.exception())

    async def _run(self, server: str) -> None:
        """Hold the server's GET stream open while the upstream session is the same one."""
        session, quiet = self.link.sessions.get(server, ""), 0
        while session and quiet < MAX_RECONNECTS:
            headers = [(k, v) for k, v in self.link.headers(server) if k not in (b"accept", b"content-type")]
            feed = Feed(server, [*headers, STREAM_ACCEPT], self.heard, self.max_event)
            current = self.running.get(server)
            if current is None:
                return  # stopped meanwhile
            self.running[server] = (feed, current[1])
            await self.proxy.serve(feed)
            if feed.status != 200 or feed.stop.is_set():
                return
            self.running[server] = (None, current[1])  # waiting: stop() cancels it
            quiet = 0 if feed.messages else quiet + 1
            await asyncio.sleep(self.delay)
            if self.link.sessions.get(server) != session:
                return
