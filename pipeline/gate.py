"""The MCP health gate: a candidate is healthy when it completes the MCP handshake.

`initialize` → `notifications/initialized` → `tools/list` (every page), within a deadline,
failing at once if the container exits. A server that only offers the stateless 2026-07-28
era is gated with `tools/list` alone. "The port answers 200" is not enough.

The gate waits for the candidate rather than sleeping a fixed interval: it retries quickly with a
short bounded backoff, so a server is gated within tens of milliseconds of listening.

What a server answers is bounded: one handshake reads at most `max_bytes` of answer bodies in all
(deploy.yaml's `proxy.max_handshake`; the monitor's probes use the same handshake), and finishes
within its `timeout` however slowly the bytes come. A server over the cap fails the gate at once
(AnswerTooLarge), without retrying: it would answer the same again.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from pipeline.config.settings import DEFAULT_MAX_HANDSHAKE
from pipeline.errors import AnswerTooLarge, GateError, NotMCP

SESSION_PROTOCOL = "2025-11-25"
STATELESS_PROTOCOL = "2026-07-28"
REQUEST_TIMEOUT = 10.0
ACCEPT = "application/json, text/event-stream"
CLIENT_INFO = {"name": "central-mcp-gate", "version": "1"}
MAX_PAGES = 50
READ_CHUNK = 64 * 1024  # an answer is read this much at a time, the deadline checked in between
# A failed attempt against a port where nothing listens yet costs ~0.2 ms (measured through
# docker-proxy), so the gate retries fast and never pauses longer than MAX_BACKOFF: it sees a
# candidate at most that long after the server listens, at well under 1% of a core meanwhile.
FIRST_BACKOFF = 0.01
MAX_BACKOFF = 0.05
# Asking Docker whether the container still runs costs ~1.5 ms (7 failed attempts): not every time.
ALIVE_PERIOD = 0.1
# A container is reached at its address on its network: one that stopped leaves an address nobody
# answers for, where a connect waits for its whole timeout instead of being refused.
CONNECT_TIMEOUT = 1.0


@dataclass(frozen=True)
class GateResult:
    """What the handshake learned: the protocol, the server's own name, and its tools."""

    protocol_version: str
    server_name: str
    tools: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    # Asked for with `surface`: None when the server offers none, or its list could not be read.
    resources: list[dict[str, Any]] | None = None
    prompts: list[dict[str, Any]] | None = None


def wait_until_healthy(
    url: str,
    *,
    timeout: float,
    interval: float,
    alive: Callable[[], bool] = lambda: True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    probe: Callable[[str, float], GateResult] | None = None,
    max_bytes: int = DEFAULT_MAX_HANDSHAKE,
    via: Via | None = None,
    surface: bool = False,
) -> GateResult:
    """Run the handshake against `url` until it passes, the deadline passes, or `alive` is False;
    an answer over `max_bytes` fails it at once (AnswerTooLarge), and so does a remote whose address
    or certificate is refused (RemoteRefused): neither would answer otherwise a moment later.

    Attempts back off from FIRST_BACKOFF, doubling up to min(`interval`, MAX_BACKOFF); `alive` is
    asked first and then at most every ALIVE_PERIOD. `probe` defaults to `handshake` (which also
    lists resources and prompts with `surface`).
    """
    attempt = probe or partial(handshake, max_bytes=max_bytes, via=via, surface=surface)
    started = clock()
    deadline = started + timeout
    delays = backoff(interval)
    last = "no answer yet"
    answered = ""  # the last thing the server itself said (a later attempt may only time out)
    checked = -math.inf
    while True:
        if clock() - checked >= ALIVE_PERIOD:
            if not alive():
                raise GateError(f"the container exited before completing the MCP handshake ({last})")
            checked = clock()
        try:
            result = attempt(url, min(REQUEST_TIMEOUT, max(deadline - clock(), 0.1)))
            return replace(result, seconds=clock() - started)
        except (OSError, http.client.HTTPException) as exc:
            # Refused, or accepted and closed unanswered (Docker's userland proxy does that while
            # nothing in the container listens yet): not up yet.
            last = f"connection: {exc.__class__.__name__}: {exc}"
        except NotMCP as exc:
            last = answered = str(exc)
        remaining = deadline - clock()
        if remaining <= 0:
            # an attempt held to the deadline (the Swarm relay waits its connect timeout on a task gone)
            if clock() - checked >= ALIVE_PERIOD and not alive():
                raise GateError(f"the container exited before completing the MCP handshake ({last})")
            said = f"; the server last answered: {answered}" if answered and answered != last else ""
            raise GateError(f"no MCP handshake within {timeout:g}s; last: {last}{said}")
        sleep(min(next(delays), remaining))


def backoff(interval: float) -> Iterator[float]:
    """Yield the pauses between attempts: FIRST_BACKOFF, doubling, capped at min(interval, MAX_BACKOFF)."""
    cap = max(min(interval, MAX_BACKOFF), 0.001)
    delay = min(FIRST_BACKOFF, cap)
    while True:
        yield delay
        delay = min(delay * 2, cap)


def handshake(
    url: str,
    timeout: float,
    max_bytes: int = DEFAULT_MAX_HANDSHAKE,
    via: Via | None = None,
    surface: bool = False,
) -> GateResult:
    """Do one full handshake (or a stateless tools/list) against `url`, within `timeout` seconds,
    reading at most `max_bytes` of answers; `via` reaches a remote server (TLS, headers). With
    `surface`, the resources and prompts the server offers are listed too (for the tool contract)."""
    session = _Session(url, timeout, max_bytes, via=via)
    try:
        init = session.request(
            "initialize", {"protocolVersion": SESSION_PROTOCOL, "capabilities": {}, "clientInfo": CLIENT_INFO}
        )
    except NotMCP as refused:
        return _stateless(url, timeout, max_bytes, refused, via)
    if not isinstance(init.get("protocolVersion"), str):
        raise NotMCP(f"initialize result has no protocolVersion: {_excerpt(json.dumps(init).encode())}")
    session.protocol = init["protocolVersion"]
    try:
        session.notify("notifications/initialized")
        tools = session.list_tools()
        capabilities = init.get("capabilities")
        offered: dict[str, Any] = capabilities if isinstance(capabilities, dict) else {}
        # prompts first: resources are the long list (a data listing), and may use up max_bytes
        prompts = session.list_optional("prompts", offered) if surface else None
        resources = session.list_optional("resources", offered) if surface else None
    finally:  # a failed probe ends its session too: a stdio server holds a process for each
        session.close()
    info = init.get("serverInfo") or {}
    return GateResult(session.protocol, str(info.get("name", "")), tools, 0.0, resources, prompts)


@contextmanager
def session(
    url: str, timeout: float, max_bytes: int = DEFAULT_MAX_HANDSHAKE, via: Via | None = None
) -> Iterator[_Session]:
    """An initialized session with `url` (a stateless one when the server only speaks that era),
    ended on leaving; the handshake itself must finish within `timeout`."""
    found = _Session(url, timeout, max_bytes, via=via)
    init: dict[str, Any] | None = None
    with suppress(NotMCP):  # refused: a server of the stateless era (a call then fails for itself)
        init = found.request(
            "initialize", {"protocolVersion": SESSION_PROTOCOL, "capabilities": {}, "clientInfo": CLIENT_INFO}
        )
    if init is None:
        yield _Session(url, timeout, max_bytes, stateless=True, via=via)
        return
    found.protocol = str(init.get("protocolVersion", SESSION_PROTOCOL))
    try:
        found.notify("notifications/initialized")
        yield found
    finally:
        found.close()


def _stateless(url: str, timeout: float, max_bytes: int, refused: NotMCP, via: Via | None) -> GateResult:
    """Gate a server that only speaks the stateless era; when it is not one either, report why
    `initialize` failed first: that is the server's real error (the retry only reads that the
    server was not initialized)."""
    try:
        session = _Session(url, timeout, max_bytes, stateless=True, via=via)
        return GateResult(STATELESS_PROTOCOL, "", session.list_tools())
    except (NotMCP, OSError, http.client.HTTPException) as exc:
        raise NotMCP(f"{refused} (tried as a stateless-era server too: {exc})") from refused


@dataclass(frozen=True)
class Via:
    """How the gate reaches a remote server: a connection per request, and headers to add."""

    connect: Callable[[str, float], http.client.HTTPConnection]  # (url, timeout): checked, TLS verified
    headers: Mapping[str, str] = field(default_factory=dict)


@contextmanager
def cut_at(conn: http.client.HTTPConnection, seconds: float) -> Iterator[None]:
    """Shut `conn`'s socket down after `seconds` (from a timer thread): a socket's timeout bounds
    each read only, and an answer sent a byte at a time would take any number of them."""
    timer = threading.Timer(max(seconds, 0.0), _shut, (conn,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _shut(conn: http.client.HTTPConnection) -> None:
    """End a connection's reads from another thread (its socket shut down, not closed)."""
    if conn.sock is not None:
        with suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)


class _Connection(http.client.HTTPConnection):
    """An HTTP connection that waits at most CONNECT_TIMEOUT to connect, then `timeout` per read."""

    def connect(self) -> None:
        timeout = self.timeout
        self.timeout = min(timeout, CONNECT_TIMEOUT) if timeout is not None else CONNECT_TIMEOUT
        try:
            super().connect()
        finally:
            self.timeout = timeout
        self.sock.settimeout(timeout)


class _Session:
    """A minimal Streamable HTTP client: JSON or SSE answers, session id, protocol header."""

    def __init__(
        self, url: str, timeout: float, max_bytes: int, *, stateless: bool = False, via: Via | None = None
    ) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path = parts.path or "/"
        self.via = via
        # A container is asked as 127.0.0.1 (the SDK's DNS-rebinding guard accepts it); a remote by its name.
        self.authority = parts.netloc.rpartition("@")[2] if via else f"127.0.0.1:{self.port}"
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.max_bytes = max_bytes
        self.left = max_bytes  # answer bytes this handshake may still read
        self.stateless = stateless
        self.protocol = STATELESS_PROTOCOL if stateless else ""
        self.session_id = ""
        self.next_id = 0
        self.name = ""  # the tool a stateless-era call names (its Mcp-Name header)

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        message = self.exchange(method, params)
        if "error" in message:
            raise NotMCP(f"{method} returned error {_rpc_error(message['error'])}")
        result = message.get("result")
        if not isinstance(result, dict):
            raise NotMCP(f"{method} returned no result object")
        return result

    def exchange(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return the JSON-RPC message answering it (a result or an error)."""
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        status, headers, payload = self._post(body, method)
        if status != 200:
            raise NotMCP(f"{method} answered HTTP {status}: {_excerpt(payload)}")
        self.session_id = headers.get("mcp-session-id", self.session_id)
        return _find_response(headers.get("content-type", ""), payload, self.next_id)

    def call(self, name: str, arguments: Mapping[str, Any], timeout: float) -> dict[str, Any]:
        """Call tool `name` within `timeout`, reading at most `max_bytes` of its answer; return the
        JSON-RPC message answering it."""
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.left = self.max_bytes
        self.name = name
        return self.exchange("tools/call", {"name": name, "arguments": dict(arguments)})

    def list_optional(self, kind: str, offered: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """Every page of `kind`/list when the server offers `kind`, else None; None too when the
        list cannot be read, whatever the reason (the contract then leaves that kind out rather than
        guess; the gate never fails on what only the contract reads: a server may list more
        resources than the gate reads, `proxy.max_handshake`)."""
        if kind not in offered:
            return None
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        try:
            for _ in range(MAX_PAGES):
                page = self.request(f"{kind}/list", params)
                listed = page.get(kind)
                if not isinstance(listed, list):
                    return None
                found.extend(item for item in listed if isinstance(item, dict))
                if not page.get("nextCursor"):
                    return found
                params = {"cursor": page["nextCursor"]}
        except (GateError, OSError, http.client.HTTPException):
            return None
        return None

    def notify(self, method: str) -> None:
        status, _, payload = self._post({"jsonrpc": "2.0", "method": method}, method)
        if status not in (200, 202, 204):
            raise NotMCP(f"{method} answered HTTP {status}: {_excerpt(payload)}")

    def list_tools(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        params: dict[str, Any] = {}
        for _ in range(MAX_PAGES):
            page = self.request("tools/list", params)
            listed = page.get("tools")
            if not isinstance(listed, list):
                raise NotMCP("tools/list result has no tools array")
            tools.extend(t for t in listed if isinstance(t, dict))
            if not page.get("nextCursor"):
                return tools
            params = {"cursor": page["nextCursor"]}
        raise NotMCP(f"tools/list did not end after {MAX_PAGES} pages")

    def close(self) -> None:
        if not self.session_id:
            return
        conn = self._connection()
        try:
            with cut_at(conn, self.timeout):
                conn.request("DELETE", self.path, headers=self._headers(""))
                conn.getresponse()  # its body is not read: nothing in it matters
        except (OSError, http.client.HTTPException):
            pass  # closing is a courtesy; the gate already passed
        finally:
            conn.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self.via is not None:
            return self.via.connect(self.url, self.timeout)
        return _Connection(self.host, self.port, timeout=self.timeout)

    def _headers(self, method: str) -> dict[str, str]:
        headers = {**(self.via.headers if self.via else {})}
        headers |= {"Accept": ACCEPT, "Content-Type": "application/json", "Host": self.authority}
        if self.protocol:
            headers["MCP-Protocol-Version"] = self.protocol
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        if self.stateless and method:
            headers["Mcp-Method"] = method
            if method == "tools/call" and self.name:
                headers["Mcp-Name"] = self.name
        return headers

    def _post(self, body: dict[str, Any], method: str) -> tuple[int, dict[str, str], bytes]:
        conn = self._connection()
        try:
            with cut_at(conn, self.deadline - time.monotonic()):
                conn.request("POST", self.path, body=json.dumps(body), headers=self._headers(method))
                sock = conn.sock  # http.client lets go of it once an answer says it closes
                response = conn.getresponse()
                headers = {k.lower(): v for k, v in response.getheaders()}
                if "text/event-stream" in headers.get("content-type", ""):
                    payload = self._read_sse_until_response(sock, response, method, body.get("id"))
                else:
                    payload = self._read_all(sock, response, method)
                return response.status, headers, payload
        finally:
            conn.close()

    def _read_all(self, sock: socket.socket | None, response: http.client.HTTPResponse, method: str) -> bytes:
        """The whole answer body, within the deadline and what is left of `max_bytes`."""
        chunks: list[bytes] = []
        while chunk := self._read(sock, method, response.read1):
            chunks.append(chunk)
        return b"".join(chunks)

    def _read_sse_until_response(
        self, sock: socket.socket | None, response: http.client.HTTPResponse, method: str, want: object
    ) -> bytes:
        """Read SSE lines until the event that answers request `want` (the stream may stay open)."""
        lines: list[bytes] = []
        line: list[bytes] = []  # the pieces of a line longer than one read
        while piece := self._read(sock, method, response.readline):
            lines.append(piece)
            line.append(piece)
            if not piece.endswith(b"\n"):
                continue
            raw = b"".join(line)
            line.clear()
            if raw.startswith(b"data:"):
                try:
                    message = json.loads(raw[5:].strip())
                except (ValueError, RecursionError):
                    continue
                if isinstance(message, dict) and message.get("id") == want:
                    break
        return b"".join(lines)

    def _read(self, sock: socket.socket | None, method: str, read: Callable[[int], bytes]) -> bytes:
        """One bounded read of `method`'s answer: fail past the deadline or past `max_bytes`."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise NotMCP(f"{method}: the answer did not end within {self.timeout:g}s")
        if sock is not None:
            sock.settimeout(remaining)
        try:
            data = read(min(READ_CHUNK, self.left + 1))
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= self.deadline:  # cut_at shut the socket: say why, not how
                raise NotMCP(f"{method}: the answer did not end within {self.timeout:g}s") from exc
            raise
        self.left -= len(data)
        if self.left < 0:
            raise AnswerTooLarge(
                f"{method} answered more than {self.max_bytes} bytes in all, the most the gate reads "
                "(deploy.yaml proxy.max_handshake); answer with less, or raise the cap"
            )
        return data


Session = _Session  # what `session` yields: request, call, list_tools


def _find_response(content_type: str, payload: bytes, want: int) -> dict[str, Any]:
    if "text/event-stream" in content_type:
        candidates = [line[5:].strip() for line in payload.splitlines() if line.startswith(b"data:")]
    elif "json" in content_type:
        candidates = [payload]
    else:
        raise NotMCP(f"answered {content_type or 'no content type'}, not JSON or SSE")
    for candidate in candidates:
        try:
            message = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if isinstance(message, dict) and message.get("id") == want:
            return message
    raise NotMCP(f"no JSON-RPC response with id {want} in the answer")


def _rpc_error(error: object) -> str:
    """A JSON-RPC error object as `code: message`, one bounded line (its text is the server's)."""
    if isinstance(error, dict) and "message" in error:
        return _excerpt(f"{error.get('code', '?')}: {error['message']}".encode())
    return _excerpt(json.dumps(error).encode())


def _excerpt(payload: bytes) -> str:
    """The start of a body as one readable line."""
    text = " ".join(payload.decode("utf-8", "replace").split())
    return (text[:160] + "…") if len(text) > 160 else (text or "(empty body)")
