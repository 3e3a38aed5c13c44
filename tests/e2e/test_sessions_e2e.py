"""End to end: an MCP session still belongs to the project key that opened it after serve restarts.

A real `serve` with two projects runs the stateful `streamer` fixture in Docker; sessions are opened
with one project's key over raw HTTP, serve is restarted (SIGTERM, and SIGKILL), and the other
project's key tries the old session id first — as an attacker who learned it would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest

from pipeline.dockerhost import DockerHost
from tests.support.provider import Provider, running_provider

pytestmark = pytest.mark.docker

PROJECTS = "projects: [{name: web}, {name: other}]\n"
LEGACY = "2025-11-25"
ACCEPT_BOTH = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
SESSION_GONE = -32001


@dataclass
class Site:
    """The provider, its streamer server, and a key of each project."""

    provider: Provider
    server: str
    web: str
    other: str

    def url(self) -> str:
        """The streamer's proxy URL."""
        return f"{self.provider.base}/mcp/{self.server}"

    def open_session(self, key: str) -> str:
        """Initialize a session with `key` (and send `initialized`); return its id."""
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY,
                "capabilities": {},
                "clientInfo": {"name": "e2e", "version": "1"},
            },
        }
        reply = httpx2.post(self.url(), headers=self._headers(key), content=json.dumps(init), timeout=30)
        assert reply.status_code == 200, reply.text
        session_id = reply.headers["mcp-session-id"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        sent = httpx2.post(
            self.url(), headers=self._headers(key, session_id), content=json.dumps(note), timeout=30
        )
        assert sent.status_code == 202, sent.text
        return session_id

    def whoami(self, key: str, session_id: str) -> httpx2.Response:
        """Call `whoami` in a session with `key`."""
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "whoami", "arguments": {}},
        }
        return httpx2.post(
            self.url(), headers=self._headers(key, session_id), content=json.dumps(call), timeout=30
        )

    @staticmethod
    def _headers(key: str, session_id: str = "") -> dict[str, str]:
        headers = {**ACCEPT_BOTH, "authorization": f"Bearer {key}", "mcp-protocol-version": LEGACY}
        if session_id:
            headers["mcp-session-id"] = session_id
        return headers


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, docker_host: DockerHost) -> Iterator[Site]:
    """A provider with projects `web` and `other`, the streamer live, a key of each."""
    with running_provider(
        tmp_path_factory.mktemp("sessions"), docker_host, extra_config=PROJECTS
    ) as provider:
        workspace = provider.clone(tmp_path_factory.mktemp("clone") / "work")
        server = workspace.put("streamer")
        workspace.commit("the streamer")
        push = workspace.push()
        assert push.ok, push.output
        yield Site(provider, server, _key(provider, "web"), _key(provider, "other"))


def _key(provider: Provider, project: str) -> str:
    made = provider.cli("keys", "create", project)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def _refused(reply: httpx2.Response) -> bool:
    return reply.status_code == 404 and reply.json()["error"]["code"] == SESSION_GONE


def test_after_a_restart_a_session_still_belongs_to_the_key_that_opened_it(site: Site) -> None:
    """After serve restarts, another project's key presenting a session id first is refused with 404,
    and the key that opened the session goes on using it."""
    session_id = site.open_session(site.web)
    assert site.whoami(site.web, session_id).status_code == 200
    assert _refused(site.whoami(site.other, session_id))
    site.provider.stop()
    site.provider.start()
    assert _refused(site.whoami(site.other, session_id)), "another project adopted the session"
    kept = site.whoami(site.web, session_id)
    assert kept.status_code == 200, kept.text
    assert "v1" in kept.text


def test_after_a_crash_an_unsaved_session_is_nobodys(site: Site) -> None:
    """A session opened just before serve is killed (its binding perhaps not saved yet) is never
    adopted by another project's key: the id is the key's own, or unknown (404, initialize again)."""
    session_id = site.open_session(site.web)
    site.provider.kill()
    site.provider.start()
    assert _refused(site.whoami(site.other, session_id)), "another project adopted the session"
    mine = site.whoami(site.web, session_id)
    assert mine.status_code == 200 or _refused(mine), mine.text
