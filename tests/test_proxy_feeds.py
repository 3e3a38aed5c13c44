"""pipeline/proxy/feeds.py: an upstream GET stream's events handed on whole, and bounded."""

from __future__ import annotations

from typing import Any

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
