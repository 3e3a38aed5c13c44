"""pipeline/gate.py over pipeline/remote.py: the MCP gate against a remote server, over verified TLS.

The stand-in remote is a real SDK server behind TLS on 127.0.0.1, its certificate signed by a CA
made in the test; deploy.yaml allows 127.0.0.1 as a remote host, as a test's deploy.yaml would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import checks, gate, remote
from pipeline.config.checkspec import Check, Expect
from pipeline.errors import CheckFailed, GateError, RemoteRefused
from tests.support import remote as remote_support
from tests.support import tls
from tests.support.loopback import mcp_app, serve_asgi
from tests.support.remote import TOKEN, StandIn, dialer


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """The stand-in remote: an SDK server over TLS on 127.0.0.1, wanting TOKEN."""
    with remote_support.stand_in(tmp_path_factory.mktemp("tls")) as running:
        yield running


def _gate(url: str, through: remote.Dialer, token: str = TOKEN, timeout: float = 5.0) -> gate.GateResult:
    """Gate `url` through a dialer, with Authorization `token`."""
    via = gate.Via(through.http, {"Authorization": token})
    return gate.wait_until_healthy(url, timeout=timeout, interval=0.05, via=via)


def test_a_remote_behind_the_configured_ca_passes_the_gate(
    stand_in: StandIn,
) -> None:
    """Over TLS verified against the configured CA, with the secret header and the remote's Host."""
    port, cert, app = stand_in.port, stand_in.cert, stand_in.app
    result = _gate(f"https://localhost:{port}/mcp", dialer(cert.ca_file))
    assert result.server_name == "server-weather"
    assert {t["name"] for t in result.tools} == {"whoami", "echo", "slow"}
    assert app.hosts[-1] == f"localhost:{port}"


def test_a_certificate_from_an_untrusted_ca_fails_at_once(stand_in: StandIn, tmp_path: Path) -> None:
    """A CA other than the server's refuses the certificate at once, not at the gate's deadline."""
    port = stand_in.port
    _, _, other_ca = tls.make_ca(tmp_path, "other-ca")
    with pytest.raises(RemoteRefused, match="TLS certificate not trusted"):
        _gate(f"https://127.0.0.1:{port}/mcp", dialer(other_ca), timeout=30)


def test_the_systems_cas_do_not_trust_the_test_ca(stand_in: StandIn) -> None:
    """Without remotes.ca_file the system's CAs are used, and they do not know the test's CA."""
    port = stand_in.port
    with pytest.raises(RemoteRefused, match="not trusted"):
        _gate(f"https://127.0.0.1:{port}/mcp", dialer(None))


def test_a_loopback_remote_not_allowed_is_refused_before_connecting(
    stand_in: StandIn,
) -> None:
    """127.0.0.1 not in remotes.allow_hosts: refused by the address guard, the server never asked."""
    port, cert, app = stand_in.port, stand_in.cert, stand_in.app
    before = len(app.hosts)
    with pytest.raises(RemoteRefused, match="loopback"):
        _gate(f"https://127.0.0.1:{port}/mcp", dialer(cert.ca_file, allow=()))
    assert len(app.hosts) == before


def test_a_remote_refusing_the_header_fails_the_gate_naming_the_status(
    stand_in: StandIn,
) -> None:
    """A wrong secret is a failed gate whose message says what the remote answered."""
    port, cert = stand_in.port, stand_in.cert
    with pytest.raises(GateError, match="HTTP 401"):
        _gate(f"https://127.0.0.1:{port}/mcp", dialer(cert.ca_file), token="Bearer wrong", timeout=0.5)


def test_a_remote_that_stopped_answering_fails_the_gate(tmp_path: Path) -> None:
    """Nothing listening at the remote's port: the gate fails at its deadline, naming the connection."""
    cert = tls.server_cert(tmp_path, "gone-ca", ["127.0.0.1"])
    with serve_asgi(
        mcp_app("gone"), ssl_certfile=str(cert.cert_file), ssl_keyfile=str(cert.key_file)
    ) as port:
        pass
    with pytest.raises(GateError, match="no MCP handshake within"):
        _gate(f"https://127.0.0.1:{port}/mcp", dialer(cert.ca_file), timeout=0.3)


def test_a_ca_file_adds_to_the_systems_cas(stand_in: StandIn) -> None:
    """remotes.ca_file adds its CA to the system's: a private remote is trusted and public ones stay so."""
    system = remote.tls_context(None).cert_store_stats()["x509_ca"]
    with_file = remote.tls_context(stand_in.cert.ca_file).cert_store_stats()["x509_ca"]
    assert system > 0 and with_file == system + 1


def test_read_only_checks_run_against_a_remote_over_verified_tls(stand_in: StandIn) -> None:
    """A remote's smoke check is called through the same checked, verified connection, with its header."""
    url = f"https://localhost:{stand_in.port}/mcp"
    via = gate.Via(dialer(stand_in.cert.ca_file).http, {"Authorization": TOKEN})
    result = gate.wait_until_healthy(url, timeout=5.0, interval=0.05, via=via)
    check = Check("echoes", "echo", {"text": "over tls"}, Expect(contains="over tls"), 5.0, True)
    assert checks.run(url, [check], result.tools, via=via) == [
        'check \'echoes\' (tools/call echo {"text": "over tls"}) passed'
    ]
    missed = Check("misses", "echo", {"text": "x"}, Expect(contains="nope"), 5.0, True)
    with pytest.raises(CheckFailed, match=r"check 'misses' .* expected text containing 'nope'"):
        checks.run(url, [missed], result.tools, via=via)
