"""Host-service relays: a granted server reaches a service bound to the VM's 127.0.0.1 by name.

A service on the host's loopback (Ollama on 127.0.0.1:11434) is unreachable from any container.
For each server network whose manifest names it (and deploy.yaml grants it), the provider listens
on that network's gateway address at the service's port and copies bytes to the service; the
container resolves the service's name to its gateway. The firewall opens exactly these ports, and
only towards the gateway of the network a packet comes from; the relay also refuses any peer
outside the network's subnet. Each listener holds at most `max_connections`, and a connection
quiet in both directions for `idle_timeout` is closed. The relays run on an event loop of their
own thread, apart from the proxy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config.settings import HostService, NetworkConfig
from pipeline.errors import NetworkError

if TYPE_CHECKING:
    from pipeline.network import ServerNetwork

log = logging.getLogger("central-mcp.hostrelay")
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 10.0
CALL_TIMEOUT = 15.0  # for the relay thread to open or close a listener


@dataclass
class _Listener:
    service: HostService
    subnet: ipaddress.IPv4Network
    server: asyncio.Server | None = None
    open_connections: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class HostRelays:
    """Every relay listener of one provider, by network name and service name."""

    def __init__(self, config: NetworkConfig) -> None:
        self.max_connections = config.relay_max_connections
        self.idle_timeout = config.relay_idle_timeout
        self._listeners: dict[tuple[str, str], _Listener] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start = threading.Lock()

    def open(self, net: ServerNetwork, services: Iterable[HostService]) -> None:
        """Listen on the network's gateway for each service not yet relayed there."""
        for service in services:
            if (net.name, service.name) not in self._listeners:
                self._call(self._open(net, service))

    def keep(self, network: str, names: set[str]) -> None:
        """Close the network's listeners for services not in `names`."""
        for key in [k for k in self._listeners if k[0] == network and k[1] not in names]:
            self._call(self._close(key))

    def close(self, network: str) -> None:
        """Close every listener of a network (its connections end with it)."""
        self.keep(network, set())

    def close_all(self) -> None:
        """Close every listener and stop the relay thread."""
        for network in {k[0] for k in self._listeners}:
            self.close(network)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None

    def listening(self) -> list[tuple[str, str, int]]:
        """(network, service, port) of every open listener."""
        return sorted((k[0], k[1], v.service.port) for k, v in self._listeners.items())

    # on the relay thread ------------------------------------------------------------------
    async def _open(self, net: ServerNetwork, service: HostService) -> None:
        listener = _Listener(service, net.subnet)
        try:
            listener.server = await asyncio.start_server(
                lambda r, w: self._accept(listener, r, w), host=net.gateway, port=service.port
            )
        except OSError as exc:
            raise NetworkError(
                f"cannot relay host service {service.name!r} on {net.gateway}:{service.port} "
                f"for {net.server}: {exc} (a service listening on 0.0.0.0:{service.port} takes the "
                "port on every address, and every server could reach it: bind it to 127.0.0.1)"
            ) from exc
        self._listeners[(net.name, service.name)] = listener
        log.info(
            "relaying %s:%d (%s) to %s:%d for %s",
            net.gateway,
            service.port,
            service.name,
            service.host,
            service.port,
            net.server,
        )

    async def _close(self, key: tuple[str, str]) -> None:
        listener = self._listeners.pop(key, None)
        if listener is not None and listener.server is not None:
            listener.server.close()
            tasks = list(listener.tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(
        self, listener: _Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername") or ("", 0)
        if not _inside(peer[0], listener.subnet) or listener.open_connections >= self.max_connections:
            log.warning("refused a %s relay connection from %s", listener.service.name, peer[0])
            writer.close()
            return
        listener.open_connections += 1
        task = asyncio.current_task()
        assert task is not None
        listener.tasks.add(task)
        try:
            await self._relay(listener.service, reader, writer)
        finally:
            listener.open_connections -= 1
            listener.tasks.discard(task)
            writer.close()

    async def _relay(
        self, service: HostService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(service.host, service.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            log.warning("host service %s at %s:%d: %s", service.name, service.host, service.port, exc)
            return
        last = [time.monotonic()]
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, last),
                self._pump(up_reader, writer, last),
                return_exceptions=True,
            )
        finally:
            up_writer.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, last: list[float]
    ) -> None:
        """Copy until EOF, or until neither direction moved a byte for the idle timeout."""
        try:
            while True:
                try:
                    data = await asyncio.wait_for(source.read(CHUNK), self.idle_timeout)
                except TimeoutError:
                    if time.monotonic() - last[0] >= self.idle_timeout:
                        break
                    continue
                if not data:
                    break
                last[0] = time.monotonic()
                sink.write(data)
                try:  # a peer that never reads holds the copy no longer than the idle timeout
                    await asyncio.wait_for(sink.drain(), self.idle_timeout)
                except TimeoutError:
                    sink.close()
                    break
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if sink.can_write_eof():
                    sink.write_eof()
            if time.monotonic() - last[0] >= self.idle_timeout:
                sink.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._running_loop()).result(CALL_TIMEOUT)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._start:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="host-relays", daemon=True).start()
                self._loop = loop
            return self._loop


def _inside(address: str, subnet: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.IPv4Address(address) in subnet
    except ValueError:
        return False
