"""Who gets through the proxy: project keys, server scope, per-key rate limits, the Origin allow-list.

The real proxy runs with projects configured; keys are made with `create_key` in a real Store, and
the Gatekeeper's clock is the rig's, so key-cache expiry is tested without waiting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest

from pipeline.config.settings import Project
from pipeline.proxy.access import KEY_CACHE_SECONDS, create_key
from pipeline.proxy.router import Upstream
from tests.support.loopback import free_port
from tests.support.proxy_rig import (
    ACCEPT_BOTH,
    LEGACY,
    Recorder,
    Rig,
    connect,
    eventually,
    jsonrpc,
    raw_upstream,
    running_proxy,
    sdk_upstream,
    text_of,
)

APP_ORIGIN = "https://app.example"
PROJECTS = (
    Project("web", servers=("x", "down")),
    Project("other", servers=("y",)),
    Project("tight", servers=("all",), per_minute=6, burst=2),
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A proxy that requires keys (three projects) and allows one extra browser origin."""
    with running_proxy(tmp_path, projects=PROJECTS, allowed_origins=(APP_ORIGIN,)) as running:
        yield running


@pytest.fixture
def recorder(rig: Rig) -> Iterator[Recorder]:
    """A raw upstream live as `x`."""
    recording = Recorder()
    with raw_upstream("x", recording) as raw:
        rig.router.swap({"x": raw})
        yield recording


def _key(rig: Rig, project: str) -> str:
    return create_key(rig.store, rig.settings, project)


def _key_id(rig: Rig, token: str) -> str:
    """The stored id of a key (its public prefix)."""
    return next(str(k["id"]) for k in rig.store.api_keys() if token.startswith(str(k["id"])))


async def _post(rig: Rig, server: str, token: str = "", **headers: str) -> httpx2.Response:
    sent = {**ACCEPT_BOTH, **headers}
    if token:
        sent["authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient() as http:
        return await http.post(rig.url(server), headers=sent, content=json.dumps(jsonrpc("tools/list")))


async def test_request_without_a_key_gets_401_with_www_authenticate(rig: Rig, recorder: Recorder) -> None:
    """No Authorization, or not a Bearer one, answers 401 with a Bearer challenge; nothing is forwarded."""
    for reply in (await _post(rig, "x"), await _post(rig, "x", **{"authorization": "Basic dXNlcjpwYXNz"})):
        assert reply.status_code == 401
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert recorder.seen == []


async def test_401_says_a_project_key_is_needed_and_how_to_get_one(rig: Rig, recorder: Recorder) -> None:
    """Without a key, both the JSON body and WWW-Authenticate's error_description say that a project
    key is needed and name the command that makes one; the Bearer challenge clients start OAuth on stays."""
    for reply in (await _post(rig, "x"), await _post(rig, "x", "cmcp_" + "A" * 43)):
        assert reply.status_code == 401
        assert reply.headers["content-type"] == "application/json"
        message = reply.json()["error"]
        challenge = reply.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="central-mcp"')
        description = challenge.split('error_description="', 1)[1].rstrip('"')
        for text in (message, description):
            assert "project key" in text
            assert "central-mcp keys create <project>" in text
            assert "Authorization: Bearer" in text
        assert all(c not in description for c in '"\\'), "RFC 6750: no quote or backslash inside"
    missing, unknown = await _post(rig, "x"), await _post(rig, "x", "cmcp_" + "A" * 43)
    assert "error=" not in missing.headers["www-authenticate"].replace("error_description", "")
    assert 'error="invalid_token"' in unknown.headers["www-authenticate"]


async def test_unknown_key_gets_401(rig: Rig, recorder: Recorder) -> None:
    """A well-formed key that was never issued answers 401."""
    reply = await _post(rig, "x", "cmcp_" + "A" * 43)
    assert reply.status_code == 401
    assert "unknown or revoked" in reply.json()["error"]


async def test_valid_key_is_forwarded_without_its_authorization(rig: Rig, recorder: Recorder) -> None:
    """A key of a project allowed on `x` is forwarded, and the upstream never sees the key."""
    token = _key(rig, "web")
    reply = await _post(rig, "x", token)
    assert reply.status_code == 200
    (seen,) = recorder.seen
    assert "authorization" not in seen.headers
    assert token not in json.dumps(seen.headers)


async def test_revoked_key_gets_401(rig: Rig, recorder: Recorder) -> None:
    """A key revoked before use answers 401 at once."""
    token = _key(rig, "web")
    assert rig.store.revoke_key(_key_id(rig, token))
    assert (await _post(rig, "x", token)).status_code == 401


async def test_revoked_key_in_use_gets_401_once_the_key_cache_expires(rig: Rig, recorder: Recorder) -> None:
    """A key revoked while in use keeps working for at most KEY_CACHE_SECONDS, then answers 401."""
    token = _key(rig, "web")
    assert (await _post(rig, "x", token)).status_code == 200
    assert rig.store.revoke_key(_key_id(rig, token))
    assert (await _post(rig, "x", token)).status_code == 200, "cached for up to KEY_CACHE_SECONDS"
    rig.clock.advance(KEY_CACHE_SECONDS + 0.1)
    assert (await _post(rig, "x", token)).status_code == 401


async def test_key_of_a_project_not_allowed_on_the_server_gets_403(rig: Rig, recorder: Recorder) -> None:
    """A key whose project does not list `x` answers 403 naming the project and the server."""
    reply = await _post(rig, "x", _key(rig, "other"))
    assert reply.status_code == 403
    assert "'other'" in reply.json()["error"] and "'x'" in reply.json()["error"]
    assert recorder.seen == []


async def test_server_whose_manifest_excludes_the_project_gets_403(rig: Rig) -> None:
    """A server whose manifest access list omits the project answers 403 even if deploy.yaml allows it."""
    with raw_upstream("x", Recorder()) as raw:
        rig.router.swap({"x": replace(raw, access=("ops",))})
        assert (await _post(rig, "x", _key(rig, "web"))).status_code == 403


async def test_session_opened_with_one_key_gets_404_with_another(rig: Rig) -> None:
    """A session opened with key K1 answers 404 when presented with K2 of the same project; K1 still works."""
    k1, k2 = _key(rig, "web"), _key(rig, "web")
    with sdk_upstream("x", "A") as a:
        rig.router.swap({"x": a})
        responses: list[httpx2.Response] = []
        async with connect(
            rig.url("x"), mode="legacy", headers={"authorization": f"Bearer {k1}"}, statuses=responses
        ) as client:
            assert text_of(await client.call_tool("whoami")) == "A"
            session_id = responses[0].headers["mcp-session-id"]
            stolen = await _post(rig, "x", k2, **{"mcp-session-id": session_id})
            assert stolen.status_code == 404
            assert text_of(await client.call_tool("whoami")) == "A"


async def _open_session(http: httpx2.AsyncClient, url: str, token: str) -> str:
    """Open a session with a raw initialize + initialized under `token`; return its id."""
    auth = {"authorization": f"Bearer {token}"}
    init = jsonrpc(
        "initialize",
        {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    )
    reply = await http.post(url, headers={**ACCEPT_BOTH, **auth}, content=json.dumps(init))
    session_id = reply.headers["mcp-session-id"]
    headers = {**ACCEPT_BOTH, **auth, "mcp-session-id": session_id, "mcp-protocol-version": LEGACY}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert (await http.post(url, headers=headers, content=json.dumps(note))).status_code == 202
    return session_id


async def test_a_second_session_header_cannot_reach_another_keys_session(rig: Rig) -> None:
    """A request carrying its own session id and, first, another key's gets no further than its own:
    the proxy checked the last one while a server reads the first, so K2 ended K1's session."""
    k1, k2 = _key(rig, "web"), _key(rig, "web")
    with sdk_upstream("x", "A") as a:
        rig.router.swap({"x": a})
        async with httpx2.AsyncClient(timeout=30) as http:
            s1 = await _open_session(http, rig.url("x"), k1)
            s2 = await _open_session(http, rig.url("x"), k2)
            both = [
                ("authorization", f"Bearer {k2}"),
                ("mcp-session-id", s1),
                ("mcp-session-id", s2),
                ("mcp-protocol-version", LEGACY),
            ]
            await http.delete(rig.url("x"), headers=both)
            mine = {**ACCEPT_BOTH, "authorization": f"Bearer {k1}", "mcp-session-id": s1}
            still = await http.post(
                rig.url("x"),
                headers={**mine, "mcp-protocol-version": LEGACY},
                content=json.dumps(jsonrpc("tools/list")),
            )
    assert still.status_code == 200, "K2 ended the session of K1"


async def test_rate_limit_answers_429_with_retry_after(rig: Rig, recorder: Recorder) -> None:
    """With burst 2 and 6/minute the third quick request answers 429 with Retry-After of ~10 s."""
    token = _key(rig, "tight")
    statuses = [(await _post(rig, "x", token)).status_code for _ in range(2)]
    limited = await _post(rig, "x", token)
    assert statuses == [200, 200]
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 10
    assert len(recorder.seen) == 2
    rig.clock.advance(10.0)
    assert (await _post(rig, "x", token)).status_code == 200


async def test_rate_limit_is_per_key(rig: Rig, recorder: Recorder) -> None:
    """One key at its limit does not slow another key of the same project."""
    first, second = _key(rig, "tight"), _key(rig, "tight")
    for _ in range(3):
        await _post(rig, "x", first)
    assert (await _post(rig, "x", first)).status_code == 429
    assert (await _post(rig, "x", second)).status_code == 200


async def test_origin_not_allowed_gets_403(rig: Rig, recorder: Recorder) -> None:
    """A browser Origin outside the allow-list answers 403 before the key is even looked at."""
    reply = await _post(rig, "x", _key(rig, "web"), origin="https://evil.example")
    assert reply.status_code == 403
    assert "https://evil.example" in reply.json()["error"]
    assert recorder.seen == []


@pytest.mark.parametrize("origin", ["null", "app.example", "file://"])
async def test_an_allowed_origin_written_without_a_scheme_lets_no_opaque_origin_in(
    tmp_path: Path, origin: str
) -> None:
    """`allowed_origins: [app.example]` (a host, no scheme) is a slip that matched `Origin: null`, which
    every sandboxed frame and data: page on any site sends: with open access, any web page could call
    every server. A schemeless entry and an opaque origin match nothing."""
    recording = Recorder()
    with (
        running_proxy(tmp_path, allowed_origins=("app.example",)) as rig,
        raw_upstream("x", recording) as raw,
    ):
        rig.router.swap({"x": raw})
        reply = await _post(rig, "x", origin=origin)
    assert reply.status_code == 403
    assert recording.seen == []


@pytest.mark.parametrize("origin", [APP_ORIGIN, "HTTPS://APP.EXAMPLE", "http://127.0.0.1:8900"])
async def test_allowed_origin_passes(rig: Rig, recorder: Recorder, origin: str) -> None:
    """An Origin on the allow-list (any case), or the provider's own base URL, is forwarded."""
    assert (await _post(rig, "x", _key(rig, "web"), origin=origin)).status_code == 200


async def test_allowed_origin_reaches_a_guarded_sdk_server(rig: Rig) -> None:
    """A browser client from an allowed origin can use an SDK server that keeps its rebinding guard on."""
    with sdk_upstream("x", "P", protect=True) as guarded:
        rig.router.swap({"x": guarded})
        headers = {"authorization": f"Bearer {_key(rig, 'web')}", "origin": APP_ORIGIN}
        async with connect(rig.url("x"), mode="legacy", headers=headers) as client:
            assert text_of(await client.call_tool("whoami")) == "P"


async def test_browser_preflight_from_an_allowed_origin_needs_no_key(rig: Rig, recorder: Recorder) -> None:
    """A CORS preflight from an allowed origin answers 204 without a key; answers expose the session id."""
    async with httpx2.AsyncClient() as http:
        preflight = await http.request(
            "OPTIONS",
            rig.url("x"),
            headers={
                "origin": APP_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type, mcp-session-id",
            },
        )
        refused = await http.request("OPTIONS", rig.url("x"), headers={"origin": "https://evil.example"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "mcp-session-id" in preflight.headers["access-control-allow-headers"]
    assert refused.status_code == 403 and recorder.seen == []
    answer = await _post(rig, "x", _key(rig, "web"), origin=APP_ORIGIN)
    assert answer.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "Mcp-Session-Id" in answer.headers["access-control-expose-headers"]


async def test_without_projects_access_is_open(tmp_path: Path) -> None:
    """With no projects in deploy.yaml no key is needed, and an Authorization header is still dropped."""
    recorder = Recorder()
    with running_proxy(tmp_path) as rig, raw_upstream("x", recorder) as raw:
        rig.router.swap({"x": raw})
        assert (await _post(rig, "x")).status_code == 200
        assert (await _post(rig, "x", "anything")).status_code == 200
    assert all("authorization" not in seen.headers for seen in recorder.seen)


async def test_usage_flush_saves_requests_and_errors_per_key_and_server(rig: Rig, recorder: Recorder) -> None:
    """Forwarded requests are counted per key and server; 5xx answers count as errors; denials are not."""
    web, tight = _key(rig, "web"), _key(rig, "tight")
    rig.router.swap({"down": Upstream("down", 1, "gone", "127.0.0.1", free_port(), "/mcp")})
    for _ in range(3):
        assert (await _post(rig, "x", web)).status_code == 200
    assert (await _post(rig, "down", web)).status_code == 502
    assert (await _post(rig, "x", tight)).status_code == 200
    assert (await _post(rig, "x", _key(rig, "other"))).status_code == 403
    flushed: list[int] = []

    def saved() -> int:
        flushed.append(rig.usage.flush())
        return sum(int(r["requests"]) for r in rig.store.usage())

    assert await eventually(lambda: saved() == 5)
    assert sum(flushed) == 3, "one row per (key, server)"
    web_id, tight_id = _key_id(rig, web), _key_id(rig, tight)
    rows = {(r["key_id"], r["server"]): r for r in rig.store.usage()}
    assert {k: (r["project"], r["requests"], r["errors"]) for k, r in rows.items()} == {
        (web_id, "x"): ("web", 3, 0),
        (web_id, "down"): ("web", 1, 1),
        (tight_id, "x"): ("tight", 1, 0),
    }
    assert rig.usage.flush() == 0
    await _post(rig, "x", web)
    assert await eventually(lambda: saved() == 6), "a later flush adds to the saved counts"
    assert rows[(web_id, "x")]["requests"] == 3
    assert next(r for r in rig.store.usage() if (r["key_id"], r["server"]) == (web_id, "x"))["requests"] == 4
