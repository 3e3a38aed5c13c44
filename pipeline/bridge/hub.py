"""One stdio process and the MCP sessions it serves: JSON-RPC ids rewritten both ways.

Every client request gets a bridge id before it reaches the process (and its progressToken a
token of ours), so in `shared` mode answers, progress and cancellations reach only the session
that asked; `per-session` uses the same path with one session. A server→client request (sampling,
elicitation, roots/list) carries no link to the call that caused it on stdio: it goes to the
session whose call is in flight when there is exactly one, else to a session that declared the
capability (one with a call in flight first), else the process gets a JSON-RPC error back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .child import Child, Message

QUEUE_SIZE = 1000  # messages waiting for one call's or one session's stream
CAPABILITY_OF = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}
SERVER_ERROR = -32603
CONNECTION_CLOSED = -32000


def error(request_id: Any, code: int, message: str) -> Message:
    """A JSON-RPC error answer."""
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def key(request_id: Any) -> str:
    """A dict key for a JSON-RPC id (1 and "1" are different ids)."""
    return json.dumps(request_id)


@dataclass(eq=False)
class Call:
    """A client request in flight: its own ids, and the queue its answer and notes go to."""

    session: Session
    client_id: Any
    bridge_id: int
    token: Any = None
    client_token: Any = None
    done: bool = False
    waiter: Callable[[Message], None] | None = None  # takes messages instead of the queue
    _queue: asyncio.Queue[Message] | None = field(default=None, repr=False)

    @property
    def queue(self) -> asyncio.Queue[Message]:
        """The messages for this call's stream (made on first use: most answers skip it)."""
        if self._queue is None:
            self._queue = asyncio.Queue(QUEUE_SIZE)
        return self._queue

    @property
    def pending(self) -> bool:
        """Whether messages wait in the queue."""
        return self._queue is not None and not self._queue.empty()

    def put(self, message: Message) -> None:
        """Queue a message for this call's stream; a call whose client stopped reading is dropped."""
        if self.waiter is not None:
            self.waiter(message)
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.done = True


@dataclass(eq=False)
class Session:
    """One MCP session: its calls in flight, its standalone (GET) stream, what it declared."""

    id: str
    hub: Hub
    capabilities: dict[str, Any] = field(default_factory=dict)
    calls: dict[int, Call] = field(default_factory=dict)
    stream: asyncio.Queue[Message | None] | None = None
    last_seen: float = field(default_factory=time.monotonic)
    closed: bool = False

    def deliver(self, message: Message) -> bool:
        """Send a message not tied to a call: on the newest call's stream, else the GET stream."""
        if self.calls:
            next(reversed(self.calls.values())).put(message)
            return True
        if self.stream is not None:
            try:
                self.stream.put_nowait(message)
                return True
            except asyncio.QueueFull:
                return False
        return False

    def close(self) -> None:
        """Mark the session ended; its GET stream ends."""
        self.closed = True
        if self.stream is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.stream.put_nowait(None)


class Hub:
    """A stdio process and its sessions (one in per-session mode, any number in shared mode)."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.sessions: dict[str, Session] = {}
        self.calls: dict[int, Call] = {}
        self.tokens: dict[str, Call] = {}
        self.server_requests: dict[str, Session] = {}
        self.ids = itertools.count(1)
        self.exit_reason = ""
        self.started = time.monotonic()
        child.on_message = self.on_message
        child.on_exit = self.on_exit
        child.busy = lambda: len(self.calls) > 1

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return not self.exit_reason and not self.child.closed

    def call(self, session: Session, message: Message) -> Call:
        """Forward a client request under a bridge id; its answer arrives on the returned call."""
        bridge_id = next(self.ids)
        call = Call(session, message.get("id"), bridge_id)
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        outgoing = {**message, "id": bridge_id}
        meta = params.get("_meta")
        if isinstance(meta, dict) and "progressToken" in meta:
            call.client_token, call.token = meta["progressToken"], f"cmcp-{bridge_id}"
            outgoing["params"] = {**params, "_meta": {**meta, "progressToken": call.token}}
            self.tokens[key(call.token)] = call
        self.calls[bridge_id] = call
        session.calls[bridge_id] = call
        if self.exit_reason:
            self.finish(call, error(call.client_id, CONNECTION_CLOSED, self.exit_reason))
            return call
        try:
            self.child.send(outgoing)
        except (ConnectionError, OSError) as exc:
            self.finish(call, error(call.client_id, CONNECTION_CLOSED, str(exc)))
        return call

    def forget(self, call: Call) -> None:
        """Drop a call whose client went away before its answer; tell the process to stop it."""
        if call.bridge_id in self.calls:
            self._unlink(call)
            self.notify_process(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": call.bridge_id},
                }
            )

    def notify(self, session: Session, message: Message) -> None:
        """Forward a client notification; a cancellation names the bridge id of its call."""
        if message.get("method") == "notifications/cancelled":
            params = message.get("params") or {}
            wanted = key(params.get("requestId"))
            for call in session.calls.values():
                if key(call.client_id) == wanted:
                    message = {**message, "params": {**params, "requestId": call.bridge_id}}
                    break
            else:
                return  # not a call of this session: never cancel another session's call
        self.notify_process(message)

    def respond(self, session: Session, message: Message) -> bool:
        """Forward a client's answer to a server request sent to that session; False if none was."""
        owner = self.server_requests.get(key(message.get("id")))
        if owner is not session:
            return False
        del self.server_requests[key(message.get("id"))]
        self.notify_process(message)
        return True

    def drop_server_requests(self, session: Session) -> None:
        """A session ended: the program's requests waiting for its answer get an error instead."""
        for request_key, owner in list(self.server_requests.items()):
            if owner is session:
                del self.server_requests[request_key]
                self.notify_process(
                    error(json.loads(request_key), SERVER_ERROR, "the client's session ended")
                )

    def notify_process(self, message: Message) -> None:
        """Write a message to the process unless it has ended."""
        with contextlib.suppress(ConnectionError, OSError):
            self.child.send(message)

    def finish(self, call: Call, answer: Message) -> None:
        """Give a call its final answer."""
        self._unlink(call)
        call.put(answer)

    def on_message(self, child: Child, message: Message) -> None:
        """Route one message from the process."""
        if "method" not in message:
            self._answer(message)
        elif "id" in message:
            self._server_request(message)
        else:
            self._notification(message)

    def on_exit(self, child: Child, reason: str) -> None:
        """The process ended: every call in flight gets an error, every session ends."""
        self.exit_reason = reason
        for call in list(self.calls.values()):
            self.finish(call, error(call.client_id, CONNECTION_CLOSED, reason))
        for session in self.sessions.values():
            session.close()

    def _answer(self, message: Message) -> None:
        bridge_id = message.get("id")
        call = self.calls.get(bridge_id) if type(bridge_id) is int else None  # not True: True == 1
        if call is not None:
            self.finish(call, {**message, "id": call.client_id})

    def _server_request(self, message: Message) -> None:
        session = self._route(str(message.get("method")))
        if session is not None and session.deliver(message):
            self.server_requests[key(message.get("id"))] = session
            return
        self.notify_process(
            error(message.get("id"), SERVER_ERROR, f"no connected client can answer {message.get('method')}")
        )

    def _route(self, method: str) -> Session | None:
        busy = {call.session.id: call.session for call in self.calls.values()}
        if len(busy) == 1:
            return next(iter(busy.values()))
        wanted = CAPABILITY_OF.get(method)
        able = [
            s for s in self.sessions.values() if not s.closed and (wanted is None or wanted in s.capabilities)
        ]
        able.sort(key=lambda s: (s.id not in busy, s.stream is None, -s.last_seen))
        return able[0] if able else None

    def _notification(self, message: Message) -> None:
        params = message.get("params")
        if isinstance(params, dict) and "progressToken" in params:
            call = self.tokens.get(key(params["progressToken"]))
            if call is not None:
                call.put({**message, "params": {**params, "progressToken": call.client_token}})
            return
        if isinstance(params, dict) and message.get("method") == "notifications/cancelled":
            owner = self.server_requests.pop(key(params.get("requestId")), None)
            if owner is not None:
                owner.deliver(message)
            return
        for session in self.sessions.values():
            session.deliver(message)

    def _unlink(self, call: Call) -> None:
        call.done = True
        self.calls.pop(call.bridge_id, None)
        call.session.calls.pop(call.bridge_id, None)
        if call.token is not None:
            self.tokens.pop(key(call.token), None)
