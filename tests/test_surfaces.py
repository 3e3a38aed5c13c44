"""pipeline/surfaces.py and the store's `surfaces` table: releases' kept lists and their readers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline import store as store_mod
from pipeline import surfaces
from pipeline.config.checkspec import Check, Expect
from pipeline.config.manifest import from_data
from pipeline.contract import Surface
from pipeline.errors import DeployError, StateError
from pipeline.store import Store
from tests.test_monitor import release


def _tool(name: str, required: list[str] | None = None) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object", "required": required or []}}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """r1 (previous, tools a and b, lists kept), r2 (failed), r3 (live, tool a; only its tools)."""
    found = Store(tmp_path / "db.sqlite")
    for number, status in ((1, "candidate"), (2, "failed"), (3, "candidate")):
        tools = [_tool("a"), _tool("b")] if number == 1 else [_tool("a")]
        found.add_release(replace(release("svc", number, status), tools=tools, version=f"1.{number}.0"))
    found.save_surface("svc", 1, Surface(tools=[_tool("a"), _tool("b")], prompts=[]).as_json())
    found.commit_swap([release("svc", 1, "candidate").placement], [])
    found.commit_swap([release("svc", 3, "candidate").placement], [])
    return found


def test_kept_lists_read_back_and_old_releases_fall_back_to_their_tools(store: Store) -> None:
    """A release with kept lists reads them; one without reads its tools alone."""
    assert surfaces.of_release(store, store.releases("svc")[-1]) == Surface(
        tools=[_tool("a"), _tool("b")], prompts=[]
    )
    assert surfaces.of_release(store, store.releases("svc")[0]) == Surface(tools=[_tool("a")])


def test_lists_over_the_cap_are_refused(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A release's lists past MAX_SURFACE_BYTES are not kept, and the error says how big they were."""
    monkeypatch.setattr(store_mod, "MAX_SURFACE_BYTES", 100)
    with pytest.raises(StateError, match="over the 100 kept per release"):
        store.save_surface("svc", 3, Surface(tools=[_tool("x" * 200)]).as_json())


def test_diff_pairs_default_to_the_previous_good_release_and_the_live_one(store: Store) -> None:
    """No names: the live release and the newest earlier one that was live (a failed one is skipped)."""
    older, newer = surfaces.pair(store, "svc", None, None)
    assert (older.number, newer.number) == (1, 3)
    older, newer = surfaces.pair(store, "svc", "r2", "r3")
    assert (older.number, newer.number) == (2, 3)
    with pytest.raises(DeployError, match="svc has no release r9"):
        surfaces.pair(store, "svc", "r9", None)
    with pytest.raises(DeployError, match="no releases of 'nope'"):
        surfaces.pair(store, "nope", None, None)


def test_live_json_lists_each_live_release(store: Store) -> None:
    """The admin API's answer: the live release, its version, contract mode and lists."""
    assert surfaces.live_json(store) == {
        "servers": {
            "svc": {
                "release": 3,
                "version": "1.3.0",
                "contract": "enforce",
                "tools": [_tool("a")],
                "prompts": None,
                "resources": None,
            }
        }
    }


def _manifest(version: str, checks: list[dict[str, Any]] | None = None) -> Any:
    data = {"name": "svc", "version": version, "description": "d", "transport": "streamable-http"}
    return from_data({**data, "run": {"port": 8080}, "checks": checks or []}, "servers/svc")


LIVE = {"servers": {"svc": {"release": 3, "version": "1.3.0", "tools": [_tool("a", ["q"])]}, "gone": {}}}


def test_foresee_says_what_a_push_would_meet() -> None:
    """Without new lists: the version outlook, checks of tools the live release lacks or whose
    arguments its schema refuses, and live servers the checkout would remove."""
    checks: list[dict[str, Any]] = [{"tool": "b"}, {"tool": "a", "arguments": {}}]
    lines, refused = surfaces.foresee([_manifest("1.4.0", checks)], LIVE, {})
    assert not refused
    assert lines[0].startswith("svc: live r3 v1.3.0 (1 tool(s)), this checkout v1.4.0: not a major bump")
    assert "calls a tool the live release lacks" in lines[1]
    assert "the live inputSchema refuses its arguments: $.arguments: 'q' is a required property" in lines[2]
    assert lines[3] == "gone: live there but not in this checkout: a push would remove it"


def test_foresee_with_new_lists_knows_the_refusal() -> None:
    """Given the checkout's lists, a removed tool without a major bump is a certain refusal; with
    a major bump it is not."""
    given = {"svc": Surface(tools=[])}
    lines, refused = surfaces.foresee([_manifest("1.4.0")], LIVE, given)
    assert refused and "svc:   tool a: removed (breaking)" in lines
    _, refused = surfaces.foresee([_manifest("2.0.0")], LIVE, given)
    assert not refused


def test_manifest_checks_survive_the_stored_form() -> None:
    """A stored release's manifest data parses back into the same checks (what the probes run)."""
    found = _manifest("1.0.0", [{"tool": "a", "read_only": True, "timeout": "2s"}]).checks
    assert found == (Check("a", "a", {}, Expect(), 2.0, True),)
