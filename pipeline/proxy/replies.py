"""The aggregate's own JSON-RPC answers: results and errors in the client's era, collected
answers rewritten, and what a stateless-era client's server/discover is told."""

from __future__ import annotations

import json
from typing import Any

from pipeline.proxy.catalog import URI_SCHEME
from pipeline.proxy.relay import Reply
from pipeline.proxy.upstreams import MODERN_VERSION, Collected

JSON_TYPE = (b"content-type", b"application/json")
SERVER_INFO = {"name": "central-mcp", "version": "1"}
CAPABILITIES: dict[str, Any] = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"listChanged": True},
    "completions": {},
    "logging": {},
}
# A session-era client also subscribes to resources: the server's resources/updated reach it on its
# GET stream (feeds.py). A stateless-era client has no stream to hear them on.
SESSION_CAPABILITIES: dict[str, Any] = {
    **CAPABILITIES,
    "resources": {"listChanged": True, "subscribe": True},
}


def whole(inner: Collected, server: str, request_id: object, rewrite: Any, modern: bool) -> Reply:
    """A collected answer for the client: its result rewritten, in the client's era."""
    message = inner.message(request_id)
    if message is None:
        return inner.status or 502, b"".join(inner.chunks), [JSON_TYPE]
    result = message.get("result")
    if isinstance(result, dict):
        if rewrite is not None:
            rewrite(server, result)
        if modern:
            result.setdefault("resultType", "complete")
    return 200, json.dumps(message, ensure_ascii=False).encode(), [JSON_TYPE]


def resource_uris(server: str, result: dict[str, Any]) -> None:
    """A resources/read result's URIs, given back as the aggregate's."""
    contents = result.get("contents")
    for content in contents if isinstance(contents, list) else ():  # a server's own shape: any
        if isinstance(content, dict) and isinstance(content.get("uri"), str):
            content["uri"] = f"{URI_SCHEME}{server}/{content['uri']}"


def discover() -> dict[str, Any]:
    """The answer to a stateless-era client's server/discover."""
    return {
        "supportedVersions": [MODERN_VERSION],
        "capabilities": CAPABILITIES,
        "cacheScope": "private",
        "ttlMs": 0,
        "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
    }


def result(request_id: object, result: dict[str, Any], modern: bool) -> Reply:
    """A result, with the fields a 2026-07-28 client expects when `modern`."""
    if modern:
        result = {**result, "resultType": "complete"}
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}, separators=(",", ":"))
    return 200, body.encode(), [JSON_TYPE]


def rpc_error(request_id: object, code: int, message: str, status: int = 200) -> Reply:
    """A JSON-RPC error (HTTP 200 unless `status` says otherwise)."""
    error = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return status, json.dumps(error, separators=(",", ":")).encode(), [JSON_TYPE]


def error_reply(status: int, message: str, headers: dict[str, str]) -> Reply:
    """An HTTP error answer with a JSON body, as the proxy gives one."""
    encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return status, json.dumps({"error": message}).encode(), [*encoded, JSON_TYPE]
