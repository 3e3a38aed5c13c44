"""End to end: a stdio server runs under the same hardened container as every server, and each of
its per-session processes is confined to its own directory.

Real pushes into a real serve and the real Docker engine; the stdio-probe fixture's `probe` tool,
run by the process of one MCP session, tries to write, read, connect and signal. The container:
read-only root, 65534:65534, --init, every capability dropped, no-new-privileges, memory, CPU and
pids limits, its server's internal network. A session's process: its own HOME, TMPDIR and working
directory on the /tmp tmpfs; it cannot write or read another session's directory, write anywhere
else, read the bridge's environment, signal the bridge, or connect out of the VM (a server with
`run.network: egress` can).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client

from tests.support.loopback import free_port
from tests.support.netns import outside
from tests.support.provider import Provider, Workspace

pytestmark = pytest.mark.docker

NO_CAPS = "0000000000000000"
REFUSED = "refused: PermissionError"
LOOSE = ["/tmp/loose", "/dev/shm/loose", "/app/loose", "/loose"]  # outside any session's directory


@pytest.fixture(scope="module")
def probes(provider: Provider, workspace: Workspace) -> tuple[str, str]:
    """The stdio-probe fixture live twice: on an internal network, and with `run.network: egress`."""

    def egress(data: dict[str, Any]) -> None:
        data["run"]["network"] = "egress"

    internal = workspace.put("stdio-probe")
    outgoing = workspace.put("stdio-probe", name=provider.name("stdio-egress"), manifest=egress)
    workspace.commit("two stdio probes")
    push = workspace.push()
    assert push.ok, push.output
    return internal, outgoing


@asynccontextmanager
async def session(provider: Provider, server: str) -> AsyncIterator[Client]:
    """One MCP session (so one process of the server) through the proxy."""
    async with Client(f"{provider.base}/mcp/{server}") as client:
        yield client


async def probe(client: Client, **tries: list[str]) -> dict[str, Any]:
    """Run the fixture's probe tool in that session's process."""
    args = {"write": [], "read": [], "connect": [], **tries}
    result = await client.call_tool("probe", args)
    assert not result.is_error and result.structured_content is not None, result.content
    return dict(result.structured_content)


def container(provider: Provider, server: str) -> Any:
    """The one running container of `server`."""
    [found] = provider.running(server)
    return provider.docker.client.containers.get(found)


def test_a_stdio_servers_container_is_hardened_like_every_server(
    provider: Provider, probes: tuple[str, str]
) -> None:
    """Read-only root, user 65534:65534, --init, all caps dropped, no-new-privileges, memory, CPU and
    pids limits, a size-capped noexec /tmp, and an internal network of its own (egress only when asked)."""
    internal, outgoing = probes
    for server, internal_net in ((internal, True), (outgoing, False)):
        attrs = container(provider, server).attrs
        host = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "65534:65534"
        assert host["ReadonlyRootfs"] is True and host["Init"] is True
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
        assert host["SecurityOpt"] == ["no-new-privileges"] and host["Privileged"] is False
        assert host["Memory"] == 256 * 1024**2 and host["PidsLimit"] > 0 and host["CpuQuota"] > 0
        assert host["Tmpfs"]["/tmp"].startswith("rw,nosuid,nodev,noexec,uid=65534,gid=65534,size=")
        [network] = attrs["NetworkSettings"]["Networks"]
        assert network.endswith(server) or network.endswith(f"{server}.egress")
        assert provider.docker.network(network)["Internal"] is internal_net, network  # type: ignore[index]


def test_a_sessions_process_is_confined_to_its_own_directory(
    provider: Provider, probes: tuple[str, str]
) -> None:
    """Two sessions open at once: B's process runs as 65534 with no capabilities and its own HOME,
    TMPDIR and cwd under /tmp; it writes there and to /dev/null, but not into A's directory, /tmp,
    /dev/shm or the image; it cannot read A's file or the bridge's environment, nor signal the bridge.
    A's file is intact afterwards."""
    internal, _ = probes

    async def run() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with session(provider, internal) as a, session(provider, internal) as b:
            seen_a = await probe(a)
            home_a = seen_a["home"]
            wrote_a = await probe(a, write=[f"{home_a}/secret"])
            assert wrote_a["wrote"] == {f"{home_a}/secret": "ok"}
            first_b = await probe(b)
            home_b, bridge = first_b["home"], first_b["ppid"]
            seen_b = await probe(
                b,
                write=[f"{home_b}/mine", "/dev/null", f"{home_a}/intrusion", f"{home_a}/secret", *LOOSE],
                read=[f"{home_b}/mine", f"{home_a}/secret", f"/proc/{bridge}/environ", "/app/server.py"],
            )
            after_a = await probe(a, read=[f"{home_a}/secret", f"{home_a}/intrusion"])
            return seen_a, seen_b, after_a

    seen_a, seen_b, after_a = asyncio.run(run())
    home_a, home_b = seen_a["home"], seen_b["home"]
    assert home_a != home_b and seen_a["pid"] != seen_b["pid"]
    for seen in (seen_a, seen_b):
        assert (seen["uid"], seen["gid"]) == (65534, 65534)
        assert seen["home"].startswith("/tmp/session-") and seen["home"] == seen["tmpdir"] == seen["cwd"]
        assert seen["status"]["CapEff"] == NO_CAPS and seen["status"]["NoNewPrivs"] == "1"
    assert seen_b["wrote"] == {
        f"{home_b}/mine": "ok",
        "/dev/null": "ok",
        f"{home_a}/intrusion": REFUSED,
        f"{home_a}/secret": REFUSED,
        "/tmp/loose": REFUSED,
        "/dev/shm/loose": REFUSED,
        "/app/loose": "refused: OSError",  # the read-only root answers first (EROFS)
        "/loose": "refused: OSError",
    }
    assert seen_b["read"][f"{home_b}/mine"].startswith("ok: written by")
    assert seen_b["read"][f"{home_a}/secret"] == REFUSED
    assert seen_b["read"][f"/proc/{seen_b['ppid']}/environ"] == REFUSED
    assert seen_b["read"]["/app/server.py"].startswith("ok: ")
    assert seen_b["signalled_parent"] == REFUSED
    assert after_a["read"][f"{home_a}/secret"] == "ok: written by another session's process\n"
    assert after_a["read"][f"{home_a}/intrusion"] == "refused: FileNotFoundError"


def test_a_sessions_process_reaches_outside_only_with_egress(
    provider: Provider, probes: tuple[str, str]
) -> None:
    """A session's process of the internal server cannot connect to an address outside the VM (a
    namespace routed via the host); the same program with `run.network: egress` can."""
    internal, outgoing = probes

    async def run(server: str, target: str) -> str:
        async with session(provider, server) as client:
            return str((await probe(client, connect=[target]))["connected"][target])

    with outside(free_port()) as there:
        target = f"{there.address}:{there.port}"
        assert asyncio.run(run(internal, target)).startswith("refused")
        assert asyncio.run(run(outgoing, target)) == "ok"
