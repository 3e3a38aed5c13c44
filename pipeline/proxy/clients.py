"""The aggregate's sessions with session-era clients: the table, GET streams, idle expiry, and the
list_changed notifications a swap calls for.

A client session owns a `Link` (upstreams.py): its upstream sessions, one per server at most. It
ends by DELETE, or after `proxy.session_idle_timeout` with no request and no open stream; then its
upstream sessions are DELETEd too. After a swap, each session with an open GET stream gets the
list_changed notifications of every kind (tools, prompts, resources) whose view changed for it
since it last listed that kind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.proxy.access import Caller
from pipeline.proxy.catalog import View
from pipeline.proxy.exchange import Exchange, Headers
from pipeline.proxy.feeds import Feeds
from pipeline.proxy.upstreams import Link

log = logging.getLogger("central-mcp")

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
KEEPALIVE = b": keep-alive\n\n"
MAX_QUEUED = 256  # messages waiting for a client's GET stream; past it more are dropped (logged)
MAX_QUEUED_BYTES = 8 * 1024 * 1024  # and their bytes (an event may be aggregate.max_held long)
CHANGED = {
    "tools": "notifications/tools/list_changed",
    "prompts": "notifications/prompts/list_changed",
    "resources": "notifications/resources/list_changed",
    "resourceTemplates": "notifications/resources/list_changed",
}
Viewer = Callable[["ClientSession", str], Awaitable[View]]  # a session's current view of one kind


class EventQueue(asyncio.Queue[bytes]):
    """A GET stream's waiting events, bounded in number (MAX_QUEUED) and in bytes (MAX_QUEUED_BYTES;
    one event always fits an empty queue)."""

    def __init__(self, max_bytes: int = MAX_QUEUED_BYTES) -> None:
        super().__init__(MAX_QUEUED)
        self.max_bytes = max_bytes
        self.bytes = 0

    def put_nowait(self, item: bytes) -> None:
        """Queue an event, or raise QueueFull past either bound."""
        if self.bytes and self.bytes + len(item) > self.max_bytes:
            raise asyncio.QueueFull
        super().put_nowait(item)
        self.bytes += len(item)

    def get_nowait(self) -> bytes:
        """Take the oldest event."""
        item = super().get_nowait()
        self.bytes -= len(item)
        return item


@dataclass
class ClientSession:
    """The aggregate's session with one session-era client."""

    id: str
    caller: Caller
    link: Link
    version: str
    last_used: float = field(default_factory=time.monotonic)
    listed: dict[str, frozenset[str]] = field(default_factory=dict)  # kind -> names last sent
    streams: list[EventQueue] = field(default_factory=list)  # its open GET streams
    inflight: dict[str, str] = field(default_factory=dict)  # its requests (id as JSON) -> their server
    feeds: Feeds | None = None  # its upstream GET streams (feeds.py)

    def pinned(self, upstream_of: Callable[[str], str | None]) -> dict[str, str]:
        """server -> the container its upstream session is on (`upstream_of`: session id -> it)."""
        found = {server: upstream_of(sid) if sid else None for server, sid in self.link.sessions.items()}
        return {server: cid for server, cid in found.items() if cid}

    def tell(self, method: str) -> None:
        """Queue a notification on every open GET stream."""
        self.queue(b'event: message\ndata: {"jsonrpc":"2.0","method":"%s"}\n\n' % method.encode())

    def send(self, message: dict[str, Any]) -> None:
        """Queue a JSON-RPC message on every open GET stream."""
        data = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        self.queue(b"event: message\ndata: " + data + b"\n\n")

    def queue(self, event: bytes) -> None:
        """Queue one event on every open GET stream (dropped on a stream MAX_QUEUED events or
        MAX_QUEUED_BYTES behind)."""
        for queue in self.streams:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                log.warning("aggregate: session %s reads too slowly; a message is dropped", self.id[:8])

    async def close(self) -> None:
        """End its feeds, then its upstream sessions."""
        if self.feeds is not None:
            await self.feeds.close()
        await self.link.close()


class ClientSessions:
    """The client sessions by id."""

    def __init__(self, idle_timeout: float, keepalive: Callable[[], float]) -> None:
        self.idle_timeout = idle_timeout  # 0: they end only by DELETE
        self.keepalive = keepalive
        self.by_id: dict[str, ClientSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def get(self, session_id: str) -> ClientSession | None:
        """The live session with this id, or None."""
        return self.by_id.get(session_id)

    def sessions_of(self, key_id: str) -> int:
        """How many sessions one key holds."""
        return sum(1 for s in self.by_id.values() if s.caller.key_id == key_id)

    def streams_of(self, key_id: str) -> int:
        """How many GET streams one key holds open."""
        return sum(len(s.streams) for s in self.by_id.values() if s.caller.key_id == key_id)

    def add(self, session: ClientSession) -> None:
        """Hold a new session."""
        self.by_id[session.id] = session

    async def end(self, session: ClientSession) -> None:
        """End a session and its upstream sessions."""
        self.by_id.pop(session.id, None)
        await session.close()

    def end_soon(self, session: ClientSession) -> None:
        """End a session in the background (its project left deploy.yaml)."""
        self.by_id.pop(session.id, None)
        self._spawn(session.close())

    async def end_all(self) -> None:
        """End every session (shutdown)."""
        sessions, self.by_id = list(self.by_id.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    async def stream(self, ex: Exchange, session: ClientSession) -> None:
        """Serve a GET stream: queued notifications, keep-alive comments, until the client leaves."""
        queue = EventQueue()
        session.streams.append(queue)
        await ex.start(200, [*SSE_HEADERS, (b"mcp-session-id", session.id.encode())])
        if session.feeds is not None:
            session.feeds.open_all()
        gone = asyncio.ensure_future(ex.gone())
        try:
            while not gone.done() and session.id in self.by_id:
                getting = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {getting, gone}, timeout=self.keepalive(), return_when=asyncio.FIRST_COMPLETED
                )
                if getting in done:
                    await ex.write(getting.result())
                else:
                    getting.cancel()
                    if not done:
                        await ex.write(KEEPALIVE)
                session.last_used = time.monotonic()
            if not gone.done():
                await ex.end()
        finally:
            gone.cancel()
            session.streams.remove(queue)
            if not session.streams and session.feeds is not None:
                session.feeds.stop()

    def after_swap(self, view: Viewer) -> None:
        """Look at each streaming session's views; tell it of every kind that changed."""
        for session in list(self.by_id.values()):
            self.check(session, view)

    def check(self, session: ClientSession, view: Viewer) -> None:
        """Tell one session of every kind whose view changed (when it has a stream to hear it)."""
        if session.streams and session.listed:
            self._spawn(_tell_if_changed(session, view))

    async def expire(self, interval_floor: float = 0.05) -> None:
        """Until cancelled: end the sessions idle past the timeout."""
        interval = max(self.idle_timeout / 4, interval_floor)
        while True:
            await asyncio.sleep(interval)
            before = time.monotonic() - self.idle_timeout
            idle = [s for s in self.by_id.values() if not s.streams and s.last_used < before]
            for session in idle:
                self.by_id.pop(session.id, None)
            if idle:
                await asyncio.gather(*(s.close() for s in idle), return_exceptions=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _tell_if_changed(session: ClientSession, view: Viewer) -> None:
    """Send list_changed for each kind whose view lost or gained an item since it was listed."""
    told: set[str] = set()
    for kind, names in list(session.listed.items()):
        now = (await view(session, kind)).names  # a server that cannot be listed is left out, not raised
        if now != names and CHANGED[kind] not in told:
            told.add(CHANGED[kind])
            session.tell(CHANGED[kind])
