"""The deploy pages in a real headless Chromium (Playwright): live tail, escaping, a phone-sized screen.

In CI (CI=true) a missing Playwright or Chromium fails these tests; elsewhere they are skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
from starlette.applications import Starlette

from pipeline import pages
from pipeline.app import PageSources
from pipeline.config.settings import Settings
from pipeline.deploylog import DeployLog
from pipeline.proxy.access import Gatekeeper
from pipeline.store import Release, Store
from tests.support.loopback import serve_asgi

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 10_000
PHONE: ViewportSize = {"width": 375, "height": 740}
OVERFLOW_TOLERANCE = 2
MIN_READABLE_PX = 12
PAYLOAD = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"
LONG_TOOL = "list_documents_by_collection"


def _unavailable(reason: str) -> NoReturn:
    """Fail in CI, where the browser must be installed; skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs headless Chromium and Playwright: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright (never a browser Playwright downloads)."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"Playwright is not installed ({exc}); pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing; apt-get install -y chromium")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        except PlaywrightError as exc:
            _unavailable(f"{CHROMIUM} does not start: {exc}")
        yield chromium
        chromium.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A real Store in tmp_path."""
    found = Store(tmp_path / "central-mcp.db")
    yield found
    found.close()


@pytest.fixture
def logs() -> dict[int, DeployLog]:
    """The live logs of running deploys, as the dispatcher keeps them."""
    return {}


@pytest.fixture
def site(tmp_path: Path, store: Store, logs: dict[int, DeployLog]) -> Iterator[str]:
    """The pages app served on loopback; yields its base URL."""
    settings = Settings(config_path=Path("deploy.yaml"), state_dir=tmp_path)
    sources = PageSources(settings, store, Gatekeeper(settings, store), logs)
    with serve_asgi(Starlette(routes=pages.routes(lambda request: sources))) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page at desktop size, closed (with its EventSource) before the server stops."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    yield context.new_page()
    context.close()


def running_deploy(store: Store, logs: dict[int, DeployLog], *lines: str) -> tuple[int, DeployLog]:
    """A running deploy with a live log holding these lines."""
    deploy_id = store.create_deploy(
        source="push",
        repo="acme/mcp-servers",
        ref="refs/heads/main",
        commit_sha=SHA,
        author="Ada Lovelace",
        message="Add the summarize tool",
    )
    store.update_deploy(deploy_id, status="running", started_at=time.time())
    log = DeployLog(store, deploy_id)
    logs[deploy_id] = log
    for text in lines:
        log.line(text)
    return deploy_id, log


def finish(store: Store, deploy_id: int, log: DeployLog, status: str, text: str) -> None:
    """End a deploy the way the runbook does: record first, then the `end` event."""
    store.update_deploy(deploy_id, status=status, finished_at=time.time())
    log.finish(status, text)


def log_lines(page: Page) -> list[str]:
    """The lines shown in #log."""
    return [str(line) for line in page.locator("#log span").all_inner_texts()]


def test_running_deploy_page_tails_new_lines_and_shows_the_final_status_without_reload(
    site: str, store: Store, logs: dict[int, DeployLog], page: Page, tmp_path: Path
) -> None:
    """Lines emitted after the page loaded appear in #log, and the status word turns to succeeded."""
    from playwright.sync_api import expect

    deploy_id, log = running_deploy(store, logs, "deploy #1: push of acme/mcp-servers@main 9f86d081884c")
    page.goto(f"{site}/deploys/{deploy_id}")
    expect(page.locator("#status")).to_have_text("running")
    page.evaluate("window.sameDocument = true")  # lost if the page reloads
    log.step("build")
    log.line("alpha | Step 1/4 : FROM python:3.12-slim")
    expect(page.locator("#log")).to_contain_text("Step 1/4", timeout=WAIT_MS)
    assert page.locator("#status").inner_text() == "running"
    log.line("alpha: gate ok in 1.50s")
    finish(store, deploy_id, log, "succeeded", "alpha r2 live (4.2s)")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(page.locator("#status")).to_have_class("status succeeded")
    assert page.evaluate("window.sameDocument") is True
    assert log_lines(page) == [
        "deploy #1: push of acme/mcp-servers@main 9f86d081884c",
        "==> build",
        "alpha | Step 1/4 : FROM python:3.12-slim",
        "alpha: gate ok in 1.50s",
        "succeeded: alpha r2 live (4.2s)",
    ]
    page.screenshot(path=str(tmp_path / "deploy-live.png"), full_page=True)


def test_markup_in_log_lines_renders_as_text_and_never_runs(
    site: str, store: Store, logs: dict[int, DeployLog], page: Page
) -> None:
    """A <script>/<img onerror> line shows as text, at page load and live, and changes nothing."""
    from playwright.sync_api import expect

    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    deploy_id, log = running_deploy(store, logs, f"at load: {PAYLOAD}")
    page.goto(f"{site}/deploys/{deploy_id}")
    title = f"Deploy #{deploy_id} · central-mcp"
    expect(page).to_have_title(title)
    log.line(f"live: {PAYLOAD}")
    finish(store, deploy_id, log, "failed", f"alpha: {PAYLOAD}")
    expect(page.locator("#status")).to_have_text("failed", timeout=WAIT_MS)
    expect(page.locator("#log")).to_be_visible()
    assert log_lines(page) == [f"at load: {PAYLOAD}", f"live: {PAYLOAD}", f"failed: alpha: {PAYLOAD}"]
    assert page.evaluate("document.images.length") == 0
    assert page.locator("#log script").count() == 0
    assert not [url for url in requested if url.endswith("/x")], "an <img src=x> was created"
    assert page.title() == title


def _fill_history(store: Store) -> int:
    """Deploys and releases as a busy week leaves them; returns the deploy that changed tools."""
    for number, tools in ((1, ["search", "fetch"]), (2, ["search", "summarize", LONG_TOOL])):
        rel = Release(
            server="docs",
            number=number,
            repo="acme/mcp-servers",
            commit_sha=SHA,
            fingerprint=f"f{number}",
            image=f"central-mcp/docs:r{number}",
            version=f"1.{number}.0",
            status="gated",
            deploy_id=None,
            container_id="",
            host_port=0,
            path="/mcp",
            tools=[{"name": t} for t in tools],
            manifest={"name": "docs"},
        )
        store.add_release(rel)
        store.commit_swap([rel.placement], [])
    samples: list[tuple[str, str, str, dict[str, Any]]] = [
        (
            "succeeded",
            "main",
            "Add the summarize tool to the docs server and document its limits",
            {
                "docs": {
                    "outcome": "swapped",
                    "release": 2,
                    "timings": {"build": 10.0, "start": 0.8, "gate": 1.5},
                    "tools": ["search", "summarize", LONG_TOOL],
                },
                "search": {"outcome": "unchanged", "release": 1},
            },
        ),
        (
            "failed",
            "feature/summarize-tool-with-a-rather-long-branch-name",
            "Try a bigger model",
            {"docs": {"outcome": "failed", "release": 3, "reason": "health gate: tools/list timed out"}},
        ),
        ("running", "main", "Bump the base image", {}),
        ("canceled", "main", "Superseded", {}),
        ("abandoned", "main", "Crashed mid-way", {}),
        ("succeeded", "main", "Remove the ticket server", {"tickets": {"outcome": "removed"}}),
    ]
    ids = []
    for status, branch, message, servers in samples:
        deploy_id = store.create_deploy(
            source="webhook",
            repo="acme/mcp-servers",
            ref=f"refs/heads/{branch}",
            commit_sha=SHA,
            author="Grace Hopper <grace@example.test>",
            message=message,
        )
        finished = None if status == "running" else time.time()
        store.update_deploy(
            deploy_id,
            status=status,
            servers=servers,
            started_at=time.time() - 42,
            finished_at=finished,
            steps=[{"name": "build", "status": "ok", "seconds": 12.5}],
        )
        store.add_event(deploy_id, 1, "log", "docs | #5 [2/4] RUN pip install -r requirements.txt")
        ids.append(deploy_id)
    return ids[0]


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    """A page on a 375x740 phone screen."""
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True)
    yield context.new_page()
    context.close()


def test_deploys_on_a_phone_keeps_every_row_readable(
    site: str, store: Store, phone: Page, tmp_path: Path
) -> None:
    """On a 375 px screen /deploys drops the wide columns and keeps text legible and statuses in view."""
    _fill_history(store)
    phone.goto(f"{site}/deploys")
    phone.screenshot(path=str(tmp_path / "deploys-phone.png"), full_page=True)
    assert phone.locator("tbody tr").count() == 6
    assert phone.locator("th.wide").first.is_hidden()
    assert phone.locator("td.wide").first.is_hidden()
    sizes = phone.evaluate(
        "[...document.querySelectorAll('td')].filter(td => td.offsetParent)"
        ".map(td => parseFloat(getComputedStyle(td).fontSize))"
    )
    assert min(sizes) >= MIN_READABLE_PX
    for status in phone.locator("tbody .status").all():
        box = status.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]


@pytest.mark.parametrize("path", ["/deploys", "/deploys/{changed}", "/"])
def test_pages_fit_a_phone_screen_without_sideways_scroll(
    site: str, store: Store, phone: Page, tmp_path: Path, path: str
) -> None:
    """On a 375 px screen no page scrolls sideways."""
    changed = _fill_history(store)
    phone.goto(site + path.format(changed=changed))
    phone.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"] + OVERFLOW_TOLERANCE
