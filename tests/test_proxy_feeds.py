"""pipeline/proxy/feeds.py: an upstream GET stream's events handed on whole, and bounded."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from pipeline.proxy.access import Caller
from pipeline.proxy.clients import MAX_QUEUED, MAX_QUEUED_BYTES, ClientSession, ClientSessions
from pipeline.proxy.exchange import Headers
from pipeline.proxy.feeds import Feed


async def test_whole_events_are_handed_on_as_they_complete_across_chunks() -> None:
    """An event split over chunks (CRLF or LF) is handed on once whole; comments are skipped."""
    heard: list[tuple[str, dict[str, Any]]] = []
    feed = Feed("s", [], lambda server, message: heard.append((server, message)), max_event=1000)
    await feed.start(200, [])
    await feed.write(b': keep-alive\r\n\r\nevent: message\r\ndata: {"jsonrpc":"2.0",')
    assert heard == []
    await feed.write(b'"method":"notifications/message"}\r\n\r\ndata: {"id": 1, "method": "ping"}\n\n')
    assert heard == [
        ("s", {"jsonrpc": "2.0", "method": "notifications/message"}),
        ("s", {"id": 1, "method": "ping"}),
    ]
    assert feed.messages == 2 and not feed.stop.is_set()


async def test_an_event_past_the_bound_ends_the_feed_instead_of_being_held() -> None:
    """A server that never ends an event is not held past `max_event` bytes: the feed stops."""
    heard: list[dict[str, Any]] = []
    feed = Feed("s", [], lambda _, message: heard.append(message), max_event=100)
    await feed.start(200, [])
    await feed.write(b"data: " + b"x" * 60)
    assert not feed.stop.is_set()
    await feed.write(b"x" * 60)
    assert feed.stop.is_set() and heard == []
    await feed.gone()  # returns: the proxy stops relaying the stream


class _Unread:
    """A client's GET stream that reads nothing: its first write never returns."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    async def start(self, status: int, headers: Headers) -> None:
        """The stream's head."""

    async def write(self, chunk: bytes) -> None:
        """Blocked: the client does not read."""
        await asyncio.Event().wait()

    async def gone(self) -> None:
        """The client leaves when the test says so."""
        await self.left.wait()

    async def end(self) -> None:
        """The stream's end."""


async def test_a_stream_its_client_does_not_read_holds_a_bounded_number_of_bytes() -> None:
    """Events a server sends (each up to aggregate.max_held, 4 MiB) queue for a GET stream whose
    client reads nothing up to MAX_QUEUED_BYTES, not MAX_QUEUED events of any size (1 GiB per
    stream, 64 streams per key); past it they are dropped, and one event always fits an empty queue."""
    sessions = ClientSessions(0, lambda: 60.0)
    session = ClientSession("s1", Caller("k", None), cast(Any, None), "2025-06-18")
    sessions.add(session)
    client = _Unread()
    serving = asyncio.ensure_future(sessions.stream(cast(Any, client), session))
    await asyncio.sleep(0)
    event = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x" * (1 << 20)}}
    for _ in range(MAX_QUEUED):
        session.send(event)
    (queue,) = session.streams
    assert queue.qsize() * (1 << 20) <= MAX_QUEUED_BYTES + (2 << 20)
    assert queue.qsize() >= 2
    client.left.set()
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
