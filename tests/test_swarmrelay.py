"""The Swarm relay on loopback: splicing, the table's control port, its bounds, the peer check, the caps."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import contextlib
import hashlib
import http.client
import inspect
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker.errors
import docker.types
import pytest

from pipeline.baseimage import BASE_IMAGE
from pipeline.dockerhost import LABEL_INSTANCE, DockerHost
from pipeline.errors import UpstreamUnreachable
from pipeline.proxy.pool import Pool
from pipeline.swarmrelay import (
    CHUNK,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    RelayClient,
    RelayConfig,
    RelayError,
    command,
    parse_routes,
    routes_digest,
)
from tests.support.loopback import free_port
from tests.support.relay import TOKEN, RunningRelay, echo, running_relay, tcp_service
from tests.support.swarmnodes import require_manager

WAIT = 5.0


@pytest.fixture
def relay() -> Iterator[RunningRelay]:
    """A relay on loopback whose peer is 127.0.0.1."""
    with running_relay() as running:
        yield running


@pytest.fixture
def echo_port() -> Iterator[int]:
    """An echo service on 127.0.0.1."""
    with tcp_service(echo) as port:
        yield port


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(WAIT)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _ends(sock: socket.socket) -> bool:
    """Whether the relay ends this connection (EOF or reset) rather than passing bytes on."""
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b""
    except OSError:
        return True


def _round_trip(port: int, data: bytes = b"hello") -> bytes:
    with _connect(port) as sock:
        sock.sendall(data)
        return sock.recv(len(data))


def _raw(port: int, request: bytes, source: str = "127.0.0.1") -> bytes:
    """Send a raw control request; everything the relay answers before closing."""
    with _connect(port, source) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
        return b"".join(chunks)


def _send_all(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def _greet(conn: socket.socket) -> None:
    with conn:
        conn.sendall(b"other")


def _put(body: bytes, length: int | None = None) -> bytes:
    head = f"PUT /routes HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
    return f"{head}Content-Length: {len(body) if length is None else length}\r\n\r\n".encode() + body


def test_bytes_pass_both_ways(relay: RunningRelay, echo_port: int) -> None:
    """A route's port carries bytes to the destination and its answer back."""
    port = free_port()
    relay.client.put({port: ("localhost", echo_port)})
    assert _round_trip(port) == b"hello"


def test_twenty_megabytes_arrive_intact(relay: RunningRelay, echo_port: int) -> None:
    """20 MB sent through the relay come back from the echo service byte for byte."""
    port = free_port()
    relay.client.put({port: ("localhost", echo_port)})
    data = os.urandom(20 * 1024 * 1024)
    received = hashlib.sha256()
    count = 0
    with _connect(port) as sock:
        sender = threading.Thread(target=_send_all, args=(sock, data))
        sender.start()
        while chunk := sock.recv(1 << 20):
            received.update(chunk)
            count += len(chunk)
        sender.join(WAIT)
    assert count == len(data)
    assert received.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.fixture
def reader_of_python_3_11_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio as in Debian's Python 3.11.2 (the image's): a transport starts reading after
    connection_made even when that paused it, and then ignores the next pause_reading."""

    def add_reader_always(transport: Any, fd: int, callback: Any, *args: Any) -> None:
        transport._loop._add_reader(fd, callback, *args)

    transport_class = asyncio.selector_events._SelectorTransport  # type: ignore[attr-defined]
    monkeypatch.setattr(transport_class, "_add_reader", add_reader_always)


def test_bytes_and_eof_sent_before_the_destination_answers_reach_it(
    reader_of_python_3_11_2: None, echo_port: int
) -> None:
    """What the client sends before the destination is connected still arrives, then its EOF."""
    with running_relay() as relay:
        port = free_port()
        relay.client.put({port: ("localhost", echo_port)})
        for _ in range(5):
            with _connect(port) as sock:
                sock.sendall(b"early")
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(5) == b"early"
                assert sock.recv(5) == b""


def test_no_more_than_one_read_is_held_before_the_destination_answers(
    reader_of_python_3_11_2: None, silent_port: int
) -> None:
    """While the destination is being connected the relay holds one read of the client's bytes and
    reads no more, however much the client sends."""
    with running_relay(connect_timeout=3) as relay:
        port = free_port()
        relay.client.put({port: ("localhost", silent_port)})
        with _connect(port) as sock:
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                sock.sendall(b"x" * (8 << 20))
            links = list(relay.relay.routes[port].links)
            assert len(links) == 1
            assert 0 < sum(len(data) for data in links[0].client.early) <= CHUNK


def test_cpython_selector_transports_read_max_size_bytes() -> None:
    """The relay sets `max_size` on its transports to read 64 KiB at a time: a private attribute of
    CPython's selector transport, which this test names so that a Python where it is gone is noticed."""
    transport_class = asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    assert transport_class.max_size == 256 * 1024
    assert "self.max_size" in inspect.getsource(transport_class)


def test_half_close_reaches_the_destination_and_its_answer_still_comes_back(relay: RunningRelay) -> None:
    """A client's EOF is passed on as a half-close; the destination's answer after it still arrives."""

    def count_then_answer(conn: socket.socket) -> None:
        with conn:
            total = 0
            while data := conn.recv(65536):
                total += len(data)
            conn.sendall(f"got {total}".encode())

    with tcp_service(count_then_answer) as target:
        port = free_port()
        relay.client.put({port: ("localhost", target)})
        with _connect(port) as sock:
            sock.sendall(b"x" * 100_000)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b"got 100000"
            assert sock.recv(100) == b""


def test_replacing_the_table_closes_removed_routes_and_their_connections(
    relay: RunningRelay, echo_port: int
) -> None:
    """A route left out of a new table stops listening and its open connections end; new ones open."""
    first, second = free_port(), free_port()
    relay.client.put({first: ("localhost", echo_port)})
    with _connect(first) as open_one:
        open_one.sendall(b"a")
        assert open_one.recv(1) == b"a"
        relay.client.put({second: ("localhost", echo_port)})
        assert _ends(open_one)
    with pytest.raises(ConnectionRefusedError):
        _connect(first)
    assert _round_trip(second) == b"hello"
    relay.client.put({})
    with pytest.raises(ConnectionRefusedError):
        _connect(second)


def test_a_changed_target_takes_new_connections_and_ends_the_old_ones(
    relay: RunningRelay, echo_port: int
) -> None:
    """A re-targeted port keeps listening, ends connections to the old destination, sends new ones on."""
    with tcp_service(_greet) as other:
        port = free_port()
        relay.client.put({port: ("localhost", echo_port)})
        with _connect(port) as old:
            old.sendall(b"a")
            assert old.recv(1) == b"a"
            relay.client.put({port: ("localhost", other)})
            assert _ends(old)
        with _connect(port) as new:
            assert new.recv(5) == b"other"


def test_digest_names_the_table_held(relay: RunningRelay, echo_port: int) -> None:
    """PUT and GET answer routes_digest of the table; an empty relay answers the empty table's digest."""
    assert relay.client.digest() == routes_digest({})
    table = {free_port(): ("localhost", echo_port), free_port(): ("svc-b.internal", 8000)}
    assert relay.client.put(table) == routes_digest(table)
    assert relay.client.digest() == routes_digest(dict(reversed(list(table.items()))))


def test_a_port_that_cannot_listen_is_reported_and_left_out(relay: RunningRelay, echo_port: int) -> None:
    """A listen port already taken comes back in `failed`; the digest is of the routes that listen."""
    good = free_port()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        with pytest.raises(RelayError, match=f"port {busy}") as caught:
            relay.client.put({good: ("localhost", echo_port), busy: ("localhost", echo_port)})
    assert list(caught.value.failed) == [busy]
    assert relay.client.digest() == routes_digest({good: ("localhost", echo_port)})


@pytest.mark.parametrize("token", [TOKEN[:-1] + "x", ""])
def test_a_wrong_or_missing_token_is_refused_with_401(relay: RunningRelay, token: str) -> None:
    """The table is neither read nor changed without the bearer token."""
    client = RelayClient("127.0.0.1", relay.config.control_port, token, WAIT)
    with pytest.raises(RelayError, match="401"):
        client.digest()
    with pytest.raises(RelayError, match="401"):
        client.put({free_port(): ("localhost", 80)})
    assert _raw(relay.config.control_port, b"GET /routes HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 401")
    assert relay.client.digest() == routes_digest({})


def test_oversized_headers_are_refused_with_431(relay: RunningRelay) -> None:
    """A request line and headers past 8 KiB get 431 before anything is parsed."""
    request = b"GET /routes HTTP/1.1\r\nX-Pad: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n"
    assert _raw(relay.config.control_port, request).startswith(b"HTTP/1.1 431")


def test_an_oversized_body_is_refused_with_413_unread(relay: RunningRelay) -> None:
    """A Content-Length past 1 MiB gets 413 without the body being read."""
    request = _put(b"", length=MAX_BODY_BYTES + 1)
    assert _raw(relay.config.control_port, request).startswith(b"HTTP/1.1 413")


def test_a_request_too_slow_to_arrive_gets_408() -> None:
    """A control request not read whole within the request timeout is answered 408 and closed."""
    with running_relay(request_timeout=0.3) as relay:
        started = time.monotonic()
        answer = _raw(relay.config.control_port, _put(b'{"routes": {}}')[:-5])
        assert answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "must be"),
        (b'{"routes": {"80": ["localhost", 8000]}}', "routes.'80'"),
        (b'{"routes": {"http": ["localhost", 8000]}}', "routes.'http'"),
        (b'{"routes": {"9000": ["Bad_Name", 8000]}}', "routes.'9000'[0]"),
        (b'{"routes": {"9000": ["svc;rm -rf /", 8000]}}', "routes.'9000'[0]"),
        (b'{"routes": {"9000": ["svc", 0]}}', "routes.'9000'[1]"),
        (b'{"routes": {"9000": ["svc", true]}}', "routes.'9000'[1]"),
        (b'{"routes": {"9000": ["svc"]}}', "routes.'9000'"),
    ],
)
def test_a_bad_table_is_refused_with_400_naming_what_is_wrong(
    relay: RunningRelay, body: bytes, named: str
) -> None:
    """Bad JSON or a bad entry gets 400 naming the JSON path, and the table stays as it was."""
    answer = _raw(relay.config.control_port, _put(body))
    assert answer.startswith(b"HTTP/1.1 400")
    assert named in answer.decode()
    assert relay.client.digest() == routes_digest({})


def test_the_control_port_cannot_be_a_route(relay: RunningRelay) -> None:
    """A route on the control port's own number is a 400, not a failed listener."""
    control = relay.config.control_port
    with pytest.raises(RelayError, match=r"400.*control port"):
        relay.client.put({control: ("localhost", 80)})


def test_too_many_routes_are_refused() -> None:
    """A table of more than 4096 routes is refused whole."""
    entries = ", ".join(f'"{port}": ["svc", 80]' for port in range(2000, 6097))
    body = '{"routes": {' + entries + "}}"
    with pytest.raises(RelayError, match="at most 4096"):
        parse_routes(body.encode(), 7999)


def test_other_paths_are_404_and_other_methods_405(relay: RunningRelay) -> None:
    """Only /routes answers, and only to GET and PUT."""
    assert _raw(relay.config.control_port, b"GET /etc/passwd HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert _raw(relay.config.control_port, b"DELETE /routes HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")


def test_a_peer_other_than_relay_peer_is_refused_on_data_and_control(
    relay: RunningRelay, echo_port: int
) -> None:
    """A connection from 127.0.0.2 is closed at once on a route's port and on the control port."""
    port = free_port()
    relay.client.put({port: ("localhost", echo_port)})
    with _connect(port, source="127.0.0.2") as stranger:
        assert _ends(stranger)
    assert _raw(relay.config.control_port, b"GET /routes HTTP/1.1\r\n\r\n", source="127.0.0.2") == b""
    assert _round_trip(port) == b"hello"


def test_connections_past_the_cap_are_closed_at_once(echo_port: int) -> None:
    """With max_connections 2, a third connection is closed; once one ends, a new one passes."""
    with running_relay(max_connections=2) as relay:
        port = free_port()
        relay.client.put({port: ("localhost", echo_port)})
        first, second = _connect(port), _connect(port)
        for sock in (first, second):
            sock.sendall(b"a")
            assert sock.recv(1) == b"a"
        with _connect(port) as third:
            assert _ends(third)
        first.close()
        deadline = time.monotonic() + WAIT
        while relay.relay.connections > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _round_trip(port) == b"hello"
        second.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port with a full listen backlog: a connect to it hangs, as to a host dropping SYNs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
    yield server.getsockname()[1]
    for sock in (*fillers, server):
        sock.close()


def _reset(sock: socket.socket) -> bool:
    """Whether the relay resets this connection (RST: it reached nothing) rather than closing it."""
    try:
        sock.sendall(b"POST /mcp HTTP/1.1\r\n\r\n")
        sock.recv(1)
        return False
    except ConnectionResetError:
        return True


def test_a_name_that_does_not_resolve_resets_the_client(relay: RunningRelay) -> None:
    """A destination name with no address resets the client's connection at once (RST, not FIN:
    the proxy reads it as "nothing was sent" and tries another replica)."""
    port = free_port()
    relay.client.put({port: ("nonexistent.invalid", 80)})
    with _connect(port) as sock:
        assert _reset(sock)


def test_a_refused_destination_resets_the_client_and_the_proxy_pool_calls_it_unreachable(
    relay: RunningRelay,
) -> None:
    """Through the relay, a replica that refuses connections is UpstreamUnreachable for the proxy's
    pool when the upstream is relayed: nothing reached a server, so another replica may take it."""
    port, closed = free_port(), free_port()
    relay.client.put({port: ("localhost", closed)})

    async def ask(relayed: bool) -> BaseException | None:
        pool = Pool(connect_timeout=WAIT)
        try:
            await pool.request("127.0.0.1", port, "POST", b"POST /mcp HTTP/1.1\r\nHost: x\r\n\r\n", relayed)
        except OSError as exc:
            return exc
        finally:
            pool.close()
        return None

    for _ in range(5):  # reset during the connect or after the request went out: unreachable either way
        assert isinstance(asyncio.run(ask(True)), UpstreamUnreachable)


def test_a_destination_that_does_not_answer_closes_the_client_at_the_connect_timeout(
    silent_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A connect that hangs is given up after the connect timeout and the client's connection ends."""
    with running_relay(connect_timeout=0.3) as relay:
        port = free_port()
        relay.client.put({port: ("localhost", silent_port)})
        started = time.monotonic()
        with _connect(port) as sock:
            assert _reset(sock)
        assert 0.25 < time.monotonic() - started < 2
    assert f"route {port}: cannot reach localhost:{silent_port}: timed out" in caplog.text


def test_a_quiet_connection_is_closed_after_the_idle_timeout(echo_port: int) -> None:
    """With an idle timeout, a connection with no bytes either way for that long is closed."""
    with running_relay(idle_timeout=0.3) as relay:
        port = free_port()
        relay.client.put({port: ("localhost", echo_port)})
        with _connect(port) as sock:
            for _ in range(4):  # busy for longer than the timeout: stays open
                sock.sendall(b"a")
                assert sock.recv(1) == b"a"
                last = time.monotonic()
                time.sleep(0.15)
            assert sock.recv(1) == b""
            assert 0.25 < time.monotonic() - last < 2


def test_settings_come_from_the_environment() -> None:
    """RELAY_* variables set the relay; a short token or a bad peer or number is named."""
    base = {"RELAY_TOKEN": TOKEN, "RELAY_PEER": "10.0.0.1"}
    config = RelayConfig.from_env({**base, "RELAY_MAX_CONNECTIONS": "7"})
    assert (config.peer, config.control_port, config.max_connections) == ("10.0.0.1", 7999, 7)
    assert (config.connect_timeout, config.idle_timeout) == (5, 0)
    with pytest.raises(RelayError, match="RELAY_TOKEN"):
        RelayConfig.from_env({**base, "RELAY_TOKEN": "short"})
    with pytest.raises(RelayError, match="RELAY_PEER"):
        RelayConfig.from_env({**base, "RELAY_PEER": "gateway"})
    with pytest.raises(RelayError, match="RELAY_CONTROL_PORT"):
        RelayConfig.from_env({**base, "RELAY_CONTROL_PORT": "70000"})
    with pytest.raises(RelayError, match="RELAY_CONNECT_TIMEOUT"):
        RelayConfig.from_env({**base, "RELAY_CONNECT_TIMEOUT": "soon"})


def test_environment_reads_back_as_the_same_settings() -> None:
    """What the provider puts in the container's environment is what the relay runs with."""
    config = RelayConfig(TOKEN, "172.30.0.1", 7000, 50, 2.5, 0.0)
    assert RelayConfig.from_env(config.environment()) == config


def test_the_command_runs_the_relay_as_a_program_and_stops_on_sigterm(echo_port: int) -> None:
    """`command()` (python -c <source>) serves the control port and the routes; SIGTERM ends it cleanly,
    a connection open or not."""
    control = free_port()
    env = {
        "RELAY_TOKEN": TOKEN,
        "RELAY_PEER": "127.0.0.1",
        "RELAY_CONTROL_PORT": str(control),
        "PATH": os.defpath,
    }
    argv = [sys.executable, *command()[1:]]
    with subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) as child:
        client = RelayClient("127.0.0.1", control, TOKEN, WAIT)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                client.digest()
                break
            except RelayError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        port = free_port()
        client.put({port: ("localhost", echo_port)})
        assert _round_trip(port) == b"hello"
        with _connect(port) as held:  # open while the relay stops
            held.sendall(b"a")
            assert held.recv(1) == b"a"
            child.send_signal(signal.SIGTERM)
            assert child.wait(WAIT) == 0
        logs = child.stderr.read() if child.stderr else ""
    assert f"route {port} opened" in logs
    assert "Traceback" not in logs
    assert TOKEN not in logs


def test_the_program_refuses_to_start_without_a_token() -> None:
    """Without RELAY_TOKEN the program exits 2 and says why."""
    done = subprocess.run(
        command(), env={"RELAY_PEER": "127.0.0.1"}, capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 2
    assert "RELAY_TOKEN" in done.stderr


RELAY_CONTROL = 7999
STOP_GRACE_NS = 500_000_000
BIG_FILE_BYTES = 20 * 1024 * 1024  # through the relay on the image's Python, backpressure and all
REFUSED = ("answer b''", "error [Errno 104] Connection reset by peer")  # what _probe prints when closed
WEB_PORT = 8000


@pytest.fixture
def relay_network(docker_host: DockerHost, instance_label: str) -> Iterator[dict[str, Any]]:
    """A new internal bridge network of this test's own (Docker picks a subnet outside 10.213.0.0/16)."""
    name = f"cmcp-test-relay-{os.getpid()}-{secrets.token_hex(3)}"
    network = docker_host.client.networks.create(
        name, driver="bridge", internal=True, labels={LABEL_INSTANCE: instance_label}, check_duplicate=True
    )
    network.reload()
    try:
        yield network.attrs
    finally:
        for container in docker_host.containers({LABEL_INSTANCE: instance_label}):
            container.remove(force=True)
        network.remove()


def _hardened(
    docker_host: DockerHost, network: str, label: str, command: list[str], tmp: str = "1m", **extra: Any
) -> Any:
    """Start a container as the relay runs: read-only root, user 65534, no capabilities, no-new-privileges."""
    return docker_host.client.containers.run(
        BASE_IMAGE,
        command,
        detach=True,
        network=network,
        labels={LABEL_INSTANCE: label},
        read_only=True,
        user="65534:65534",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit="128m",
        pids_limit=64,
        tmpfs={"/tmp": f"size={tmp}"},
        **extra,
    )


def _address(container: Any, network: str) -> str:
    container.reload()
    address: str = container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    return address


PROBE = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
try:
    sock.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print("answer", sock.recv(100))
except OSError as exc:
    print("error", exc)
"""


def _probe(container: Any, host: str, port: int) -> str:
    """What a connection from inside `container` to host:port gets back."""
    exit_code, output = container.exec_run(["python3", "-c", PROBE, host, str(port)], user="65534")
    text: str = output.decode().strip()
    assert exit_code == 0, text
    return text


def _ready(client: RelayClient) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            client.digest()
            return
        except RelayError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.docker
def test_a_relay_container_forwards_the_host_to_a_name_and_refuses_other_containers(
    docker_host: DockerHost, instance_label: str, relay_network: dict[str, Any], python_base_image: str
) -> None:
    """From central-mcp/python:3.11 on an internal bridge, the relay takes the host (its gateway) to a
    container's network alias (20 MB intact on the image's Python), and closes a connection from
    another container on that network."""
    network = relay_network["Name"]
    gateway = relay_network["IPAM"]["Config"][0]["Gateway"]
    alias = f"web-{secrets.token_hex(3)}"
    web_command = ["python3", "-m", "http.server", str(WEB_PORT), "--directory", "/tmp"]
    endpoint = docker_host.client.api.create_endpoint_config(aliases=[alias])
    web = _hardened(
        docker_host, network, instance_label, web_command, "32m", networking_config={network: endpoint}
    )
    env = RelayConfig(TOKEN, gateway, connect_timeout=2).environment()
    relay = _hardened(docker_host, network, instance_label, command(), environment=env)
    relay_ip = _address(relay, network)
    client = RelayClient(relay_ip, RELAY_CONTROL, TOKEN, WAIT)
    _ready(client)
    port = 20000
    assert client.put({port: (alias, WEB_PORT)}) == routes_digest({port: (alias, WEB_PORT)})
    _fetch_through(f"http://{relay_ip}:{port}/", relay)  # the web server may still be starting
    big = bytes(range(256)) * (BIG_FILE_BYTES // 256)
    write = f"open('/tmp/big', 'wb').write(bytes(range(256)) * {BIG_FILE_BYTES // 256})"
    assert web.exec_run(["python3", "-c", write], user="65534").exit_code == 0
    with urllib.request.urlopen(f"http://{relay_ip}:{port}/big", timeout=WAIT) as answer:
        assert hashlib.sha256(answer.read()).hexdigest() == hashlib.sha256(big).hexdigest()
    for target in (port, RELAY_CONTROL):
        output = _probe(web, relay_ip, target)
        assert output in REFUSED, output
    logs = relay.logs().decode()
    assert f"route {port} opened -> {alias}:{WEB_PORT}" in logs
    assert "refused" in logs
    assert TOKEN not in logs


@pytest.fixture
def overlay(docker_host: DockerHost, instance_label: str) -> Iterator[str]:
    """An attachable overlay network of this test's own (the engine must be a swarm manager)."""
    require_manager(docker_host)  # a failure in CI
    name = f"cmcp-test-relay-ov-{os.getpid()}-{secrets.token_hex(3)}"
    network = docker_host.client.networks.create(
        name, driver="overlay", attachable=True, internal=True, labels={LABEL_INSTANCE: instance_label}
    )
    try:
        yield name
    finally:
        for container in docker_host.containers({LABEL_INSTANCE: instance_label}):
            if not container.labels.get("com.docker.swarm.task.id"):
                container.remove(force=True)  # the relay, attached to the overlay
        services = docker_host.client.services.list(filters={"label": f"{LABEL_INSTANCE}={instance_label}"})
        for service in services:
            service.remove()  # type: ignore[no-untyped-call]
        for container in docker_host.containers({LABEL_INSTANCE: instance_label}):
            container.remove(force=True)  # the service's task, without waiting for Swarm to stop it
        deadline = time.monotonic() + 30
        while True:
            try:
                network.remove()
                break
            except docker.errors.APIError:  # the task's endpoint leaves the overlay a moment later
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _running_task_ip(service: Any, overlay: str) -> str | None:
    """The overlay address of the service's one running task, if it has one."""
    for task in service.tasks(filters={"desired-state": "running"}):
        if task["Status"]["State"] != "running":
            continue
        for attachment in task.get("NetworksAttachments", []):
            if attachment["Network"]["Spec"]["Name"] == overlay:
                address: str = attachment["Addresses"][0].split("/")[0]
                return address
    return None


def _fetch_through(url: str, relay: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=WAIT) as answer:
                assert answer.status == 200
                return
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{exc}; relay logs:\n{relay.logs().decode()}") from exc
            time.sleep(0.2)


@pytest.mark.docker
def test_a_relay_on_an_overlay_finds_a_swarm_service_again_after_its_task_moves(
    docker_host: DockerHost,
    instance_label: str,
    relay_network: dict[str, Any],
    overlay: str,
    python_base_image: str,
) -> None:
    """The relay, on its bridge and a Swarm overlay, reaches a dnsrr service by name; when Swarm
    replaces the service's task (a new address), the same route finds the new one."""
    name = f"cmcp-test-relay-svc-{secrets.token_hex(3)}"
    service = docker_host.client.services.create(  # type: ignore[no-untyped-call]
        BASE_IMAGE,
        ["python3", "-m", "http.server", str(WEB_PORT), "--directory", "/tmp"],
        name=name,
        networks=[overlay],
        endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        labels={LABEL_INSTANCE: instance_label},
        container_labels={LABEL_INSTANCE: instance_label},
        user="65534:65534",
        stop_grace_period=STOP_GRACE_NS,  # http.server as PID 1 ignores SIGTERM
    )
    network = relay_network["Name"]
    gateway = relay_network["IPAM"]["Config"][0]["Gateway"]
    env = RelayConfig(TOKEN, gateway, connect_timeout=2).environment()
    relay = _hardened(docker_host, network, instance_label, command(), environment=env)
    docker_host.client.networks.get(overlay).connect(relay)
    relay_ip = _address(relay, network)
    client = RelayClient(relay_ip, RELAY_CONTROL, TOKEN, WAIT)
    _ready(client)
    port = 20001
    client.put({port: (name, WEB_PORT)})
    _fetch_through(f"http://{relay_ip}:{port}/", relay)
    first = _running_task_ip(service, overlay)
    service.force_update()
    deadline = time.monotonic() + 60
    while (now := _running_task_ip(service, overlay)) in (None, first):
        assert time.monotonic() < deadline, f"Swarm did not replace the task at {first}"
        time.sleep(0.3)
    _fetch_through(f"http://{relay_ip}:{port}/", relay)
    assert now != first
    task = docker_host.client.containers.list(filters={"label": f"com.docker.swarm.service.name={name}"})[0]
    relay_overlay_ip = _address(relay, overlay)
    for target in (port, RELAY_CONTROL):  # a task on the overlay reaches nothing through the relay
        assert _probe(task, relay_overlay_ip, target) in REFUSED
