"""The error tree: errors.py's drawing is the tree, and every error raised on purpose is in it."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import pipeline
from pipeline import errors
from pipeline.config.settings import Repo, SecretGrant, Settings
from pipeline.control import Control
from pipeline.errors import (
    BodyTooLarge,
    CentralMCPError,
    ClientGone,
    ProxyError,
    SecretsError,
    ServeUnavailable,
    StateError,
    UpstreamError,
)
from pipeline.secrets import Secrets, load_file
from pipeline.store import Store

PACKAGE = Path(pipeline.__file__).parent
# Raised on purpose but outside the tree, each caught right above its raise: parse functions
# signal bad input with ValueError, and the CLI's entry points end with SystemExit.
OUTSIDE_THE_TREE = {"ValueError", "SystemExit"}
# The stdio bridge is its own program, copied into server images and run there on the standard
# library alone (pipeline/stdio.py): it cannot import errors.py, and its errors never reach the
# provider (they become JSON-RPC errors and log lines inside the container). The Swarm relay is
# one too (`python3 -c <pipeline/swarmrelay.py>` in its container); the provider imports the same
# file for its client, whose RelayError the Swarm adapter translates at its boundary.
STANDALONE = ("bridge", "swarmrelay")


def drawn_tree() -> dict[str, str]:
    """Each class the docstring draws, mapped to the class drawn as its parent ('' for the root)."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        found = re.match(r"^([ │├└─]*)([A-Z]\w+)\s{2,}", line)
        if not found or not line.startswith("    "):
            continue
        depth, name = len(found.group(1)), found.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else ""
        stack.append((depth, name))
    return parents


def test_the_drawing_is_the_class_tree() -> None:
    """Every class drawn in errors.py's docstring exists and derives first from the class drawn above it."""
    parents = drawn_tree()
    assert parents["CentralMCPError"] == ""
    for name, parent in parents.items():
        cls = getattr(errors, name)
        if parent:
            assert cls.__bases__[0] is getattr(errors, parent), name


def test_every_error_class_is_drawn() -> None:
    """Every exception class in errors.py appears in the drawing, so the drawing is complete."""
    defined = {
        name
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__
    }
    assert defined == set(drawn_tree())


def test_no_exception_class_is_defined_outside_errors_py() -> None:
    """No module of the package but errors.py defines an exception class, so the tree stays one."""
    strays = []
    for info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if info.name in ("pipeline.__main__", errors.__name__) or info.name.split(".")[1] in STANDALONE:
            continue  # __main__: running it is its import
        module = importlib.import_module(info.name)
        for name, cls in vars(module).items():
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == info.name:
                strays.append(f"{info.name}.{name}")
    assert strays == []


def test_every_error_made_on_purpose_is_a_central_mcp_error() -> None:
    """Each exception pipeline/ makes (`raise E`, `E(...)`) is in the tree or a documented outsider."""
    known = {**vars(builtins), **vars(errors)}
    made: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0].removesuffix(".py") in STANDALONE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            target = (
                node.func if isinstance(node, ast.Call) else node.exc if isinstance(node, ast.Raise) else None
            )
            if isinstance(target, ast.Name) and _is_exception(known.get(target.id)):
                made.setdefault(target.id, []).append(
                    f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
                )
    outside = {
        name: places
        for name, places in made.items()
        if name not in OUTSIDE_THE_TREE and not issubclass(known[name], CentralMCPError)
    }
    assert outside == {}
    assert {"NotMCP", "ServeUnavailable", "StateError", "SecretsError", "UpstreamError"} <= set(made)


def test_upstream_error_is_still_a_connection_error() -> None:
    """UpstreamError is caught by the proxy's `except OSError` as well as by `except ProxyError`."""
    with pytest.raises(OSError):
        raise UpstreamError("the upstream closed the connection")
    assert issubclass(UpstreamError, ConnectionError)
    assert issubclass(UpstreamError, ProxyError)


def test_proxy_signals_say_what_happened() -> None:
    """ClientGone and BodyTooLarge carry a message, the latter naming the limit."""
    assert "disconnected" in str(ClientGone())
    assert "over 4096 bytes" in str(BodyTooLarge(4096))


def test_control_load_without_serve_is_serve_unavailable(tmp_path: Path) -> None:
    """Reading control.json where no serve runs raises ServeUnavailable naming the state dir and the fix."""
    with pytest.raises(ServeUnavailable, match=r"not running for .*start it with `central-mcp serve`"):
        Control.load(tmp_path)


def test_malformed_secrets_file_is_a_secrets_error_that_hides_the_line(tmp_path: Path) -> None:
    """A secrets.env line that is not KEY=VALUE raises SecretsError with file and line, not the value."""
    path = tmp_path / "secrets.env"
    path.write_text("# ok\nGOOD=1\nhunter2 is my password\n")
    with pytest.raises(SecretsError, match=r"secrets.env:3: expected KEY=VALUE") as caught:
        load_file(path)
    assert "hunter2" not in str(caught.value)


def test_missing_secret_is_a_secrets_error(tmp_path: Path) -> None:
    """A server asking for a secret the VM lacks raises SecretsError naming the secret and the command."""
    settings = Settings(
        tmp_path / "deploy.yaml", tmp_path, repos=(Repo("r", secrets=(SecretGrant("API_TOKEN"),)),)
    )
    with pytest.raises(
        SecretsError, match=r"'weather': secret API_TOKEN .*`central-mcp secret set API_TOKEN`"
    ):
        Secrets(tmp_path, env={}).values(settings, "r", "weather", ["API_TOKEN"])


def test_unreadable_database_is_a_state_error(tmp_path: Path) -> None:
    """A state database that is not SQLite raises StateError naming the file and the way out."""
    database = tmp_path / "central-mcp.db"
    database.write_bytes(b"not a database, " * 512)
    with pytest.raises(StateError, match=r"central-mcp.db cannot be opened .* move it aside"):
        Store(database)


def test_uncreatable_state_dir_is_a_state_error(tmp_path: Path) -> None:
    """A state directory that cannot be created (its parent is a file) raises StateError, not OSError."""
    (tmp_path / "file").write_text("")
    with pytest.raises(StateError, match=r"state directory .*file/state cannot be created"):
        Store(tmp_path / "file" / "state" / "central-mcp.db")


def _is_exception(value: object) -> bool:
    return inspect.isclass(value) and issubclass(value, BaseException)
