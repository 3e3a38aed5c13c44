"""A manifest's smoke checks (`checks:`): tool calls with expectations, as frozen values.

The schema says their shape; `problems` says what it cannot (sizes, timeouts against the deploy's,
names used twice); `parse` turns validated data (a manifest's, or a stored release's) into Checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import yamlsrc
from pipeline.config.units import parse_duration
from pipeline.errors import Problem

DEFAULT_CHECK_TIMEOUT = 10.0
MAX_CHECK_TIMEOUT = 120.0
MAX_ARGUMENT_BYTES = 64 * 1024  # a check's arguments as JSON
PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[([0-9]+)\]")
CONTRACT_ENFORCE = "enforce"
CONTRACT_WARN = "warn"


@dataclass(frozen=True)
class Expect:
    """What a check's result must show: text it contains, its isError flag, values at JSON paths."""

    contains: str = ""
    is_error: bool = False
    json: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """One smoke call: a tool, its arguments, what must come back, and how long it may take."""

    name: str
    tool: str
    arguments: Mapping[str, Any]
    expect: Expect
    timeout: float
    read_only: bool

    def describe(self) -> str:
        """The check as one line: `name (tool {args…})`, the arguments bounded."""
        args = json.dumps(dict(self.arguments), sort_keys=True)
        args = args if len(args) <= 120 else args[:120] + "…"
        return f"check {self.name!r} (tools/call {self.tool} {args})"


def parse(data: Mapping[str, Any]) -> tuple[Check, ...]:
    """The checks of validated manifest data (none when it has none)."""
    return tuple(_check(item) for item in data.get("checks", ()) if isinstance(item, dict))


def path_steps(path: str) -> list[str | int]:
    """A JSON path `$.a[0].b` as its steps ['a', 0, 'b'] (the schema has checked its shape)."""
    return [name if name else int(index) for name, index in PATH_STEP.findall(path[1:])]


def problems(doc: yamlsrc.Document, deploy_timeout: float) -> list[Problem]:
    """What the schema cannot say of `checks`: arguments too big, timeouts over what a deploy may
    take, a name used twice."""
    items = doc.data.get("checks")
    found: list[Problem] = _probe_problems(doc, items if isinstance(items, list) else [])
    if not isinstance(items, list):
        return found
    seen: set[str] = set()
    total = 0.0
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        where = ("checks", index)
        name = str(item.get("name") or item.get("tool"))
        if name in seen:
            found.append(
                doc.problem(
                    (*where, "name"), f"check name {name!r} is used twice", "give each check its own name"
                )
            )
        seen.add(name)
        if len(json.dumps(item.get("arguments", {}))) > MAX_ARGUMENT_BYTES:
            found.append(
                doc.problem(
                    (*where, "arguments"),
                    f"the arguments of check {name!r} are over {MAX_ARGUMENT_BYTES} bytes as JSON",
                    "smoke calls should be small: call the tool with less",
                )
            )
        total += _timeout_problem(doc, where, item, found)
    if total > deploy_timeout:
        found.append(
            doc.problem(
                ("checks",),
                f"the checks may take {total:g}s in all, longer than a whole deploy may take "
                f"({deploy_timeout:g}s, proxy.deploy_timeout)",
                "shorten their timeouts, or raise proxy.deploy_timeout in deploy.yaml",
            )
        )
    return found


def _probe_problems(doc: yamlsrc.Document, items: list[Any]) -> list[Problem]:
    """probe_checks with no check marked read_only would run nothing: say so."""
    if doc.data.get("probe_checks") is not True:
        return []
    if any(isinstance(item, dict) and item.get("read_only") is True for item in items):
        return []
    return [
        doc.problem(
            ("probe_checks",),
            "probe_checks runs the checks marked read_only: true, and none is",
            "mark the checks that change nothing read_only: true, or remove probe_checks",
        )
    ]


def _timeout_problem(
    doc: yamlsrc.Document, where: tuple[str | int, ...], item: dict[str, Any], found: list[Problem]
) -> float:
    """The check's timeout in seconds; a problem added when it is over MAX_CHECK_TIMEOUT."""
    raw = item.get("timeout", DEFAULT_CHECK_TIMEOUT)
    try:
        seconds = parse_duration(raw) if isinstance(raw, str | int | float) else DEFAULT_CHECK_TIMEOUT
    except ValueError:
        return DEFAULT_CHECK_TIMEOUT  # the schema's pattern reports it
    if seconds > MAX_CHECK_TIMEOUT:
        found.append(
            doc.problem(
                (*where, "timeout"),
                f"a check's timeout may be at most {MAX_CHECK_TIMEOUT:g}s; this one is {raw}",
                "a smoke call should answer quickly: shorten it",
            )
        )
    return seconds


def _check(item: dict[str, Any]) -> Check:
    expect = item.get("expect") or {}
    return Check(
        name=str(item.get("name") or item["tool"]),
        tool=str(item["tool"]),
        arguments=dict(item.get("arguments") or {}),
        expect=Expect(
            contains=str(expect.get("contains", "")),
            is_error=bool(expect.get("is_error", False)),
            json=dict(expect.get("json") or {}),
        ),
        timeout=parse_duration(item.get("timeout", DEFAULT_CHECK_TIMEOUT)),
        read_only=bool(item.get("read_only", False)),
    )
