"""The deploy pages, registry files and client configs, over a real Store, in-process and on loopback."""

from __future__ import annotations

import functools
import html
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from pipeline import pages
from pipeline.app import PageSources
from pipeline.canary import Canaries, Canary, Steps
from pipeline.config.rolloutspec import Rollout, Strategy
from pipeline.config.settings import Project, Settings
from pipeline.deploylog import DeployLog
from pipeline.proxy.access import Gatekeeper, create_key
from pipeline.proxy.router import Router, Upstream
from pipeline.store import Release, Store
from tests.support.loopback import serve_asgi

SHA = "0123456789abcdef0123456789abcdef01234567"
ADMIN_TOKEN = "admin-secret-token"
XSS = "<script>alert(1)</script>"
ANSI_RED = "\x1b[31mred\x1b[0m"
MINUS = "\u2212"  # the page marks removed tools with a real minus sign
STREAM_TIMEOUT = httpx2.Timeout(10.0)


@dataclass
class Site:
    """A pages app over a real Store in tmp_path, and the live logs it reads."""

    settings: Settings
    store: Store
    logs: dict[int, DeployLog] = field(default_factory=dict)
    canaries: Canaries = field(default_factory=Canaries)

    @property
    def app(self) -> Starlette:
        """A tiny Starlette app with just the page routes."""
        gatekeeper = Gatekeeper(self.settings, self.store)
        sources = PageSources(self.settings, self.store, gatekeeper, self.logs, canaries=self.canaries)
        return Starlette(routes=pages.routes(lambda request: sources))

    def client(self, **kwargs: Any) -> TestClient:
        """An in-process client of the app."""
        return TestClient(self.app, **kwargs)

    def live(self, deploy_id: int, *lines: str) -> DeployLog:
        """A running deploy's in-memory log, as the dispatcher keeps it, with these lines so far."""
        log = DeployLog(self.store, deploy_id)
        self.logs[deploy_id] = log
        for text in lines:
            log.line(text)
        return log


def make_settings(tmp_path: Path, admin_token: str = "") -> Settings:
    """Settings with projects `web` (may use only `alpha`) and `ops` (may use everything)."""
    return Settings(
        config_path=Path("deploy.yaml"),
        state_dir=tmp_path,
        public_url="https://mcp.example.test",
        projects=(Project("web", servers=("alpha",)), Project("ops")),
        admin_token=admin_token,
    )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """An open site without an admin token."""
    store = Store(tmp_path / "central-mcp.db")
    yield Site(make_settings(tmp_path), store)
    store.close()


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Site]:
    """A site whose pages need the admin token."""
    store = Store(tmp_path / "central-mcp.db")
    yield Site(make_settings(tmp_path, ADMIN_TOKEN), store)
    store.close()


def record_deploy(
    store: Store,
    *,
    status: str = "succeeded",
    source: str = "push",
    repo: str = "acme/mcp-servers",
    branch: str = "main",
    sha: str = SHA,
    message: str = "Add the search tool",
    author: str = "Ada Lovelace",
    servers: dict[str, Any] | None = None,
    steps: list[dict[str, Any]] | None = None,
    lines: tuple[str, ...] = (),
    age: float = 3 * 3600,
    took: float = 12.5,
) -> int:
    """Store a deploy as the runbook leaves it: created `age` ago, started a second later."""
    deploy_id = store.create_deploy(
        source=source, repo=repo, ref=f"refs/heads/{branch}", commit_sha=sha, author=author, message=message
    )
    created = time.time() - age
    fields: dict[str, Any] = {
        "status": status,
        "created_at": created,
        "servers": servers or {},
        "steps": steps or [],
    }
    if status != "queued":
        fields["started_at"] = created + 1
    if status not in ("queued", "running"):
        fields["finished_at"] = created + 1 + took
    store.update_deploy(deploy_id, **fields)
    for seq, text in enumerate(lines, 1):
        store.add_event(deploy_id, seq, "log", text)
    return deploy_id


def release(server: str, number: int, tools: list[str], access: tuple[str, ...] = ("all",)) -> Release:
    """A gated release of `server` with these tool names."""
    return Release(
        server=server,
        number=number,
        repo="acme/mcp-servers",
        commit_sha=SHA,
        fingerprint=f"fp-{server}-{number}",
        image=f"central-mcp/{server}:r{number}",
        version=f"1.{number}.0",
        status="gated",
        deploy_id=None,
        container_id=f"c-{number}",
        host_port=20000 + number,
        path="/mcp",
        tools=[{"name": t, "description": t} for t in tools],
        manifest={"name": server, "description": f"the {server} server", "access": list(access)},
    )


def go_live(store: Store, rel: Release) -> None:
    """Record a release and swap it live, as a deploy does."""
    store.add_release(rel)
    store.commit_swap([rel.placement], [])


def rows(page: str) -> list[str]:
    """The body rows of the page's first table."""
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return list(re.findall(r"<tr>(.*?)</tr>", body, re.S))


def text(fragment: str) -> str:
    """The fragment as a reader sees it: tags dropped, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def row_ids(page: str) -> list[int]:
    """The deploy ids listed on a /deploys page, in order."""
    return [int(n) for n in re.findall(r'<td><a href="/deploys/(\d+)">', page)]


def in_thread(action: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Run `action` on a thread; its exception, if any, lands in the returned list."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # reported by the test that joins the thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


# /deploys ----------------------------------------------------------------------------------------


def test_deploys_lists_newest_first_with_everything_a_reader_needs(site: Site) -> None:
    """Each row shows status word and class, source, repo@branch, commit, servers changed, when, took."""
    older = record_deploy(
        site.store,
        status="failed",
        source="webhook",
        branch="feature/x",
        message="Break the gate",
        author="Grace Hopper",
        age=2 * 86400,
        took=3.25,
        servers={"alpha": {"outcome": "failed", "release": 3, "reason": "no tools"}},
    )
    newer = record_deploy(
        site.store,
        servers={
            "alpha": {"outcome": "swapped", "release": 4},
            "beta": {"outcome": "unchanged", "release": 1},
        },
    )
    queued = record_deploy(site.store, status="queued", message="Wait your turn", age=5)
    page = site.client().get("/deploys")
    assert page.status_code == 200
    assert row_ids(page.text) == [queued, newer, older]
    first, second, third = rows(page.text)
    assert '<span class="status succeeded">succeeded</span>' in second
    assert '<span class="status failed">failed</span>' in third
    assert '<span class="status queued">queued</span>' in first
    assert text(second) == (
        f"{newer} succeeded push acme/mcp-servers@main 01234567 Add the search tool "
        "Ada Lovelace alpha swapped 3h ago 12.5s"
    )
    assert text(third) == (
        f"{older} failed webhook acme/mcp-servers@feature/x 01234567 Break the gate "
        "Grace Hopper alpha failed 2d ago 3.2s"
    )
    assert text(first).endswith("5s ago —")
    assert re.search(r'title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">3h ago', second)


def test_deploys_escapes_commit_messages_and_authors(site: Site) -> None:
    """A commit message or author holding markup shows as text on the list."""
    record_deploy(site.store, message="<b>bold</b> move", author="<img src=x onerror=alert(1)>")
    page = site.client().get("/deploys").text
    assert "&lt;b&gt;bold&lt;/b&gt; move" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>bold" not in page and "<img" not in page


def test_deploys_filters_by_status_and_by_server(site: Site) -> None:
    """?status= keeps deploys of that status; ?server= keeps deploys touching that server; both combine."""
    a_ok = record_deploy(site.store, servers={"alpha": {"outcome": "swapped", "release": 1}})
    b_fail = record_deploy(site.store, status="failed", servers={"beta": {"outcome": "failed"}})
    a_fail = record_deploy(site.store, status="failed", servers={"alpha": {"outcome": "failed"}})
    client = site.client()
    assert row_ids(client.get("/deploys?status=failed").text) == [a_fail, b_fail]
    assert row_ids(client.get("/deploys?server=alpha").text) == [a_fail, a_ok]
    assert row_ids(client.get("/deploys?server=alpha&status=succeeded").text) == [a_ok]
    assert row_ids(client.get("/deploys?server=gamma").text) == []
    filtered = client.get("/deploys?server=alpha&status=failed").text
    assert 'value="alpha"' in filtered and '<option value="failed" selected>' in filtered


def test_server_filter_does_not_match_keys_inside_outcomes(site: Site) -> None:
    """Filtering by a name that is only a timing key (`gate`) lists no deploy."""
    record_deploy(
        site.store,
        servers={
            "alpha": {"outcome": "gated", "release": 1, "timings": {"build": 1.0, "start": 0.5, "gate": 2.0}}
        },
    )
    assert row_ids(site.client().get("/deploys?server=gate").text) == []


def test_deploys_paginates_by_25_with_older_and_newer_links(site: Site) -> None:
    """With 30 deploys page 1 shows the newest 25 and an "older →" link; page 2 shows the other 5."""
    ids = [record_deploy(site.store, status="failed" if i % 2 else "succeeded") for i in range(30)]
    client = site.client()
    first = client.get("/deploys").text
    assert row_ids(first) == ids[::-1][:25]
    assert '<a href="?server=&status=&page=2">older →</a>' in first
    assert "newer" not in first
    second = client.get("/deploys?page=2").text
    assert row_ids(second) == ids[::-1][25:]
    assert '<a href="?server=&status=&page=1">← newer</a>' in second
    assert "older →" not in second
    only_failed = client.get("/deploys?status=failed").text
    assert row_ids(only_failed) == [i for i in ids[::-1] if i % 2 == 0]
    assert "older →" not in only_failed


@pytest.mark.parametrize("page", ["0", "-1", "abc", ""])
def test_deploys_treats_a_nonsense_page_as_the_first(site: Site, page: str) -> None:
    """A page number that is not a positive integer shows page 1."""
    newest = record_deploy(site.store)
    answer = site.client().get(f"/deploys?page={page}")
    assert answer.status_code == 200
    assert row_ids(answer.text) == [newest]


@pytest.mark.parametrize("page", ["²", "99999999999999999999"])
def test_deploys_answers_a_hostile_page_number_without_a_server_error(site: Site, page: str) -> None:
    """A page number that is digits to str.isdigit but not to SQLite is not a 500."""
    record_deploy(site.store)
    assert site.client(raise_server_exceptions=False).get("/deploys", params={"page": page}).status_code < 500


def test_deploys_json_lists_newest_first_without_the_relative_time(site: Site) -> None:
    """/deploys.json lists records newest first, with branch, took and an ISO time but no "ago"."""
    first = record_deploy(site.store)
    second = record_deploy(site.store, status="failed")
    body = site.client().get("/deploys.json").json()
    assert [d["id"] for d in body["deploys"]] == [second, first]
    assert body["deploys"][1]["branch"] == "main"
    assert body["deploys"][1]["took"] == "12.5s"
    assert "ago" not in body["deploys"][1]


# /deploys/<id> -----------------------------------------------------------------------------------


def test_deploy_page_shows_steps_servers_tool_changes_and_the_whole_log(site: Site) -> None:
    """The page shows step timings, each server's outcome and reason, +added/-removed tools, and the log."""
    go_live(site.store, release("alpha", 1, ["search", "fetch"]))
    go_live(site.store, release("alpha", 2, ["search", "summarize"]))
    steps = [
        {"name": "fetch", "status": "ok", "seconds": 0.42},
        {"name": "build", "status": "ok", "seconds": 12.5},
        {"name": "gate", "status": "failed", "seconds": 3.0},
    ]
    servers = {
        "alpha": {
            "outcome": "swapped",
            "release": 2,
            "tools": ["search", "summarize"],
            "timings": {"build": 10.0, "start": 0.75, "gate": 1.5},
        },
        "beta": {"outcome": "failed", "release": 1, "reason": "health gate: tools/list timed out"},
    }
    lines = tuple(f"line {i}" for i in range(1, 201))
    deploy_id = record_deploy(site.store, status="failed", steps=steps, servers=servers, lines=lines)
    page = site.client().get(f"/deploys/{deploy_id}")
    assert page.status_code == 200
    assert f'Deploy #{deploy_id} <span id="status" class="status failed">failed</span>' in page.text
    step_rows, server_rows = [text(t) for t in rows(page.text)[:3]], page.text.split("<h2>Servers</h2>")[1]
    assert step_rows == ["fetch ok 0.42", "build ok 12.50", "gate failed 3.00"]
    alpha, beta = [text(r) for r in rows(server_rows)]
    assert alpha == (
        "alpha swapped r2 build 10.00s · start 0.75s · gate 1.50s "
        f"+ summarize {MINUS} fetch search, summarize"
    )
    assert beta == "beta failed health gate: tools/list timed out r1"
    assert '<span class="succeeded">+ summarize</span>' in server_rows
    assert f'<span class="failed">{MINUS} fetch</span>' in server_rows
    log = page.text.split('id="log">', 1)[1].split("</pre>", 1)[0]
    assert text(log) == " ".join(lines)
    assert "var running = false" in page.text


def test_first_release_shows_its_tools_without_a_change_list(site: Site) -> None:
    """A server's first release has no earlier release to compare with: tools only, no +/-."""
    go_live(site.store, release("alpha", 1, ["search"]))
    deploy_id = record_deploy(
        site.store, servers={"alpha": {"outcome": "swapped", "release": 1, "tools": ["search"]}}
    )
    servers = site.client().get(f"/deploys/{deploy_id}").text.split("<h2>Servers</h2>")[1]
    assert text(rows(servers)[0]) == "alpha swapped r1 search"


def test_log_lines_are_escaped_and_ansi_colours_stripped(site: Site) -> None:
    """A log line with <script> shows as text and ANSI codes vanish, on the page, /log and the events."""
    deploy_id = record_deploy(site.store, lines=(f"npm says {XSS}", f"colour {ANSI_RED} done"))
    client = site.client()
    page = client.get(f"/deploys/{deploy_id}").text
    assert "npm says &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert XSS not in page
    assert "colour red done" in page
    assert "\x1b" not in page and "[31m" not in page
    log = client.get(f"/deploys/{deploy_id}/log").text
    assert log == f"npm says {XSS}\ncolour red done\n"
    events = client.get(f"/deploys/{deploy_id}/events").text
    assert "\\u001b" not in events and "[31m" not in events and "colour red done" in events


def test_deploy_json_and_text_log_of_a_finished_deploy(site: Site) -> None:
    """/deploys/<id>.json is the record; /log is the whole log as text/plain."""
    deploy_id = record_deploy(
        site.store,
        lines=("==> fetch", "alpha: gate ok in 1.50s"),
        servers={"alpha": {"outcome": "swapped", "release": 1}},
    )
    client = site.client()
    record = client.get(f"/deploys/{deploy_id}.json")
    assert record.headers["content-type"] == "application/json"
    body = record.json()
    assert (body["id"], body["status"], body["commit_sha"], body["branch"]) == (
        deploy_id,
        "succeeded",
        SHA,
        "main",
    )
    assert body["servers"] == {"alpha": {"outcome": "swapped", "release": 1}}
    assert body["took"] == "12.5s"
    log = client.get(f"/deploys/{deploy_id}/log")
    assert log.headers["content-type"] == "text/plain; charset=utf-8"
    assert log.text == "==> fetch\nalpha: gate ok in 1.50s\n"


@pytest.mark.parametrize("path", ["/deploys/999", "/deploys/999.json", "/deploys/999/log"])
def test_unknown_deploy_answers_404(site: Site, path: str) -> None:
    """An id that names no deploy is a 404 on every deploy URL."""
    record_deploy(site.store)
    assert site.client().get(path).status_code == 404


def test_events_of_an_unknown_deploy_answer_404(site: Site) -> None:
    """/deploys/999/events is a 404 like the other deploy URLs."""
    assert site.client().get("/deploys/999/events").status_code == 404


# live logs ---------------------------------------------------------------------------------------


def test_log_of_a_running_deploy_streams_lines_as_they_come_and_ends_at_the_finish(site: Site) -> None:
    """Over real HTTP, /log sends each new line before the deploy finishes and closes right after it."""
    deploy_id = record_deploy(site.store, status="running")
    live = site.live(deploy_id, "deploy #1: push of acme/mcp-servers@main")
    started, line_seen = threading.Event(), threading.Event()

    def run_deploy() -> None:
        assert started.wait(10)
        live.line("alpha: build ok in 1.00s")
        assert line_seen.wait(10)
        site.store.update_deploy(deploy_id, status="succeeded", finished_at=time.time())
        live.finish("succeeded", "alpha r2 live")

    got: list[str] = []
    with (
        serve_asgi(site.app) as port,
        httpx2.Client(timeout=STREAM_TIMEOUT) as http,
        http.stream("GET", f"http://127.0.0.1:{port}/deploys/{deploy_id}/log") as answer,
    ):
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        worker, errors = in_thread(run_deploy)
        for line in answer.iter_lines():
            got.append(line)
            if line.startswith("deploy #1"):
                started.set()
            elif line.startswith("alpha: build ok"):
                assert not live.finished, "the line must arrive while the deploy still runs"
                line_seen.set()
        assert live.finished
    worker.join(10)
    assert errors == []
    assert got == [
        "deploy #1: push of acme/mcp-servers@main",
        "alpha: build ok in 1.00s",
        "succeeded: alpha r2 live",
    ]


def test_events_stream_sse_after_a_seq_and_end_after_the_end_event(site: Site) -> None:
    """Over real HTTP, /events is text/event-stream of `id:`/`data:` after ?after=N, closed after `end`."""
    deploy_id = record_deploy(site.store, status="running")
    live = site.live(deploy_id, "one", "two")
    blocks: list[str] = []
    with (
        serve_asgi(site.app) as port,
        httpx2.Client(timeout=STREAM_TIMEOUT) as http,
        http.stream("GET", f"http://127.0.0.1:{port}/deploys/{deploy_id}/events?after=1") as answer,
    ):
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["cache-control"] == "no-cache"
        pending = ""
        for chunk in answer.iter_text():
            pending += chunk
            while "\n\n" in pending:
                block, pending = pending.split("\n\n", 1)
                blocks.append(block)
                if len(blocks) == 1:
                    live.line(f"three {ANSI_RED}")
                elif len(blocks) == 2:
                    live.finish("succeeded", "done")
    assert [b.split("\n")[0] for b in blocks] == ["id: 2", "id: 3", "id: 4"]
    data = [json.loads(b.split("\n")[1].removeprefix("data: ")) for b in blocks]
    assert data == [
        {"seq": 2, "kind": "log", "text": "two"},
        {"seq": 3, "kind": "log", "text": "three red"},
        {"seq": 4, "kind": "end", "text": "succeeded: done"},
    ]


def test_events_of_a_finished_deploy_are_read_from_the_store(site: Site) -> None:
    """Without a live log, /events replays the stored events after ?after=N and ends with `end`."""
    deploy_id = record_deploy(site.store, lines=("a", "b", "c"))
    answer = site.client().get(f"/deploys/{deploy_id}/events?after=1")
    assert answer.text == (
        'id: 2\ndata: {"seq": 2, "kind": "log", "text": "b"}\n\n'
        'id: 3\ndata: {"seq": 3, "kind": "log", "text": "c"}\n\n'
        'id: 4\ndata: {"seq": 4, "kind": "end", "text": "succeeded: "}\n\n'
    )


def test_events_with_a_negative_after_start_from_the_first(site: Site) -> None:
    """?after=-1 sends each event once, in order."""
    deploy_id = record_deploy(site.store, status="running")
    live = site.live(deploy_id, "one", "two")
    live.finish("succeeded", "done")
    ids = re.findall(r"^id: (\d+)$", site.client().get(f"/deploys/{deploy_id}/events?after=-1").text, re.M)
    assert ids == ["1", "2", "3"]


def test_events_answer_a_bad_after_without_a_server_error(site: Site) -> None:
    """?after=x is not a server error."""
    deploy_id = record_deploy(site.store, lines=("a",))
    answer = site.client(raise_server_exceptions=False).get(f"/deploys/{deploy_id}/events?after=x")
    assert answer.status_code < 500


def test_events_of_a_deploy_abandoned_by_a_restart_end_with_an_end_event(site: Site) -> None:
    """A deploy marked abandoned after a crash still ends its event stream with an `end` event."""
    deploy_id = record_deploy(site.store, status="running", lines=("building",))
    site.store.abandon_active("the server restarted")
    answer = site.client().get(f"/deploys/{deploy_id}/events?after=1").text
    assert '"kind": "end"' in answer and "abandoned" in answer


def test_open_live_tails_do_not_slow_the_other_pages(site: Site) -> None:
    """With twice as many open tails as default-executor threads, /deploys.json still answers fast."""
    deploy_id = record_deploy(site.store, status="running")
    live = site.live(deploy_id, "waiting for docker")
    tails = 2 * min(32, (os.cpu_count() or 1) + 4)
    connected = [threading.Event() for _ in range(tails)]
    with serve_asgi(site.app) as port:
        url = f"http://127.0.0.1:{port}"

        def tail(ready: threading.Event) -> None:
            with (
                httpx2.Client(timeout=STREAM_TIMEOUT) as http,
                http.stream("GET", f"{url}/deploys/{deploy_id}/events") as answer,
            ):
                for _ in answer.iter_lines():
                    ready.set()

        readers = [in_thread(functools.partial(tail, ready))[0] for ready in connected]
        try:
            assert all(ready.wait(10) for ready in connected)
            with httpx2.Client(timeout=STREAM_TIMEOUT) as http:
                started = time.monotonic()
                http.get(f"{url}/deploys.json")
                seconds = time.monotonic() - started
        finally:
            live.finish("succeeded", "done")
            for reader in readers:
                reader.join(10)
    assert seconds < 0.5


# registry and client configs ---------------------------------------------------------------------


@pytest.fixture
def live_servers(site: Site) -> Site:
    """Live releases of alpha (r2) and beta (r1)."""
    go_live(site.store, release("alpha", 1, ["search"]))
    go_live(site.store, release("alpha", 2, ["search", "summarize"]))
    go_live(site.store, release("beta", 1, ["deploy"]))
    return site


def test_registry_lists_live_servers_with_an_etag_and_answers_304_when_unchanged(live_servers: Site) -> None:
    """/registry.json lists every live server; If-None-Match with its ETag is a bodiless 304."""
    client = live_servers.client()
    answer = client.get("/registry.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    tag = answer.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', tag)
    body = answer.json()
    assert [e["server"]["name"] for e in body["servers"]] == [
        "local.central-mcp/alpha",
        "local.central-mcp/beta",
    ]
    assert body["servers"][0]["server"]["remotes"][0]["url"] == "https://mcp.example.test/mcp/alpha"
    assert body["servers"][0]["_meta"]["io.central-mcp/live"]["release"] == "r2"
    again = client.get("/registry.json", headers={"If-None-Match": f'"other", {tag}'})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag)
    go_live(live_servers.store, release("beta", 2, ["deploy", "rollback"]))
    changed = client.get("/registry.json", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag


def test_project_key_narrows_the_registry_and_mcp_json_to_its_servers(live_servers: Site) -> None:
    """With web's key, /registry.json and /mcp.json list only alpha; without a key, everything."""
    key = create_key(live_servers.store, live_servers.settings, "web")
    client = live_servers.client()
    auth = {"Authorization": f"Bearer {key}"}
    registry = client.get("/registry.json", headers=auth).json()
    assert [e["server"]["name"] for e in registry["servers"]] == ["local.central-mcp/alpha"]
    each = "/mcp.json?per_server=1"
    assert list(client.get(each, headers=auth).json()["mcpServers"]) == ["alpha"]
    assert list(client.get(each).json()["mcpServers"]) == ["alpha", "beta"]
    single = client.get("/mcp.json", headers=auth).json()["mcpServers"]
    assert single == {
        "central-mcp": {
            "type": "http",
            "url": "https://mcp.example.test/mcp",
            "headers": {"Authorization": "Bearer ${CENTRAL_MCP_API_KEY}"},
        }
    }
    assert registry["metadata"]["io.central-mcp/aggregate"] == {
        "url": "https://mcp.example.test/mcp",
        "project": "web",
    }
    full, narrow = client.get("/registry.json"), client.get("/registry.json", headers=auth)
    assert full.headers["etag"] != narrow.headers["etag"]


def test_without_a_key_servers_restricted_to_projects_are_not_listed(live_servers: Site) -> None:
    """A server whose manifest allows only project ops is absent from the anonymous registry and
    mcp.json, and listed for ops's key."""
    go_live(live_servers.store, release("gamma", 1, ["private"], access=("ops",)))
    key = create_key(live_servers.store, live_servers.settings, "ops")
    client = live_servers.client()

    anonymous = [e["server"]["name"] for e in client.get("/registry.json").json()["servers"]]
    assert "local.central-mcp/gamma" not in anonymous
    assert "gamma" not in client.get("/mcp.json?per_server=1").json()["mcpServers"]
    assert "private" not in client.get("/registry.json").text
    ops = client.get("/mcp.json?per_server=1", headers={"Authorization": f"Bearer {key}"}).json()[
        "mcpServers"
    ]
    assert "gamma" in ops


def test_bad_project_key_is_refused_with_401(live_servers: Site) -> None:
    """An unknown key is refused with 401 and a Bearer challenge, not answered with the whole registry."""
    answer = live_servers.client().get("/registry.json", headers={"Authorization": "Bearer cmcp_nope"})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.json()["error"].startswith("unknown or revoked API key; a project key is needed")


def test_client_config_for_vscode_lists_the_projects_servers(live_servers: Site) -> None:
    """/client-config/web/vscode is VS Code's mcp.json with an input for the key and the aggregate
    entry; with ?per_server=1, web's servers only."""
    client = live_servers.client()
    single = client.get("/client-config/web/vscode").json()
    assert single["servers"] == {
        "central-mcp": {
            "type": "http",
            "url": "https://mcp.example.test/mcp",
            "headers": {"Authorization": "Bearer ${input:central-mcp-key}"},
        }
    }
    config = client.get("/client-config/web/vscode?per_server=1").json()
    assert config["inputs"][0]["password"] is True
    assert config["servers"] == {
        "alpha": {
            "type": "http",
            "url": "https://mcp.example.test/mcp/alpha",
            "headers": {"Authorization": "Bearer ${input:central-mcp-key}"},
        }
    }
    assert client.get("/client-config/nobody/vscode").status_code == 404
    assert client.get("/client-config/web/emacs").status_code == 404


def test_index_lists_live_servers_and_client_config_links(live_servers: Site) -> None:
    """/ shows the live servers with endpoints and links each project's client configs."""
    page = live_servers.client().get("/").text
    assert "<code>https://mcp.example.test/mcp/alpha</code>" in page
    assert "search, summarize" in page
    assert '<a href="/client-config/web/vscode">vscode</a>' in page


# admin token -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/deploys",
        "/deploys.json",
        "/deploys/1",
        "/deploys/1.json",
        "/deploys/1/log",
        "/deploys/1/events",
        "/client-config/web/vscode",
    ],
)
def test_admin_pages_need_the_token(guarded: Site, path: str) -> None:
    """Without the admin token every page answers 401 with a hint; ?token= opens it."""
    record_deploy(guarded.store)
    client = guarded.client()
    refused = client.get(path)
    assert refused.status_code == 401
    assert "?token=" in refused.text
    assert client.get(path, params={"token": "wrong"}).status_code == 401
    assert client.get(path, params={"token": ADMIN_TOKEN}).status_code == 200


def test_admin_token_in_the_query_sets_a_cookie_that_opens_later_pages(guarded: Site) -> None:
    """Opening a page once with ?token= sets an HttpOnly cookie; the next request needs nothing else."""
    deploy_id = record_deploy(guarded.store)
    client = guarded.client(base_url="https://testserver")  # the cookie is Secure: the public URL is https
    first = client.get(f"/deploys?token={ADMIN_TOKEN}")
    assert first.status_code == 200
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{pages.ADMIN_COOKIE}={ADMIN_TOKEN};")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert client.get(f"/deploys/{deploy_id}").status_code == 200
    assert guarded.client().get(f"/deploys/{deploy_id}").status_code == 401


def _cookies(answer: Any) -> list[dict[str, str]]:
    """Each Set-Cookie of an answer as {attribute (lower case): value}; the pair itself under "="."""
    found = []
    for header in answer.headers.get_list("set-cookie"):
        pair, *attributes = (part.strip() for part in header.split(";"))
        parsed = {"=": pair}
        for attribute in attributes:
            name, _, value = attribute.partition("=")
            parsed[name.lower()] = value
        found.append(parsed)
    return found


@pytest.mark.parametrize("public_url", ["https://mcp.example.test", "http://10.0.0.5:8900"])
def test_admin_cookie_is_scoped_to_the_pages(tmp_path: Path, public_url: str) -> None:
    """The admin cookie goes only to the pages' paths (never `/`, so never to `/mcp/`), HttpOnly,
    SameSite=Strict, and Secure when the public URL is https."""
    settings = replace(make_settings(tmp_path, ADMIN_TOKEN), public_url=public_url)
    store = Store(tmp_path / "central-mcp.db")
    try:
        client = Site(settings, store).client(base_url=public_url.replace("10.0.0.5:8900", "testserver"))
        answer = client.get("/deploys", params={"token": ADMIN_TOKEN})
    finally:
        store.close()
    cookies = _cookies(answer)
    assert sorted(c["path"] for c in cookies) == sorted(pages.ADMIN_COOKIE_PATHS)
    assert "/" not in pages.ADMIN_COOKIE_PATHS
    for cookie in cookies:
        assert cookie["="] == f"{pages.ADMIN_COOKIE}={ADMIN_TOKEN}"
        assert "httponly" in cookie and cookie["samesite"].lower() == "strict"
        assert ("secure" in cookie) is public_url.startswith("https://")
    for path in ("/deploys", "/deploys/1", "/deploys.json", "/client-config/web/vscode", "/servers"):
        assert any(path == c["path"] or path.startswith(c["path"] + "/") for c in cookies), path
    assert not any("/mcp/x".startswith(c["path"]) for c in cookies)


def test_pages_carry_nosniff_and_a_strict_csp(site: Site) -> None:
    """Every page says nosniff, sends no Referer (the ?token= must not leak), may not be framed, and
    runs only the script and style it was served with (a per-answer nonce)."""
    record_deploy(site.store)
    client = site.client()
    for path in ("/servers", "/deploys", "/deploys/1", "/deploys.json"):
        answer = client.get(path)
        assert answer.status_code == 200, path
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
    page = client.get("/deploys/1")
    nonce = re.search(r"'nonce-([^']+)'", page.headers["content-security-policy"])
    assert nonce is not None and f'<script nonce="{nonce[1]}">' in page.text
    assert f'<style nonce="{nonce[1]}">' in page.text
    again = client.get("/deploys/1").headers["content-security-policy"]
    assert nonce[1] not in again


def test_root_leads_to_the_servers_page_keeping_the_token(guarded: Site) -> None:
    """`/` sends the browser to `/servers` (the index, under a cookie path), with its query."""
    answer = guarded.client(follow_redirects=False).get("/", params={"token": ADMIN_TOKEN})
    assert answer.status_code in (302, 303, 307)
    assert answer.headers["location"] == f"/servers?token={ADMIN_TOKEN}"
    assert guarded.client().get("/", params={"token": ADMIN_TOKEN}).status_code == 200


def test_admin_token_as_a_bearer_header_opens_the_pages(guarded: Site) -> None:
    """Scripts may send the admin token as `Authorization: Bearer`."""
    record_deploy(guarded.store)
    answer = guarded.client().get("/deploys.json", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 200


def test_registry_files_stay_readable_without_the_admin_token(guarded: Site) -> None:
    """/registry.json and /mcp.json are for projects: the admin token is not asked for."""
    go_live(guarded.store, release("alpha", 1, ["search"]))
    client = guarded.client()
    assert client.get("/registry.json").status_code == 200
    assert (
        client.get("/mcp.json").json()["mcpServers"]["central-mcp"]["url"] == "https://mcp.example.test/mcp"
    )


def test_correct_query_token_wins_over_a_stale_cookie(guarded: Site) -> None:
    """After the admin token changes, opening a page with the new ?token= works despite the old cookie."""
    client = guarded.client(cookies={pages.ADMIN_COOKIE: "the-old-token"})
    assert client.get(f"/deploys?token={ADMIN_TOKEN}").status_code == 200


def test_a_deploys_canary_shows_its_step_and_both_releases_figures_live(site: Site) -> None:
    """/deploys/<id>.json carries the canary's step and each release's requests, failures and p99;
    the page shows them, JSON-RPC errors counted for the canary only."""
    deploy_id = record_deploy(site.store, servers={"alpha": {"outcome": "canary", "release": 2}})
    router = Router()
    router.swap({"alpha": Upstream("alpha", 1, "c1", "127.0.0.1", 5001, "/mcp")})
    split = router.start_split("alpha", [Upstream("alpha", 2, "c2", "127.0.0.1", 5002, "/mcp")], 10)
    rollout = Rollout(Strategy.CANARY, (10, 50, 100))
    steps = Steps("alpha", deploy_id, 1, 2, rollout, percent=10)
    site.canaries.add(Canary(split, steps, lambda: None, lambda _: None, print))
    split.observe(1, False, False, 0.02)
    split.observe(2, False, True, 0.04)
    client = site.client()
    canary = client.get(f"/deploys/{deploy_id}.json").json()["canary"]
    assert (canary["phase"], canary["step"], canary["steps"]) == ("running", 10, [10, 50, 100])
    assert canary["stable"] == {
        "release": 1,
        "requests": 1,
        "failed": 0,
        "rpc_errors": 0,
        "error_rate": 0.0,
        "p99_ms": 20.0,
    }
    assert canary["canary"]["failed"] == 1 and canary["canary"]["rpc_errors"] == 1
    page = client.get(f"/deploys/{deploy_id}").text
    assert "Canary: alpha r2 — running at 10%" in page and "not parsed" in page
