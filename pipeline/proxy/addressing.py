"""Where a request to `/mcp` goes: a public tool or prompt name, or an aggregate URI, back to the
server that serves it and that server's own name or URI (catalog.py makes them; this undoes them).

A name `<server>__<own>` short enough not to have been hashed is split without a list; a hashed
one is looked up in the caller's view. Either way the server must be live and reached by the
caller's key, and a tool must be allowed by the project's selection: else the answer is a reason,
which the aggregate sends as a JSON-RPC error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.proxy.access import Caller
from pipeline.proxy.catalog import MAX_NAME, SEPARATOR, View, server_uri
from pipeline.proxy.relay import Proxy

Target = tuple[str, dict[str, Any], str]  # server, the params it gets, the Mcp-Name it gets
Viewer = Callable[[str], Awaitable[View]]  # the caller's view of one kind


class Addressing:
    """Turns the aggregate's names and URIs back into (server, own) for one proxy's routes."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    async def target(self, caller: Caller, view: Viewer, method: str, params: dict[str, Any]) -> Target | str:
        """The server a request goes to, with the params and Mcp-Name it gets there; or why none."""
        if method in ("tools/call", "prompts/get"):
            kind = "tools" if method == "tools/call" else "prompts"
            named = await self.named(caller, view, kind, params.get("name"))
            if isinstance(named, str):
                return named
            return named[0], dict(params, name=named[1]), named[1]
        if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            found = server_uri(str(params.get("uri", "")))
            if found is None or not self.reaches(caller, found[0]):
                return f"no resource {params.get('uri')!r} on /mcp (resources/list names every one)"
            return found[0], dict(params, uri=found[1]), found[1]
        if method == "completion/complete":
            return await self._completion(caller, view, params)
        return f"method {method!r} is not served by /mcp"

    async def named(self, caller: Caller, view: Viewer, kind: str, name: object) -> tuple[str, str] | str:
        """The (server, own name) of a public tool or prompt name, or why it routes nowhere."""
        if not isinstance(name, str):
            return f"{kind[:-1]} name missing"
        server, sep, own = name.partition(SEPARATOR)
        if not (sep and own and len(name) < MAX_NAME):
            route = (await view(kind)).routes.get(name)
            if route is None:
                return f"no {kind[:-1]} {name!r} on /mcp ({kind}/list names every one offered)"
            server, own = route
        if not self.reaches(caller, server):
            return f"no {kind[:-1]} {name!r}: no live server {server!r} for this key"
        if kind == "tools" and caller.project is not None and not caller.project.may_call(server, own):
            return f"tool {name!r} is not allowed for project {caller.project.name!r} (deploy.yaml tools)"
        return server, own

    def split(self, caller: Caller, name: str) -> tuple[str, str] | None:
        """The (server, own name) of an unhashed public tool name the caller may call, else None
        (then `named` says why, or finds a hashed name in the view)."""
        server, sep, own = name.partition(SEPARATOR)
        if not (sep and own and len(name) < MAX_NAME) or not self.reaches(caller, server):
            return None
        if caller.project is not None and not caller.project.may_call(server, own):
            return None
        return server, own

    def reaches(self, caller: Caller, server: str) -> bool:
        """Whether `server` is live (or scaled to zero: a request wakes it) and the caller's key
        reaches it."""
        live = self.proxy.router.get(server)
        if live is not None:
            return self.proxy.gatekeeper.reaches(caller, server, live.access)
        waker = self.proxy.waker
        return (
            waker is not None
            and server in waker.asleep
            and self.proxy.gatekeeper.reaches(caller, server, waker.access(server))
        )

    async def _completion(self, caller: Caller, view: Viewer, params: dict[str, Any]) -> Target | str:
        """completion/complete goes to the server of its prompt or resource template."""
        ref = params.get("ref") if isinstance(params.get("ref"), dict) else {}
        assert isinstance(ref, dict)
        if ref.get("type") == "ref/prompt":
            named = await self.named(caller, view, "prompts", ref.get("name"))
            if isinstance(named, str):
                return named
            return named[0], dict(params, ref=dict(ref, name=named[1])), named[1]
        found = server_uri(str(ref.get("uri", "")))
        if found is None or not self.reaches(caller, found[0]):
            return f"no completion target {ref!r} on /mcp"
        return found[0], dict(params, ref=dict(ref, uri=found[1])), found[1]
