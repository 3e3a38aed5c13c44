"""Host-service relays on loopback: bytes both ways, the subnet check, the connection cap, idle close."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pipeline.config.settings import HostService, NetworkConfig
from pipeline.errors import NetworkError
from pipeline.hostrelay import HostRelays
from pipeline.network import ServerNetwork
from tests.support.loopback import free_port

GATEWAY = "127.0.0.2"  # the relay's side (a network's gateway); the service is on 127.0.0.1


@pytest.fixture
def echo() -> Iterator[tuple[int, list[str]]]:
    """An echo service on 127.0.0.1; yields its port and the peers it accepted."""
    port = free_port()
    server = socket.create_server(("127.0.0.1", port))
    peers: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, peer = server.accept()
            except OSError:
                return
            peers.append(peer[0])
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield port, peers
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def _relays(port: int, subnet: str = "127.0.0.0/8", **config: float) -> tuple[HostRelays, ServerNetwork]:
    relays = HostRelays(NetworkConfig(**config))  # type: ignore[arg-type]
    net = ServerNetwork("cmcp-test-svc", "svc", ipaddress.IPv4Network(subnet), GATEWAY, False)
    relays.open(net, [HostService("echo", "127.0.0.1", port, ("svc",))])
    return relays, net


def _connect(port: int, source: str = "127.0.0.3") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(2)
    sock.bind((source, 0))
    sock.connect((GATEWAY, port))
    return sock


def test_the_relay_copies_bytes_both_ways(echo: tuple[int, list[str]]) -> None:
    """A connection to the gateway's port reaches the service on the host's loopback, and back."""
    port, _ = echo
    relays, _ = _relays(port)
    try:
        with _connect(port) as sock:
            sock.sendall(b"ping")
            assert sock.recv(16) == b"ping"
        assert relays.listening() == [("cmcp-test-svc", "echo", port)]
    finally:
        relays.close_all()


def test_a_peer_outside_the_servers_subnet_is_refused(echo: tuple[int, list[str]]) -> None:
    """A connection from outside the network's subnet is closed before the service is dialled."""
    port, peers = echo
    relays, _ = _relays(port, subnet="127.0.0.0/30")
    try:
        with _connect(port, source="127.0.0.9") as sock:
            assert sock.recv(16) == b""
        assert peers == []
    finally:
        relays.close_all()


def test_connections_past_the_cap_are_closed(echo: tuple[int, list[str]]) -> None:
    """With max_connections 1, a second connection is closed while the first stays open."""
    port, _ = echo
    relays, _ = _relays(port, relay_max_connections=1)
    try:
        with _connect(port) as first:
            first.sendall(b"a")
            assert first.recv(4) == b"a"
            with _connect(port) as second:
                assert second.recv(4) == b""
            first.sendall(b"b")
            assert first.recv(4) == b"b"
    finally:
        relays.close_all()


def test_a_quiet_connection_is_closed_after_the_idle_timeout(echo: tuple[int, list[str]]) -> None:
    """Nothing sent either way for idle_timeout closes the relayed connection."""
    port, _ = echo
    relays, _ = _relays(port, relay_idle_timeout=0.3)
    try:
        with _connect(port) as sock:
            started = time.monotonic()
            assert sock.recv(4) == b""
            assert 0.25 < time.monotonic() - started < 2
    finally:
        relays.close_all()


def test_closing_a_network_stops_its_listeners(echo: tuple[int, list[str]]) -> None:
    """After `close`, nothing listens on the gateway's port."""
    port, _ = echo
    relays, net = _relays(port)
    relays.close(net.name)
    with pytest.raises(ConnectionRefusedError):
        _connect(port).close()
    assert relays.listening() == []
    relays.close_all()


def test_a_port_that_cannot_be_bound_is_a_network_error(echo: tuple[int, list[str]]) -> None:
    """A relay whose gateway address is not the host's says which service and server it was for."""
    port, _ = echo
    relays = HostRelays(NetworkConfig())
    net = ServerNetwork("n", "svc", ipaddress.IPv4Network("192.0.2.0/24"), "192.0.2.77", False)
    with pytest.raises(NetworkError, match=r"'echo' on 192\.0\.2\.77"):
        relays.open(net, [HostService("echo", "127.0.0.1", port, ("svc",))])
    relays.close_all()
