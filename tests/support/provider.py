"""End-to-end harness: a real `central-mcp serve`, its bare repo, and a developer's clone.

Nothing here is faked: the provider is a subprocess on a loopback port, pushes are real
`git push` runs whose pre-receive hook deploys into the real Docker engine, and MCP calls
go through the proxy with the official SDK client. Server names carry a per-run suffix so
that two runs (or a developer's own `make run`) sharing one engine never touch each
other's images or containers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import yaml
from mcp import Client

from pipeline.buildrules import SERVER_IMAGES
from pipeline.config.settings import ENGINE_PLAIN, ENGINE_SWARM
from pipeline.context import instance_id
from pipeline.dockerhost import LABEL_COMMIT, LABEL_INSTANCE, LABEL_SERVER, DockerHost
from pipeline.prepare import PACKAGE_CACHE
from pipeline.secrets import SECRETS_FILE, SERVER_SECRETS_DIR, SecretStore
from tests.support.loopback import free_port
from tests.support.swarmview import SwarmView, remove_swarm_leftovers

TESTS = Path(__file__).resolve().parents[1]
FIXTURES = TESTS / "fixtures" / "servers"
EXAMPLE = TESTS.parent / "servers" / "property-search"
SECRET_NAME = "FIXTURE_TOKEN"
SECRET_VALUE = "s3cr3t-value-123"
BRANCH = "main"
SERVE_START_TIMEOUT = 60.0
SERVE_STOP_TIMEOUT = 20.0
PUSH_TIMEOUT = 300.0
DEPLOY_URL = re.compile(r"deploy: (?P<url>\S+/deploys/(?P<id>\d+))")
CONFIG = """\
# Test VM: short drains so removed and replaced containers go away within seconds.
listen: {{host: 127.0.0.1, port: {config_port}}}
repos:
  - name: central-mcp
    branch: main
    manifests: ["servers/*/mcp-server.yaml"]
    secrets: [{grants}]
{repo_extra}proxy: {{{proxy}}}
build: {{{build}}}
"""
PROXY_TIMEOUTS = {"deploy_timeout": "2m", "drain_timeout": "2s"}
BUILD = {"parallel": "2", "network": "none"}


@dataclass(frozen=True)
class Push:
    """What the pusher saw: git's exit status and every line it printed (remote: lines included)."""

    returncode: int
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether git accepted the push."""
        return self.returncode == 0

    @property
    def deploy_id(self) -> int:
        """The deploy the hook reported in its `deploy: <url>` line."""
        found = DEPLOY_URL.search(self.output)
        assert found, f"no `deploy: <url>` line in the push output:\n{self.output}"
        return int(found["id"])

    @property
    def deploy_url(self) -> str:
        """The URL of the deploy's page, as printed to the pusher."""
        found = DEPLOY_URL.search(self.output)
        assert found, f"no `deploy: <url>` line in the push output:\n{self.output}"
        return found["url"]


@dataclass
class Provider:
    """A running `central-mcp serve` subprocess with its own config, state dir and bare repo."""

    root: Path
    config: Path
    state: Path
    port: int
    env: dict[str, str]
    docker: DockerHost
    suffix: str
    names: set[str] = field(default_factory=set)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """The provider's loopback URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def bare(self) -> Path:
        """The VM's bare repository (made by `init-repo`)."""
        return self.state / "repos" / "central-mcp.git"

    @property
    def instance(self) -> str:
        """The instance id its containers are labelled with."""
        return instance_id(self.state)

    def name(self, base: str) -> str:
        """The per-run server name for a fixture (recorded so teardown removes its images)."""
        name = f"{base}-{self.suffix}"
        self.names.add(name)
        return name

    def cli(self, *args: str, timeout: float = PUSH_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run `central-mcp --config <cfg> ...` as the operator would, output captured."""
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "--config", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def releases(self, server: str) -> dict[str, str]:
        """`central-mcp releases <server>` parsed into {release: status}."""
        result = self.cli("releases", server)
        assert result.returncode == 0, result.stdout + result.stderr
        return {line.split()[0]: line.split()[1] for line in result.stdout.splitlines() if line.strip()}

    def greeting(self, echo: str) -> str:
        """What the echo fixture `echo` answers through the proxy right now."""
        return str(self.call(echo, "greet", {"name": "Ada"})["greeting"])

    def get(self, path: str) -> tuple[int, str, str]:
        """GET a path of the provider; return (status, content type, body)."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as response:
                return response.status, response.headers.get("content-type", ""), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("content-type", ""), exc.read().decode()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, str, str]:
        """POST JSON to a path of the provider as an MCP client would; return (status, type, body)."""
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers.get("content-type", ""), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("content-type", ""), exc.read().decode()

    def deploy(self, deploy_id: int) -> dict[str, Any]:
        """The stored deploy record (`/deploys/<id>.json`)."""
        status, _, body = self.get(f"/deploys/{deploy_id}.json")
        assert status == 200, body
        record: dict[str, Any] = json.loads(body)
        return record

    def log(self, deploy_id: int) -> str:
        """The stored deploy log (`/deploys/<id>/log`)."""
        status, _, body = self.get(f"/deploys/{deploy_id}/log")
        assert status == 200, body
        return body

    def deploys(self) -> list[dict[str, Any]]:
        """Every deploy, newest first."""
        status, _, body = self.get("/deploys.json")
        assert status == 200, body
        found: list[dict[str, Any]] = json.loads(body)["deploys"]
        return found

    def last_deploy_id(self) -> int:
        """The newest deploy's id (0 when there is none)."""
        rows = self.deploys()
        return int(rows[0]["id"]) if rows else 0

    def call(self, server: str, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a tool through the proxy with the SDK client; return its structured result."""
        return asyncio.run(_call(f"{self.base}/mcp/{server}", tool, args or {}))

    def tool_names(self, server: str) -> list[str]:
        """List a server's tools through the proxy with the SDK client."""
        return asyncio.run(_tool_names(f"{self.base}/mcp/{server}"))

    def running(self, server: str) -> list[str]:
        """Ids of this instance's running containers of `server` (read from Docker labels)."""
        found = self.docker.containers({LABEL_INSTANCE: self.instance, LABEL_SERVER: server})
        return sorted(c.id for c in found if c.status == "running")

    def containers(self, server: str) -> list[str]:
        """Ids of every container of `server` in this instance, whatever its state."""
        return sorted(
            c.id for c in self.docker.containers({LABEL_INSTANCE: self.instance, LABEL_SERVER: server})
        )

    def container_names(self) -> list[str]:
        """Names of every container of this instance, running or not."""
        return sorted(c.name for c in self.docker.containers({LABEL_INSTANCE: self.instance}))

    def images_of_commit(self, commit: str) -> list[str]:
        """Tags of every image built from `commit` (images carry the commit label)."""
        images = self.docker.client.images.list(filters={"label": f"{LABEL_COMMIT}={commit}"})
        return sorted(tag for image in images for tag in image.tags)

    def branch(self, ref: str = f"refs/heads/{BRANCH}") -> str:
        """The bare repo's value of `ref` ('' when it does not exist)."""
        proc = subprocess.run(
            ["git", "-C", str(self.bare), "rev-parse", "--verify", "--quiet", ref],
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.stdout.strip()

    def has_object(self, sha: str) -> bool:
        """Whether the bare repo holds the object `sha` (quarantined objects do not count)."""
        proc = subprocess.run(
            ["git", "-C", str(self.bare), "cat-file", "-e", sha], capture_output=True, check=False
        )
        return proc.returncode == 0

    def clone(self, into: Path) -> Workspace:
        """A developer's clone of the bare repo, with an identity to commit with."""
        run_git(["clone", "--quiet", str(self.bare), str(into)], TESTS)
        ws = Workspace(into, self)
        ws.git("config", "user.name", "E2E Tester")
        ws.git("config", "user.email", "e2e@example.test")
        return ws

    def serve_log(self) -> str:
        """The serve process's own output (for failure messages)."""
        path = self.root / "serve.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def launch(self) -> subprocess.Popen[bytes]:
        """Start `serve` on this provider's port and state dir, its output appended to serve.log."""
        with (self.root / "serve.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pipeline",
                    "--config",
                    str(self.config),
                    "serve",
                    "--port",
                    str(self.port),
                ],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        return self.proc

    def start(self) -> None:
        """Start `serve` and wait until its /healthz answers."""
        proc = self.launch()
        wait_for("the provider's /healthz", lambda: _healthy(self, proc), SERVE_START_TIMEOUT)

    def kill(self) -> None:
        """`kill -9` the serve process, as a crash or the OOM killer would."""
        assert self.proc is not None and self.proc.poll() is None, "serve is not running"
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """Stop the serve process gracefully (SIGTERM) if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            _stop(self.proc)


@dataclass
class Workspace:
    """A developer's clone: put fixture servers into `servers/`, commit, push."""

    root: Path
    provider: Provider

    def git(self, *args: str) -> str:
        """Run git in the clone; return its stdout (fails the test on a non-zero exit)."""
        return run_git(list(args), self.root)

    def sync(self) -> None:
        """Make the clone equal the VM's deploy branch (drop rejected local commits)."""
        self.git("fetch", "--quiet", "--prune", "origin")
        if self.provider.branch():
            self.git("checkout", "--quiet", "-B", BRANCH, f"origin/{BRANCH}")
        self.git("clean", "--quiet", "-fdx")

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether commit `older` is an ancestor of `newer`."""
        proc = subprocess.run(
            ["git", "merge-base", "--is-ancestor", older, newer],
            cwd=self.root,
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    def put(
        self,
        fixture: str,
        *,
        name: str | None = None,
        env: dict[str, str] | None = None,
        manifest: Callable[[dict[str, Any]], None] | None = None,
    ) -> str:
        """Copy fixture server `fixture` into servers/ under its per-run name; return that name."""
        server = name or self.provider.name(fixture)
        target = self.root / "servers" / server
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(FIXTURES / fixture, target, ignore=shutil.ignore_patterns("__pycache__"))
        self._rewrite(target, server, env, manifest)
        return server

    def put_example(self) -> str:
        """Copy the real servers/property-search under a per-run name; return that name."""
        server = self.provider.name("property-search")
        target = self.root / "servers" / server
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self._rewrite(target, server, None, None)
        return server

    def remove(self, server: str) -> None:
        """Delete a server's folder."""
        shutil.rmtree(self.root / "servers" / server)

    def manifest_path(self, server: str) -> Path:
        """The path of a server's manifest in the clone."""
        return self.root / "servers" / server / "mcp-server.yaml"

    def commit(self, message: str) -> str:
        """Commit everything; return the new commit's sha."""
        self.git("add", "--all")
        self.git("commit", "--quiet", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD").strip()

    def push(self, *refspecs: str, force: bool = False) -> Push:
        """`git push origin <refspecs>` (default HEAD:main) as the developer runs it."""
        argv = ["git", "push", *(["--force"] if force else []), "origin", *(refspecs or (f"HEAD:{BRANCH}",))]
        started = time.monotonic()
        proc = subprocess.run(
            argv,
            cwd=self.root,
            env=self.provider.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=PUSH_TIMEOUT,
            check=False,
        )
        return Push(proc.returncode, proc.stdout, time.monotonic() - started)

    def start_push(self) -> subprocess.Popen[str]:
        """Start `git push origin HEAD:main` without waiting for it."""
        return subprocess.Popen(
            ["git", "push", "origin", f"HEAD:{BRANCH}"],
            cwd=self.root,
            env=self.provider.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def watch_push(self) -> WatchedPush:
        """Start `git push origin HEAD:main` and collect its output lines as they arrive."""
        return WatchedPush(self.start_push())

    def _rewrite(
        self,
        folder: Path,
        server: str,
        env: dict[str, str] | None,
        change: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        path = folder / "mcp-server.yaml"
        data = yaml.safe_load(path.read_text())
        data["name"] = server
        if env:
            data["run"]["env"] = {**data["run"].get("env", {}), **env}
        if change:
            change(data)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


class WatchedPush:
    """A `git push` in progress whose output is read line by line (to act in the middle of a deploy)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.started = time.monotonic()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="push-output", daemon=True)
        self._reader.start()

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Wait until the pusher has seen a line containing `text`; fail if the push ends first."""

        def seen() -> bool:
            found = any(text in line for line in self.lines)
            assert found or self._reader.is_alive(), (
                f"the push ended without a line containing {text!r}:\n" + "\n".join(self.lines)
            )
            return found

        wait_for(f"a push output line containing {text!r}", seen, timeout)

    def finish(self) -> Push:
        """Wait for the push to end and return what the pusher saw."""
        self.proc.wait(PUSH_TIMEOUT)
        self._reader.join(PUSH_TIMEOUT)
        return Push(self.proc.returncode, "\n".join(self.lines), time.monotonic() - self.started)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))


def finish(proc: subprocess.Popen[str], started: float) -> Push:
    """Wait for a push started with `Workspace.start_push`."""
    output, _ = proc.communicate(timeout=PUSH_TIMEOUT)
    return Push(proc.returncode, output, time.monotonic() - started)


def run_git(args: list[str], cwd: Path) -> str:
    """Run git; fail with its stderr on a non-zero exit."""
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(interval)


@dataclass(frozen=True)
class VMSecrets:
    """The secrets a test VM holds: the server-secret store, deploy.yaml's grants to the repo (YAML
    flow items), more keys of its repo entry, the provider's secrets.env and environment."""

    store: Mapping[str, str] = field(default_factory=lambda: {SECRET_NAME: SECRET_VALUE})
    grants: tuple[str, ...] = (SECRET_NAME,)
    repo_extra: str = ""
    provider_file: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


SWARM_CONFIG = "swarm: {start_timeout: 60s}\n"


@contextmanager
def running_provider(
    root: Path,
    docker: DockerHost,
    extra_config: str = "",
    proxy: Mapping[str, str] | None = None,
    build: Mapping[str, str] | None = None,
    vm: VMSecrets | None = None,
    package_cache: Path | None = None,
    engine: str = ENGINE_PLAIN,
) -> Iterator[Provider]:
    """Start a real `serve` subprocess with its own deploy.yaml (plus `extra_config`); clean up after.

    `engine: swarm` runs its replicas as Swarm services (the engine must be a swarm manager:
    `central-mcp engine --swarm`); the provider's `docker` then lists services as containers.

    `proxy` and `build` override or add keys of the config's `proxy:` and `build:` mappings
    (PROXY_TIMEOUTS and BUILD by default); values are YAML flow text. `vm` sets its secrets (by
    default FIXTURE_TOKEN, stored and granted to the repo). `package_cache`, when given, is the state
    dir's package cache (a link to it), so a package one test downloaded is not downloaded again.
    """
    vm = vm or VMSecrets()
    state = root / "state"
    state.mkdir(parents=True)
    if package_cache is not None:
        (state / PACKAGE_CACHE).symlink_to(package_cache, target_is_directory=True)
    for name, value in vm.store.items():
        SecretStore(state / SERVER_SECRETS_DIR).set(name, value)
    lines = "".join(f"{name}={value}\n" for name, value in vm.provider_file.items())
    (state / SECRETS_FILE).write_text(f"# the provider's own credentials\n{lines}")
    config = root / "deploy.yaml"
    # The config's own port differs from --port on purpose: what the pusher is told must follow
    # the port the provider really serves on.
    timeouts = ", ".join(f"{key}: {value}" for key, value in {**PROXY_TIMEOUTS, **(proxy or {})}.items())
    builds = ", ".join(f"{key}: {value}" for key, value in {**BUILD, **(build or {})}.items())
    text = CONFIG.format(
        config_port=free_port(),
        proxy=timeouts,
        build=builds,
        grants=", ".join(vm.grants),
        repo_extra=vm.repo_extra,
    )
    if engine == ENGINE_SWARM:
        text += f"engine: {ENGINE_SWARM}\n" + ("" if "\nswarm:" in f"\n{extra_config}" else SWARM_CONFIG)
        docker = SwarmView(docker.client)
    config.write_text(text + extra_config)
    env = {k: v for k, v in os.environ.items() if k != SECRET_NAME and not k.startswith("GIT_")}
    env.update({"CENTRAL_MCP_STATE_DIR": str(state), "GIT_TERMINAL_PROMPT": "0", "PYTHONUNBUFFERED": "1"})
    env.update(vm.env)
    provider = Provider(root, config, state, free_port(), env, docker, secrets.token_hex(3))
    try:
        provider.start()
        init = provider.cli("init-repo")
        assert init.returncode == 0, init.stderr
        yield provider
    finally:
        provider.stop()
        _remove_leftovers(provider)


async def _call(url: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    async with Client(url) as client:
        result = await client.call_tool(tool, args)
        assert not result.is_error, f"{tool} failed: {result.content}"
        assert result.structured_content is not None, f"{tool} gave no structured result"
        return dict(result.structured_content)


async def _tool_names(url: str) -> list[str]:
    async with Client(url) as client:
        return sorted(tool.name for tool in (await client.list_tools()).tools)


def _healthy(provider: Provider, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{provider.serve_log()}"
    try:
        return provider.get("/healthz")[0] == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(SERVE_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _remove_leftovers(provider: Provider) -> None:
    """Remove every container and network of this instance and every image of this run's servers."""
    if isinstance(provider.docker, SwarmView):
        remove_swarm_leftovers(provider.docker, provider.instance)
        provider.docker = DockerHost(provider.docker.client)  # the relay and its network are containers
    for container in provider.docker.containers({LABEL_INSTANCE: provider.instance}):
        container.remove(force=True)
    for network in provider.docker.networks({LABEL_INSTANCE: provider.instance}):
        provider.docker.remove_network(str(network["Name"]))
    for name in provider.names:
        for image in provider.docker.client.images.list(name=f"{SERVER_IMAGES}/{name}"):
            for tag in image.tags:
                if tag.startswith(f"{SERVER_IMAGES}/{name}:"):
                    with suppress(docker.errors.ImageNotFound):
                        provider.docker.client.images.remove(tag, force=True)
