"""The aggregate endpoint `/mcp` as SDK clients see it: both eras, namespaced tools routed to the
right server through the proxy, progress, per-project selection, lazy upstream sessions, swaps.

Every test runs the real proxy on loopback with real SDK servers behind it (tests/support).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import CreateMessageResult, PromptReference, TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pipeline.config.settings import AggregateConfig, Project
from pipeline.proxy import replies
from pipeline.proxy.access import create_key
from pipeline.proxy.catalog import MAX_NAME, public_name
from pipeline.proxy.router import Upstream
from tests.support import ts_sdk
from tests.support.loopback import serve_asgi
from tests.support.proxy_rig import (
    ACCEPT_BOTH,
    LEGACY,
    MODERN,
    Recorder,
    Rig,
    connect,
    eventually,
    jsonrpc,
    raw_upstream,
    rich_upstream,
    running_proxy,
    sdk_upstream,
    text_of,
    upstream,
)

TOOLS = ("echo", "slow", "whoami")  # what every sdk_app serves
PROJECTS = (
    Project("web", servers=("a", "b")),
    Project("picky", servers=("all",), tools_allow=("a", "b:whoami"), tools_deny=("a:slow",)),
    Project("other", servers=("c",)),
    Project("tight", servers=("all",), per_minute=6, burst=2),
)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A proxy with open access (no projects), as the provider serves it."""
    with running_proxy(tmp_path) as running:
        yield running


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[Rig]:
    """A proxy whose keys belong to PROJECTS."""
    with running_proxy(tmp_path, projects=PROJECTS) as running:
        yield running


def serve(rig: Rig, stack: ExitStack, *names: str, **options: Any) -> dict[str, Upstream]:
    """Start an SDK server per name (its `whoami` answers the name in capitals) and route them."""
    ups = {n: stack.enter_context(sdk_upstream(n, n.upper(), **options)) for n in names}
    rig.router.swap(dict(ups))
    return ups


def bearer(rig: Rig, project: str) -> dict[str, str]:
    """Headers carrying a fresh key of `project`."""
    return {"authorization": f"Bearer {create_key(rig.store, rig.settings, project)}"}


def names(listed: Any) -> set[str]:
    """The tool names of a tools/list result."""
    return {t.name for t in listed.tools}


# both eras --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,version", [("legacy", LEGACY), ("auto", MODERN)], ids=["session", "stateless"])
async def test_tools_of_every_server_are_listed_namespaced_and_calls_reach_their_server(
    rig: Rig, mode: str, version: str
) -> None:
    """tools/list is the union of the live servers' tools as `<server>__<tool>`; a call reaches the
    server its name says, in both eras (the negotiated version asserted)."""
    with ExitStack() as stack:
        serve(rig, stack, "a", "b")
        async with connect(rig.endpoint, mode=mode) as client:
            assert client.protocol_version == version
            listed = await client.list_tools()
            assert names(listed) == {f"{s}__{t}" for s in "ab" for t in TOOLS}
            echo = next(t for t in listed.tools if t.name == "a__echo")
            assert "Return the text unchanged." in (echo.description or "") and "a" in (echo.title or "")
            assert text_of(await client.call_tool("a__whoami")) == "A"
            assert text_of(await client.call_tool("b__whoami")) == "B"
            assert text_of(await client.call_tool("b__echo", {"text": "hi"})) == "hi"


async def test_progress_of_a_tool_streams_through_the_aggregate(rig: Rig) -> None:
    """A tool's progress notifications reach the client while the call runs."""
    with ExitStack() as stack:
        serve(rig, stack, "a")
        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        async with connect(rig.endpoint, mode="legacy") as client:
            result = await client.call_tool(
                "a__slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress
            )
    assert text_of(result) == "A"
    assert seen == [1, 2, 3]


async def test_unknown_tool_is_a_jsonrpc_error_not_a_server_error(rig: Rig) -> None:
    """A name no live server serves gets a JSON-RPC error naming it."""
    with ExitStack() as stack:
        serve(rig, stack, "a")
        async with connect(rig.endpoint, mode="legacy") as client:
            with pytest.raises(MCPError, match="zz__echo"):
                await client.call_tool("zz__echo", {"text": "x"})


# projects ---------------------------------------------------------------------------------------
async def test_a_projects_key_sees_only_its_servers(keyed: Rig) -> None:
    """A key of `web` lists and calls only a and b; c (another project's) is absent and refused."""
    with ExitStack() as stack:
        serve(keyed, stack, "a", "b", "c")
        async with connect(keyed.endpoint, headers=bearer(keyed, "web")) as client:
            assert names(await client.list_tools()) == {f"{s}__{t}" for s in "ab" for t in TOOLS}
            with pytest.raises(MCPError, match="c__whoami"):
                await client.call_tool("c__whoami")
        async with connect(keyed.endpoint, headers=bearer(keyed, "other")) as client:
            assert names(await client.list_tools()) == {f"c__{t}" for t in TOOLS}
            assert text_of(await client.call_tool("c__whoami")) == "C"


async def test_denied_tools_are_absent_and_a_call_to_one_is_refused(keyed: Rig) -> None:
    """`tools: {allow: [a, b:whoami], deny: [a:slow]}` lists a's tools but slow, and b's whoami; a
    call to a denied tool is a JSON-RPC error (HTTP 200), not a 500."""
    with ExitStack() as stack:
        serve(keyed, stack, "a", "b")
        headers = bearer(keyed, "picky")
        async with connect(keyed.endpoint, headers=headers) as client:
            assert names(await client.list_tools()) == {"a__echo", "a__whoami", "b__whoami"}
            with pytest.raises(MCPError, match="not allowed for project 'picky'"):
                await client.call_tool("a__slow", {"seconds": 0, "steps": 1})
            assert text_of(await client.call_tool("b__whoami")) == "B"


async def test_a_reload_that_changes_a_projects_tools_takes_effect_at_once(keyed: Rig) -> None:
    """deploy.yaml reloaded with `picky` denying one more tool: the connected client hears
    tools/list_changed, its next tools/list lacks the tool and a call to it is refused (views are
    keyed by the project as it now is, not its name); a project removed ends its sessions."""
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if "ToolListChanged" in type(getattr(message, "root", message)).__name__:
            changed.set()

    headers = bearer(keyed, "picky")
    assert keyed.aggregate is not None
    with ExitStack() as stack:
        serve(keyed, stack, "a", "b")
        async with connect(keyed.endpoint, headers=headers, message_handler=on_message) as client:
            assert names(await client.list_tools()) == {"a__echo", "a__whoami", "b__whoami"}
            await asyncio.sleep(0.2)  # the client's GET stream is open
            stricter = Project("picky", tools_allow=("a", "b:whoami"), tools_deny=("a:slow", "a:echo"))
            projects = tuple(stricter if p.name == "picky" else p for p in PROJECTS)
            keyed.aggregate.proxy.gatekeeper.configure(dataclasses.replace(keyed.settings, projects=projects))
            await asyncio.to_thread(
                keyed.aggregate.reconfigured
            )  # as Services._apply, on the reload's thread
            await asyncio.wait_for(changed.wait(), 5)
            assert names(await client.list_tools()) == {"a__whoami", "b__whoami"}
            with pytest.raises(MCPError, match="not allowed for project 'picky'"):
                await client.call_tool("a__echo", {"text": "x"})
            held = len(keyed.aggregate.clients.by_id)
            without = tuple(p for p in PROJECTS if p.name != "picky")
            keyed.aggregate.proxy.gatekeeper.configure(dataclasses.replace(keyed.settings, projects=without))
            await asyncio.to_thread(keyed.aggregate.reconfigured)
            assert await eventually(lambda: len(keyed.aggregate.clients.by_id) == held - 1)  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["legacy", "auto"], ids=["session", "stateless"])
async def test_a_projects_tools_rule_holds_on_the_per_server_path_too(keyed: Rig, mode: str) -> None:
    """`picky` (allow a and b:whoami, deny a:slow) on /mcp/<server>: tools/list lacks the tools the
    rule denies and a call to one is a JSON-RPC error naming the project, never reaching the server
    (it did reach it: the rule held on /mcp only); allowed tools answer as before."""
    calls: list[str] = []
    with ExitStack() as stack:
        ups = {n: stack.enter_context(sdk_upstream(n, n.upper(), calls=calls)) for n in ("a", "b")}
        keyed.router.swap(dict(ups))
        headers = bearer(keyed, "picky")
        async with connect(keyed.url("a"), mode=mode, headers=headers) as client:
            assert names(await client.list_tools()) == {"echo", "whoami"}
            with pytest.raises(MCPError, match="not allowed for project 'picky'"):
                await client.call_tool("slow", {"seconds": 0, "steps": 1})
            assert text_of(await client.call_tool("whoami")) == "A"
        async with connect(keyed.url("b"), mode=mode, headers=headers) as client:
            assert names(await client.list_tools()) == {"whoami"}
            with pytest.raises(MCPError, match="not allowed for project 'picky'"):
                await client.call_tool("echo", {"text": "x"})
        async with connect(keyed.url("b"), mode=mode, headers=bearer(keyed, "web")) as client:
            assert names(await client.list_tools()) == set(TOOLS)  # no rule: the proxy's own path
    assert calls == ["whoami"]


async def test_no_key_gets_401(keyed: Rig) -> None:
    """Without a key the aggregate answers 401 with the Bearer challenge, as `/mcp/<server>` does."""
    async with httpx2.AsyncClient() as http:
        answer = await http.post(keyed.endpoint, json=jsonrpc("tools/list"), headers=ACCEPT_BOTH)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_requests_the_aggregate_answers_itself_take_rate_limit_tokens(keyed: Rig) -> None:
    """initialize, lists and ping cost the key a token like any call: past its burst, 429 with
    Retry-After (so opening sessions is no way around the limit)."""
    init = jsonrpc(
        "initialize",
        {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    )
    headers = {**ACCEPT_BOTH, **bearer(keyed, "tight")}
    async with httpx2.AsyncClient(timeout=10) as http:
        answers = [await http.post(keyed.endpoint, json=init, headers=headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].headers["retry-after"]


async def test_a_key_past_its_session_or_stream_cap_gets_429_naming_the_setting(tmp_path: Path) -> None:
    """`aggregate.max_sessions_per_key` and `max_streams_per_key` bound what one key holds on /mcp:
    one more initialize, or one more GET stream, is a 429 whose JSON-RPC error names the setting;
    another key is not held back, and a DELETEd session frees its place."""
    caps = AggregateConfig(max_sessions_per_key=2, max_streams_per_key=1)
    init = jsonrpc(
        "initialize",
        {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    )
    with running_proxy(tmp_path, projects=PROJECTS, aggregate=caps) as rig:
        mine, other = {**ACCEPT_BOTH, **bearer(rig, "web")}, {**ACCEPT_BOTH, **bearer(rig, "web")}
        async with httpx2.AsyncClient(timeout=10) as http:
            answers = [await http.post(rig.endpoint, json=init, headers=mine) for _ in range(3)]
            assert [a.status_code for a in answers] == [200, 200, 429]
            assert "aggregate.max_sessions_per_key" in answers[2].json()["error"]["message"]
            assert (await http.post(rig.endpoint, json=init, headers=other)).status_code == 200
            first, second = (a.headers["mcp-session-id"] for a in answers[:2])
            stream = {**mine, "accept": "text/event-stream", "mcp-protocol-version": LEGACY}
            async with http.stream("GET", rig.endpoint, headers={**stream, "mcp-session-id": first}) as held:
                assert held.status_code == 200
                refused = await http.get(rig.endpoint, headers={**stream, "mcp-session-id": second})
                assert refused.status_code == 429
                assert "aggregate.max_streams_per_key" in refused.json()["error"]["message"]
            ended = await http.delete(rig.endpoint, headers={**stream, "mcp-session-id": second})
            assert ended.status_code == 200
            assert (await http.post(rig.endpoint, json=init, headers=mine)).status_code == 200


async def test_a_call_whose_upstream_session_is_rate_limited_answers_429(keyed: Rig) -> None:
    """Past its burst, a call that must first open its server's session answers what a limited call
    does, 429 with Retry-After, not an error saying the server is unreachable (found by the
    aggregate's zero-downtime e2e: 20 clients on one key)."""
    with ExitStack() as stack:
        serve(keyed, stack, "a", "b")
        init = jsonrpc(
            "initialize",
            {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
        )
        headers = {**ACCEPT_BOTH, **bearer(keyed, "tight")}
        async with httpx2.AsyncClient(timeout=10) as http:
            opened = await http.post(keyed.endpoint, json=init, headers=headers)  # token 1 of 2
            headers |= {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": LEGACY}
            # a's upstream session takes token 2 and its call is refused; b's session cannot open.
            calls = [
                await http.post(
                    keyed.endpoint, json=jsonrpc("tools/call", {"name": f"{s}__whoami"}), headers=headers
                )
                for s in ("a", "b")
            ]
    assert [c.status_code for c in calls] == [429, 429], calls[1].text
    assert all(c.headers["retry-after"] for c in calls)
    assert calls[1].json() == {"error": "rate limit exceeded"}


# sessions ---------------------------------------------------------------------------------------
async def test_upstream_sessions_are_opened_lazily_one_per_client_session_and_server(rig: Rig) -> None:
    """20 client sessions that each call 2 of 5 servers hold at most 40 upstream sessions; ending the
    client sessions ends theirs."""
    servers = ("a", "b", "c", "d", "e")
    with ExitStack() as stack:
        ups = serve(rig, stack, *servers)

        async def one(i: int) -> None:
            async with connect(rig.endpoint, mode="legacy") as client:
                for server in (servers[i % 5], servers[(i + 1) % 5]):
                    assert text_of(await client.call_tool(f"{server}__whoami")) == server.upper()
                    assert text_of(await client.call_tool(f"{server}__echo", {"text": "x"})) == "x"
                await asyncio.sleep(0.3)  # all 20 open at once
                held = sum(rig.router.sessions_on(u.container_id) for u in ups.values())
                assert held <= 40

        await asyncio.gather(*(one(i) for i in range(20)))
        assert await eventually(
            lambda: sum(rig.router.sessions_on(u.container_id) for u in ups.values()) == 0
        )


async def test_a_swapped_server_keeps_the_client_on_its_release_until_the_session_ends(rig: Rig) -> None:
    """After a swap, an open client session still reaches the release its upstream session is on;
    a new client session reaches the new release."""
    with ExitStack() as stack:
        serve(rig, stack, "a")
        async with connect(rig.endpoint, mode="legacy") as old:
            assert text_of(await old.call_tool("a__whoami")) == "A"
            new_release = stack.enter_context(sdk_upstream("a", "A2"))
            rig.router.swap({"a": new_release})
            assert text_of(await old.call_tool("a__whoami")) == "A"
            async with connect(rig.endpoint, mode="legacy") as fresh:
                assert text_of(await fresh.call_tool("a__whoami")) == "A2"
            rig.router.retire("A")  # the session drain deadline passed
            assert text_of(await old.call_tool("a__whoami")) == "A2"


async def test_a_removed_server_vanishes_and_calls_to_it_get_a_clear_error(rig: Rig) -> None:
    """A server taken out of the table leaves the list; a call to one of its tools names it."""
    with ExitStack() as stack:
        serve(rig, stack, "a", "b")
        async with connect(rig.endpoint, mode="legacy") as client:
            assert "b__whoami" in names(await client.list_tools())
            rig.router.swap({"b": None})
            assert names(await client.list_tools()) == {f"a__{t}" for t in TOOLS}
            with pytest.raises(MCPError, match="no live server 'b'"):
                await client.call_tool("b__whoami")


@pytest.mark.parametrize("keepalive", [0.3, 10.0], ids=["chatty", "quiet"])
async def test_a_swap_that_changes_the_tools_sends_list_changed(tmp_path: Path, keepalive: float) -> None:
    """A session-era client with its GET stream open gets tools/list_changed when a swap adds a
    server (at once, not at the stream's next keep-alive), and then lists the new tools."""
    with running_proxy(tmp_path, keepalive=keepalive) as rig, ExitStack() as stack:
        serve(rig, stack, "a")
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if "ToolListChanged" in type(getattr(message, "root", message)).__name__:
                changed.set()

        async with connect(rig.endpoint, mode="legacy", message_handler=on_message) as client:
            assert names(await client.list_tools()) == {f"a__{t}" for t in TOOLS}
            await asyncio.sleep(0.2)  # the client's GET stream is open
            b = stack.enter_context(sdk_upstream("b", "B"))
            rig.router.swap({"b": b})
            await asyncio.wait_for(changed.wait(), 5)
            assert "b__echo" in names(await client.list_tools())


# names ------------------------------------------------------------------------------------------
def test_long_names_are_shortened_with_a_stable_hash_and_stay_unique() -> None:
    """A pair past the spec's 128 characters gets a stable, distinct short name."""
    long_a, long_b = "t" * 200, "t" * 199 + "u"
    assert len(public_name("srv", long_a)) == MAX_NAME
    assert public_name("srv", long_a) == public_name("srv", long_a)
    assert public_name("srv", long_a) != public_name("srv", long_b)
    assert public_name("srv", "echo") == "srv__echo"


# zero downtime ----------------------------------------------------------------------------------
REDEPLOY_DRAIN = (5.0, 10.0)  # request and session drain timeouts of each redeploy


def _redeploy(rig: Rig, stack: ExitStack, lock: threading.Lock, server: str, label: str) -> bool:
    """What a deploy does after its gate: swap in a new release, drain the old, retire it."""
    with lock:
        fresh = stack.enter_context(sdk_upstream(server, label))
    old = rig.router.get(server)
    assert old is not None
    rig.router.swap({server: fresh})
    emptied = rig.router.drain(old.container_id, *REDEPLOY_DRAIN)
    rig.router.retire(old.container_id)
    return emptied


async def test_twenty_clients_see_no_failure_while_three_servers_are_redeployed(rig: Rig) -> None:
    """20 session-era clients calling tools of 3 servers through /mcp while each server is
    redeployed once (swap, drain, retire): zero failed calls, and the new releases answer."""
    with ExitStack() as stack:
        serve(rig, stack, "a", "b", "c")
        lock, finished = threading.Lock(), threading.Event()
        failures: list[str] = []
        answers: Counter[str] = Counter()

        async def worker(i: int) -> None:
            while not finished.is_set():
                try:
                    async with connect(rig.endpoint, mode="legacy") as client:
                        for n in range(4):
                            server = "abc"[(i + n) % 3]
                            answers[text_of(await client.call_tool(f"{server}__whoami"))] += 1
                except Exception as exc:  # every failure is the finding
                    failures.append(repr(exc))

        def until(check: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 60
            while not check() and time.monotonic() < deadline:
                time.sleep(0.05)

        def deploys() -> list[bool]:
            until(lambda: {"A", "B", "C"} <= set(answers))  # every client busy first (a loaded box is slow)
            done = [_redeploy(rig, stack, lock, s, f"{s.upper()}2") for s in "abc"]
            until(lambda: {"A2", "B2", "C2"} <= set(answers))
            finished.set()
            return done

        workers = asyncio.gather(*(worker(i) for i in range(20)))
        drained, _ = await asyncio.gather(asyncio.to_thread(deploys), workers)
    assert failures == []
    assert all(drained), drained
    assert {"A", "B", "C", "A2", "B2", "C2"} <= set(answers), answers


# resources, prompts, completion, logging, sampling -----------------------------------------------
@pytest.fixture
def rich(rig: Rig) -> Iterator[Rig]:
    """The rig with `r`, a server with resources, a template, a prompt, sampling and logging, beside
    `a`, a server with tools only."""
    with ExitStack() as stack:
        r = stack.enter_context(rich_upstream("r", "R"))
        a = stack.enter_context(sdk_upstream("a", "A"))
        rig.router.swap({"r": r, "a": a})
        yield rig


@pytest.mark.parametrize("mode", ["legacy", "auto"], ids=["session", "stateless"])
async def test_resources_and_templates_are_listed_under_reversible_uris_and_read(
    rich: Rig, mode: str
) -> None:
    """Resources and templates carry `central-mcp://<server>/<uri>`; reading one (or an expanded
    template) reaches its server with the server's own URI and gives the aggregate's URI back."""
    async with connect(rich.endpoint, mode=mode) as client:
        resources = await client.list_resources()
        assert [str(r.uri) for r in resources.resources] == ["central-mcp://r/note://readme"]
        templates = await client.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == [
            "central-mcp://r/note://topics/{topic}"
        ]
        read = await client.read_resource("central-mcp://r/note://readme")
        assert read.contents[0].text == "readme of R"  # type: ignore[union-attr]
        assert str(read.contents[0].uri) == "central-mcp://r/note://readme"
        topic = await client.read_resource("central-mcp://r/note://topics/tea")
        assert topic.contents[0].text == "R on tea"  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["legacy", "auto"], ids=["session", "stateless"])
async def test_prompts_are_namespaced_and_completion_and_ping_work(rich: Rig, mode: str) -> None:
    """prompts/list names `r__greet`; prompts/get and completion reach r; ping answers."""
    async with connect(rich.endpoint, mode=mode) as client:
        assert [p.name for p in (await client.list_prompts()).prompts] == ["r__greet"]
        got = await client.get_prompt("r__greet", {"name": "Ada"})
        assert "Hello Ada, from R" in got.messages[0].content.text  # type: ignore[union-attr]
        done = await client.complete(
            PromptReference(type="ref/prompt", name="r__greet"), {"name": "name", "value": "Ad"}
        )
        assert done.completion.values == ["Ad-R"]
        await client.send_ping()


async def test_a_servers_sampling_request_reaches_the_client_and_its_answer_the_server(rich: Rig) -> None:
    """A tool that samples: the request reaches the session-era client's callback (its id rewritten
    for the aggregate), and the client's answer goes back to the server, which finishes the call."""
    asked: list[str] = []

    async def sample(context: Any, params: Any) -> CreateMessageResult:
        asked.append(params.messages[0].content.text)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="blue"), model="m")

    async with connect(rich.endpoint, mode="legacy", sampling_callback=sample) as client:
        result = await client.call_tool("r__ask", {"question": "sky colour?"})
    assert asked == ["sky colour?"]
    assert text_of(result) == "R heard: blue"


async def test_set_level_reaches_the_servers_and_their_log_lines_reach_the_client(rich: Rig) -> None:
    """logging/setLevel is kept and sent to each server session as it opens; a tool's log line
    reaches the client's logging callback."""
    lines: list[Any] = []

    async def on_log(params: Any) -> None:
        lines.append(params.data)

    async with connect(rich.endpoint, mode="legacy", logging_callback=on_log) as client:
        await client.set_logging_level("info")
        assert text_of(await client.call_tool("r__chatty")) == "R"
    assert lines == ["chatty R says hello"]


QUIET = 10.0  # a keep-alive longer than any wait below: what reaches a GET stream comes at once


async def test_what_a_server_sends_outside_a_call_reaches_the_clients_get_stream(tmp_path: Path) -> None:
    """After resources/subscribe (routed by the aggregate's URI), the server's own resources/updated
    reach the client under the aggregate's URI; its own tools/list_changed reaches that client and a
    bystander that only lists (no session with the server: it hears of it from the aggregate), and
    the next tools/list (the release's cached list dropped) shows the tool the server gained."""
    heard: dict[str, list[str]] = {"client": [], "bystander": []}

    def recorder(who: str) -> Any:
        async def on_message(message: Any) -> None:
            root = getattr(message, "root", message)
            uri = getattr(getattr(root, "params", None), "uri", "")
            heard[who].append(f"{type(root).__name__} {uri}".strip())

        return on_message

    updated = "ResourceUpdatedNotification central-mcp://r/note://readme"
    with running_proxy(tmp_path, keepalive=QUIET) as rig, rich_upstream("r", "R") as r:
        rig.router.swap({"r": r})
        async with (
            connect(rig.endpoint, mode="legacy", message_handler=recorder("client")) as client,
            connect(rig.endpoint, mode="legacy", message_handler=recorder("bystander")) as bystander,
        ):
            caps = client.server_capabilities
            assert caps.resources is not None and caps.resources.subscribe
            assert "r__extra" not in names(await client.list_tools())
            assert "r__extra" not in names(await bystander.list_tools())
            await asyncio.sleep(0.2)  # the clients' GET streams are open
            await client.subscribe_resource("central-mcp://r/note://readme")
            assert await eventually(lambda: heard["client"].count(updated) >= 3, 5)
            changed = "ToolListChangedNotification"
            assert await eventually(lambda: changed in heard["client"] and changed in heard["bystander"], 5)
            assert set(heard["client"]) == {updated, changed}
            assert heard["bystander"] == [changed]
            assert "r__extra" in names(await bystander.list_tools())
            assert text_of(await client.call_tool("r__extra")) == "extra of R"
        # the clients left (their sessions ended with their feeds): the upstream GET streams ended as
        # a client's leaving does, not counted as the server's failures
        assert rig.aggregate is not None and rig.aggregate.clients.by_id == {}
        assert rig.usage.totals("r")[1] == 0


async def test_the_typescript_sdk_client_lists_and_calls_through_the_aggregate(
    keyed: Rig, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The official TypeScript SDK client, with a project key, lists the project's namespaced tools
    and calls one through /mcp."""
    ts_sdk.require()
    with ExitStack() as stack:
        serve(keyed, stack, "a", "b", "c")
        key = create_key(keyed.store, keyed.settings, "web")
        script = await asyncio.to_thread(ts_sdk.install, tmp_path_factory.getbasetemp() / "ts-sdk")
        found = await asyncio.to_thread(
            ts_sdk.call, script, keyed.endpoint, key, "b__echo", {"text": "from ts"}
        )
    assert found["protocolVersion"] == LEGACY
    assert set(found["tools"]) == {f"{s}__{t}" for s in "ab" for t in TOOLS}
    assert found["result"]["content"][0]["text"] == "from ts"


async def test_the_aggregate_answers_through_asgi_too(tmp_path: Path) -> None:
    """Served without front.py's protocol (plain uvicorn, ASGI), `/mcp` and `/mcp/` work the same."""
    with running_proxy(tmp_path, front=False) as plain, ExitStack() as stack:
        serve(plain, stack, "a")
        for url in (plain.endpoint, plain.endpoint + "/"):
            async with connect(url, mode="legacy") as client:
                assert text_of(await client.call_tool("a__whoami")) == "A"


async def test_a_client_moved_to_a_new_release_hears_that_its_tools_changed(rig: Rig) -> None:
    """A session kept on the old release sees no change at the swap; once the old release is retired
    its next call moves it to the new release, and it gets tools/list_changed since the tools differ."""
    with ExitStack() as stack:
        serve(rig, stack, "a")
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if "ToolListChanged" in type(getattr(message, "root", message)).__name__:
                changed.set()

        async with connect(rig.endpoint, mode="legacy", message_handler=on_message) as client:
            assert text_of(await client.call_tool("a__whoami")) == "A"
            assert "a__whoami" in names(await client.list_tools())
            await asyncio.sleep(0.2)  # the client's GET stream is open
            rig.router.swap({"a": stack.enter_context(rich_upstream("a", "R2"))})
            await asyncio.sleep(0.3)
            assert not changed.is_set()  # still on the release that issued its session
            rig.router.retire("A")
            assert text_of(await client.call_tool("a__chatty")) == "R2"
            await asyncio.wait_for(changed.wait(), 5)
            assert "a__chatty" in names(await client.list_tools())


async def test_a_cancelled_call_is_cancelled_on_its_server(rig: Rig) -> None:
    """A session-era client that abandons a slow call sends notifications/cancelled; the aggregate
    passes it to the server running that call, which stops it (it never returns)."""
    ended: list[float] = []
    with ExitStack() as stack:
        ups = {"a": stack.enter_context(sdk_upstream("a", "A", ended=ended))}
        rig.router.swap(dict(ups))
        async with connect(rig.endpoint, mode="legacy") as client:
            call = asyncio.ensure_future(client.call_tool("a__slow", {"seconds": 1.0, "steps": 2}))
            await asyncio.sleep(0.3)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.sleep(1.5)
            assert text_of(await client.call_tool("a__whoami")) == "A"
    assert ended == []


async def test_a_server_answering_too_much_is_left_out_of_the_list_not_held(tmp_path: Path) -> None:
    """What the aggregate reads whole from a server is bounded (`aggregate.max_held`): past the cap
    the server is left out of the lists (the request still answers) and a call that needs its
    handshake gets a JSON-RPC error naming it, instead of the answer being held in memory."""
    tight = AggregateConfig(max_held=200)  # below any SDK server's streamed answer
    with running_proxy(tmp_path, aggregate=tight) as rig, ExitStack() as stack:
        serve(rig, stack, "a")
        async with connect(rig.endpoint, mode="legacy") as client:
            assert names(await client.list_tools()) == set()
            with pytest.raises(MCPError, match="server 'a' answered more than 200 bytes"):
                await client.call_tool("a__whoami")


async def test_an_idle_client_session_ends_with_its_upstream_sessions(tmp_path: Path) -> None:
    """A client session with no request and no stream past `session_idle_timeout` ends: its id then
    answers 404 and the upstream sessions it opened are ended too."""
    with running_proxy(tmp_path, session_idle_timeout=0.4) as idle, ExitStack() as stack:
        ups = serve(idle, stack, "a")
        async with httpx2.AsyncClient(timeout=10) as http:
            init = jsonrpc(
                "initialize",
                {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
            )
            opened = await http.post(idle.endpoint, json=init, headers=ACCEPT_BOTH)
            headers = {**ACCEPT_BOTH, "mcp-session-id": opened.headers["mcp-session-id"]}
            called = await http.post(
                idle.endpoint, json=jsonrpc("tools/call", {"name": "a__whoami"}, 2), headers=headers
            )
            assert called.status_code == 200 and '"A"' in called.text
            assert idle.router.sessions_on(ups["a"].container_id) == 1
            await asyncio.sleep(1.2)
            late = await http.post(idle.endpoint, json=jsonrpc("ping", {}, 3), headers=headers)
        assert late.status_code == 404
        assert idle.router.sessions_on(ups["a"].container_id) == 0


async def test_a_stateless_call_to_a_stateless_server_takes_the_proxys_own_path(keyed: Rig) -> None:
    """A 2026-07-28 tools/call to a server that speaks it is handed to the proxy as a `/mcp/<server>`
    request (rewritten for that server, checked against the key again); a denied tool is not, and
    gets its JSON-RPC error from the aggregate's coroutine."""
    assert keyed.aggregate is not None
    aggregate, quick = keyed.aggregate, []
    original = aggregate.quick_call

    def spy(ex: Any, body: bytes) -> Any:
        found = original(ex, body)
        quick.append(found[0] if found else None)
        return found

    aggregate.quick_call = spy  # type: ignore[method-assign]
    with ExitStack() as stack:
        serve(keyed, stack, "a", "b")
        async with connect(keyed.endpoint, mode="auto", headers=bearer(keyed, "picky")) as client:
            assert client.protocol_version == MODERN
            await client.list_tools()  # learns that a and b speak 2026-07-28
            assert text_of(await client.call_tool("a__echo", {"text": "fast"})) == "fast"
            with pytest.raises(MCPError, match="not allowed"):
                await client.call_tool("a__slow", {"seconds": 0, "steps": 1})
    assert "a" in quick and quick[-1] is None


def legacy_only_app(tools: Any = None, versions: Any = None) -> Starlette:
    """A raw session-era-only MCP server: `initialize` issues a session; `server/discover` is an
    unknown method (or, given `versions`, answers them as its supportedVersions, whatever they are);
    one tool `hello` (or `tools` as its tools/list result's tools, whatever it is)."""

    async def endpoint(request: Request) -> Response:
        if request.method == "DELETE":
            return Response(status_code=200)
        message = await request.json()
        if "id" not in message:
            return Response(status_code=202)
        method, rid = message["method"], message["id"]
        if method == "server/discover" and versions is not None:
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"supportedVersions": versions}})
        if method == "initialize":
            info = {"protocolVersion": LEGACY, "capabilities": {"tools": {}}, "serverInfo": {"name": "old"}}
            body = {"jsonrpc": "2.0", "id": rid, "result": info}
            return JSONResponse(body, headers={"mcp-session-id": "legacy-session"})
        if request.headers.get("mcp-session-id") != "legacy-session":
            return JSONResponse(
                {"jsonrpc": "2.0", "id": rid, "error": {"code": -32600, "message": "no session"}}, 400
            )
        if method == "tools/list":
            tool = {"name": "hello", "inputSchema": {"type": "object"}}
            listed = [tool] if tools is None else tools
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"tools": listed}})
        if method == "tools/call":
            content = [{"type": "text", "text": "hello from the old era"}]
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"content": content}})
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "unknown"}})

    return Starlette(routes=[Route("/mcp", endpoint, methods=["POST", "DELETE"])])


async def test_a_stateless_era_client_reaches_a_session_era_only_server(rig: Rig) -> None:
    """A 2026-07-28 client calls a server that speaks only the session era: the aggregate calls it on
    a session of the key and gives the answer back in the client's era."""
    with serve_asgi(legacy_only_app()) as port:
        rig.router.swap({"old": upstream("old", port, container_id="old-1")})
        async with connect(rig.endpoint, mode="auto") as client:
            assert client.protocol_version == MODERN
            assert names(await client.list_tools()) == {"old__hello"}
            assert text_of(await client.call_tool("old__hello")) == "hello from the old era"


@pytest.mark.parametrize("version", [LEGACY, MODERN], ids=["session", "stateless"])
async def test_deeply_nested_json_is_a_parse_error_not_a_500(rig: Rig, version: str) -> None:
    """A body nested past the parser's recursion limit is a JSON-RPC parse error (400), and the
    connection's next request is served (Python's json raises RecursionError, not ValueError)."""
    with ExitStack() as stack:
        serve(rig, stack, "a")
        headers = {**ACCEPT_BOTH, "mcp-protocol-version": version, "content-type": "application/json"}
        async with httpx2.AsyncClient(timeout=10) as http:
            answer = await http.post(rig.endpoint, content=b"[" * 100_000, headers=headers)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["code"] == -32700
            nested = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__echo","x":%s}}' % (
                b"[" * 100_000 + b"]" * 100_000
            )
            answer = await http.post(rig.endpoint, content=nested, headers=headers)
            assert answer.status_code == 400, answer.text
            ping = await http.post(rig.endpoint, json=jsonrpc("server/discover"), headers=headers)
            assert ping.status_code == 200


async def test_a_quick_call_sends_the_server_only_its_own_mcp_name(keyed: Rig) -> None:
    """A client's Mcp-Name headers (however many: it may repeat the header with a denied tool's
    name) never reach the server; the rewritten request carries exactly the server's own name."""
    assert keyed.aggregate is not None
    aggregate, sent = keyed.aggregate, []
    original = aggregate.quick_call

    def spy(ex: Any, body: bytes) -> Any:
        found = original(ex, body)
        if found:
            sent.append([v for k, v in found[1] if k == b"mcp-name"])
        return found

    aggregate.quick_call = spy  # type: ignore[method-assign]
    with ExitStack() as stack:
        serve(keyed, stack, "a")
        headers = {**ACCEPT_BOTH, **bearer(keyed, "picky"), "mcp-protocol-version": MODERN}
        async with connect(keyed.endpoint, mode="auto", headers=bearer(keyed, "picky")) as client:
            await client.list_tools()  # learns that a speaks 2026-07-28
        call = jsonrpc("tools/call", {"name": "a__echo", "arguments": {"text": "x"}})
        async with httpx2.AsyncClient(timeout=10) as http:
            await http.post(
                keyed.endpoint,
                json=call,
                headers=[*headers.items(), ("mcp-name", "slow"), ("mcp-name", "a__echo")],
            )
    assert sent == [[b"echo"]]


@pytest.mark.parametrize("contents", [5, None, "text", {"uri": "x"}, [5, {"uri": 3}]])
def test_a_resource_read_result_of_any_shape_is_given_back_not_a_500(contents: Any) -> None:
    """A server's resources/read result whose contents are not a list of objects (a number, a
    mapping) is given back as it is; only string URIs of object contents are rewritten."""
    result = {"contents": contents}
    replies.resource_uris("a", result)
    assert result == {"contents": contents}
    listed = {"contents": [{"uri": "file:///x", "text": "t"}]}
    replies.resource_uris("a", listed)
    assert listed == {"contents": [{"uri": "central-mcp://a/file:///x", "text": "t"}]}


@pytest.mark.parametrize(
    ("tools", "versions"),
    [(5, None), ({"name": "x"}, None), (True, None), (None, 5)],
    ids=["number", "mapping", "bool", "versions-number"],
)
async def test_a_server_listing_misshapen_tools_is_left_out_not_a_500_for_everyone(
    rig: Rig, tools: Any, versions: Any
) -> None:
    """A server whose tools/list result holds something other than a list is left out of the
    aggregate's list, which still names every other server's tools (else one server's answer would
    break tools/list for every key that reaches it)."""
    with ExitStack() as stack, serve_asgi(legacy_only_app(tools, versions)) as port:
        ups = {"a": stack.enter_context(sdk_upstream("a", "A"))}
        rig.router.swap({**ups, "bad": upstream("bad", port, container_id="bad-1")})
        async with connect(rig.endpoint, mode="legacy") as client:
            listed = names(await client.list_tools())
    assert {f"a__{t}" for t in TOOLS} <= listed <= {f"a__{t}" for t in TOOLS} | {"bad__hello"}


def forever_app(streaming: list[float]) -> Starlette:
    """A session-era-only server whose tools/call answers an event stream that never ends (a
    comment every 50 ms); `streaming` gets the time of each comment sent."""

    async def comments() -> Any:
        while True:
            streaming.append(time.monotonic())
            yield b": still working\n\n"
            await asyncio.sleep(0.05)

    async def endpoint(request: Request) -> Response:
        if request.method == "DELETE":
            return Response(status_code=200)
        message = await request.json()
        if "id" not in message:
            return Response(status_code=202)
        method, rid = message["method"], message["id"]
        if method == "initialize":
            info = {"protocolVersion": LEGACY, "capabilities": {"tools": {}}, "serverInfo": {"name": "s"}}
            body = {"jsonrpc": "2.0", "id": rid, "result": info}
            return JSONResponse(body, headers={"mcp-session-id": "forever-session"})
        if method == "tools/list":
            tool = {"name": "wait", "inputSchema": {"type": "object"}}
            return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": {"tools": [tool]}})
        if method == "tools/call":
            return StreamingResponse(comments(), media_type="text/event-stream")
        return JSONResponse({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "unknown"}})

    return Starlette(routes=[Route("/mcp", endpoint, methods=["POST", "DELETE"])])


async def test_a_client_that_leaves_ends_the_aggregates_request_to_its_server(rig: Rig) -> None:
    """A stateless-era client's call to a session-era-only server (read whole by the aggregate)
    ends at the server when the client leaves: else a server streaming forever held the request,
    its task and an upstream connection for as long as it liked, one more per call."""
    streaming: list[float] = []
    with serve_asgi(forever_app(streaming)) as port:
        rig.router.swap({"s": upstream("s", port, container_id="s-1")})
        async with connect(rig.endpoint, mode="auto") as client:
            assert names(await client.list_tools()) == {"s__wait"}
        headers = {**ACCEPT_BOTH, "mcp-protocol-version": MODERN}
        call = jsonrpc("tools/call", {"name": "s__wait", "arguments": {}})
        async with httpx2.AsyncClient(timeout=0.5) as http:
            with pytest.raises(httpx2.TimeoutException):
                await http.post(rig.endpoint, json=call, headers=headers)
        left = time.monotonic()
        await asyncio.sleep(1.0)
    assert streaming and streaming[-1] < left + 0.5


def silent_after_initialize_app() -> Starlette:
    """A server that answers initialize and then never answers notifications/initialized."""

    async def endpoint(request: Request) -> Response:
        if request.method == "DELETE":
            return Response(status_code=200)
        message = await request.json()
        if "id" not in message:
            await asyncio.sleep(3600)
        info = {"protocolVersion": LEGACY, "capabilities": {"tools": {}}, "serverInfo": {"name": "s"}}
        body = {"jsonrpc": "2.0", "id": message["id"], "result": info}
        return JSONResponse(body, headers={"mcp-session-id": "silent-session"})

    return Starlette(routes=[Route("/mcp", endpoint, methods=["POST", "DELETE"])])


async def test_a_server_that_never_finishes_its_handshake_delays_other_lists_once(tmp_path: Path) -> None:
    """A server that never answers notifications/initialized is left out of tools/list after
    `aggregate.list_timeout`, and the next lists are not held again while `list_retry_after` runs:
    one such server held every key's tools/list that reaches it, forever."""
    short = AggregateConfig(list_timeout=0.5)
    with (
        running_proxy(tmp_path, aggregate=short) as rig,
        ExitStack() as stack,
        serve_asgi(silent_after_initialize_app()) as port,
    ):
        ups = {"a": stack.enter_context(sdk_upstream("a", "A"))}
        rig.router.swap({**ups, "silent": upstream("silent", port, container_id="silent-1")})
        async with connect(rig.endpoint, mode="legacy") as client:
            async with asyncio.timeout(5):
                assert names(await client.list_tools()) == {f"a__{t}" for t in TOOLS}
            started = time.monotonic()
            assert names(await client.list_tools()) == {f"a__{t}" for t in TOOLS}
            assert time.monotonic() - started < 0.4


async def test_a_call_to_a_server_that_never_finishes_its_handshake_gets_an_error(tmp_path: Path) -> None:
    """A client's first call to a server that never answers notifications/initialized gets a
    JSON-RPC error naming the server after `aggregate.upstream_timeout`, not waiting forever."""
    short = AggregateConfig(upstream_timeout=0.5, list_timeout=0.5)
    with running_proxy(tmp_path, aggregate=short) as rig, serve_asgi(silent_after_initialize_app()) as port:
        rig.router.swap({"silent": upstream("silent", port, container_id="silent-1")})
        async with connect(rig.endpoint, mode="legacy") as client:
            async with asyncio.timeout(5):
                for _ in range(2):  # the second too: the half-open session is not kept as open
                    with pytest.raises(MCPError, match="notifications/initialized got no answer"):
                        await client.call_tool("silent__anything")


def refusing_initialized_app(seen: list[str]) -> Starlette:
    """A server that answers initialize, refuses notifications/initialized with 400, and records the
    method (or DELETE) of every request it gets."""

    async def endpoint(request: Request) -> Response:
        if request.method == "DELETE":
            seen.append("DELETE")
            return Response(status_code=200)
        message = await request.json()
        seen.append(message.get("method", ""))
        if "id" not in message:
            return JSONResponse({"error": "not now"}, status_code=400)
        info = {"protocolVersion": LEGACY, "capabilities": {"tools": {}}, "serverInfo": {"name": "s"}}
        result = info if message.get("method") == "initialize" else {"content": [], "tools": []}
        body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        return JSONResponse(body, headers={"mcp-session-id": "refused-session"})

    return Starlette(routes=[Route("/mcp", endpoint, methods=["POST", "DELETE"])])


async def test_a_session_whose_initialized_is_refused_is_never_used(tmp_path: Path) -> None:
    """A server that refuses notifications/initialized (400): the call gets a JSON-RPC error naming
    the notification, the half-open session is ended, and no request ever goes on it (the next call
    tries to open one again): it used to be kept as if open."""
    seen: list[str] = []
    with running_proxy(tmp_path) as rig, serve_asgi(refusing_initialized_app(seen)) as port:
        rig.router.swap({"s": upstream("s", port, container_id="s-1")})
        async with connect(rig.endpoint, mode="legacy") as client:
            for _ in range(2):
                with pytest.raises(MCPError, match="notifications/initialized answered 400"):
                    await client.call_tool("s__anything")
    assert "tools/call" not in seen
    assert await eventually(lambda: seen.count("DELETE") == 2)


def streaming_app(gets: list[int], stream: bool) -> Starlette:
    """A session-era server whose GET stream (when `stream`) sends one log line and ends, or which
    answers GET 405 (it offers none); `gets` receives each GET's status."""
    opened = iter(range(1_000_000))

    async def endpoint(request: Request) -> Response:
        if request.method == "GET":
            gets.append(200 if stream else 405)
            if not stream:
                return Response(status_code=405)
            line = {
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": {"level": "info", "data": "hi"},
            }
            event = f"event: message\ndata: {json.dumps(line)}\n\n".encode()
            return Response(event, media_type="text/event-stream")
        if request.method == "DELETE":
            return Response(status_code=200)
        message = await request.json()
        if "id" not in message:
            return Response(status_code=202)
        info = {"protocolVersion": LEGACY, "capabilities": {"tools": {}}, "serverInfo": {"name": "s"}}
        result = info if message.get("method") == "initialize" else {"content": [], "tools": []}
        body = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        return JSONResponse(body, headers={"mcp-session-id": f"streaming-{next(opened)}"})

    return Starlette(routes=[Route("/mcp", endpoint, methods=["GET", "POST", "DELETE"])])


@pytest.mark.parametrize("stream", [True, False], ids=["ends", "405"])
async def test_an_upstream_get_stream_that_ends_is_opened_again_and_one_refused_is_not(
    tmp_path: Path, stream: bool
) -> None:
    """A server's GET stream that ends is opened again (RECONNECT_DELAY later) while the upstream
    session lives, and what each brings reaches the client; a server that answers GET 405 (it
    offers no stream) is not asked again."""
    gets: list[int] = []
    lines: list[Any] = []

    async def on_log(params: Any) -> None:
        lines.append(params.data)

    with running_proxy(tmp_path, keepalive=QUIET) as rig, serve_asgi(streaming_app(gets, stream)) as port:
        rig.router.swap({"s": upstream("s", port, container_id="s-1")})
        async with connect(rig.endpoint, mode="legacy", logging_callback=on_log) as client:
            await asyncio.sleep(0.2)  # the client's GET stream is open
            await client.call_tool("s__anything")
            if stream:
                ok = await eventually(lambda: len(gets) >= 2 and len(lines) >= 2, 5)
                assert ok, (gets, lines)
                assert set(lines) == {"hi"}
            else:
                await asyncio.sleep(1.5)
                assert gets == [405]


async def test_a_body_the_provider_cannot_read_never_carries_a_denied_call_past_the_rule(
    keyed: Rig,
) -> None:
    """For a key whose project has a tools rule, a POST body the provider's parser refuses (a byte
    that is not UTF-8, nesting past its depth) is answered 400 with a JSON-RPC parse error and never
    forwarded: it went through unchecked, and a server whose parser is laxer (Node's, Go's: invalid
    UTF-8 becomes U+FFFD, no depth limit at 1,500) ran the denied tool."""
    recorder = Recorder()
    call = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow","arguments":{"x":'
    bodies = [call + b'"\xff"}}}', call + b"[" * 1500 + b"]" * 1500 + b"}}}"]
    headers = {**ACCEPT_BOTH, **bearer(keyed, "picky"), "mcp-protocol-version": MODERN}
    with raw_upstream("a", recorder) as a:
        keyed.router.swap({"a": a})
        async with httpx2.AsyncClient(timeout=10) as http:
            for body in bodies:
                answer = await http.post(keyed.url("a"), content=body, headers=headers)
                assert answer.status_code == 400
                assert answer.json()["error"]["code"] == -32700
                assert "project 'picky'" in answer.json()["error"]["message"]
            web = {**ACCEPT_BOTH, **bearer(keyed, "web"), "mcp-protocol-version": MODERN}
            assert (await http.post(keyed.url("a"), content=bodies[0], headers=web)).status_code == 200
    assert len(recorder.seen) == 1  # only the key without a rule got through (its server's to judge)


async def test_a_tools_list_spelled_with_json_escapes_is_filtered_too(keyed: Rig) -> None:
    """`"tools\\/list"` is tools/list to every JSON parser: its answer lacks the denied tools as a
    plainly spelled one's does (the filter looked for the bytes `tools/list`)."""

    async def listing(request: Request) -> Response:
        tools = [{"name": n, "inputSchema": {"type": "object"}} for n in TOOLS]
        return JSONResponse({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}})

    headers = {**ACCEPT_BOTH, **bearer(keyed, "picky"), "mcp-protocol-version": MODERN}
    with raw_upstream("a", Recorder(listing)) as a:
        keyed.router.swap({"a": a})
        async with httpx2.AsyncClient(timeout=10) as http:
            for method in (b"tools/list", b"tools\\/list", b"\\u0074ools/list"):
                body = b'{"jsonrpc":"2.0","id":1,"method":"' + method + b'"}'
                answer = await http.post(keyed.url("a"), content=body, headers=headers)
                assert {t["name"] for t in answer.json()["result"]["tools"]} == {"echo", "whoami"}


@pytest.mark.parametrize(
    ("front", "expect"),
    [(True, ""), (True, "expect: 100-continue\r\n"), (False, "")],
    ids=["fast", "100", "asgi"],
)
async def test_a_server_routed_while_a_request_was_admitted_is_checked_against_its_access(
    tmp_path: Path, front: bool, expect: str
) -> None:
    """A request admitted while its server had no live upstream (a first deploy, a wake) was checked
    against ("all",); when the server went live with `access: [web]` before the request's body ended
    it was forwarded for a key of `picky`, which that access refuses (the fast front admits on the
    headers too when the client asks `Expect: 100-continue`). Now the access of the target it is
    routed to is checked: 403, nothing forwarded; a key of `web` still gets through."""
    with running_proxy(tmp_path, projects=PROJECTS, front=front) as keyed:
        recorder = Recorder()
        body = json.dumps(jsonrpc("tools/call", {"name": "whoami", "arguments": {}})).encode()
        with raw_upstream("a", recorder) as a:
            restricted = dataclasses.replace(a, access=("web",))
            for project, status in (("picky", 403), ("web", 200)):
                keyed.router.swap({"a": None})
                reader, writer = await asyncio.open_connection("127.0.0.1", keyed.port)
                key = bearer(keyed, project)["authorization"]
                head = (
                    f"POST /mcp/a HTTP/1.1\r\nhost: x\r\nauthorization: {key}"
                    f"\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n"
                    f"mcp-protocol-version: {MODERN}\r\n{expect}content-length: {len(body)}\r\n\r\n"
                )
                writer.write(head.encode() + body[:10])
                await writer.drain()
                await asyncio.sleep(0.2)  # admitted on its headers; its server is not live
                keyed.router.swap({"a": restricted})  # a deploy (or a wake) routes it now
                writer.write(body[10:])
                await writer.drain()
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
                while answer.startswith(b"HTTP/1.1 100"):
                    await reader.readuntil(b"\r\n")  # the blank line ending the 100
                    answer = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
                writer.close()
                assert answer.split()[1] == str(status).encode(), (project, answer)
        assert len(recorder.seen) == 1
