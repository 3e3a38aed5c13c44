"""What a project's aggregate endpoint offers: public names, the project's selection, and each
release's tool list cached.

A tool `t` of server `s` is offered as `s__t`: a server name is a DNS label, which holds no `_`, so
the first `__` splits a public name back and no two pairs collide. A public name past MAX_NAME
characters (the spec's limit) keeps its first characters and ends with a stable hash of the pair;
every public name is looked up in the view's own table, never parsed, so a hashed one routes too.

A release's list is kept under its container id: a swap names a new container, so the cache is
invalidated by the swap itself and a list is fetched once per release, not per request. A
project's view (the union of its reachable releases' lists, less what deploy.yaml's
`projects[].tools` denies, already serialized) is kept under the releases it was built from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.config.settings import Project

SEPARATOR = "__"
MAX_NAME = 128  # the spec: a tool name is 1 to 128 characters
HASH_CHARS = 8
MAX_VIEWS = 256  # project views kept (one per project and set of releases; old ones go first)

Releases = tuple[tuple[str, str], ...]  # (server, container id) of each reachable live release, sorted


def public_name(server: str, name: str) -> str:
    """The aggregate's name for `name` of `server`: `server__name`, hashed short past MAX_NAME."""
    joined = f"{server}{SEPARATOR}{name}"
    if len(joined) <= MAX_NAME:
        return joined
    digest = hashlib.sha256(f"{server}\0{name}".encode()).hexdigest()[:HASH_CHARS]
    return f"{joined[: MAX_NAME - HASH_CHARS - 1]}-{digest}"


def offered(server: str, tool: Mapping[str, Any]) -> dict[str, Any]:
    """A server's tool as the aggregate lists it: namespaced, its title and description saying
    which server serves it (the original text kept)."""
    item = dict(tool)
    name = str(tool.get("name", ""))
    item["name"] = public_name(server, name)
    item["title"] = f"{tool.get('title') or name} ({server})"
    description = str(tool.get("description") or "").strip()
    item["description"] = f"{description}\n\n(served by {server})" if description else f"(served by {server})"
    return item


@dataclass(frozen=True)
class View:
    """One project's tools: the list to send, serialized, and where each public name goes."""

    payload: bytes  # the JSON array of tools
    routes: Mapping[str, tuple[str, str]]  # public name -> (server, the server's own name)
    names: frozenset[str] = field(default=frozenset())


class Catalog:
    """Tool lists per release (by container id) and per-project views built from them."""

    def __init__(self) -> None:
        self._lists: dict[str, list[dict[str, Any]]] = {}
        self._views: dict[tuple[str, Releases], View] = {}
        self.modern: dict[str, bool] = {}  # by container id: whether the release speaks 2026-07-28

    def tools_of(self, container_id: str) -> list[dict[str, Any]] | None:
        """The cached tool list of a release, or None if it was not fetched yet."""
        return self._lists.get(container_id)

    def keep(self, container_id: str, tools: list[dict[str, Any]]) -> None:
        """Cache a release's tool list (fetched once per release)."""
        self._lists[container_id] = tools

    def view(self, project: Project | None, releases: Releases) -> View | None:
        """The project's view over `releases`, when every one of their lists is cached."""
        key = (project.name if project else "", releases)
        found = self._views.get(key)
        if found is not None:
            return found
        lists = [(server, self._lists.get(cid)) for server, cid in releases]
        if any(tools is None for _, tools in lists):
            return None
        built = _build(project, lists)  # type: ignore[arg-type]
        if len(self._views) >= MAX_VIEWS:
            self._views.pop(next(iter(self._views)))
        self._views[key] = built
        return built

    def prune(self, live: Iterable[str]) -> None:
        """Forget the lists of releases that are gone and every view (after a swap)."""
        keep = set(live)
        self._lists = {cid: tools for cid, tools in self._lists.items() if cid in keep}
        self.modern = {cid: modern for cid, modern in self.modern.items() if cid in keep}
        self._views = {}


def _build(project: Project | None, lists: list[tuple[str, list[dict[str, Any]]]]) -> View:
    """A project's view: every allowed tool of every listed release, namespaced."""
    items: list[dict[str, Any]] = []
    routes: dict[str, tuple[str, str]] = {}
    for server, tools in lists:
        for tool in tools:
            name = str(tool.get("name", ""))
            if not name or (project is not None and not project.may_call(server, name)):
                continue
            item = offered(server, tool)
            if item["name"] in routes:
                continue  # a server listing one name twice: the first wins
            routes[item["name"]] = (server, name)
            items.append(item)
    payload = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()
    return View(payload, routes, frozenset(routes))
