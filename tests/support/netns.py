"""Stand-in places to reach, made by the test itself: host listeners, a dummy address, a network namespace.

Isolation is proved against these, never against a real metadata or outside address: a listener
on an address of a spare interface stands for "another address of the host", and a network
namespace behind a veth pair, routed via the host, stands for "outside the VM" (with a
link-local address of its own for the metadata service). Every one answers `MARK` on connect.
Needs root (ip netns, ip link).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import firewall
from pipeline.config.settings import HostService, Settings
from tests.support.loopback import free_port

MARK = b"stand-in-ok"
CONNECT_TIMEOUT = 2.0
LISTENER = f"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall({MARK!r}); c.close()
"""
PROBE = """
import json, socket, sys
out = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    s = socket.socket(); s.settimeout(float(sys.argv[2]))
    try:
        s.connect((host, int(port)))
    except Exception as exc:
        out[target] = "closed:" + type(exc).__name__
        continue
    s.settimeout(0.5)
    try:
        out[target] = "open:" + s.recv(64).decode("latin-1")
    except Exception:
        out[target] = "open:"  # connected; this listener speaks only when spoken to (HTTP)
    finally:
        s.close()
print(json.dumps(out))
"""

EXCHANGE = """
import json, socket, sys, threading
targets, payload, timeout = json.loads(sys.argv[1]), sys.argv[2].encode("latin-1"), float(sys.argv[3])
out = {}
def one(target):
    host, port = target.rsplit(":", 1)
    s = socket.socket(); s.settimeout(timeout)
    try:
        s.connect((host, int(port)))
    except Exception as exc:
        out[target] = "closed:" + type(exc).__name__
        return
    got, end = b"", "timeout"
    try:
        if payload:
            s.sendall(payload)
        while len(got) < 4096:
            chunk = s.recv(4096)
            if not chunk:
                end = "eof"
                break
            got += chunk
    except socket.timeout:
        end = "timeout"
    except ConnectionResetError:
        end = "reset"
    except OSError as exc:
        end = type(exc).__name__
    finally:
        s.close()
    out[target] = "open:" + end + ":" + got[:2000].decode("latin-1")
threads = [threading.Thread(target=one, args=(t,)) for t in targets]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""


def ip(*args: str) -> None:
    """Run `ip ARGS` (fails the test on error)."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr}"


@contextlib.contextmanager
def host_listener(address: str, port: int) -> Iterator[None]:
    """A TCP listener of the host on `address:port` that answers MARK."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(16)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(MARK)

    thread = threading.Thread(target=serve, name=f"listener-{address}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.close()


@contextlib.contextmanager
def dummy_address(address: str) -> Iterator[str]:
    """`address` on an interface of the host's own (another host address, on no bridge): one end of
    a veth pair, as this kernel may lack the dummy driver."""
    name = f"cmt{secrets.token_hex(3)}"
    ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p")
    try:
        ip("addr", "add", f"{address}/32", "dev", name)
        ip("link", "set", name, "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


@dataclass(frozen=True)
class Outside:
    """A network namespace routed via the host: `address` and `link_local` both reach its listener."""

    address: str
    link_local: str
    port: int
    namespace: str = ""
    host_side: str = ""  # the host's address on the veth pair (the namespace's default gateway)
    device: str = ""  # the namespace's end of the veth pair


@contextlib.contextmanager
def outside(port: int, net: str = "198.51.100.128/30", link_local: str = "169.254.77.1") -> Iterator[Outside]:
    """A namespace behind a veth pair (host side .1 of `net`, namespace side .2), with `link_local`
    routed to it too, and a listener on `port` there."""
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"cmt-{tag}", f"cmth{tag}", f"cmtn{tag}"
    base = net.split("/")[0].rsplit(".", 1)
    host_addr, ns_addr = f"{base[0]}.{int(base[1]) + 1}", f"{base[0]}.{int(base[1]) + 2}"
    ip("netns", "add", ns)
    proc: subprocess.Popen[str] | None = None
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        ip("-n", ns, "addr", "add", f"{link_local}/32", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", host_addr)
        ip("route", "add", f"{link_local}/32", "via", ns_addr, "dev", host_if)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", LISTENER, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield Outside(ns_addr, link_local, port, ns, host_addr, ns_if)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "route", "del", f"{link_local}/32"], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def probe_from(container: Any, targets: list[str], timeout: float = CONNECT_TIMEOUT) -> dict[str, str]:
    """Connect from inside a running container to each `host:port`; "open:<greeting>" or "closed:<why>"."""
    code, output = container.exec_run(["python3", "-c", PROBE, json.dumps(targets), str(timeout)])
    text = output.decode("utf-8", "replace")
    assert code == 0, f"the probe failed in {container.name}: {text}"
    result: dict[str, str] = json.loads(text.strip().splitlines()[-1])
    return result


def probe_from_host(targets: list[str], timeout: float = CONNECT_TIMEOUT) -> dict[str, str]:
    """The same probe run by the host itself (to show a stand-in is really there)."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(targets), str(timeout)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@dataclass(frozen=True)
class GrantedService:
    """A host service `standin` on a free port of the host's 127.0.0.1, granted to one server."""

    settings: Settings  # what the firewall was installed for
    port: int
    config: str  # deploy.yaml text declaring the service and its grant


@contextlib.contextmanager
def granted_service(server: str) -> Iterator[GrantedService]:
    """Declare `standin` for `server` and open the firewall for its port; install the plain
    firewall again after (root)."""
    port = free_port()
    settings = Settings(
        config_path=Path("deploy.yaml"),
        state_dir=Path(".central-mcp"),
        host_services=(HostService("standin", "127.0.0.1", port, (server,)),),
    )
    service = {"address": f"127.0.0.1:{port}", "servers": [server]}
    config = yaml.safe_dump({"host_services": {"standin": service}})
    firewall.install(settings)
    try:
        yield GrantedService(settings, port, config)
    finally:
        firewall.install(Settings(config_path=Path("deploy.yaml"), state_dir=Path(".central-mcp")))


def exchange_from(
    container: Any, targets: list[str], payload: bytes = b"", timeout: float = CONNECT_TIMEOUT
) -> dict[str, str]:
    """From inside a running container, connect to every `host:port` at once, send `payload` and read
    till the peer ends: "closed:<why>" (no connection) or "open:<eof|reset|timeout>:<answer>"."""
    argv = ["python3", "-c", EXCHANGE, json.dumps(targets), payload.decode("latin-1"), str(timeout)]
    code, output = container.exec_run(argv)
    text = output.decode("utf-8", "replace")
    assert code == 0, f"the probe failed in {container.name}: {text}"
    result: dict[str, str] = json.loads(text.strip().splitlines()[-1])
    return result


def exchange_from_host(
    targets: list[str], payload: bytes = b"", timeout: float = CONNECT_TIMEOUT
) -> dict[str, str]:
    """The same exchange made by the host itself (to show what a target answers a peer it serves)."""
    argv = [sys.executable, "-c", EXCHANGE, json.dumps(targets), payload.decode("latin-1"), str(timeout)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    result: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


VXLAN_PORT = 4789  # the Swarm data plane (overlay traffic between nodes)


@contextlib.contextmanager
def vxlan_peer(there: Outside, vni: int, address: str) -> Iterator[str]:
    """In `there`'s namespace, a VXLAN device on `vni` towards the host (UDP 4789) holding `address`
    (CIDR, in an overlay's subnet): a machine outside the VM speaking the Swarm data plane to it."""
    device = "vx0"
    ns = there.namespace
    ip(
        "-n",
        ns,
        "link",
        "add",
        device,
        "type",
        "vxlan",
        "id",
        str(vni),
        "remote",
        there.host_side,
        "dstport",
        str(VXLAN_PORT),
    )
    try:
        ip("-n", ns, "addr", "add", address, "dev", device)
        ip("-n", ns, "link", "set", device, "up")
        yield device
    finally:
        subprocess.run(["ip", "-n", ns, "link", "del", device], capture_output=True, check=False)


def exchange_in(
    namespace: str, targets: list[str], payload: bytes = b"", timeout: float = CONNECT_TIMEOUT
) -> dict[str, str]:
    """The exchange made from inside network namespace `namespace` (a stand-in machine)."""
    argv = [sys.executable, "-c", EXCHANGE, json.dumps(targets), payload.decode("latin-1"), str(timeout)]
    proc = subprocess.run(
        ["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, check=True
    )
    result: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
