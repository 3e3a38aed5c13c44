"""The CLI's and hook's side of the admin API (pipeline/control.py), against a real loopback server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline import control
from pipeline.errors import ServeError


@contextmanager
def _serving(events: list[dict[str, Any]]) -> Iterator[control.Control]:
    """A serve stand-in on 127.0.0.1 that answers any POST with `events` as NDJSON, then closes."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Connection", "close")
            self.end_headers()
            for event in events:
                self.wfile.write(json.dumps(event).encode() + b"\n")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield control.Control(f"http://127.0.0.1:{server.server_address[1]}", "t", 1)
    finally:
        server.shutdown()
        server.server_close()


def test_a_line_after_the_end_is_shown_and_the_end_is_the_outcome() -> None:
    """The old release drains after the deploy has ended and logs it: that line is passed on, and
    the deploy's outcome is still its `end` (it was taken for a cut stream: the push failed)."""
    events = [
        {"kind": "step", "text": "==> swap"},
        {"kind": "end", "text": "succeeded: live: weather r1"},
        {"kind": "log", "text": "weather: old r2 drained, stopped and removed"},
    ]
    seen: list[str] = []
    with _serving(events) as ctl:
        end = control.stream(ctl, "/api/deploys", {}, lambda e: seen.append(e["kind"]))
    assert end["text"] == "succeeded: live: weather r1"
    assert seen == ["step", "end", "log"]


def test_a_stream_cut_before_its_end_is_an_error_naming_the_serve_process() -> None:
    """No `end` event at all: the serve process went away mid-deploy."""
    with _serving([{"kind": "step", "text": "==> swap"}]) as ctl, pytest.raises(ServeError) as caught:
        control.stream(ctl, "/api/deploys", {}, lambda e: None)
    assert "closed the stream before the deploy ended" in str(caught.value)
