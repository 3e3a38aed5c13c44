"""The Swarm relay: a TCP relay in a container on the manager, and the provider's client of it.

The provider's proxy runs on the host and cannot join an overlay network, so with `engine: swarm` one
relay container per provider sits on its own bridge network (which the host reaches) and on every
server's overlay. Each relay port forwards to one `<service name>:<port>`, the name resolved through
Docker's embedded DNS at every new connection, so a task Swarm moves is found again. Only RELAY_PEER
(the host's gateway address on the relay's bridge) may connect, on control and data ports alike: the
server tasks on the overlays reach the relay too and must reach nothing through it. The table comes
from the provider by `PUT /routes` (bearer token) and replaces the whole table at once.

The container runs this file as `python3 -c <source>`: standard library only, nothing imported from
`pipeline`, which is why it has its own `RelayError` and is one file past the usual size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

log = logging.getLogger("central-mcp.swarmrelay")

DEFAULT_CONTROL_PORT = 7999
DEFAULT_MAX_CONNECTIONS = 1024  # data connections, all routes together
DEFAULT_CONNECT_TIMEOUT = 5.0  # name resolution + connect, per new connection
DEFAULT_IDLE_TIMEOUT = 0.0  # none: MCP event streams stay open and quiet for long
DEFAULT_REQUEST_TIMEOUT = 5.0  # for a whole control request to arrive
MIN_TOKEN_CHARS = 32
MAX_HEAD_BYTES = 8 * 1024  # control request line + headers
MAX_BODY_BYTES = 1024 * 1024  # control request body
MAX_ANSWER_BYTES = 64 * 1024  # a control answer, as the client reads it
MAX_ROUTES = 4096
MIN_LISTEN_PORT = 1024
CHUNK = 64 * 1024
REFUSAL_LOG_INTERVAL = 1.0  # s: refused peers are logged at most once per interval, with a count
HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,252}$")  # a Docker service name (or "localhost")
ROUTES_PATH = "/routes"

Routes = Mapping[int, tuple[str, int]]  # listen port -> (host name, port)
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


class RelayError(Exception):
    """The relay refused, failed or could not be reached; `failed` holds ports it could not open."""

    def __init__(self, message: str, failed: Mapping[int, str] | None = None) -> None:
        super().__init__(message)
        self.failed = dict(failed or {})


def source() -> str:
    """This module's source, as the relay container runs it."""
    return Path(__file__).read_text(encoding="utf-8")


def command() -> list[str]:
    """The relay container's command."""
    return ["python3", "-c", source()]


def routes_digest(routes: Routes) -> str:
    """sha256 of the table's canonical JSON: the provider and the relay compute it alike."""
    rows = [[port, host, target] for port, (host, target) in sorted(routes.items())]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def parse_routes(body: bytes, control_port: int) -> dict[int, tuple[str, int]]:
    """The table in a `PUT /routes` body; RelayError naming the JSON path of what is wrong."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RelayError(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("routes"), dict):
        raise RelayError('body must be {"routes": {"<listen port>": ["<host>", <port>]}}')
    entries: dict[str, Any] = document["routes"]
    if len(entries) > MAX_ROUTES:
        raise RelayError(f"routes: {len(entries)} entries, at most {MAX_ROUTES}")
    return {_listen_port(key, control_port): _target(key, value) for key, value in entries.items()}


@dataclass(frozen=True)
class RelayConfig:
    """What one relay runs with; `from_env` reads the container's environment."""

    token: str
    peer: str
    control_port: int = DEFAULT_CONTROL_PORT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RelayConfig:
        """The settings in RELAY_* variables; RelayError naming the variable that is wrong."""
        token = env.get("RELAY_TOKEN", "")
        if len(token) < MIN_TOKEN_CHARS:
            raise RelayError(f"RELAY_TOKEN must be at least {MIN_TOKEN_CHARS} characters")
        peer = env.get("RELAY_PEER", "")
        try:
            ipaddress.IPv4Address(peer)
        except ValueError:
            raise RelayError(f"RELAY_PEER {peer!r} is not an IPv4 address") from None
        control_port = _number(env, "RELAY_CONTROL_PORT", int, DEFAULT_CONTROL_PORT, 1)
        if control_port > 65535:
            raise RelayError(f"RELAY_CONTROL_PORT {control_port} is not a port 1..65535")
        return cls(
            token,
            peer,
            control_port,
            _number(env, "RELAY_MAX_CONNECTIONS", int, DEFAULT_MAX_CONNECTIONS, 1),
            _number(env, "RELAY_CONNECT_TIMEOUT", float, DEFAULT_CONNECT_TIMEOUT, 0.001),
            _number(env, "RELAY_IDLE_TIMEOUT", float, DEFAULT_IDLE_TIMEOUT, 0.0),
        )

    def environment(self) -> dict[str, str]:
        """The RELAY_* variables `from_env` reads back as these settings (the container's environment)."""
        return {
            "RELAY_TOKEN": self.token,
            "RELAY_PEER": self.peer,
            "RELAY_CONTROL_PORT": str(self.control_port),
            "RELAY_MAX_CONNECTIONS": str(self.max_connections),
            "RELAY_CONNECT_TIMEOUT": repr(self.connect_timeout),
            "RELAY_IDLE_TIMEOUT": repr(self.idle_timeout),
        }


class RelayClient:
    """The provider's side of a relay's control port (blocking: call it off the event loop)."""

    def __init__(self, host: str, control_port: int, token: str, timeout: float) -> None:
        self.host, self.control_port, self.timeout = host, control_port, timeout
        self._token = token

    def put(self, routes: Routes) -> str:
        """Replace the relay's table; its digest, or RelayError when a route failed or it disagrees."""
        body = {"routes": {str(port): [host, target] for port, (host, target) in routes.items()}}
        answer = self._call("PUT", json.dumps(body).encode())
        if answer["failed"]:
            failed = {int(port): str(reason) for port, reason in answer["failed"].items()}
            reasons = ", ".join(f"{port} ({reason})" for port, reason in sorted(failed.items()))
            raise RelayError(f"{self._where()} could not listen on port {reasons}", failed)
        if answer["digest"] != routes_digest(routes):
            raise RelayError(f"{self._where()} answered digest {answer['digest']}, not the table's")
        return str(answer["digest"])

    def digest(self) -> str:
        """The digest of the table the relay holds now."""
        return str(self._call("GET", None)["digest"])

    def _call(self, method: str, body: bytes | None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection(self.host, self.control_port, timeout=self.timeout)
        try:
            conn.request(method, ROUTES_PATH, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise RelayError(f"{self._where()} did not answer {method} {ROUTES_PATH}: {exc}") from None
        finally:
            conn.close()
        return self._answer(response.status, data)

    def _answer(self, status: int, data: bytes) -> dict[str, Any]:
        if len(data) > MAX_ANSWER_BYTES:
            raise RelayError(f"{self._where()} answered more than {MAX_ANSWER_BYTES} bytes")
        text = data.decode("utf-8", "replace")
        if status != 200:
            raise RelayError(f"{self._where()} answered {status}: {text[:500]}")
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if not (isinstance(answer, dict) and isinstance(answer.get("digest"), str)):
            raise RelayError(f"{self._where()} answered no digest: {text[:500]}")
        if not isinstance(answer.get("failed"), dict):
            raise RelayError(f"{self._where()} answered no failed map: {text[:500]}")
        return answer

    def _where(self) -> str:
        return f"relay at {self.host}:{self.control_port}"


@dataclass(eq=False)
class _Route:
    """One listen port: its listener, its destination, and the connections open through it."""

    port: int
    target: tuple[str, int]
    server: asyncio.AbstractServer | None = None
    closed: bool = False
    links: set[_Link] = field(default_factory=set)

    def drop_connections(self) -> None:
        """Abort every connection open through this port (both sides)."""
        for link in list(self.links):
            link.abort()

    async def close(self) -> None:
        """Stop listening and end the open connections."""
        self.closed = True
        if self.server is not None:
            self.server.close()
        self.drop_connections()
        if self.server is not None:
            await self.server.wait_closed()


class _Side(asyncio.Protocol):
    """One socket of a relayed connection: what it reads is written to the other side's socket.

    Backpressure: when the other side's write buffer passes its high-water mark (64 KiB), reading
    this socket pauses until it drains, so a connection holds at most that plus a read (64 KiB) per way.
    """

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.other: _Side = self
        self.eof = False
        self.early: list[bytes] = []  # read before the destination answered (one read)
        self.full = False  # this socket's write buffer is past its high-water mark

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; the link decides what happens next."""
        self.transport = transport  # type: ignore[assignment]
        # CPython's selector transport reads up to its max_size (256 KiB) at once; keep reads to CHUNK.
        transport.max_size = CHUNK  # type: ignore[attr-defined]
        self.link.made(self)

    def data_received(self, data: bytes) -> None:
        """Pass the bytes on; hold them while the destination is still being connected."""
        self.link.active = time.monotonic()
        other = self.other.transport
        if other is None:  # the destination is not connected yet: hold this read, read no more
            self.early.append(data)
            self.transport.pause_reading()  # type: ignore[union-attr]
        else:
            other.write(data)

    def eof_received(self) -> bool:
        """Pass the EOF on as a half-close; once both ways ended, close both."""
        self.eof = True
        other = self.other.transport
        if other is not None and other.can_write_eof() and not other.is_closing():
            other.write_eof()
        if self.other.eof:
            self.link.close()
        return True  # keep this socket open for the other way

    def pause_writing(self) -> None:
        """The other way is too far ahead: stop reading it."""
        self.full = True
        if self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        """Caught up: read the other way again."""
        self.full = False
        if self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """One side gone ends the connection."""
        self.link.lost(exc)


class _Link:
    """One relayed connection: the client's side, the destination's, and when bytes last moved."""

    def __init__(self, relay: Relay, route: _Route) -> None:
        self.relay, self.route = relay, route
        self.client, self.upstream = _Side(self), _Side(self)
        self.client.other, self.upstream.other = self.upstream, self.client
        self.active = time.monotonic()
        self.counted = False
        self.done = False

    def made(self, side: _Side) -> None:
        """The client's socket is accepted: admit it and connect onwards; the destination's: splice."""
        if side is self.client:
            self.relay.admit_data(self)
        elif self.done:
            side.transport.abort()  # type: ignore[union-attr]
        else:
            self._splice(side)

    def _splice(self, upstream: _Side) -> None:
        """The destination answered: hand it what the client sent meanwhile, then read the client."""
        transport = upstream.transport
        assert transport is not None and self.client.transport is not None
        for data in self.client.early:
            transport.write(data)
        self.client.early.clear()
        if self.client.eof:
            transport.write_eof()
        elif not upstream.full:  # else resume_writing resumes it
            self.client.transport.resume_reading()

    def lost(self, exc: Exception | None) -> None:
        """Either side gone: close the other (flushing what it holds unless this one failed)."""
        if exc is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        """End both sides, letting each flush what it still holds."""
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.close()
        self._finish()

    def reset(self) -> None:
        """The destination could not be reached: reset the client's connection (RST, not FIN), which
        tells the provider's proxy that nothing of its request went anywhere (it tries another replica)."""
        transport = self.client.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort()

    def abort(self) -> None:
        """End both sides at once."""
        for side in (self.client, self.upstream):
            if side.transport is not None:
                side.transport.abort()
        self._finish()

    def check_idle(self, idle: float) -> None:
        """End the connection once neither way moved for `idle` seconds; else look again later."""
        if self.done:
            return
        quiet = time.monotonic() - self.active
        if quiet >= idle:
            self.abort()
        else:
            asyncio.get_running_loop().call_later(idle - quiet, self.check_idle, idle)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.route.links.discard(self)
        if self.counted:
            self.relay.connections -= 1


class Relay:
    """The relay server: a control port and one listener per route, on one event loop."""

    def __init__(self, config: RelayConfig, bind: str = "0.0.0.0") -> None:
        self.config, self.bind = config, bind
        self.routes: Mapping[int, _Route] = MappingProxyType({})
        self.failed: Mapping[int, str] = MappingProxyType({})
        self.connections = 0
        self._control: asyncio.Server | None = None
        self._lock = asyncio.Lock()
        self._refused, self._refusal_logged = 0, 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on the control port."""
        self._control = await asyncio.start_server(
            self._control_connection, self.bind, self.config.control_port, limit=MAX_HEAD_BYTES
        )
        log.info("control on %s:%d, peer %s", self.bind, self.config.control_port, self.config.peer)

    async def close(self) -> None:
        """Stop the control port and every route."""
        if self._control is not None:
            self._control.close()
        for task in self._tasks:
            task.cancel()
        for route in self.routes.values():
            await route.close()
        self.routes = MappingProxyType({})

    def table(self) -> dict[int, tuple[str, int]]:
        """The table held now: every route that listens."""
        return {port: route.target for port, route in self.routes.items()}

    def answer(self) -> dict[str, Any]:
        """The JSON both `GET /routes` and `PUT /routes` answer."""
        failed = {str(port): reason for port, reason in sorted(self.failed.items())}
        return {"digest": routes_digest(self.table()), "failed": failed}

    async def replace(self, wanted: Mapping[int, tuple[str, int]]) -> None:
        """Make the table `wanted`: close removed routes, re-target changed ones, open new ones."""
        async with self._lock:
            kept: dict[int, _Route] = {}
            for port, route in self.routes.items():
                if port not in wanted:
                    await route.close()
                    log.info("route %d closed (was %s:%d)", port, *route.target)
                    continue
                if route.target != wanted[port]:
                    # A port's connections belong to its old destination: end them with it.
                    route.drop_connections()
                    log.info("route %d re-targeted %s:%d -> %s:%d", port, *route.target, *wanted[port])
                    route.target = wanted[port]
                kept[port] = route
            failed = {}
            for port in wanted.keys() - kept.keys():
                try:
                    kept[port] = await self._open(port, wanted[port])
                except OSError as exc:
                    failed[port] = exc.strerror or str(exc)
                    log.warning("route %d -> %s:%d failed to listen: %s", port, *wanted[port], failed[port])
            self.routes, self.failed = MappingProxyType(kept), MappingProxyType(failed)

    async def _open(self, port: int, target: tuple[str, int]) -> _Route:
        route = _Route(port, target)
        loop = asyncio.get_running_loop()
        route.server = await loop.create_server(lambda: _Link(self, route).client, self.bind, port)
        log.info("route %d opened -> %s:%d", port, *target)
        return route

    def admit_data(self, link: _Link) -> None:
        """Keep a data connection from the peer under the cap and connect it onwards; close any other."""
        transport = link.client.transport
        assert transport is not None
        if not self._admit(transport):
            link.done = True
            return
        if link.route.closed:  # accepted just as its route was closed
            transport.abort()
            link.done = True
            return
        if self.connections >= self.config.max_connections:
            transport.abort()
            link.done = True
            log.warning(
                "route %d: refused a connection, %d open (the cap)", link.route.port, self.connections
            )
            return
        # No pause_reading here: Python 3.11.2 starts reading anyway and then ignores the next pause
        # (its _paused is already set); data_received pauses at the first read instead.
        self.connections += 1
        link.counted = True
        link.route.links.add(link)
        task = asyncio.get_running_loop().create_task(self._connect(link, link.route.target))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, link: _Link, target: tuple[str, int]) -> None:
        """Resolve the destination now (IPv4) and connect to the first address that answers."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                infos = await loop.getaddrinfo(*target, family=socket.AF_INET, type=socket.SOCK_STREAM)
                error: OSError = OSError(f"{target[0]} has no IPv4 address")
                for *_, address in infos:
                    try:
                        await loop.create_connection(lambda: link.upstream, str(address[0]), int(address[1]))
                        break
                    except OSError as exc:
                        error = exc
                else:
                    raise error
        except (OSError, TimeoutError) as exc:
            link.reset()
            log.warning("route %d: cannot reach %s:%d: %s", link.route.port, *target, str(exc) or "timed out")
            return
        if link.route.target != target:  # re-targeted while this connection was being made
            link.abort()
        elif self.config.idle_timeout:
            link.check_idle(self.config.idle_timeout)

    def _admit(self, transport: asyncio.WriteTransport) -> bool:
        peer = transport.get_extra_info("peername")
        if peer is not None and peer[0] == self.config.peer:
            return True
        transport.abort()
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d connection(s) not from %s, last %s", self._refused, self.config.peer, peer
            )
            self._refused, self._refusal_logged = 0, now
        return False

    async def _control_connection(self, reader: Reader, writer: Writer) -> None:
        if not self._admit(writer.transport):
            return
        try:
            async with asyncio.timeout(self.config.request_timeout):
                status, answer = await self._control_request(reader)
        except TimeoutError:
            status, answer = 408, {"error": f"request not read within {self.config.request_timeout} s"}
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.transport.abort()
            return
        await _respond(writer, status, answer)

    async def _control_request(self, reader: Reader) -> tuple[int, dict[str, Any]]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return 431, {"error": f"request line and headers exceed {MAX_HEAD_BYTES} bytes"}
        method, path, headers = _parse_head(head)
        if path != ROUTES_PATH:
            return 404, {"error": f"no such path {path[:100]!r}: only {ROUTES_PATH}"}
        if method not in ("GET", "PUT"):
            return 405, {"error": f"method {method[:20]!r} not allowed: GET or PUT"}
        given = headers.get("authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, f"Bearer {self.config.token}".encode()):
            return 401, {"error": "missing or wrong bearer token"}
        if method == "GET":
            return 200, self.answer()
        return await self._put(reader, headers)

    async def _put(self, reader: Reader, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        length = headers.get("content-length", "")
        if not length.isdigit():
            return 411, {"error": "PUT needs a Content-Length (chunked bodies are not read)"}
        if int(length) > MAX_BODY_BYTES:
            return 413, {"error": f"body of {length} bytes exceeds {MAX_BODY_BYTES}"}
        body = await reader.readexactly(int(length))
        try:
            wanted = parse_routes(body, self.config.control_port)
        except RelayError as exc:
            log.warning("PUT %s refused: %s", ROUTES_PATH, exc)
            return 400, {"error": str(exc)}
        await self.replace(wanted)
        log.info("table replaced: %d route(s), %d failed", len(self.routes), len(self.failed))
        return 200, self.answer()


async def serve(config: RelayConfig, bind: str = "0.0.0.0") -> None:
    """Run a relay until SIGTERM or SIGINT (as the container's PID 1, which ignores them otherwise)."""
    relay = Relay(config, bind)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await relay.close()


def main() -> None:
    """The container's entry point: settings from RELAY_*, logs to stderr."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s swarmrelay %(message)s")
    try:
        config = RelayConfig.from_env(os.environ)
    except RelayError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    asyncio.run(serve(config))


async def _respond(writer: Writer, status: int, answer: Mapping[str, Any]) -> None:
    body = json.dumps(answer).encode()
    reason = http.client.responses.get(status, "")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
    with contextlib.suppress(OSError):
        await writer.drain()
    writer.close()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Method, path and lower-cased headers of a request head (unparseable parts come out empty)."""
    lines = head.decode("latin-1").split("\r\n")
    method, path, *_ = [*lines[0].split(" "), "", ""]
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


def _listen_port(key: str, control_port: int) -> int:
    port = int(key) if key.isdigit() and len(key) <= 5 else 0
    if not MIN_LISTEN_PORT <= port <= 65535:
        raise RelayError(f"routes.{key[:20]!r}: a listen port must be {MIN_LISTEN_PORT}..65535")
    if port == control_port:
        raise RelayError(f"routes.{key!r}: that is the control port")
    return port


def _target(key: str, value: Any) -> tuple[str, int]:
    if not (isinstance(value, list) and len(value) == 2):
        raise RelayError(f'routes.{key!r}: must be ["<host>", <port>]')
    host, port = value
    if not (isinstance(host, str) and HOST_NAME.match(host)):
        raise RelayError(
            f"routes.{key!r}[0]: {str(host)[:100]!r} is not a service name ({HOST_NAME.pattern})"
        )
    if not (type(port) is int and 1 <= port <= 65535):
        raise RelayError(f"routes.{key!r}[1]: {str(port)[:20]!r} is not a port 1..65535")
    return host, port


def _number(env: Mapping[str, str], name: str, kind: type[Any], default: Any, least: float) -> Any:
    text = env.get(name, "")
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise RelayError(f"{name} {text!r} is not a number") from None
    if not value >= least:
        raise RelayError(f"{name} {text!r} must be at least {least}")
    return value


if __name__ == "__main__":
    main()
