"""The route table and the upstreams' lives: live, draining (old sessions only), retired.

The table maps a server name to its live upstream; it is an immutable mapping replaced in
one assignment. After a swap the old upstream keeps serving the sessions it issued until they
end or the session drain timeout passes; then it is retired and its session ids answer 404.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

RETIRED_SESSIONS_KEPT = 100_000


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

    @property
    def base_url(self) -> str:
        """The upstream's MCP endpoint URL."""
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def authority(self) -> str:
        """The Host sent upstream: loopback, as SDK servers' DNS-rebinding guard accepts, whatever
        address the container is reached at on its network."""
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Session:
    """An MCP session: the upstream that issued it and the API key that opened it."""

    server: str
    container_id: str
    key_id: str


class Router:
    """Routes, sessions and in-flight counts; thread-safe (deploys run on worker threads)."""

    def __init__(self) -> None:
        self._table: Mapping[str, Upstream] = MappingProxyType({})
        self._draining: dict[str, Upstream] = {}
        self._sessions: dict[str, Session] = {}
        self._retired: OrderedDict[str, None] = OrderedDict()
        self._inflight: dict[str, int] = {}
        self._closers: dict[str, asyncio.Event] = {}  # set when the upstream is retired
        self._lock = threading.RLock()
        self.known: frozenset[str] = frozenset()
        self.loop: asyncio.AbstractEventLoop | None = None

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
        return replaced

    def replace_all(self, upstreams: Iterable[Upstream], known: Iterable[str] = ()) -> None:
        """Replace the whole table (start-up reconciliation); `known` servers lacking one answer 503."""
        with self._lock:
            self._table = MappingProxyType({u.server: u for u in upstreams})
            self.known = frozenset(set(known) | set(self._table))

    # sessions -----------------------------------------------------------------------------
    def session(self, session_id: str) -> Session | None:
        """Return the live session with this id, or None."""
        return self._sessions.get(session_id)

    def is_retired_session(self, session_id: str) -> bool:
        """Whether this session id belonged to an upstream that is gone (answer 404)."""
        return session_id in self._retired

    def upstream_of(self, session: Session) -> Upstream | None:
        """Return the upstream that issued a session, live or draining."""
        live = self._table.get(session.server)
        if live is not None and live.container_id == session.container_id:
            return live
        return self._draining.get(session.container_id)

    def open_session(self, session_id: str, upstream: Upstream, key_id: str) -> None:
        """Remember that `upstream` issued `session_id` to `key_id`."""
        with self._lock:
            self._sessions[session_id] = Session(upstream.server, upstream.container_id, key_id)

    def end_session(self, session_id: str) -> None:
        """Forget a session the client ended with DELETE."""
        with self._lock:
            self._sessions.pop(session_id, None)

    def sessions_on(self, container_id: str) -> int:
        """Return how many sessions an upstream holds."""
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.container_id == container_id)

    # in-flight requests and open streams ----------------------------------------------------
    def enter(self, upstream: Upstream) -> asyncio.Event | None:
        """Count a request on `upstream` if it is still routable (else None: route again).

        The check and the count happen under the lock that `drain` retires under, so a request
        is either counted before an upstream is retired or never sent to it. The event returned is
        set when the upstream is retired (one per upstream, shared by its requests).
        """
        key = upstream.container_id
        with self._lock:
            live = self._table.get(upstream.server)
            if (live is None or live.container_id != key) and key not in self._draining:
                return None
            self._inflight[key] = self._inflight.get(key, 0) + 1
            closer = self._closers.get(key)
            if closer is None:
                closer = self._closers[key] = asyncio.Event()
        return closer

    def leave(self, upstream: Upstream) -> None:
        """Count a request that ended on `upstream`."""
        key = upstream.container_id
        with self._lock:
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
                sessions = self.sessions_on(container_id)
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
            gone = [sid for sid, s in self._sessions.items() if s.container_id == container_id]
            for sid in gone:
                del self._sessions[sid]
                self._retired[sid] = None
            while len(self._retired) > RETIRED_SESSIONS_KEPT:
                self._retired.popitem(last=False)
            closer = self._closers.pop(container_id, None)
        if closer is not None:
            if self.loop is not None and self.loop.is_running():
                self.loop.call_soon_threadsafe(closer.set)
            else:
                closer.set()
        return len(gone)
