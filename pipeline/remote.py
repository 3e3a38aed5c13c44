"""Remote servers: which addresses the provider may reach for one, and a verified TLS connection.

A remote's URL comes from a pushed manifest and the provider attaches a secret header to what it
sends there, so a manifest must not aim it at the VM: every address the host resolves to is checked
against the refused networks (loopback, private, link-local with cloud metadata, shared, multicast,
reserved, and deploy.yaml's network.pool and network.egress_deny) unless `remotes.allow_hosts`
lists the host. The check runs on every new connection, after DNS, and the socket goes to the
address that was checked (SNI and Host keep the name), so a name that re-resolves between the
check and the connect (DNS rebinding) gains nothing.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config.settings import Settings
from pipeline.errors import LookupTimedOut, RemoteRefused

HTTPS_PORT = 443
HTTP_PORT = 80
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]
HEADER_VALUE = re.compile(r"[\x20-\x7e\t]*")  # what a header value may hold: no line break, nothing else
# Metadata services reached at addresses `is_private`/`is_link_local` may not cover on every
# Python: AWS's IPv6 one, Alibaba's (in the shared 100.64/10 range).
RESOLVER_THREADS = 4  # lookups of distinct remote hosts at once (each host has one at a time)
_RESOLVER = ThreadPoolExecutor(RESOLVER_THREADS, thread_name_prefix="remote-resolve")
# Lookups in flight, shared by their callers.
_LOOKUPS: dict[tuple[str, int, Guard, Resolver], asyncio.Future[str]] = {}
METADATA = ("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32")


@dataclass(frozen=True)
class Guard:
    """The addresses a remote may not lead to, and the hosts deploy.yaml exempts."""

    pool: tuple[IPNetwork, ...] = ()  # named before the generic kinds: 10.213/16 is private too
    deny: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        """The guard deploy.yaml describes: its server pool and egress deny list refused too."""
        pool = (ipaddress.ip_network(settings.network.pool),)
        deny = tuple(ipaddress.ip_network(n) for n in settings.network.egress_deny)
        return cls(pool, deny, frozenset(settings.remotes.allow_hosts))

    def allows_host(self, host: str) -> bool:
        """Whether deploy.yaml exempts `host` (a name or a literal address) from the address check."""
        return _norm(host) in self.allow_hosts

    def why_refused(self, address: str) -> str | None:
        """What `address` is when a remote may not reach it (e.g. 'loopback'), else None."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for network in METADATA:
            if ip in ipaddress.ip_network(network):
                return "a cloud metadata address"
        if any(ip in network for network in self.pool if ip.version == network.version):
            return "the server network pool (network.pool)"
        kind = _kind(ip)
        if kind is None and any(ip in network for network in self.deny if ip.version == network.version):
            return "in network.egress_deny"
        return kind

    def check(self, host: str, addresses: Sequence[str]) -> None:
        """Refuse `host` when any address it resolved to is refused (and the host is not allowed)."""
        if self.allows_host(host):
            return
        for address in addresses:
            why = self.why_refused(address)
            if why is not None:
                shown = host if host == address else f"{host} resolves to {address}, which"
                raise RemoteRefused(
                    f"remote host {shown} is {why}: a remote server may not lead into the VM "
                    "(add the host to remotes.allow_hosts in deploy.yaml if it really is meant)"
                )


def literal_problem(host: str, guard: Guard) -> str | None:
    """Why a host written as an IP address is refused (no DNS asked), or None."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    try:
        guard.check(host, [host])
    except RemoteRefused as exc:
        return str(exc)
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to for a TCP connection (the system's resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve(host: str, port: int, guard: Guard, resolver: Resolver = system_resolver) -> str:
    """The checked address to connect to for `host`; RemoteRefused when it leads into the VM."""
    addresses = list(resolver(host, port))
    if not addresses:
        raise RemoteRefused(f"remote host {host} resolves to no address")
    guard.check(host, addresses)
    return addresses[0]


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies certificates and host names against the system's CAs and, when
    given, `ca_file`'s too: a private CA for one remote leaves public remotes trusted."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


@dataclass(frozen=True)
class Dialer:
    """How to open a connection to a remote: the guard, the resolver, TLS and the connect timeout."""

    guard: Guard
    context: ssl.SSLContext
    connect_timeout: float
    resolver: Resolver = system_resolver

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver = system_resolver) -> Dialer:
        """The dialer deploy.yaml describes."""
        context = tls_context(settings.remotes.ca_file)
        return cls(Guard.from_settings(settings), context, settings.remotes.connect_timeout, resolver)

    def connect(self, host: str, port: int, *, tls: bool = True) -> socket.socket:
        """A socket to `host`, at an address checked now, over verified TLS (SNI `host`) unless
        `tls` is False (plain http, which check allows only for a loopback host)."""
        address = _within(self.connect_timeout, resolve, host, port, self.guard, self.resolver)
        raw = socket.create_connection((address, port), timeout=self.connect_timeout)
        if not tls:
            return raw
        try:
            return self.context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise RemoteRefused(
                f"remote host {host}: TLS certificate not trusted ({exc.verify_message})"
            ) from exc
        except BaseException:
            raw.close()
            raise

    def http(self, url: str, timeout: float) -> http.client.HTTPConnection:
        """An http.client connection to `url`'s host that connects through this dialer."""
        parts = urlsplit(url)
        if parts.scheme == "https":
            return _TLSConnection(self, parts.hostname or "", parts.port or HTTPS_PORT, timeout)
        return _PlainConnection(self, parts.hostname or "", parts.port or HTTP_PORT, timeout)


class _TLSConnection(http.client.HTTPSConnection):
    """http.client over a Dialer: the address checked on each connect, TLS verified."""

    def __init__(self, dialer: Dialer, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=dialer.context)
        self.dialer = dialer

    def connect(self) -> None:
        self.sock = self.dialer.connect(self.host, self.port)
        self.sock.settimeout(self.timeout)


class _PlainConnection(http.client.HTTPConnection):
    """http.client over a Dialer without TLS: the address still checked on each connect."""

    def __init__(self, dialer: Dialer, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.dialer = dialer

    def connect(self) -> None:
        self.sock = self.dialer.connect(self.host, self.port, tls=False)
        self.sock.settimeout(self.timeout)


@dataclass(frozen=True)
class Route:
    """A remote server as the proxy reaches it: its name and port, TLS or not, the header lines it adds."""

    url: str
    headers: bytes = field(default=b"", repr=False)  # `name: value\r\n` lines, secret values included
    names: frozenset[bytes] = frozenset()  # those headers' names, lowercase: a client's are dropped

    @property
    def host(self) -> str:
        """The host name: what the address check, SNI and Host use."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The port, from the URL or its scheme."""
        parts = urlsplit(self.url)
        return parts.port or (HTTPS_PORT if parts.scheme == "https" else HTTP_PORT)

    @property
    def tls(self) -> bool:
        """Whether the remote is reached over TLS (always, but for an allowed loopback host)."""
        return urlsplit(self.url).scheme == "https"

    @property
    def authority(self) -> str:
        """The Host sent to the remote: its own name and port, as in the URL."""
        return urlsplit(self.url).netloc.rpartition("@")[2]

    @property
    def path(self) -> str:
        """The remote's MCP endpoint path."""
        return urlsplit(self.url).path or "/"


def route(url: str, headers: Mapping[str, str]) -> Route:
    """The proxy's route to a remote at `url` adding `headers` (values printable ASCII: the schema
    checks literal ones, launch.remote_headers secrets' values, before the gate)."""
    if not all(HEADER_VALUE.fullmatch(v) for v in headers.values()):
        raise ValueError("a header value holds a line break or a character outside printable ASCII")
    lines = b"".join(f"{name.lower()}: {value}\r\n".encode("latin-1") for name, value in headers.items())
    return Route(url, lines, frozenset(name.lower().encode("latin-1") for name in headers))


async def open_connection(
    dialer: Dialer, host: str, port: int, tls: bool, factory: Callable[[], asyncio.Protocol]
) -> asyncio.Protocol:
    """The proxy's connection to a remote: resolved and checked now, off the event loop, then
    connected to the checked address with TLS verified against the name."""
    address = await _resolved(dialer, host, port)
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await loop.create_connection(
            factory,
            address,
            port,
            ssl=dialer.context if tls else None,
            server_hostname=host if tls else None,
            ssl_handshake_timeout=dialer.connect_timeout if tls else None,
        )
    except ssl.SSLCertVerificationError as exc:
        raise RemoteRefused(
            f"remote host {host}: TLS certificate not trusted ({exc.verify_message})"
        ) from exc
    return protocol


async def _resolved(dialer: Dialer, host: str, port: int) -> str:
    """`resolve` off the loop, on the resolver's own threads, one lookup per host at a time: a remote
    whose name resolves slowly (its DNS is its owner's to make slow) holds one thread while its
    callers wait, never every thread that other remotes and the provider's pages use."""
    key = (host, port, dialer.guard, dialer.resolver)  # a reload's new guard looks up anew
    found = _LOOKUPS.get(key)
    if found is None:
        loop = asyncio.get_running_loop()
        found = asyncio.ensure_future(
            loop.run_in_executor(_RESOLVER, resolve, host, port, dialer.guard, dialer.resolver)
        )
        _LOOKUPS[key] = found
        found.add_done_callback(lambda _: _LOOKUPS.pop(key, None))
    return await asyncio.shield(found)


def _within(seconds: float, fn: Callable[..., str], *args: object) -> str:
    """`fn(*args)` on a daemon thread, waited for at most `seconds`: the system resolver takes no
    timeout, and a gate or probe must end by its deadline (a stuck lookup ends on its own)."""
    box: list[str | BaseException] = []

    def run() -> None:
        try:
            box.append(fn(*args))
        except BaseException as exc:  # handed to the caller below
            box.append(exc)

    thread = threading.Thread(target=run, name="remote-resolve", daemon=True)
    thread.start()
    thread.join(seconds)
    if not box:
        raise LookupTimedOut(f"resolving remote host {args[0]} took longer than {seconds:g}s")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _kind(ip: IPAddress) -> str | None:
    checks = (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("unspecified", ip.is_unspecified),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("shared address space (RFC 6598)", ip in ipaddress.ip_network("100.64.0.0/10")),
    )
    return next((name for name, hit in checks if hit), None)


def _norm(host: str) -> str:
    return host.lower().rstrip(".").strip("[]")
