"""The MCP sessions the proxy has seen: the upstream that issued each, the key it was issued to, and
whether it is idle.

Every lookup is O(1): by id (a dict), by container (a set per container), and the idle ones sit in an
OrderedDict in the order they went idle, so expiry pops from its front and never looks at a busy
session. A session is busy while a request of it is in flight (an open GET stream is one). Changes
are journaled for the store, which the app writes in batches and reads back at start-up, so that
after a restart a session id still belongs to the key that opened it. Not thread-safe: the Router
calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from pipeline.store import SessionRow


class Session:
    """One MCP session: where it lives, whose it is, and how many of its requests are in flight."""

    __slots__ = ("active", "container_id", "ended", "id", "key_id", "server")

    def __init__(self, session_id: str, server: str, container_id: str, key_id: str) -> None:
        self.id = session_id
        self.server = server
        self.container_id = container_id
        self.key_id = key_id
        self.active = 0  # requests in flight, open streams included
        self.ended = False  # ended, expired or retired: its id answers 404 from now on

    @property
    def row(self) -> SessionRow:
        """The session as the store keeps it."""
        return SessionRow(self.id, self.server, self.container_id, self.key_id)


class SessionTable:
    """Sessions by id and by container, the idle ones in the order they went idle."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._by_container: dict[str, set[str]] = {}
        self._idle: OrderedDict[str, float] = OrderedDict()  # id -> when it went idle (monotonic)
        self._changes: dict[str, SessionRow | None] = {}  # for the store: opened, or None for ended

    def get(self, session_id: str) -> Session | None:
        """The live session with this id, or None."""
        return self._by_id.get(session_id)

    def open(self, session: Session, now: float) -> None:
        """Add a session, idle since `now`."""
        self._by_id[session.id] = session
        self._by_container.setdefault(session.container_id, set()).add(session.id)
        self._idle[session.id] = now
        self._changes[session.id] = session.row

    def end(self, session_id: str) -> Session | None:
        """Remove a session; return it, or None if it was not here."""
        session = self._by_id.pop(session_id, None)
        if session is None:
            return None
        session.ended = True
        on = self._by_container.get(session.container_id)
        if on is not None:
            on.discard(session_id)
            if not on:
                del self._by_container[session.container_id]
        self._idle.pop(session_id, None)
        self._changes[session_id] = None
        return session

    def busy(self, session: Session) -> None:
        """A request of `session` is in flight: it is not idle."""
        session.active += 1
        if session.active == 1:
            self._idle.pop(session.id, None)

    def rest(self, session: Session, now: float) -> None:
        """A request of `session` ended at `now`: idle from then if it was the last."""
        session.active -= 1
        if session.active <= 0 and not session.ended:
            session.active = 0
            self._idle[session.id] = now

    def on(self, container_id: str) -> int:
        """How many sessions a container holds."""
        return len(self._by_container.get(container_id, ()))

    def end_all_on(self, container_id: str) -> list[Session]:
        """End every session of a container; return them."""
        return [s for sid in list(self._by_container.get(container_id, ())) if (s := self.end(sid))]

    def end_idle_since(self, before: float) -> list[Session]:
        """End every session idle since before `before`; return them."""
        ended: list[Session] = []
        while self._idle:
            session_id, since = next(iter(self._idle.items()))
            if since > before:
                break
            self._idle.popitem(last=False)
            session = self.end(session_id)
            if session is not None:
                ended.append(session)
        return ended

    def take_changes(self) -> tuple[list[SessionRow], list[str]]:
        """The sessions opened and ended since the last call (each id once, as it is now)."""
        changes, self._changes = self._changes, {}
        opened = [row for row in changes.values() if row is not None]
        return opened, [sid for sid, row in changes.items() if row is None]

    def restore(self, rows: Iterable[SessionRow], now: float) -> None:
        """Add stored sessions back (at start-up), idle since `now`; nothing is journaled."""
        for row in rows:
            self.open(Session(row.id, row.server, row.container_id, row.key_id), now)
            del self._changes[row.id]
