"""pipeline/remote.py: the address guard for remote servers, and verified TLS connections."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline import remote
from pipeline.config import settings
from pipeline.errors import RemoteRefused


def _guard(allow: tuple[str, ...] = ()) -> remote.Guard:
    """The guard of default settings, with `allow` in remotes.allow_hosts."""
    return remote.Guard.from_settings(
        settings.Settings(
            config_path=Path("deploy.yaml"),
            state_dir=Path("state"),
            remotes=settings.RemotesConfig(allow_hosts=allow),
        )
    )


def _resolver(answers: dict[str, Sequence[str]]) -> remote.Resolver:
    """A resolver answering from `answers` (the DNS seam: no hosts file, no network)."""
    return lambda host, port: answers[host]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.10.1", "link-local"),
        ("10.213.4.2", "the server network pool (network.pool)"),
        ("10.0.0.1", "private"),
        ("172.17.0.1", "private"),
        ("192.168.0.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("100.64.0.1", "shared address space (RFC 6598)"),
        ("224.0.0.1", "multicast"),
    ],
)
def test_addresses_inside_the_vm_are_refused_naming_what_they_are(address: str, kind: str) -> None:
    """Loopback, metadata, link-local, the pool, private and other internal ranges are each named."""
    assert _guard().why_refused(address) == kind


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    """A public IPv4 or IPv6 address is not refused."""
    assert _guard().why_refused(address) is None


def test_a_name_resolving_to_a_private_address_is_refused_after_dns() -> None:
    """A public-looking name whose DNS answer is private is refused, naming name and address."""
    with pytest.raises(RemoteRefused, match=r"evil\.example resolves to 10\.1\.2\.3, which is private"):
        remote.resolve("evil.example", 443, _guard(), _resolver({"evil.example": ["10.1.2.3"]}))


def test_one_private_answer_among_public_ones_refuses_the_name() -> None:
    """A name with a public and an internal address is refused: the check does not pick and choose."""
    answers = _resolver({"mixed.example": ["93.184.215.14", "127.0.0.1"]})
    with pytest.raises(RemoteRefused, match="loopback"):
        remote.resolve("mixed.example", 443, _guard(), answers)


def test_a_public_name_resolves_to_its_checked_address() -> None:
    """The address returned (and connected to) is the one that was checked."""
    answers = _resolver({"ok.example": ["93.184.215.14"]})
    assert remote.resolve("ok.example", 443, _guard(), answers) == "93.184.215.14"


def test_an_allowed_host_may_resolve_inside_the_vm() -> None:
    """remotes.allow_hosts exempts exactly that host, case and trailing dot aside."""
    answers = _resolver({"Stand-In.test.": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    guard = _guard(("stand-in.test",))
    assert remote.resolve("Stand-In.test.", 443, guard, answers) == "127.0.0.1"
    with pytest.raises(RemoteRefused):
        remote.resolve("other.test", 443, guard, answers)


def test_every_connection_resolves_and_checks_again() -> None:
    """A name that turns internal after a first good answer (DNS rebinding) is refused on reconnect."""
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])

    def rebinding(host: str, port: int) -> Sequence[str]:
        return next(answers)

    guard = _guard()
    assert remote.resolve("rebind.example", 443, guard, rebinding) == "93.184.215.14"
    with pytest.raises(RemoteRefused, match="loopback"):
        remote.resolve("rebind.example", 443, guard, rebinding)


def test_literal_problems_need_no_dns() -> None:
    """check's literal test refuses 127.0.0.1 and the metadata address, and ignores names."""
    guard = _guard()
    assert "loopback" in (remote.literal_problem("127.0.0.1", guard) or "")
    assert "metadata" in (remote.literal_problem("169.254.169.254", guard) or "")
    assert remote.literal_problem("weather.example.com", guard) is None
    assert remote.literal_problem("127.0.0.1", _guard(("127.0.0.1",))) is None


def test_the_real_resolver_refuses_a_loopback_literal() -> None:
    """Through the system resolver, 127.0.0.1 (not allowed) is refused before any connect."""
    dialer = remote.Dialer(_guard(), remote.tls_context(None), 1.0)
    with pytest.raises(RemoteRefused, match="loopback"):
        dialer.connect("127.0.0.1", 443)
    with pytest.raises(RemoteRefused, match="metadata"):
        dialer.connect("169.254.169.254", 443)


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "tab\tok\n", "caf\u00e9"])
def test_a_header_value_with_a_line_break_or_non_ascii_makes_no_route(value: str) -> None:
    """No header can be smuggled into a request to a remote through a value."""
    with pytest.raises(ValueError, match="line break"):
        remote.route("https://w.example/mcp", {"Authorization": value})


def test_a_route_carries_its_headers_as_lines_and_their_names() -> None:
    """The proxy adds the lines as they are and drops a client's headers of those names."""
    route = remote.route("https://w.example:8443/mcp", {"Authorization": "Bearer t", "X-Client": "c"})
    assert route.headers == b"authorization: Bearer t\r\nx-client: c\r\n"
    assert route.names == frozenset({b"authorization", b"x-client"})
    assert (route.host, route.port, route.tls, route.authority, route.path) == (
        "w.example",
        8443,
        True,
        "w.example:8443",
        "/mcp",
    )


def test_a_lookup_that_hangs_ends_within_the_connect_timeout() -> None:
    """The system resolver takes no timeout; the dialer stops waiting after connect_timeout."""
    release = threading.Event()

    def stuck(host: str, port: int) -> Sequence[str]:
        release.wait(5)
        return ["93.184.215.14"]

    dialer = remote.Dialer(_guard(), remote.tls_context(None), 0.1, stuck)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"longer than 0\.1s"):
        dialer.connect("slow.example", 443)
    assert time.monotonic() - started < 1.0
    release.set()


def test_a_remote_slow_to_resolve_holds_one_lookup_not_the_event_loops_threads() -> None:
    """Many connections to a host whose DNS hangs share one lookup on the resolver's own threads:
    the loop's default executor (the pages' database reads) and a lookup of another remote go on."""
    release, asked = threading.Event(), []

    def resolver(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        if host == "slow.example":
            release.wait(10)
        return ["127.0.0.1"]

    async def run() -> float:
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        dialer = remote.Dialer(_guard(("fast.test",)), remote.tls_context(None), 5.0, resolver)

        async def slow() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await remote.open_connection(dialer, "slow.example", port, False, asyncio.Protocol)

        try:
            await asyncio.gather(*(slow() for _ in range(12)))
            started = time.monotonic()
            async with asyncio.timeout(3):
                await asyncio.to_thread(lambda: None)
                await remote.open_connection(dialer, "fast.test", port, False, asyncio.Protocol)
            return time.monotonic() - started
        finally:
            release.set()
            listener.close()

    assert asyncio.run(run()) < 1.0
    assert asked.count("slow.example") == 1
