"""The Swarm relay (pipeline/swarmrelay.py) run in-process on loopback, and plain TCP services to relay to."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from pipeline.swarmrelay import Relay, RelayClient, RelayConfig
from tests.support.loopback import free_port

TOKEN = "t" * 40
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class RunningRelay:
    """A relay serving on 127.0.0.1 in a thread of its own, and a client of its control port."""

    relay: Relay
    client: RelayClient
    config: RelayConfig


@contextmanager
def running_relay(peer: str = "127.0.0.1", **settings: float) -> Iterator[RunningRelay]:
    """Run a relay on 127.0.0.1 (its event loop in a thread) until the block ends."""
    config = replace(RelayConfig(TOKEN, peer, free_port()), **settings)  # type: ignore[arg-type]
    relay = Relay(config, "127.0.0.1")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(relay.start(), loop).result(START_TIMEOUT)
        yield RunningRelay(relay, RelayClient("127.0.0.1", config.control_port, TOKEN, 5.0), config)
    finally:
        asyncio.run_coroutine_threadsafe(relay.close(), loop).result(START_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)
        loop.close()


@contextmanager
def tcp_service(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP service on 127.0.0.1 calling `handle` in a thread per connection; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    port: int = server.getsockname()[1]
    conns: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield port
    finally:
        server.close()
        for conn in conns:
            conn.close()


def echo(conn: socket.socket) -> None:
    """Send back every byte received; half-close when the peer does."""
    with conn:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            return
