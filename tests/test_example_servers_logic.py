"""Tests for the tool logic of the example servers in servers/ (loaded by file path)."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SERVERS = Path(__file__).resolve().parents[1] / "servers"
PROPERTY_DIR = SERVERS / "property-search"
XRAY_DIR = SERVERS / "999x-ray-analyzer"


def load_module(name: str, path: Path) -> ModuleType:
    """Import a module from a file path under a unique name."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


listings = load_module("example_property_listings", PROPERTY_DIR / "listings.py")
analysis = load_module("example_xray_analysis", XRAY_DIR / "analysis.py")

PY_SNIPPET = '''"""Demo module."""
import os
from collections import OrderedDict as OD

# a comment line


class Cache:
    """Tiny cache."""

    def get(self, key):
        return key  # trailing comment is still code

    async def fetch(self, key):
        return key


def helper(x):
    def inner():
        return x
    return inner
'''

BRANCHY = """def classify(x, items):
    if x > 0 and x < 10:
        return 1
    elif x < 0:
        return -1
    for i in items:
        if i:
            continue
    try:
        pass
    except ValueError:
        pass
    return [y for y in items if y]
"""


# --- property-search -------------------------------------------------------------


def test_data_set_is_realistic_and_consistent() -> None:
    """The sample data has ~40 listings across ~6 cities with unique ids and valid ranges."""
    data = listings.load_listings()
    assert len(data) >= 40
    assert len({item["city"] for item in data}) == 6
    assert len({item["id"] for item in data}) == len(data)
    for item in data:
        for booked in item["unavailable"]:
            assert booked["start"] < booked["end"]


def test_search_filters_by_city_price_and_guests() -> None:
    """Search matches the city case-insensitively and applies price and guest filters."""
    found = listings.search_listings("lisbon", min_price=100, max_price=150, guests=3)
    assert found["city"] == "Lisbon"
    assert [r["id"] for r in found["results"]] == ["lst-005", "lst-007", "lst-006"]
    assert all(100 <= r["price_per_night"] <= 150 and r["max_guests"] >= 3 for r in found["results"])
    assert found["nights"] is None and found["results"][0]["total_price"] is None


def test_search_honours_booked_dates() -> None:
    """Only listings free for every night of the stay are returned, with the stay total."""
    found = listings.search_listings("Lisbon", check_in="2026-12-12", check_out="2026-12-16")
    assert found["nights"] == 4
    assert {r["id"]: r["total_price"] for r in found["results"]} == {
        "lst-001": 456.0,
        "lst-007": 484.0,
    }


def test_checkout_day_may_equal_next_booking_start() -> None:
    """A booking's start day is free as a checkout day but not as a night."""
    lst_001 = listings.get_listing("lst-001")  # booked 2026-12-17 .. 2026-12-22
    free = listings.parse_date("2026-12-14", "d"), listings.parse_date("2026-12-17", "d")
    clash = listings.parse_date("2026-12-14", "d"), listings.parse_date("2026-12-18", "d")
    assert listings.is_available(lst_001, *free)
    assert not listings.is_available(lst_001, *clash)


@pytest.mark.parametrize(
    ("check_in", "check_out", "message"),
    [
        ("2026-12-16", "2026-12-12", "after check_in"),
        ("2026-12-12", "2026-12-12", "after check_in"),
        ("2026-02-30", "2026-03-02", "not a real date"),
        ("12/01/2026", "2026-12-05", "YYYY-MM-DD"),
        ("2026-12-01", None, "both"),
        ("2026-01-01", "2026-06-01", "limited to 90 nights"),
    ],
)
def test_search_rejects_bad_dates(check_in: str, check_out: str | None, message: str) -> None:
    """Malformed, impossible, reversed or half-given dates raise a clear ListingError."""
    with pytest.raises(listings.ListingError, match=message):
        listings.search_listings("Berlin", check_in=check_in, check_out=check_out)


def test_search_rejects_unknown_city_and_bad_filters() -> None:
    """An unknown city names the known ones; inverted prices and zero guests are refused."""
    with pytest.raises(listings.ListingError, match="known cities: Amsterdam, Barcelona"):
        listings.search_listings("Paris")
    with pytest.raises(listings.ListingError, match="min_price"):
        listings.search_listings("Prague", min_price=200, max_price=100)
    with pytest.raises(listings.ListingError, match="guests"):
        listings.search_listings("Prague", guests=0)


def test_get_listing_and_unknown_id_hint() -> None:
    """get_listing normalises the id and suggests close ids for an unknown one."""
    assert listings.get_listing(" LST-001 ")["title"] == "Cosy one-bedroom flat in Alfama"
    with pytest.raises(listings.ListingError, match=r"unknown listing id 'lst-01'; did you mean"):
        listings.get_listing("lst-01")
    with pytest.raises(listings.ListingError, match="ids look like"):
        listings.get_listing("zzzz")


def test_compare_listings_table() -> None:
    """The comparison has totals, availability, winners and a per-listing amenity diff."""
    table = listings.compare_listings(["lst-001", "lst-004"], "2026-12-12", "2026-12-16")
    first, second = table["rows"]
    assert table["nights"] == 4
    assert (first["total_price"], second["total_price"]) == (456.0, 396.0)
    assert (first["available"], second["available"]) == (True, False)
    assert (table["cheapest_id"], table["best_rated_id"]) == ("lst-004", "lst-001")
    own = set(listings.get_listing("lst-001")["amenities"])
    assert set(table["common_amenities"]) | set(first["extra_amenities"]) == own
    assert not set(first["missing_amenities"]) & own


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (["lst-001"], "2 to 5"),
        ([f"lst-00{i}" for i in range(1, 7)], "2 to 5"),
        (["lst-001", "LST-001"], "duplicates"),
        (["lst-001", "lst-999"], "unknown listing id"),
    ],
)
def test_compare_listings_errors(ids: list[str], message: str) -> None:
    """Too few, too many, duplicate or unknown ids are rejected."""
    with pytest.raises(listings.ListingError, match=message):
        listings.compare_listings(ids)


# --- 999x-ray-analyzer -----------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "language", "method"),
    [
        ("src/app.py", "", "python", "extension"),
        ("web/index.TSX", "", "typescript", "extension"),
        ("Dockerfile", "FROM x", "dockerfile", "filename"),
        ("run", "#!/usr/bin/env python3\nprint(1)\n", "python", "shebang"),
        ("deploy", "#!/bin/bash -e\necho hi\n", "shell", "shebang"),
        ("snippet", "package main\n\nfunc main() {}\n", "go", "content"),
        ("snippet", "fn main() -> () {\n    let mut x = 1;\n}\n", "rust", "content"),
        ("snippet", "#include <stdio.h>\nint main(void) { return 0; }\n", "c", "content"),
        ("notes", "just some words", "unknown", "none"),
    ],
)
def test_detect_language(filename: str, content: str, language: str, method: str) -> None:
    """Language comes from the extension, file name, shebang or content, in that order."""
    assert analysis.detect_language(filename, content) == {"language": language, "method": method}


def test_line_stats_python_snippet() -> None:
    """Python lines split into code, comment and blank; docstrings count as code."""
    stats = analysis.line_stats(PY_SNIPPET, "demo.py")
    assert stats == {
        "language": "python",
        "total": 21,
        "code": 13,
        "blank": 7,
        "comment": 1,
        "comment_ratio": 0.071,
    }


def test_line_stats_c_block_comments() -> None:
    """C block and line comments are counted as comment lines."""
    code = "/* header\n * more\n */\n#include <stdio.h>\n\n// note\nint main(void) { return 0; }\n"
    stats = analysis.line_stats(code, "main.c")
    assert (stats["total"], stats["code"], stats["comment"], stats["blank"]) == (7, 2, 4, 1)


def test_python_symbol_stats_use_ast() -> None:
    """Python symbols come from ast, with methods and nested functions qualified."""
    stats = analysis.symbol_stats("demo.py", PY_SNIPPET)
    assert stats["parser"] == "ast"
    assert stats["functions"] == ["Cache.get", "Cache.fetch", "helper", "helper.inner"]
    assert stats["classes"] == ["Cache"]
    assert stats["imports"] == ["os", "collections"]
    assert stats["counts"] == {"functions": 4, "classes": 1, "imports": 2}


def test_regex_symbol_stats_for_go_and_typescript() -> None:
    """Go and TypeScript symbols are found by regex, ignoring commented-out code."""
    go = 'package main\n\nimport (\n\t"fmt"\n\tstr "strings"\n)\n\ntype Greeter struct{}\n\n'
    go += 'func (g *Greeter) Hello() string {\n\treturn "hi"\n}\n\n'
    go += 'func main() { fmt.Println(str.ToUpper("x")) }\n'
    stats = analysis.symbol_stats("main.go", go)
    assert (stats["functions"], stats["classes"], stats["imports"]) == (
        ["Hello", "main"],
        ["Greeter"],
        ["fmt", "strings"],
    )
    ts = 'import { a } from "./a";\n// function ghost() {}\nexport class Box {}\n'
    ts += "export function make(): Box { return new Box(); }\nconst twice = (x: number) => x * 2;\n"
    stats = analysis.symbol_stats("box.ts", ts)
    assert (stats["functions"], stats["classes"], stats["imports"]) == (
        ["make", "twice"],
        ["Box"],
        ["./a"],
    )


def test_python_syntax_error_falls_back_to_regex() -> None:
    """Unparseable Python is reported with a note instead of failing."""
    stats = analysis.symbol_stats("broken.py", "def oops(:\n    pass\n")
    assert stats["parser"] == "regex" and stats["note"] == "syntax error line 1"


def test_complexity_of_known_function() -> None:
    """Branches, boolean operators, handlers and comprehension filters each add one."""
    result = analysis.complexity_score("classify.py", BRANCHY)
    assert result["method"] == "ast"
    assert result["functions"] == [{"name": "classify", "line": 1, "complexity": 9}]
    assert (result["worst"], result["score"], result["rating"]) == (9, 60, "moderate")


def test_complexity_heuristic_for_c() -> None:
    """Non-Python files get a keyword-count estimate spread over their functions."""
    code = "int f(int a) {\n  if (a && a > 1) return 1;\n  // if (never)\n  return 0;\n}\n"
    result = analysis.complexity_score("f.c", code)
    assert (result["method"], result["decision_points"], result["worst"]) == ("heuristic", 2, 3)
    assert (result["score"], result["rating"]) == (90, "simple")


def test_summarize_heuristic_without_ollama(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without OLLAMA_URL the summary is built from the other tools."""
    monkeypatch.delenv("OLLAMA_URL", raising=False)
    result = analysis.summarize("demo.py", PY_SNIPPET)
    assert result["engine"] == "heuristic" and result["fallback_reason"] is None
    summary = result["summary"]
    assert summary.startswith("demo.py is a python file with 21 lines (13 code, 1 comment, 7 blank).")
    assert "Module docstring: Demo module." in summary
    assert "Classes (1): Cache." in summary and "Functions (4):" in summary


@pytest.fixture
def fake_ollama() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Serve a fake Ollama /api/generate on loopback and record request bodies."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"path": self.path, **body})
            reply = json.dumps({"response": " A tiny cache module. ", "done": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", seen
    server.shutdown()
    server.server_close()


def test_summarize_uses_ollama_when_configured(
    monkeypatch: pytest.MonkeyPatch, fake_ollama: tuple[str, list[dict[str, Any]]]
) -> None:
    """With OLLAMA_URL set, summarize posts a non-streaming generate request to it."""
    url, seen = fake_ollama
    monkeypatch.setenv("OLLAMA_URL", url)
    monkeypatch.setenv("OLLAMA_MODEL", "test-model")
    result = analysis.summarize("demo.py", PY_SNIPPET)
    assert result == {
        "engine": "ollama:test-model",
        "summary": "A tiny cache module.",
        "fallback_reason": None,
    }
    assert seen[0]["path"] == "/api/generate"
    assert (seen[0]["model"], seen[0]["stream"]) == ("test-model", False)
    assert "class Cache" in seen[0]["prompt"]


def test_summarize_falls_back_when_ollama_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable Ollama yields the heuristic summary and says why."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OLLAMA_URL", f"http://127.0.0.1:{port}")
    result = analysis.summarize("demo.py", PY_SNIPPET)
    assert result["engine"] == "heuristic"
    assert result["fallback_reason"].startswith("ollama failed:")
    assert result["summary"].startswith("demo.py is a python file")


# --- tool wiring (in-process MCP client, no HTTP) ------------------------------------


def load_server(folder: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import a server.py with its folder on sys.path so its logic module resolves."""
    monkeypatch.syspath_prepend(str(folder))
    return load_module(name, folder / "server.py")


async def test_property_server_returns_structured_content(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property tools are listed with output schemas and return structuredContent."""
    from mcp import Client
    from mcp.types import TextContent

    server = load_server(PROPERTY_DIR, "example_property_server", monkeypatch)
    async with Client(server.app) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == {"search_listings", "get_listing", "compare_listings"}
        assert tools["search_listings"].output_schema is not None
        result = await client.call_tool("search_listings", {"city": "Prague", "guests": 6})
        assert not result.is_error
        assert result.structured_content is not None
        assert [r["id"] for r in result.structured_content["results"]] == ["lst-029"]
        failed = await client.call_tool("get_listing", {"listing_id": "nope"})
        assert failed.is_error and isinstance(failed.content[0], TextContent)
        assert "unknown listing id 'nope'" in failed.content[0].text


async def test_xray_server_returns_structured_content(monkeypatch: pytest.MonkeyPatch) -> None:
    """The analyzer tools are listed and return structuredContent."""
    from mcp import Client

    monkeypatch.delenv("OLLAMA_URL", raising=False)
    server = load_server(XRAY_DIR, "example_xray_server", monkeypatch)
    async with Client(server.app) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"detect_language", "line_stats", "symbol_stats", "complexity_score", "summarize"}
        result = await client.call_tool("complexity_score", {"filename": "c.py", "content": BRANCHY})
        assert not result.is_error and result.structured_content is not None
        assert result.structured_content["worst"] == 9
