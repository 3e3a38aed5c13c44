"""What a project's aggregate endpoint offers: public names, the project's selection, and each
release's lists (tools, prompts, resources, resource templates) cached.

A tool or prompt `t` of server `s` is offered as `s__t`: a server name is a DNS label, which holds
no `_`, so the first `__` splits a public name back and no two pairs collide. A public name past
MAX_NAME characters (the spec's limit) keeps its first characters and ends with a stable hash of
the pair; the view's own table maps every public name back, so a hashed one routes too. A resource
URI `u` of server `s` is offered as `central-mcp://s/u` (a template likewise): unique, and
reversible by taking the prefix off.

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
URI_SCHEME = "central-mcp://"
KINDS = ("tools", "prompts", "resources", "resourceTemplates")  # the result keys of the four lists
NAMED = frozenset({"tools", "prompts"})
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


def public_uri(server: str, uri: str) -> str:
    """The aggregate's URI for a resource (or template) `uri` of `server`."""
    return f"{URI_SCHEME}{server}/{uri}"


def server_uri(uri: str) -> tuple[str, str] | None:
    """The (server, server's own URI) an aggregate URI stands for, or None if it is none."""
    if not uri.startswith(URI_SCHEME):
        return None
    server, sep, rest = uri[len(URI_SCHEME) :].partition("/")
    return (server, rest) if server and sep and rest else None


def offered(server: str, item: Mapping[str, Any], kind: str = "tools") -> dict[str, Any]:
    """A server's tool, prompt, resource or template as the aggregate lists it: namespaced, its
    title and description saying which server serves it (the original text kept)."""
    out = dict(item)
    name = str(item.get("name", ""))
    if kind in NAMED:
        out["name"] = public_name(server, name)
    elif kind == "resources":
        out["uri"] = public_uri(server, str(item.get("uri", "")))
    else:
        out["uriTemplate"] = public_uri(server, str(item.get("uriTemplate", "")))
    out["title"] = f"{item.get('title') or name} ({server})"
    description = str(item.get("description") or "").strip()
    out["description"] = f"{description}\n\n(served by {server})" if description else f"(served by {server})"
    return out


@dataclass(frozen=True)
class View:
    """One project's list of one kind: serialized, and where each public name goes."""

    payload: bytes  # the JSON array
    routes: Mapping[str, tuple[str, str]]  # public name (or URI) -> (server, the server's own)
    names: frozenset[str] = field(default=frozenset())


Lists = dict[str, list[dict[str, Any]]]  # kind -> items


class Catalog:
    """Lists per release (by container id) and per-project views built from them."""

    def __init__(self) -> None:
        self._lists: dict[str, Lists] = {}
        self._views: dict[tuple[Project | None, Releases, str], View] = {}
        self.modern: dict[str, bool] = {}  # by container id: whether the release speaks 2026-07-28

    def has(self, container_id: str) -> bool:
        """Whether a release's lists were fetched."""
        return container_id in self._lists

    def keep(self, container_id: str, lists: Lists) -> None:
        """Cache a release's lists (fetched once per release)."""
        self._lists[container_id] = lists

    def alias(self, container_id: str, key: str) -> None:
        """Keep a release's lists under `key` too (a server scaled to zero: its container is gone)."""
        if container_id in self._lists:
            self._lists[key] = self._lists[container_id]
            self.modern[key] = self.modern.get(container_id, False)

    def view(self, project: Project | None, releases: Releases, kind: str = "tools") -> View | None:
        """The project's view of `kind` over `releases`, when every one of their lists is cached."""
        key = (project, releases, kind)  # the project itself: a reload that changes its tools is a new key
        found = self._views.get(key)
        if found is not None:
            return found
        if not all(cid in self._lists for _, cid in releases):
            return None
        lists = [(server, self._lists[cid].get(kind, [])) for server, cid in releases]
        built = _build(project, lists, kind)
        if len(self._views) >= MAX_VIEWS:
            self._views.pop(next(iter(self._views)))
        self._views[key] = built
        return built

    def forget(self, container_id: str) -> None:
        """Forget one release's lists and every view (the views built from them are stale)."""
        self._lists.pop(container_id, None)
        self._views = {}

    def prune(self, live: Iterable[str]) -> None:
        """Forget the lists of releases that are gone and every view (after a swap)."""
        keep = set(live)
        self._lists = {cid: tools for cid, tools in self._lists.items() if cid in keep}
        self.modern = {cid: modern for cid, modern in self.modern.items() if cid in keep}
        self._views = {}


def _build(project: Project | None, lists: list[tuple[str, list[dict[str, Any]]]], kind: str) -> View:
    """A project's view of one kind: every allowed item of every listed release, namespaced."""
    items: list[dict[str, Any]] = []
    routes: dict[str, tuple[str, str]] = {}
    field_name = "name" if kind in NAMED else "uri" if kind == "resources" else "uriTemplate"
    for server, found in lists:
        for entry in found:
            own = str(entry.get(field_name, ""))
            if not own or (kind == "tools" and project is not None and not project.may_call(server, own)):
                continue
            item = offered(server, entry, kind)
            if item[field_name] in routes:
                continue  # a server listing one name twice: the first wins
            routes[item[field_name]] = (server, own)
            items.append(item)
    payload = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()
    return View(payload, routes, frozenset(routes))
