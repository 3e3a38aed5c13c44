"""A second Docker node for tests: a dockerd in a network namespace of its own, joined as a swarm worker.

The namespace `cmsw<n>` sits behind a veth pair (host side 10.250.<n>.1/30, namespace side .2,
default route via the host side), so the worker reaches the manager's advertise address (a host
address) through the host, and the manager reaches the worker's 10.250.<n>.2 on 7946 and 4789/udp.
dockerd is started with `nsenter --net=` only (`ip netns exec` remounts /sys and dockerd then fails
"Devices cgroup isn't mounted"): it shares the host's mount namespace, so its mounts live under the
node's temp dir and are unmounted by close(). Its own data root, exec root, pidfile, socket, empty
daemon.json, cgroup parent and `--bip` keep it off the main engine's. Both daemons report the same
hostname: tell nodes apart by node ID. Needs root (ip netns, nsenter, mounts).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from pipeline.dockerhost import DockerHost

START_TIMEOUT = 60.0  # for the node's dockerd to answer
JOIN_TIMEOUT = 60.0  # for the manager to list the joined node as ready
LEAVE_TIMEOUT = 10.0  # for a graceful swarm leave in close()
KILL_TIMEOUT = 10.0  # for every process of a killed node to be gone
NODE_API_TIMEOUT = 120  # seconds: the node's docker client (an image load takes a few)
MAX_NODES = 50  # n in cmsw<n>: the first free one is taken
SWARM_PORT = 2377
CGROUP_ROOT = Path("/sys/fs/cgroup")


def require_manager(host: DockerHost) -> dict[str, Any]:
    """The engine's swarm state if it is a manager; else fail in CI, skip elsewhere."""
    state: dict[str, Any] = host.client.info().get("Swarm") or {}
    if state.get("LocalNodeState") == "active" and state.get("ControlAvailable"):
        return state
    why = "the Docker engine is no swarm manager: run `central-mcp engine --swarm` (.ci/run does)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why)
    pytest.skip(why)


class WorkerNode:
    """A swarm worker in namespace cmsw<n>: start(), load(images), kill() (it dies), close() (no trace)."""

    def __init__(
        self, manager: DockerHost, *, join: bool = True, start_timeout: float = START_TIMEOUT
    ) -> None:
        self.manager = manager
        self.join = join  # False: a bare engine in the namespace, in no swarm
        self.start_timeout = start_timeout
        self.n = _reserve_namespace()  # atomic (`ip netns add`): concurrent runs never share a cmsw<n>
        self.netns = f"cmsw{self.n}"
        self.host_if, self.ns_if = f"cmswh{self.n}", f"cmswn{self.n}"
        self.host_addr, self.address = f"10.250.{self.n}.1", f"10.250.{self.n}.2"
        self.bip = f"10.251.{self.n}.1/24"
        self.cgroup_parent = f"/cmsw{self.n}"  # absolute: under the root cgroup, not dockerd's
        self.root = Path(tempfile.mkdtemp(prefix=f"cmsw{self.n}-"))
        self.socket = self.root / "docker.sock"
        self.node_id = ""
        self.manager_addr = ""
        self.client: docker.DockerClient | None = None
        self._dockerd: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerNode:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Make the namespace and veth pair, start dockerd there, join the manager's swarm as a worker."""
        self.manager_addr = str(require_manager(self.manager)["NodeAddr"])
        self._network()
        self._start_dockerd()
        if self.join:
            self._join()

    def load(self, image_ids: Iterable[str]) -> None:
        """Copy images from the manager engine (docker save | docker load): they keep their IDs."""
        assert self.client is not None
        for image_id in image_ids:
            stream = self.manager.client.images.get(image_id).save(named=True)
            self.client.images.load(stream)  # type: ignore[arg-type]  # a chunk iterator streams; the stubs say bytes
            assert self.client.images.get(image_id).id == image_id

    def kill(self) -> None:
        """The node dies: SIGKILL dockerd, containerd, shims, containers: all in or under the namespace."""
        deadline = time.monotonic() + KILL_TIMEOUT
        while pids := self._processes():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            assert time.monotonic() < deadline, f"{self.netns}: processes {pids} outlived SIGKILL"
            time.sleep(0.05)
        if self._dockerd is not None:
            self._dockerd.wait()
            self._dockerd = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def close(self) -> None:
        """Leave, kill, remove the node from the swarm, and remove namespace, veth, mounts, cgroups, files."""
        if self.client is not None:
            with contextlib.suppress(docker.errors.DockerException, OSError):
                docker.DockerClient(base_url=f"unix://{self.socket}", timeout=int(LEAVE_TIMEOUT)).swarm.leave(
                    force=True
                )
        self.kill()
        if self.node_id:
            with contextlib.suppress(docker.errors.NotFound):
                self.manager.client.nodes.get(self.node_id).remove(force=True)
        _unmount_under(self.root)
        _remove_cgroups(self.cgroup_parent)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def manager_state(self) -> str:
        """The node's state as the manager sees it: ready, down, unknown, disconnected."""
        state: str = self.manager.client.nodes.get(self.node_id).attrs["Status"]["State"]
        return state

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the node's dockerd log (for failure messages)."""
        path = self.root / "dockerd.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def _network(self) -> None:
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _ip("link", "set", self.ns_if, "netns", self.netns)
        _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        # The host must speak to the worker from the manager's advertise address, as on a shared private
        # network: the worker's overlay FDB pins the manager's containers to that address, and the kernel
        # drops VXLAN packets from another source (vxlan_snoop: "don't migrate static entries").
        _ip("route", "add", f"{self.address}/32", "dev", self.host_if, "src", self.manager_addr)
        _ip("-n", self.netns, "addr", "add", f"{self.address}/30", "dev", self.ns_if)
        _ip("-n", self.netns, "link", "set", self.ns_if, "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")
        _ip("-n", self.netns, "route", "add", "default", "via", self.host_addr)

    def _start_dockerd(self) -> None:
        (self.root / "daemon.json").write_text("{}\n")
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            "dockerd",
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "docker.pid"),
            "--config-file", str(self.root / "daemon.json"),
            "--cgroup-parent", self.cgroup_parent,
            "--bip", self.bip,
            "-H", f"unix://{self.socket}",
        ]  # fmt: skip
        with (self.root / "dockerd.log").open("ab") as log:
            self._dockerd = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._dockerd.poll() is None, f"{self.netns}: dockerd exited:\n{self.log_tail()}"
            try:
                client = docker.DockerClient(base_url=f"unix://{self.socket}", timeout=NODE_API_TIMEOUT)
                client.ping()
                self.client = client
                return
            except docker.errors.DockerException:
                assert time.monotonic() < deadline, f"{self.netns}: dockerd silent:\n{self.log_tail()}"
                time.sleep(0.2)

    def _join(self) -> None:
        assert self.client is not None
        self.manager.client.swarm.reload()
        token = self.manager.client.swarm.attrs["JoinTokens"]["Worker"]
        self.client.swarm.join(
            remote_addrs=[f"{self.manager_addr}:{SWARM_PORT}"],
            join_token=token,
            listen_addr=f"{self.address}:{SWARM_PORT}",
            advertise_addr=self.address,
        )
        self.node_id = self.client.info()["Swarm"]["NodeID"]
        deadline = time.monotonic() + JOIN_TIMEOUT
        while self.manager_state() != "ready":
            assert time.monotonic() < deadline, f"{self.netns}: node {self.node_id} not ready on the manager"
            time.sleep(0.2)

    def _processes(self) -> list[int]:
        """Every process in the namespace, and every descendant of one (containers have their own netns)."""
        listed = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        roots = {int(pid) for pid in listed.stdout.split()}
        if self._dockerd is not None and self._dockerd.poll() is None:
            roots.add(self._dockerd.pid)
        return sorted(_with_descendants(roots))


def _reserve_namespace() -> int:
    for n in range(1, MAX_NODES + 1):
        if Path(f"/sys/class/net/cmswh{n}").exists():
            continue  # a veth left by a run that died: not ours to remove
        made = subprocess.run(["ip", "netns", "add", f"cmsw{n}"], capture_output=True, check=False)
        if made.returncode == 0:
            return n
    raise AssertionError(f"no free cmsw<n> network namespace among 1..{MAX_NODES}")


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr}"


def _with_descendants(roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _unmount_under(root: Path) -> None:
    """Unmount what the node's dockerd mounted under its temp dir (it shares the host's mounts)."""
    prefix = str(root.resolve()) + "/"
    for _ in range(3):
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        ours = sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True)
        if not ours:
            return
        for mount in ours:
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def _remove_cgroups(parent: str) -> None:
    """Remove the node's cgroup tree (`--cgroup-parent`) under every controller, deepest first."""
    for tree in CGROUP_ROOT.glob(f"*/{parent.lstrip('/')}"):
        for path in sorted(
            (p for p in tree.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            tree.rmdir()


@contextlib.contextmanager
def worker_node(manager: DockerHost) -> Iterator[WorkerNode]:
    """A started WorkerNode, closed (no trace) after."""
    with WorkerNode(manager) as node:
        yield node
