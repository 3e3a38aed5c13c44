"""Smoke checks: a manifest's tool calls, run against a candidate after its handshake (and against
a live release by the health probes, the read-only ones, when the manifest says probe_checks).

Each check's arguments are first validated against the tool's inputSchema as the candidate lists
it. That schema is the server's, so untrusted: bounded in size (MAX_SCHEMA_BYTES), its $refs never
fetched, and when it holds a regular expression or a $ref (which could backtrack, or branch, for
ever) validated in a child process bounded in time and memory (VALIDATE_TIMEOUT, VALIDATE_MEMORY).
Then each tool is called with its own timeout, reading at most `max_bytes` of its answer. A failure
raises CheckFailed naming the check, what it expected and (bounded) what came back.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema
from referencing import Registry

from pipeline import gate
from pipeline.config.checkspec import Check, path_steps
from pipeline.config.settings import DEFAULT_MAX_HANDSHAKE
from pipeline.errors import CheckFailed, GateError

VALIDATE_TIMEOUT = 10.0  # the child that validates every check's arguments, in all
VALIDATE_MEMORY = 512 * 1024 * 1024  # its address space
MAX_SCHEMA_BYTES = 256 * 1024  # a tool's inputSchema as JSON; a bigger one is not validated against
GOT_CHARS = 300  # what came back, as shown in a failure
# Validated in the child: a regular expression may backtrack for ever, and $refs may branch at each
# level (anyOf of two refs to the next level, 30 levels: 2**30 paths in a 3 KB schema).
RISKY_KEYWORDS = frozenset({"pattern", "patternProperties", "$ref", "$dynamicRef", "$recursiveRef"})
MAX_SCHEMA_DEPTH = 64  # a schema nested deeper is validated in the child
SESSION_TIMEOUT = 10.0  # the checks' own handshake, unless the caller gives its own
Validate = Callable[[Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]], list[str]]


def run(
    url: str,
    checks: Sequence[Check],
    tools: Sequence[Mapping[str, Any]],
    *,
    max_bytes: int = DEFAULT_MAX_HANDSHAKE,
    via: gate.Via | None = None,
    validate: Validate | None = None,
    session_timeout: float = SESSION_TIMEOUT,
) -> list[str]:
    """Validate every check's arguments against `tools`, then open a session (within
    `session_timeout`) and call each against `url`; return one line per check passed, or raise
    CheckFailed at the first that fails."""
    if not checks:
        return []
    schemas = {str(t.get("name")): t.get("inputSchema") for t in tools}
    for check in checks:
        if check.tool not in schemas:
            listed = ", ".join(sorted(schemas)[:20]) or "none"
            raise CheckFailed(
                f"{check.describe()}: the server lists no tool {check.tool!r} (it lists: {listed})"
            )
    pairs = [(_schema(schemas[c.tool]), c.arguments) for c in checks]
    for check, problem in zip(checks, (validate or validate_arguments)(pairs), strict=True):
        if problem:
            raise CheckFailed(
                f"{check.describe()}: its arguments do not match the tool's inputSchema: {problem}"
            )
    passed = []
    try:
        with gate.session(url, session_timeout, max_bytes, via) as session:
            for check in checks:
                passed.append(_call(session, check))
    except CheckFailed:
        raise
    except (GateError, OSError) as exc:
        raise CheckFailed(f"the checks could not reach the server: {exc}") from exc
    return passed


def judge(check: Check, message: Mapping[str, Any]) -> str:
    """Why a JSON-RPC answer to `check`'s call fails it ('' when it passes): pure."""
    result: dict[str, Any] = {}
    if "error" in message:
        error = message["error"]
        said = str(error.get("message", error)) if isinstance(error, dict) else str(error)
        is_error, result = True, {"content": [{"type": "text", "text": said}]}
    else:
        if isinstance(message.get("result"), dict):
            result = message["result"]
        is_error = bool(result.get("isError", False))
    text = _text(result)
    got = f"isError={str(is_error).lower()}, text: {_bounded(text)}"
    if is_error != check.expect.is_error:
        wanted = "an error" if check.expect.is_error else "a result without isError"
        return f"expected {wanted}; got {got}"
    if check.expect.contains and check.expect.contains not in text:
        return f"expected text containing {check.expect.contains!r}; got {got}"
    for path, value in check.expect.json.items():
        found = _at(_structured(result, text), path)
        if found != value:
            shown = "nothing" if found is _MISSING else json.dumps(found)
            return f"expected {path} == {json.dumps(value)}; got {_bounded(shown)} ({got})"
    return ""


def validate_arguments(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[str]:
    """Validate each (schema, arguments) pair; return one problem per pair ('' when it is valid).
    A schema with a regular expression or a $ref is validated in a child process bounded in time and
    memory (a pattern may backtrack for ever, refs may branch exponentially); the others here: a
    tree, validating a bounded one against bounded arguments takes bounded time, and the child
    costs ~0.3 s (bench/checks_bench.py)."""
    risky = [i for i, (schema, _) in enumerate(pairs) if _is_risky(schema)]
    found = dict(zip(risky, _validate_in_child([pairs[i] for i in risky]) if risky else [], strict=True))
    return [found[i] if i in found else _validate_here(*pair) for i, pair in enumerate(pairs)]


def _is_risky(value: object, depth: int = 0) -> bool:
    """Whether a schema holds a regular expression or a $ref (or is too deep to tell)."""
    if depth > MAX_SCHEMA_DEPTH:
        return True
    if isinstance(value, dict):
        if RISKY_KEYWORDS & value.keys():
            return True
        return any(_is_risky(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(_is_risky(v, depth + 1) for v in value)
    return False


def _validate_in_child(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> list[str]:
    """Validate each pair in a child process bounded in time and memory."""
    payload = json.dumps([[schema, dict(args)] for schema, args in pairs])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.checks"],
            input=payload.encode(),
            capture_output=True,
            timeout=VALIDATE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(
            f"validating the checks' arguments against the tools' inputSchemas took over "
            f"{VALIDATE_TIMEOUT:g}s"
        ) from exc
    try:
        found = json.loads(done.stdout)
        if not isinstance(found, list) or len(found) != len(pairs):
            raise ValueError("not one answer per check")
    except ValueError as exc:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CheckFailed(
            "validating the checks' arguments against the tools' inputSchemas failed: "
            + _bounded(said[-1] if said else str(exc))
        ) from exc
    return [str(p) for p in found]


def _call(session: gate.Session, check: Check) -> str:
    """Call one check's tool and judge the answer; the line saying it passed."""
    try:
        message = session.call(check.tool, check.arguments, check.timeout)
    except (GateError, OSError) as exc:
        raise CheckFailed(f"{check.describe()}: {exc}") from exc
    why = judge(check, message)
    if why:
        raise CheckFailed(f"{check.describe()} {why}")
    return f"{check.describe()} passed"


def _schema(found: object) -> Mapping[str, Any]:
    """A tool's inputSchema as validated against: an object, at most MAX_SCHEMA_BYTES as JSON."""
    if not isinstance(found, dict):
        return {"type": "object"}
    return found if len(json.dumps(found)) <= MAX_SCHEMA_BYTES else {"type": "object"}


def _text(result: Mapping[str, Any]) -> str:
    content = result.get("content")
    items = content if isinstance(content, list) else []
    return "\n".join(str(c.get("text", "")) for c in items if isinstance(c, dict) and c.get("type") == "text")


def _structured(result: Mapping[str, Any], text: str) -> object:
    """structuredContent, else the text read as JSON (else nothing)."""
    if "structuredContent" in result:
        return result["structuredContent"]
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _MISSING


_MISSING = object()


def _at(document: object, path: str) -> object:
    for step in path_steps(path):
        if isinstance(step, int) and isinstance(document, list) and step < len(document):
            document = document[step]
            continue
        if isinstance(step, str) and isinstance(document, dict) and step in document:
            document = document[step]
            continue
        return _MISSING
    return document


def _bounded(text: str) -> str:
    text = " ".join(text.split())
    return repr(text[:GOT_CHARS] + "…") if len(text) > GOT_CHARS else repr(text)


def _validate_here(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> str:
    """The first problem of `arguments` against `schema` ('' when valid); no $ref is ever fetched."""
    try:
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(dict(schema))
        validator = cls(schema, registry=Registry())  # no $ref is ever fetched
        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(arguments)))
    except jsonschema.exceptions.SchemaError as exc:
        return f"the tool's inputSchema is not a valid JSON Schema ({exc.message})"
    except Exception as exc:  # a $ref that leads nowhere, a recursion: the schema's fault, said plainly
        return f"the tool's inputSchema could not be used: {type(exc).__name__}: {exc}"
    if error is None:
        return ""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"$.arguments{where}: {error.message}"


def _main() -> None:
    """The child: read [[schema, arguments], ...] on stdin, write one problem per pair. It bounds
    its own memory before reading anything (a preexec_fn is not safe in the threaded provider)."""
    resource.setrlimit(resource.RLIMIT_AS, (VALIDATE_MEMORY, VALIDATE_MEMORY))
    pairs = json.loads(sys.stdin.buffer.read())
    sys.stdout.write(json.dumps([_validate_here(s, a) for s, a in pairs]))


if __name__ == "__main__":
    _main()
