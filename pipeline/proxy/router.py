"""The route table and the upstreams' lives: live, draining (old sessions only), retired.

The table maps a server name to its live upstream; it is an immutable mapping replaced in
one assignment. After a swap the old upstream keeps serving the sessions it issued until they
end or the session drain timeout passes; then it is retired and its session ids answer 404.
Sessions (sessions.py) are counted busy from `enter` to `leave`, under the same lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pipeline.proxy.sessions import Session, SessionTable
from pipeline.remote import Route
from pipeline.store import SessionRow


@dataclass(frozen=True)
class Upstream:
    """One running release of a server that the proxy may forward to."""

    server: str
    release: int
    container_id: str
    host: str
    port: int
    path: str
    access: tuple[str, ...] = ("all",)
    remote: Route | None = None  # a remote server: no container, `container_id` only names the release

    @property
    def base_url(self) -> str:
        """The upstream's MCP endpoint URL."""
        if self.remote is not None:
            return self.remote.url
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def authority(self) -> str:
        """The Host sent upstream: loopback for a container, as SDK servers' DNS-rebinding guard
        accepts, whatever address it is reached at on its network; a remote's own name."""
        if self.remote is not None:
            return self.remote.authority
        return f"127.0.0.1:{self.port}"


class Router:
    """Routes, sessions and in-flight counts; thread-safe (deploys run on worker threads)."""

    def __init__(self) -> None:
        self._table: Mapping[str, Upstream] = MappingProxyType({})
        self._draining: dict[str, Upstream] = {}
        self._sessions = SessionTable()
        self._inflight: dict[str, int] = {}
        self._closers: dict[str, asyncio.Event] = {}  # set when the upstream is retired
        self._lock = threading.RLock()
        self.known: frozenset[str] = frozenset()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.listeners: list[Callable[[], None]] = []  # told after each swap (from the swapping thread)

    @property
    def table(self) -> Mapping[str, Upstream]:
        """The current table (never mutated; a swap replaces it)."""
        return self._table

    def get(self, server: str) -> Upstream | None:
        """Return the live upstream of `server`, or None."""
        return self._table.get(server)

    def swap(self, changes: Mapping[str, Upstream | None]) -> dict[str, Upstream]:
        """Apply changes (None removes a server) in one step; the replaced upstreams start draining."""
        with self._lock:
            table = dict(self._table)
            replaced = {name: table[name] for name in changes if name in table}
            for name, upstream in changes.items():
                if upstream is None:
                    table.pop(name, None)
                else:
                    table[name] = upstream
            for old in replaced.values():
                self._draining[old.container_id] = old
            self._table = MappingProxyType(table)
            self.known = frozenset(self.known | set(table)) - {n for n, u in changes.items() if u is None}
        self._tell()
        return replaced

    def park(self, server: str) -> Upstream | None:
        """Take `server` out of the table but keep it known (scaled to zero); its upstream drains."""
        with self._lock:
            table = dict(self._table)
            replaced = table.pop(server, None)
            if replaced is not None:
                self._draining[replaced.container_id] = replaced
            self._table = MappingProxyType(table)
            self.known = self.known | {server}
        self._tell()
        return replaced

    def replace_all(self, upstreams: Iterable[Upstream], known: Iterable[str] = ()) -> None:
        """Replace the whole table (start-up reconciliation); `known` servers lacking one answer 503."""
        with self._lock:
            self._table = MappingProxyType({u.server: u for u in upstreams})
            self.known = frozenset(set(known) | set(self._table))
        self._tell()

    def _tell(self) -> None:
        """Tell the listeners the table changed (the aggregate: its lists and clients)."""
        for listener in list(self.listeners):
            listener()

    # sessions -----------------------------------------------------------------------------
    def session(self, session_id: str) -> Session | None:
        """Return the live session with this id, or None (unknown, ended, expired or retired)."""
        return self._sessions.get(session_id)

    def upstream_of(self, session: Session) -> Upstream | None:
        """Return the upstream that issued a session, live or draining."""
        live = self._table.get(session.server)
        if live is not None and live.container_id == session.container_id:
            return live
        return self._draining.get(session.container_id)

    def open_session(self, session_id: str, upstream: Upstream, key_id: str) -> Session:
        """Remember that `upstream` issued `session_id` to `key_id` (idle from now)."""
        session = Session(session_id, upstream.server, upstream.container_id, key_id)
        with self._lock:
            self._sessions.open(session, time.monotonic())
        return session

    def end_session(self, session_id: str) -> None:
        """Forget a session that ended (DELETE, or the upstream no longer knows it)."""
        with self._lock:
            self._sessions.end(session_id)

    def sessions_on(self, container_id: str) -> int:
        """Return how many sessions an upstream holds."""
        with self._lock:
            return self._sessions.on(container_id)

    def expire_idle(self, before: float) -> list[Session]:
        """End the sessions with no request in flight since before `before`; return them."""
        with self._lock:
            return self._sessions.end_idle_since(before)

    def take_session_changes(self) -> tuple[list[SessionRow], list[str]]:
        """Sessions opened and ended since the last call, for the store."""
        with self._lock:
            return self._sessions.take_changes()

    def restore_sessions(self, rows: list[SessionRow]) -> tuple[int, list[str]]:
        """Take back stored sessions whose container is live (start-up, after the table is rebuilt);
        return how many, and the ids of the others, which are gone for good."""
        with self._lock:
            live = {u.container_id for u in self._table.values()}
            kept, gone = (
                [r for r in rows if r.container_id in live],
                [r.id for r in rows if r.container_id not in live],
            )
            self._sessions.restore(kept, time.monotonic())
        return len(kept), gone

    # in-flight requests and open streams ----------------------------------------------------
    def enter(self, upstream: Upstream, session: Session | None = None) -> asyncio.Event | None:
        """Count a request on `upstream` (and `session` busy) if it is still routable (else None:
        route again).

        The check and the count happen under the lock that `drain` retires under, so a request
        is either counted before an upstream is retired or never sent to it. The event returned is
        set when the upstream is retired (one per upstream, shared by its requests).
        """
        key = upstream.container_id
        with self._lock:
            live = self._table.get(upstream.server)
            if (live is None or live.container_id != key) and key not in self._draining:
                return None
            if session is not None:
                if session.ended:
                    return None
                self._sessions.busy(session)
            self._inflight[key] = self._inflight.get(key, 0) + 1
            closer = self._closers.get(key)
            if closer is None:
                closer = self._closers[key] = asyncio.Event()
        return closer

    def leave(self, upstream: Upstream, session: Session | None = None, now: float = 0.0) -> None:
        """Count a request that ended on `upstream` at `now` (its session idle from then if it was
        its last)."""
        key = upstream.container_id
        with self._lock:
            if session is not None:
                self._sessions.rest(session, now)
            left = self._inflight.get(key, 1) - 1
            if left <= 0:
                self._inflight.pop(key, None)
            else:
                self._inflight[key] = left

    def inflight(self, container_id: str) -> int:
        """Return how many requests are running on a container."""
        with self._lock:
            return self._inflight.get(container_id, 0)

    def drain(
        self,
        container_id: str,
        request_timeout: float,
        session_timeout: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> bool:
        """Wait until the upstream holds no request and no session; True if it emptied in time.

        Requests alone get `request_timeout`; while sessions remain, `session_timeout` applies.
        """
        started = clock()
        while True:
            with self._lock:
                sessions = self._sessions.on(container_id)
                if self._inflight.get(container_id, 0) == 0 and sessions == 0:
                    self._draining.pop(container_id, None)  # idle: stop routing to it, atomically
                    self._closers.pop(container_id, None)  # nothing is left to close
                    return True
            limit = session_timeout if sessions else request_timeout
            if clock() - started >= limit:
                return False
            sleep(0.05)

    def retire(self, container_id: str) -> int:
        """Stop routing to a draining upstream: its sessions answer 404, open streams close."""
        with self._lock:
            self._draining.pop(container_id, None)
            gone = self._sessions.end_all_on(container_id)
            closer = self._closers.pop(container_id, None)
        if closer is not None:
            if self.loop is not None and self.loop.is_running():
                self.loop.call_soon_threadsafe(closer.set)
            else:
                closer.set()
        return len(gone)
