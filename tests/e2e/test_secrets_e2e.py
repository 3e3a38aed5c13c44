"""End to end: server secrets come only from their own store, only as deploy.yaml grants them.

A real `serve` whose environment and `<state>/secrets.env` hold the provider's own credentials
(a webhook secret, a fetch token, the admin token, a `CENTRAL_MCP_*` variable) and whose
server-secret store holds a few server secrets, some granted and some not. Pushes are real `git
push` runs; the fixture server `secret-probe` prints whatever it is given, plain and encoded.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.dockerhost import DockerHost
from pipeline.secrets import MASK
from tests.support.provider import Provider, Push, VMSecrets, Workspace, running_provider

pytestmark = [pytest.mark.docker]

TOKEN = secrets.token_hex(8)
HOOK_SECRET = f"hook-secret-{TOKEN}"
FETCH_TOKEN = f"ghp_fetch{TOKEN}"
ADMIN_TOKEN = f"admin-{TOKEN}"
PROVIDER_VARIABLE = f"provider-variable-{TOKEN}"
# Characters that URL and JSON encodings change, so each encoding differs from the value.
LEAKY = f'p@ss/w0rd "{TOKEN}" +&=%ü\\end'
SCOPED = f"scoped-{TOKEN}"
MOVED = f"moved-{TOKEN}"
UNGRANTED = f"ungranted-{TOKEN}"
CREDENTIALS = {
    "E2E_HOOK_SECRET": HOOK_SECRET,
    "E2E_FETCH_TOKEN": FETCH_TOKEN,
    "E2E_ADMIN_TOKEN": ADMIN_TOKEN,
    "CENTRAL_MCP_E2E_CREDENTIAL": PROVIDER_VARIABLE,
}
HOOK = "{provider: github, secret_env: E2E_HOOK_SECRET, token_env: E2E_FETCH_TOKEN}"
ALIGNMENT_SKIP = (0, 2, 3)


@dataclass(frozen=True)
class VM:
    """The module's provider, its developer's clone, and the server the scoped grant names."""

    provider: Provider
    workspace: Workspace
    scoped_server: str


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[VM]:
    """A provider with credentials in its environment and secrets.env, and a server-secret store."""
    scoped_server = f"scoped-probe-{TOKEN[:6]}"
    setup = VMSecrets(
        store={"LEAKY_TOKEN": LEAKY, "SCOPED_TOKEN": SCOPED, "UNGRANTED_TOKEN": UNGRANTED},
        grants=("LEAKY_TOKEN", "MOVED_TOKEN", f"{{name: SCOPED_TOKEN, servers: [{scoped_server}]}}"),
        repo_extra=f"    webhook: {HOOK}\n",
        provider_file={"MOVED_TOKEN": MOVED, "E2E_HOOK_SECRET": HOOK_SECRET},
        env=CREDENTIALS,
    )
    root = tmp_path_factory.mktemp("secrets-e2e")
    with running_provider(root, docker_host, "admin_token_env: E2E_ADMIN_TOKEN\n", vm=setup) as provider:
        provider.names.add(scoped_server)
        workspace = provider.clone(root / "clone")
        workspace.put("echo")
        workspace.commit("a live server, so that every refused push has a branch to go back to")
        first = workspace.push()
        assert first.ok, first.output
        yield VM(provider, workspace, scoped_server)


@pytest.fixture
def synced_vm(vm: VM) -> VM:
    """The module's VM with its clone synced to the deploy branch."""
    vm.workspace.sync()
    return vm


@pytest.mark.parametrize("name", sorted(CREDENTIALS))
def test_a_manifest_naming_a_provider_credential_is_refused_before_any_build(
    synced_vm: VM, name: str
) -> None:
    """run.secrets naming a webhook secret, fetch token, admin token or CENTRAL_MCP_* variable fails the
    push before a build, naming the server, the secret and the fix; no container, no value shown."""
    provider, workspace = synced_vm.provider, synced_vm.workspace
    server = _put_leaker(synced_vm, "cred", [name])
    workspace.commit(f"a server that asks for {name}")

    push = workspace.push()

    assert not push.ok, push.output
    assert f"{name} is one of the provider's own credentials" in push.output, push.output
    assert f"servers/{server}/mcp-server.yaml" in push.output
    assert "central-mcp secret set" in push.output
    assert "build, start and gate" not in push.output
    assert provider.containers(server) == []
    _assert_nothing_shown(provider, push, CREDENTIALS[name])


def test_encodings_of_a_granted_secret_a_server_prints_are_masked(synced_vm: VM) -> None:
    """A server that prints its granted secret plain, base64 (three alignments), hex, URL- and JSON-
    encoded shows only **** for each in the pusher's output and in /deploys/<id>/log."""
    provider = synced_vm.provider
    server = _put_leaker(synced_vm, "leaky", ["LEAKY_TOKEN"])
    synced_vm.workspace.commit("a server that prints its secret encoded, then dies")

    push = synced_vm.workspace.push()

    assert not push.ok, push.output
    log = _log(provider, push.deploy_id)
    for form in ("plain", "b64", "b64-nopad", "b64url", "hex", "HEX", "url", "url-plus"):
        line = f"{server} (container) | leak LEAKY_TOKEN {form}: {MASK}"
        assert line in log, log
        assert line in push.output
    assert f'leak LEAKY_TOKEN json: {{"token": "{MASK}"}}' in log
    _assert_nothing_shown(provider, push, LEAKY)


def test_a_stored_secret_not_granted_is_refused(synced_vm: VM) -> None:
    """A secret the store holds but deploy.yaml does not grant fails the push, naming the grant to add."""
    provider = synced_vm.provider
    server = _put_leaker(synced_vm, "ungranted", ["UNGRANTED_TOKEN"])
    synced_vm.workspace.commit("a server that asks for an ungranted secret")

    push = synced_vm.workspace.push()

    assert not push.ok, push.output
    assert f"secret UNGRANTED_TOKEN is not granted to server {server!r}" in push.output, push.output
    assert "under repos[0].secrets add `- UNGRANTED_TOKEN`" in push.output
    assert provider.containers(server) == []
    _assert_nothing_shown(provider, push, UNGRANTED)


def test_a_secret_granted_to_another_server_is_refused(synced_vm: VM) -> None:
    """A grant to one server of a repo does not reach the repo's other servers."""
    server = _put_leaker(synced_vm, "other", ["SCOPED_TOKEN"])
    synced_vm.workspace.commit("a server that asks for another server's secret")

    push = synced_vm.workspace.push()

    assert not push.ok, push.output
    assert f"secret SCOPED_TOKEN is not granted to server {server!r}" in push.output, push.output
    assert synced_vm.provider.containers(server) == []
    _assert_nothing_shown(synced_vm.provider, push, SCOPED)


def test_a_secret_only_in_the_old_secrets_env_fails_saying_how_to_move_it(synced_vm: VM) -> None:
    """A granted secret that is only in <state>/secrets.env (the old place) is not given; the push
    fails telling the operator to move it with `central-mcp secret set`."""
    server = _put_leaker(synced_vm, "moved", ["MOVED_TOKEN"])
    synced_vm.workspace.commit("a server whose secret is still in secrets.env")

    push = synced_vm.workspace.push()

    assert not push.ok, push.output
    assert (
        f"server {server!r}: secret MOVED_TOKEN is granted but not in the server-secret store" in push.output
    )
    assert "`central-mcp secret set MOVED_TOKEN`" in push.output
    assert "secrets.env, which now holds only the provider's own credentials" in push.output
    assert synced_vm.provider.containers(server) == []
    _assert_nothing_shown(synced_vm.provider, push, MOVED)


def test_granted_secrets_reach_the_container_env_and_never_the_image(synced_vm: VM) -> None:
    """A repo-wide and a server-scoped grant reach the container's environment; the image's config and
    history hold neither value, no provider credential is in the container at all, and a tool
    description carrying a secret is masked in the deploy record and the registry."""
    provider = synced_vm.provider

    def change(data: dict[str, Any]) -> None:
        data["run"]["secrets"] = ["SCOPED_TOKEN", "LEAKY_TOKEN"]
        data["run"]["env"] = {"DESCRIBE_WITH": "SCOPED_TOKEN"}

    server = synced_vm.workspace.put("secret-probe", name=synced_vm.scoped_server, manifest=change)
    synced_vm.workspace.commit("a server with two granted secrets")

    push = synced_vm.workspace.push()

    assert push.ok, push.output
    [container_id] = provider.running(server)
    container = provider.docker.client.containers.get(container_id)
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert (env["SCOPED_TOKEN"], env["LEAKY_TOKEN"]) == (SCOPED, LEAKY)
    everything = json.dumps(container.attrs)
    for value in CREDENTIALS.values():
        assert value not in everything
    image = provider.docker.client.images.get(container.attrs["Config"]["Image"])
    layers = json.dumps([image.attrs, image.history()])
    for value in (SCOPED, LEAKY, *CREDENTIALS.values()):
        for form in _forms(value).values():
            assert form not in layers
    _assert_nothing_shown(provider, push, SCOPED)
    _assert_nothing_shown(provider, push, LEAKY)
    status, _, registry = provider.get(f"/registry.json?token={ADMIN_TOKEN}")
    assert status == 200 and server in registry, registry
    [entry] = [e for e in json.loads(registry)["servers"] if e["server"]["name"].endswith(f"/{server}")]
    tools = {t["name"]: t for t in entry["_meta"]["io.central-mcp/live"]["tools"]}
    assert tools["carried"]["description"] == f"key {MASK} ({MASK})"
    for form in _forms(SCOPED).values():
        assert form not in registry


def _put_leaker(vm: VM, base: str, names: list[str]) -> str:
    """A secret-probe asking for `names`, printing each encoded at start, then exiting."""

    def change(data: dict[str, Any]) -> None:
        data["run"]["secrets"] = names
        data["run"]["env"] = {"LEAK": ",".join(names), "EXIT_AT_START": "1"}

    return vm.workspace.put("secret-probe", name=vm.provider.name(base), manifest=change)


def _log(provider: Provider, deploy_id: int) -> str:
    status, _, body = provider.get(f"/deploys/{deploy_id}/log?token={ADMIN_TOKEN}")
    assert status == 200, body
    return body


def _assert_nothing_shown(provider: Provider, push: Push, value: str) -> None:
    """Neither `value` nor any encoding of it is in the push output, the log, or the deploy record."""
    status, _, record = provider.get(f"/deploys/{push.deploy_id}.json?token={ADMIN_TOKEN}")
    assert status == 200, record
    shown = {"push output": push.output, "log": _log(provider, push.deploy_id), "record": record}
    for where, text in shown.items():
        for form, encoded in _forms(value).items():
            assert encoded not in text, f"{form} of a secret in the {where}:\n{text}"


def _forms(value: str) -> dict[str, str]:
    """`value` and the encodings the probe prints, as the parts that depend on the value alone."""
    data = value.encode()
    forms = {
        "plain": value,
        "hex": data.hex(),
        "HEX": data.hex().upper(),
        "url": urllib.parse.quote(value, safe=""),
        "url-plus": urllib.parse.quote_plus(value),
        "json": json.dumps(value)[1:-1],
    }
    for alphabet, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
        for shift, skip in enumerate(ALIGNMENT_SKIP):
            encoded = encode(b"x" * shift + data).decode()
            forms[f"{alphabet}-at-{shift}"] = encoded[skip : 8 * (shift + len(data)) // 6]
    return forms
