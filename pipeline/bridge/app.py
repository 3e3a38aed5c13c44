"""The bridge's streamable-HTTP endpoint: sessions over stdio processes, a warm pool, a cap, drain.

Session era only (2024-11-05 … 2025-11-25): a stateless 2026-07-28 request (no session, e.g.
`server/discover`) is answered with -32022 naming the handshake versions, and the SDK clients
fall back to `initialize`. A stdio program speaks the handshake era, and `per-session` needs a
session to own a process, so this is what the program really offers (`eras: [session]`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from . import sandbox, stats
from .child import Message, base_env, dump
from .child import _log as log
from .hub import CONNECTION_CLOSED, Call, Hub, Session, error
from .pool import CapacityError, Pool
from .wire import Reply, Request

HANDSHAKE_VERSIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]
UNSUPPORTED_VERSION = -32022
SESSION_NOT_FOUND = -32001
INVALID_REQUEST = -32600
PARSE_ERROR = -32700
OVER_CAPACITY = -32005
MAX_SHARED_SESSIONS = 1000  # sessions of one shared process (per-session mode: max_processes)
REAP_INTERVAL = 2.0  # seconds between looks for idle sessions and ended processes
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream (proxies cut idle reads)
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Config:
    """How the bridge runs: where it listens and how it shares the stdio program."""

    command: tuple[str, ...]
    port: int = 8080
    path: str = "/mcp"
    host: str = "0.0.0.0"
    sessions: str = "per-session"
    max_processes: int = 16
    pool: int = 1
    idle_timeout: float = 1800.0
    init_timeout: float = 20.0
    call_timeout: float = 600.0
    drain_timeout: float = 10.0


class Bridge:
    """The HTTP side: routes each request to its session, starts and ends sessions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sessions: dict[str, Session] = {}
        self.pool = Pool(config.command, base_env(), config.max_processes, config.pool)
        self.shared: Hub | None = None
        self.shared_init: Message = {}
        self.draining = False
        # per-session mode: session id -> when it must have sent its first request after initialize
        # (every client sends notifications/initialized at once). One whose client gave up waiting
        # for the answer never learns its id, and would hold its process until the idle timeout.
        self.unclaimed: dict[str, float] = {}
        self.ready = asyncio.Event()  # shared mode: the shared process answered initialize
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Fill the warm pool (per-session mode; shared mode starts its process in watch_shared)."""
        if self.config.sessions != "shared":
            self.pool.refill()

    def handle(self, request: Request, reply: Reply) -> Awaitable[None] | None:
        """Answer one HTTP request on the MCP endpoint (or the provider's GET of the stats): at once,
        when the program answers, or as a coroutine (the wire runs it as a task) when the answer
        needs waiting of its own."""
        if request.method == "GET" and request.path == stats.STATS_PATH:
            _json(reply, 200, self.stats())
        elif request.path.rstrip("/") != self.config.path.rstrip("/"):
            reply.answer(404, b"not found", {"Content-Type": "text/plain"})
        elif request.method == "POST":
            return self._post(request, reply)
        elif request.method == "GET":
            return self._get(request, reply)
        elif request.method == "DELETE":
            return self._delete(request, reply)
        else:
            reply.answer(405, b"", {"Allow": "GET, POST, DELETE"})
        return None

    def stats(self) -> Message:
        """What the provider's probes read: sessions, processes started and ended, confinement."""
        counts = stats.COUNTS
        return {
            "sessions": self.config.sessions,
            "open": len(self.sessions),
            "warm": len(self.pool.idle),
            "processes": {
                "running": counts.running,
                "started": counts.started,
                "stopped": counts.stopped,
                "exited": counts.exited,
                "lastExit": counts.last_exit,
            },
            "isolation": sandbox.status(),
        }

    async def drain(self) -> None:
        """Refuse new sessions, let calls in flight finish (up to drain_timeout), end every process."""
        self.draining = True
        deadline = time.monotonic() + self.config.drain_timeout
        while any(s.calls for s in self.sessions.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions.values()):
            await self._end(session)
        if self.shared is not None:
            await self.shared.child.stop()
        await self.pool.close()

    async def reap(self) -> None:
        """Forever: end sessions idle past idle_timeout, sessions whose process ended, and sessions
        never used after initialize within init_timeout."""
        while True:
            limit = self.config.idle_timeout  # 0: sessions never expire
            # Often enough that a session whose process died stops counting toward the cap soon.
            await asyncio.sleep(min(REAP_INTERVAL, max(0.05, limit / 4)) if limit > 0 else REAP_INTERVAL)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                idle = limit > 0 and not session.calls and session.stream is None
                unclaimed = self.unclaimed.get(session.id, now) < now
                if session.closed or unclaimed or (idle and now - session.last_seen > limit):
                    await self._end(session)

    def _post(self, request: Request, reply: Reply) -> Awaitable[None] | None:
        try:
            message = json.loads(request.body)
        except (ValueError, RecursionError):  # nested past the parser's depth
            _json(reply, 400, error(None, PARSE_ERROR, "the body is not JSON"))
            return None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            _json(reply, 400, error(None, INVALID_REQUEST, "send one JSON-RPC 2.0 message"))
            return None
        if message.get("method") == "initialize" and "id" in message:
            return self._initialize(message, reply)
        session = self._session(request, reply, message)
        if session is None:
            return None
        session.last_seen = time.monotonic()
        if "method" in message and "id" in message:
            self._respond(session.hub.call(session, message), reply)
            return None
        if "method" in message:
            if not (self.config.sessions == "shared" and message["method"] == "notifications/initialized"):
                session.hub.notify(session, message)
        elif not session.hub.respond(session, message):
            _json(reply, 400, error(message.get("id"), INVALID_REQUEST, "no such server request"))
            return None
        reply.answer(202)
        return None

    def _session(self, request: Request, reply: Reply, message: Message) -> Session | None:
        sid = request.headers.get("mcp-session-id")
        if sid is None:
            requested = request.headers.get("mcp-protocol-version", "")
            answer = error(
                message.get("id"), UNSUPPORTED_VERSION, "this server offers the session era: initialize first"
            )
            answer["error"]["data"] = {"supported": HANDSHAKE_VERSIONS, "requested": requested}
            _json(reply, 400, answer)
            return None
        session = self.sessions.get(sid)
        self.unclaimed.pop(sid, None)
        if session is None or session.closed:
            _json(reply, 404, error(message.get("id"), SESSION_NOT_FOUND, "session not found"))
            return None
        return session

    async def _initialize(self, message: Message, reply: Reply) -> None:
        if self.draining:
            return _json(reply, 503, error(message["id"], OVER_CAPACITY, "the server is shutting down"))
        if self.config.sessions == "shared":
            return await self._initialize_shared(message, reply)
        try:
            hub = await self.pool.take()
        except CapacityError as exc:
            return _json(reply, 200, error(message["id"], OVER_CAPACITY, str(exc)))
        except OSError as exc:
            text = f"could not start run.command {list(self.config.command)}: {exc}"
            return _json(reply, 200, error(message["id"], CONNECTION_CLOSED, text))
        session = _new_session(hub, message)
        answer = await self._final(hub.call(session, message), self.config.init_timeout)
        if "error" in answer or not hub.alive:
            # In the container's log too: a gate whose own attempt timed out first still shows it.
            log(f"pid {hub.child.pid}: a new session failed: {str(answer.get('error'))[:300]}")
            self.pool.release(hub)
            await hub.child.stop()
            return _json(reply, 200, answer)
        self.pool.succeeded()
        hub.sessions[session.id] = session
        self.sessions[session.id] = session
        self.unclaimed[session.id] = time.monotonic() + self.config.init_timeout
        return _json(reply, 200, answer, {"Mcp-Session-Id": session.id})

    async def _initialize_shared(self, message: Message, reply: Reply) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), self.config.init_timeout)
        hub = self.shared
        if hub is None or not hub.alive or not self.ready.is_set():
            text = f"the shared server process did not initialize within {self.config.init_timeout:g}s"
            return _json(reply, 200, error(message["id"], CONNECTION_CLOSED, text))
        if len(hub.sessions) >= MAX_SHARED_SESSIONS:
            text = f"this shared server has {MAX_SHARED_SESSIONS} sessions open; end one (DELETE) first"
            return _json(reply, 200, error(message["id"], OVER_CAPACITY, text))
        session = _new_session(hub, message)
        hub.sessions[session.id] = session
        self.sessions[session.id] = session
        result = dict(self.shared_init)
        asked = (message.get("params") or {}).get("protocolVersion")
        if asked in HANDSHAKE_VERSIONS and asked < str(result.get("protocolVersion", "")):
            result["protocolVersion"] = asked
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        return _json(reply, 200, answer, {"Mcp-Session-Id": session.id})

    def _respond(self, call: Call, reply: Reply) -> None:
        """Answer a call when the program's answer arrives, written from the callback that reads it;
        a progress note or a request for the client first, or KEEPALIVE without an answer, turns
        the answer into an event stream served by a task (`_call`)."""
        hub = call.session.hub
        deadline = time.monotonic() + self.config.call_timeout
        if call.pending:  # answered already (the process had ended)
            self._stream(call, reply, deadline, False)
            return
        loop = asyncio.get_running_loop()
        timer = loop.call_later(min(KEEPALIVE, self.config.call_timeout), self._late, call, reply, deadline)

        def arrived(message: Message) -> None:
            timer.cancel()
            call.waiter = None
            if "method" not in message and ("result" in message or "error" in message):
                hub.forget(call)
                _json(reply, 200, message)
            else:
                call.put(message)
                self._stream(call, reply, deadline, False)

        def lost() -> None:
            timer.cancel()
            call.waiter = None
            hub.forget(call)

        call.waiter = arrived
        reply.on_lost = lost

    def _late(self, call: Call, reply: Reply, deadline: float) -> None:
        """No answer within KEEPALIVE: go on as an event stream, with a comment now."""
        call.waiter = None
        self._stream(call, reply, deadline, time.monotonic() < deadline)

    def _stream(self, call: Call, reply: Reply, deadline: float, ping: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._call(call, reply, deadline, ping))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        reply.on_lost = task.cancel

    async def _call(self, call: Call, reply: Reply, deadline: float, ping: bool) -> None:
        hub = call.session.hub
        try:
            if ping:
                await reply.start_stream()
                await reply.comment()
            while True:
                wait = min(KEEPALIVE, deadline - time.monotonic())
                if wait <= 0:
                    answer = error(
                        call.client_id, CONNECTION_CLOSED, f"no answer within {self.config.call_timeout:g}s"
                    )
                    hub.forget(call)
                    return await _end_call(reply, answer)
                try:
                    async with asyncio.timeout(wait):  # no task per wait, unlike wait_for
                        message = await call.queue.get()
                except TimeoutError:
                    if not reply.streaming:
                        await reply.start_stream()
                    await reply.comment()
                    continue
                if "method" not in message and ("result" in message or "error" in message):
                    return await _end_call(reply, message)
                if not reply.streaming:
                    await reply.start_stream()
                await reply.event(_dump(message))
        finally:
            hub.forget(call)

    async def _final(self, call: Call, timeout: float) -> Message:
        """The answer to a call made by the bridge itself, within `timeout`."""
        try:
            while True:
                message = await asyncio.wait_for(call.queue.get(), timeout)
                if "method" not in message:
                    return message
        except TimeoutError:
            call.session.hub.forget(call)
            return error(
                call.client_id, CONNECTION_CLOSED, f"the server did not answer initialize within {timeout:g}s"
            )

    async def _get(self, request: Request, reply: Reply) -> None:
        if "text/event-stream" not in request.headers.get("accept", "text/event-stream"):
            return await reply.send(406, b"accept text/event-stream", {"Content-Type": "text/plain"})
        session = self._session(request, reply, {})
        if session is None:
            return None
        if session.stream is not None:
            return await reply.send(
                409, b"this session already has a GET stream", {"Content-Type": "text/plain"}
            )
        stream: asyncio.Queue[Message | None] = asyncio.Queue(1000)
        session.stream = stream
        try:
            await reply.start_stream()
            while not session.closed:
                try:
                    message = await asyncio.wait_for(stream.get(), KEEPALIVE)
                except TimeoutError:
                    await reply.comment()
                    continue
                if message is None:
                    break
                await reply.event(_dump(message))
            await reply.end_stream()
        finally:
            if session.stream is stream:
                session.stream = None
                session.last_seen = time.monotonic()

    async def _delete(self, request: Request, reply: Reply) -> None:
        session = self._session(request, reply, {})
        if session is not None:
            await self._end(session)
            await reply.send(200)

    async def _end(self, session: Session) -> None:
        session.close()
        self.sessions.pop(session.id, None)
        self.unclaimed.pop(session.id, None)
        hub = session.hub
        hub.sessions.pop(session.id, None)
        hub.drop_server_requests(session)
        if hub is not self.shared:
            self.pool.release(hub)
            await hub.child.stop()

    async def _start_shared(self) -> None:
        """Start the shared process and initialize it as the bridge's own client; restart it
        (with back-off) whenever it ends."""
        while not self.draining:
            try:
                hub = await self.pool.start_hub()
            except OSError as exc:
                log(f"could not start run.command: {exc}")
                await asyncio.sleep(self.pool.backoff())
                continue
            owner = Session("bridge", hub)
            hello = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": HANDSHAKE_VERSIONS[-1],
                    "capabilities": {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {}},
                    "clientInfo": {"name": "central-mcp-bridge", "version": "1"},
                },
            }
            answer = await self._final(hub.call(owner, hello), self.config.init_timeout)
            if "result" in answer and hub.alive:
                hub.notify_process({"jsonrpc": "2.0", "method": "notifications/initialized"})
                self.shared, self.shared_init = hub, answer["result"]
                self.ready.set()
                self.pool.succeeded()
                return
            log(f"the shared process did not initialize: {answer.get('error')}")
            await hub.child.stop()
            await asyncio.sleep(self.pool.backoff())

    async def watch_shared(self) -> None:
        """Forever (shared mode): start the shared process, and another whenever it ends."""
        await self._start_shared()
        while not self.draining:
            await asyncio.sleep(0.2)
            if self.shared is not None and not self.shared.alive and not self.draining:
                for session in list(self.shared.sessions.values()):
                    await self._end(session)
                self.pool.restarts += 1
                self.ready.clear()
                await self.shared.child.stop()
                await self._start_shared()


def _new_session(hub: Hub, message: Message) -> Session:
    params = message.get("params")
    capabilities = params.get("capabilities") if isinstance(params, dict) else None
    return Session(secrets.token_hex(16), hub, capabilities if isinstance(capabilities, dict) else {})


async def _end_call(reply: Reply, answer: Message) -> None:
    if reply.streaming:
        await reply.event(_dump(answer))
        await reply.end_stream()
    else:
        _json(reply, 200, answer)


def _json(reply: Reply, status: int, message: Message, headers: dict[str, str] | None = None) -> None:
    reply.answer(status, _dump(message), {**JSON_HEADERS, **headers} if headers else JSON_HEADERS)


def _dump(message: Message) -> bytes:
    return dump(message)
