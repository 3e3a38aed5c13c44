"""The tool contract: what a release offers (tools, resources, prompts), how two releases differ,
and whether a difference breaks clients without a major version bump. Pure functions.

Breaking: a tool or prompt removed; a tool's inputSchema narrowed (a new required property, a
property removed, a type changed to one that accepts less, an enum that lost values); a prompt's
new required argument. Shown, not breaking: anything added, an outputSchema or description
changed, a resource (a listing of data that may come and go) added or removed.

Semver: a major bump is a higher major version, or, below 1.0.0, a higher minor version (0.x
releases may break at each minor, as Cargo and npm's caret read them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.config.checkspec import CONTRACT_WARN
from pipeline.errors import ContractBroken

ALLOW_BREAKING = "[allow-breaking]"
KINDS = ("tools", "prompts", "resources")
KEYS = {"tools": "name", "prompts": "name", "resources": "uri"}
SINGULAR = {"tools": "tool", "prompts": "prompt", "resources": "resource"}
MAX_DEPTH = 8  # nested object schemas compared this deep
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)")


class Change(StrEnum):
    """How one tool, prompt or resource changed between two releases."""

    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass(frozen=True)
class Surface:
    """A release's lists; None for a kind the server did not offer or that could not be read."""

    tools: list[dict[str, Any]] | None = None
    prompts: list[dict[str, Any]] | None = None
    resources: list[dict[str, Any]] | None = None

    def of(self, kind: str) -> list[dict[str, Any]] | None:
        """The list of `kind` (tools, prompts, resources)."""
        found: list[dict[str, Any]] | None = getattr(self, kind)
        return found

    def as_json(self) -> dict[str, Any]:
        """The stored form."""
        return {kind: self.of(kind) for kind in KINDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Surface:
        """Read the stored form (a missing kind is None)."""
        return cls(*(_items(data.get(kind)) for kind in KINDS))


@dataclass(frozen=True)
class Difference:
    """One tool, prompt or resource that differs, how, and why it breaks clients (if it does)."""

    kind: str
    name: str
    change: Change
    details: tuple[str, ...] = ()
    breaking: tuple[str, ...] = field(default=())

    def render(self) -> str:
        """One line: `tool search: changed — inputSchema: new required property 'limit' (breaking)`."""
        if self.change is Change.REMOVED:
            return f"{SINGULAR[self.kind]} {self.name}: removed" + (" (breaking)" if self.breaking else "")
        said = [*(f"{b} (breaking)" for b in self.breaking), *self.details]
        tail = f" — {'; '.join(said)}" if said else ""
        return f"{SINGULAR[self.kind]} {self.name}: {self.change.value}{tail}"


def diff(old: Surface, new: Surface) -> list[Difference]:
    """Every tool, prompt and resource added, removed or changed from `old` to `new` (a kind one
    side could not list is left out)."""
    found: list[Difference] = []
    for kind in KINDS:
        before, after = old.of(kind), new.of(kind)
        if before is None or after is None:
            continue
        found += _diff_kind(kind, _by_key(kind, before), _by_key(kind, after))
    return found


def narrowing(old: object, new: object, where: str = "", depth: int = 0) -> list[str]:
    """How input schema `new` accepts less than `old` does: a new required property, a property
    removed, a type changed to one accepting less, enum values removed (nested objects too)."""
    if not isinstance(old, dict) or not isinstance(new, dict) or depth > MAX_DEPTH:
        return []
    found: list[str] = []
    was, now = _types(old), _types(new)
    lost = (was - now) - ({"integer"} if "number" in now else set())
    if now and (lost or not was):
        found.append(f"{where or 'input'}: type {_show(old.get('type'))} became {_show(new.get('type'))}")
    if isinstance(old.get("enum"), list) and isinstance(new.get("enum"), list):
        kept = {_json_value(v) for v in new["enum"]}  # a set: enums may be long (linear, not n*m)
        gone = [v for v in old["enum"] if _json_value(v) not in kept]
        if gone:
            found.append(f"{where or 'input'}: enum values removed {json.dumps(gone)[:100]}")
    before, after = _properties(old), _properties(new)
    required = set(_names(new.get("required"))) - set(_names(old.get("required")))
    found += [f"new required property {_at(where, name)!r}" for name in sorted(required)]
    found += [f"property {_at(where, name)!r} removed" for name in sorted(set(before) - set(after))]
    for name in sorted(set(before) & set(after)):
        found += narrowing(before[name], after[name], _at(where, name), depth + 1)
    return found


def is_major_bump(old_version: str, new_version: str) -> bool:
    """Whether `new_version` is a major bump over `old_version` (0.x: a minor bump counts)."""
    old, new = _semver(old_version), _semver(new_version)
    if old is None or new is None:
        return False
    if old[0] == 0 and new[0] == 0:
        return new[1] > old[1]
    return new[0] > old[0]


def refusal(
    differences: Sequence[Difference],
    server: str,
    versions: tuple[str, str],
    mode: str,
    message: str,
) -> ContractBroken | None:
    """The error refusing a breaking change without a major bump, or None when it may go live
    (nothing breaks, a major bump, `contract: warn`, or `[allow-breaking]` in the commit message)."""
    broken = [d for d in differences if d.breaking]
    old, new = versions
    if not broken or is_major_bump(old, new) or mode == CONTRACT_WARN or ALLOW_BREAKING in message:
        return None
    what = "; ".join(f"{SINGULAR[d.kind]} {d.name}: {', '.join(d.breaking)}" for d in broken)
    return ContractBroken(
        f"{server}: version {new} breaks the tool contract of the live {old} without a major version "
        f"bump: {what}. Bump the major version in its manifest (e.g. {_next_major(old)}), put "
        f"{ALLOW_BREAKING} in the commit message, or set `contract: warn` in the manifest"
    )


def _diff_kind(
    kind: str, before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> list[Difference]:
    found = [Difference(kind, name, Change.ADDED) for name in sorted(set(after) - set(before))]
    for name in sorted(set(before) - set(after)):
        gone: tuple[str, ...] = ("removed",) if kind != "resources" else ()
        found.append(Difference(kind, name, Change.REMOVED, breaking=gone))
    for name in sorted(set(before) & set(after)):
        details, breaking = _changes(kind, before[name], after[name])
        if details or breaking:
            found.append(Difference(kind, name, Change.CHANGED, tuple(details), tuple(breaking)))
    return found


def _changes(kind: str, old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(details, breaking reasons) of one item present in both releases."""
    details: list[str] = []
    breaking: list[str] = []
    if kind == "tools":
        breaking += [f"inputSchema: {n}" for n in narrowing(old.get("inputSchema"), new.get("inputSchema"))]
        if old.get("inputSchema") != new.get("inputSchema") and not breaking:
            details.append("inputSchema changed, not narrowed")
        if old.get("outputSchema") != new.get("outputSchema"):
            details.append("outputSchema changed")
    if kind == "prompts":
        before = {str(a.get("name")): a for a in _items(old.get("arguments")) or []}  # names: any JSON
        for arg in _items(new.get("arguments")) or []:
            name = str(arg.get("name"))
            if arg.get("required") and not (before.get(name) or {}).get("required"):
                breaking.append(f"new required argument {name!r}")
    if kind == "resources" and old.get("mimeType") != new.get("mimeType"):
        details.append(f"mimeType {old.get('mimeType')!r} became {new.get('mimeType')!r}")
    if old.get("description") != new.get("description"):
        details.append("description changed")
    return details, breaking


def _by_key(kind: str, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(item.get(KEYS[kind])): item for item in items}


def _items(value: object) -> list[dict[str, Any]] | None:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else None


def _types(schema: dict[str, Any]) -> set[str]:
    found = schema.get("type")
    if isinstance(found, str):
        return {found}
    return {t for t in found if isinstance(t, str)} if isinstance(found, list) else set()


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    found = schema.get("properties")
    return found if isinstance(found, dict) else {}


def _names(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _json_value(value: object) -> str:
    """A JSON value's canonical text: equal values alike (1 and 1.0), unequal ones not (true and 1)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, allow_nan=True)


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _show(value: object) -> str:
    return json.dumps(value) if value is not None else "(any)"


def _semver(version: str) -> tuple[int, int, int] | None:
    match = SEMVER.match(version)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _next_major(version: str) -> str:
    found = _semver(version)
    if found is None:
        return "a new major version"
    return f"0.{found[1] + 1}.0" if found[0] == 0 else f"{found[0] + 1}.0.0"
