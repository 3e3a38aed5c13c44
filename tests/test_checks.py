"""pipeline/checks.py and config/checkspec.py: a manifest's smoke checks, judged and run."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline import checks, gate
from pipeline.config import checkspec, manifest
from pipeline.config.checkspec import Check, Expect
from pipeline.errors import CheckFailed, ConfigError
from tests.support.loopback import serve_asgi
from tests.test_manifest import GOOD, _check, _server, _settings


def _c(tool: str = "add", arguments: dict[str, Any] | None = None, **expect: Any) -> Check:
    """A check of `tool` with `expect`."""
    return Check(tool, tool, arguments or {}, Expect(**expect), 5.0, False)


def _result(text: str, *, is_error: bool = False, structured: Any = None) -> dict[str, Any]:
    """A JSON-RPC answer to tools/call."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": is_error}
    if structured is not None:
        result["structuredContent"] = structured
    return {"jsonrpc": "2.0", "id": 1, "result": result}


def test_a_result_that_matches_passes() -> None:
    """Text containing the expected words, no isError and equal JSON values pass."""
    check = _c(contains="Paris", json={"$.hits[0].city": "Paris", "$.count": 1})
    answer = _result('{"hits": [{"city": "Paris"}], "count": 1}')
    assert checks.judge(check, answer) == ""


def test_a_tool_that_throws_fails_the_check() -> None:
    """isError true fails a check that expects a result, naming what came back."""
    why = checks.judge(_c(), _result("Error executing tool add: boom", is_error=True))
    got = "got isError=true, text: 'Error executing tool add: boom'"
    assert why == f"expected a result without isError; {got}"


def test_a_jsonrpc_error_counts_as_an_error() -> None:
    """A JSON-RPC error answer fails a normal check and passes one that expects an error."""
    answer = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "Unknown tool"}}
    assert "isError=true, text: 'Unknown tool'" in checks.judge(_c(), answer)
    assert checks.judge(_c(is_error=True, contains="Unknown"), answer) == ""


def test_missing_text_and_wrong_json_are_named() -> None:
    """A missing phrase and a JSON path with another value each say what was expected."""
    assert "expected text containing 'Rome'" in checks.judge(_c(contains="Rome"), _result("Paris"))
    why = checks.judge(_c(json={"$.n": 2}), _result("x", structured={"n": 3}))
    assert why.startswith("expected $.n == 2; got '3'")
    assert "got 'nothing'" in checks.judge(_c(json={"$.a[5]": 1}), _result("[]", structured={"a": []}))


def test_what_came_back_is_bounded() -> None:
    """A huge answer is cut to GOT_CHARS in the failure."""
    why = checks.judge(_c(contains="needle"), _result("x" * 100_000))
    assert len(why) < checks.GOT_CHARS + 200


def test_arguments_are_validated_against_the_schema_in_a_child() -> None:
    """A wrong type and a missing required property are found; a remote $ref is never fetched."""
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    found = checks.validate_arguments(
        [(schema, {"a": "x"}), (schema, {}), (schema, {"a": 1}), ({"$ref": "https://example.com/s"}, {})]
    )
    assert found[0] == "$.arguments.a: 'x' is not of type 'integer'"
    assert found[1] == "$.arguments: 'a' is a required property"
    assert found[2] == ""
    assert "could not be used" in found[3] and "Unresolvable" in found[3]


def test_a_schema_that_never_finishes_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pattern that backtracks for ever fails the checks at VALIDATE_TIMEOUT, not the provider."""
    monkeypatch.setattr(checks, "VALIDATE_TIMEOUT", 1.0)
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}
    with pytest.raises(CheckFailed, match="took over 1s"):
        checks.validate_arguments([(schema, {"s": "a" * 40 + "!"})])


def _server_app() -> Any:
    """An SDK server whose `add` works and whose `boom` throws."""
    server = MCPServer("checked")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @server.tool()
    def boom() -> str:
        """Always fails."""
        raise RuntimeError("boom: the database is gone")

    return server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


def _run(port: int, *found: Check) -> list[str]:
    url = f"http://127.0.0.1:{port}/mcp"
    tools = gate.handshake(url, 5.0).tools
    return checks.run(url, found, tools)


def test_checks_run_against_a_real_server() -> None:
    """A passing call is reported; a tool that throws fails, naming the check and the error."""
    with serve_asgi(_server_app()) as port:
        assert _run(port, _c("add", {"a": 2, "b": 3}, contains="5")) == [
            'check \'add\' (tools/call add {"a": 2, "b": 3}) passed'
        ]
        failed = r"check 'boom' .* expected a result without isError; got isError=true"
        with pytest.raises(CheckFailed, match=failed):
            _run(port, _c("add", {"a": 1, "b": 1}), _c("boom"))


def test_arguments_not_matching_the_candidates_schema_fail_before_calling() -> None:
    """A check whose arguments the tool's inputSchema refuses fails, naming the check and the path."""
    with serve_asgi(_server_app()) as port, pytest.raises(CheckFailed, match=r"check 'add' .*\$\.arguments"):
        _run(port, _c("add", {"a": "two"}))


def test_a_check_of_a_tool_the_server_lacks_fails() -> None:
    """A check naming an unlisted tool fails and lists what the server has."""
    listed = r"no tool 'gone' \(it lists: add, boom\)"
    with serve_asgi(_server_app()) as port, pytest.raises(CheckFailed, match=listed):
        _run(port, _c("gone"))


CHECKS = """checks:
  - name: adds
    tool: add
    arguments: {a: 1, b: 2}
    expect: {contains: "3", json: {"$.result": 3}}
    timeout: 2s
    read_only: true
probe_checks: true
contract: warn
"""


def test_manifest_checks_are_parsed(tmp_path: Path) -> None:
    """checks, probe_checks and contract reach the Manifest as values."""
    _server(tmp_path / "repo", "srv", GOOD + CHECKS)
    (found,) = _check(tmp_path).manifests
    assert found.checks == (
        Check("adds", "add", {"a": 1, "b": 2}, Expect("3", False, {"$.result": 3}), 2.0, True),
    )
    assert found.probe_checks and found.contract == "warn"
    assert checkspec.path_steps("$.a[0].b") == ["a", 0, "b"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("checks:\n  - arguments: {}\n", "$.checks[0]"),
        ("checks:\n  - tool: add\n    expect: {contain: x}\n", "$.checks[0].expect.contain"),
        ("checks:\n  - tool: add\n    expect: {json: {'a.b': 1}}\n", "$.checks[0].expect.json"),
        ("checks:\n  - tool: add\n    timeout: 10m\n", "$.checks[0].timeout"),
        ("checks:\n  - tool: add\n  - tool: add\n", "$.checks[1].name"),
        ("contract: loose\n", "$.contract"),
        ("probe_checks: true\nchecks:\n  - tool: add\n", "$.probe_checks"),
    ],
)
def test_bad_checks_are_located(tmp_path: Path, text: str, where: str) -> None:
    """Each bad check shape is reported at its file, line and JSON path."""
    _server(tmp_path / "repo", "srv", GOOD + text)
    problems = _check(tmp_path).problems
    assert problems, text
    file = "servers/srv/mcp-server.yaml"
    located = [p for p in problems if p.path == where and p.file == file and p.line > 0]
    assert located, [p.render() for p in problems]


def test_one_bad_check_fails_read(tmp_path: Path) -> None:
    """read() raises ConfigError for a manifest with a bad check."""
    root = tmp_path / "repo"
    folder = _server(root, "srv", GOOD + "checks:\n  - {}\n")

    with pytest.raises(ConfigError):
        manifest.read(folder / manifest.MANIFEST_NAME, root, _settings(tmp_path))


def test_a_stateless_era_server_is_called_with_mcp_method_and_mcp_name() -> None:
    """A 2026-07-28 server that refuses initialize gets each check's call with Mcp-Method and Mcp-Name."""
    seen: list[tuple[str, str, str]] = []

    async def endpoint(request: Request) -> JSONResponse:
        message = await request.json()
        headers = request.headers
        seen.append((message["method"], headers.get("mcp-method", ""), headers.get("mcp-name", "")))
        if message["method"] == "initialize":
            error = {"code": -32601, "message": "stateless only"}
            return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "error": error})
        result = {"content": [{"type": "text", "text": "found it"}]}
        return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": result})

    app = Starlette(routes=[Route("/mcp", endpoint, methods=["POST"])])
    tools = [{"name": "lookup", "inputSchema": {"type": "object"}}]
    with serve_asgi(app) as port:
        url = f"http://127.0.0.1:{port}/mcp"
        assert checks.run(url, [_c("lookup", contains="found")], tools) == [
            "check 'lookup' (tools/call lookup {}) passed"
        ]
    assert seen[-1] == ("tools/call", "tools/call", "lookup")


def test_a_schema_without_a_regex_is_validated_without_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a schema with `pattern` or `patternProperties` pays for the child process."""
    spawned: list[object] = []
    real = subprocess.run

    def counting(*args: Any, **kwargs: Any) -> Any:
        spawned.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting)
    plain = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert checks.validate_arguments([(plain, {"a": "x"})]) == ["$.arguments.a: 'x' is not of type 'integer'"]
    assert spawned == []
    regex = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^b"}}}
    assert checks.validate_arguments([(plain, {"a": 1}), (regex, {"a": "c"})]) == [
        "",
        "$.arguments.a: 'c' does not match '^b'",
    ]
    assert len(spawned) == 1


def _branching(levels: int) -> dict[str, Any]:
    """A 3 KB schema whose $refs branch in two at each of `levels` levels: 2**levels paths to try."""
    defs: dict[str, Any] = {
        f"a{i}": {"anyOf": [{"$ref": f"#/$defs/a{i + 1}"}, {"$ref": f"#/$defs/a{i + 1}"}]}
        for i in range(levels)
    }
    defs[f"a{levels}"] = {"type": "string"}
    return {"type": "object", "properties": {"x": {"$ref": "#/$defs/a0"}}, "$defs": defs}


def test_a_schema_whose_refs_branch_exponentially_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small schema without a regex whose $refs branch at each level (2**30 paths) fails the checks
    at VALIDATE_TIMEOUT in the child: validated in the provider it held the gate's (or the monitor's
    probe) thread for days (16 levels took 7 s)."""
    monkeypatch.setattr(checks, "VALIDATE_TIMEOUT", 1.0)
    found: list[object] = []

    def validate() -> None:
        try:
            found.append(checks.validate_arguments([(_branching(30), {"x": 1})]))
        except CheckFailed as exc:
            found.append(exc)

    worker = threading.Thread(target=validate, daemon=True)
    worker.start()
    worker.join(20)
    assert len(found) == 1 and isinstance(found[0], CheckFailed)
    assert "took over 1s" in str(found[0])
    assert checks.validate_arguments([(_branching(2), {"x": 1})])[0].startswith("$.arguments.x: 1 is not")
