"""pipeline/proxy/ (relay.py, pool.py's RemotePool): forwarding to a remote server.

The remote is the TLS stand-in on 127.0.0.1 (tests/support/remote.py), allowed as a test's
deploy.yaml would allow it; real SDK clients talk to it through the real proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from pipeline import remote
from pipeline.proxy.router import Upstream
from tests.support import remote as remote_support
from tests.support import tls
from tests.support.proxy_rig import ACCEPT_BOTH, LEGACY, Rig, connect, jsonrpc, running_proxy, text_of
from tests.support.remote import TOKEN, StandIn, dialer


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[StandIn]:
    """The stand-in remote, wanting TOKEN."""
    with remote_support.stand_in(tmp_path) as running:
        yield running


def _route(rig: Rig, running: StandIn, host: str = "localhost", release: int = 1) -> Upstream:
    """Route `weather` to the stand-in, by `host`, with TOKEN as its secret header."""
    route = remote.route(running.url(host), {"Authorization": TOKEN})
    upstream = Upstream(
        "weather", release, f"remote:test:weather:r{release}", host, running.port, "/mcp", remote=route
    )
    rig.router.swap({"weather": upstream})
    return upstream


async def test_a_client_reaches_the_remote_with_the_secret_header_and_the_remotes_host(
    tmp_path: Path, stand_in: StandIn
) -> None:
    """An SDK client lists and calls tools on the remote, which gets TOKEN, never the client's key,
    and Host its own name."""
    with running_proxy(tmp_path, dialer=lambda: dialer(stand_in.cert.ca_file)) as rig:
        _route(rig, stand_in)
        async with connect(
            rig.url("weather"), mode="legacy", headers={"authorization": "Bearer client-key"}
        ) as client:
            assert client.protocol_version == LEGACY
            tools = await client.list_tools()
            assert "whoami" in {t.name for t in tools.tools}
            assert text_of(await client.call_tool("whoami", {})) == "weather"
    assert stand_in.app.seen and all(a == [TOKEN] for a in stand_in.app.values("authorization"))
    assert set(stand_in.app.hosts) == {f"localhost:{stand_in.port}"}


async def test_a_client_header_of_the_same_name_as_a_remote_header_is_dropped(
    tmp_path: Path, stand_in: StandIn
) -> None:
    """A client cannot add a second value to a header the manifest sets (here X-Api-Key)."""
    with running_proxy(tmp_path, dialer=lambda: dialer(stand_in.cert.ca_file)) as rig:
        route = remote.route(stand_in.url(), {"Authorization": TOKEN, "X-Api-Key": "ours"})
        rig.router.swap(
            {
                "weather": Upstream(
                    "weather", 1, "remote:t:weather:r1", "localhost", stand_in.port, "/mcp", remote=route
                )
            }
        )
        async with httpx2.AsyncClient() as http:
            answer = await http.post(
                rig.url("weather"), json=jsonrpc("tools/list"), headers={**ACCEPT_BOTH, "x-api-key": "theirs"}
            )
    assert answer.status_code == 400  # the stand-in's own answer (no session): the request reached it
    assert stand_in.app.values("x-api-key") == [["ours"]]


async def test_an_untrusted_certificate_is_a_502_and_nothing_is_sent(
    tmp_path: Path, stand_in: StandIn
) -> None:
    """With a CA that did not sign the remote's certificate, the proxy answers 502 naming the refusal."""
    _, _, other = tls.make_ca(tmp_path, "other-ca")
    before = len(stand_in.app.hosts)
    with running_proxy(tmp_path, dialer=lambda: dialer(other)) as rig:
        _route(rig, stand_in)
        async with httpx2.AsyncClient() as http:
            answer = await http.post(rig.url("weather"), json=jsonrpc("tools/list"), headers=ACCEPT_BOTH)
    assert answer.status_code == 502
    assert "not trusted" in answer.text
    assert len(stand_in.app.hosts) == before


async def test_a_remote_host_no_longer_allowed_is_refused_on_the_next_connection(
    tmp_path: Path, stand_in: StandIn
) -> None:
    """The address is checked on every new connection: with 127.0.0.1 not allowed, a 502 names loopback."""
    with running_proxy(tmp_path, dialer=lambda: dialer(stand_in.cert.ca_file, allow=())) as rig:
        _route(rig, stand_in, host="127.0.0.1")
        async with httpx2.AsyncClient() as http:
            answer = await http.post(rig.url("weather"), json=jsonrpc("tools/list"), headers=ACCEPT_BOTH)
    assert answer.status_code == 502
    assert "loopback" in answer.text
