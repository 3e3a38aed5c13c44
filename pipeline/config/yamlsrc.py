"""Safe YAML reading that remembers where every value came from.

Manifests and deploy.yaml are read through `load`, which refuses what `yaml.safe_load`
would accept silently or blow up on: non-UTF-8 bytes, oversized files, duplicate keys,
and alias bombs (a budget on expanded nodes). Every value's position is kept by JSON path
so that schema errors can be reported as `file:line:column`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError, Problem

MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 20_000
MAX_DEPTH = 64

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Document:
    """A parsed YAML file: its data and the (line, column) of every value by JSON path."""

    file: str
    data: Any
    positions: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[JsonPath, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: JsonPath, *, key: bool = False) -> tuple[int, int]:
        """Return the closest known (line, column) for a JSON path (1-based)."""
        table = self.key_positions if key else self.positions
        for cut in range(len(path), -1, -1):
            hit = table.get(path[:cut]) or self.positions.get(path[:cut])
            if hit:
                return hit
        return (1, 1)

    def problem(self, path: JsonPath, message: str, hint: str = "", *, key: bool = False) -> Problem:
        """Build a Problem located at `path` in this document."""
        line, column = self.where(path, key=key)
        return Problem(self.file, line, column, json_path(path), message, hint)


def json_path(path: JsonPath) -> str:
    """Render a path tuple as `$.a.b[0]`."""
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def load(path: Path, *, display: str | None = None, max_bytes: int = MAX_FILE_BYTES) -> Document:
    """Read and parse one YAML file, raising ConfigError with a located problem on any fault."""
    name = display or str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise _fail(name, f"file is {size} bytes; the limit is {max_bytes}", "split or trim it")
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(name, f"cannot read file: {exc.strerror}", "check the path") from exc
    return parse(raw, name)


def parse(raw: bytes, name: str) -> Document:
    """Parse YAML bytes named `name` into a Document."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            [
                Problem(
                    name,
                    line,
                    column,
                    "$",
                    f"not UTF-8: byte 0x{raw[exc.start]:02x}",
                    "save the file as UTF-8",
                )
            ]
        ) from exc
    if not text.strip():
        raise _fail(name, "file is empty", "write the YAML mapping this file needs")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError as exc:
        raise _fail(name, f"nesting deeper than {MAX_DEPTH} levels", "flatten the document") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            [Problem(name, line, column, "$", f"invalid YAML: {reason}", "fix the YAML syntax")]
        ) from exc
    except yaml.YAMLError as exc:
        raise _fail(name, f"invalid YAML: {exc}", "fix the YAML syntax") from exc
    if node is None:
        raise _fail(name, "file holds no YAML document", "write the YAML mapping this file needs")
    builder = _Builder(name)
    data = builder.build(node, ())
    return Document(name, data, builder.positions, builder.key_positions)


def _fail(name: str, message: str, hint: str) -> ConfigError:
    return ConfigError([Problem(name, 0, 0, "$", message, hint)])


class _Builder:
    """Turns a composed node graph into plain data, with a budget against alias bombs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.visited = 0
        self.positions: dict[JsonPath, tuple[int, int]] = {}
        self.key_positions: dict[JsonPath, tuple[int, int]] = {}
        self.constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES or len(path) > MAX_DEPTH:
            raise ConfigError(
                [
                    Problem(
                        self.name,
                        node.start_mark.line + 1,
                        node.start_mark.column + 1,
                        "$",
                        f"document expands past {MAX_NODES} values or {MAX_DEPTH} levels "
                        "(aliases that multiply, a 'YAML bomb'?)",
                        "remove the anchors and aliases",
                    )
                ]
            )
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: JsonPath) -> Any:
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            reason = exc.problem
        except (ValueError, TypeError, AttributeError) as exc:
            reason = f"{node.tag.rsplit(':', 1)[-1]} value {node.value!r} cannot be read ({exc})"
        raise ConfigError(
            [
                Problem(
                    self.name,
                    node.start_mark.line + 1,
                    node.start_mark.column + 1,
                    json_path(path),
                    f"invalid value: {reason}",
                    "quote the value",
                )
            ]
        )

    def _key(self, node: yaml.Node, path: JsonPath) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError(
                [
                    Problem(
                        self.name,
                        node.start_mark.line + 1,
                        node.start_mark.column + 1,
                        json_path(path),
                        "a mapping key must be a plain value",
                        "use a string key",
                    )
                ]
            )
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: JsonPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(
                    [
                        Problem(
                            self.name,
                            key_node.start_mark.line + 1,
                            key_node.start_mark.column + 1,
                            json_path(path),
                            "merge keys (<<) are not supported",
                            "write the keys out",
                        )
                    ]
                )
            key = self._key(key_node, path)
            child = (*path, str(key))
            where = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if str(key) in out:
                raise ConfigError(
                    [
                        Problem(
                            self.name, *where, json_path(child), f"duplicate key {key!r}", "keep one of them"
                        )
                    ]
                )
            self.key_positions[child] = where
            out[str(key)] = self.build(value_node, child)
        return out
