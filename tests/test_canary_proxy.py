"""A canary split behind the real proxy on loopback: stateless retries stay with the release that minted
their requestState, the canary's JSON-RPC errors in 200 answers are counted, and the stable release's
answers are never read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx2
import pytest
from starlette.requests import Request
from starlette.responses import Response

from tests.support.proxy_rig import ACCEPT_BOTH, MODERN, Recorder, Rig, jsonrpc, raw_upstream, running_proxy

STATELESS = {**ACCEPT_BOTH, "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "ask"}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A proxy with open access (no projects)."""
    with running_proxy(tmp_path) as running:
        yield running


def _minting(label: str, error: bool = False) -> Recorder:
    """A stateless-era upstream: its first answer asks for input with a request state it minted, its retry
    answer says whether the state is its own (a tool error, with `error`)."""

    async def answer(request: Request) -> Response:
        message = json.loads(await request.body())
        state = message["params"].get("requestState")
        result: dict[str, object]
        if state is None:
            result = {"resultType": "input_required", "requestState": f"{label}-{message['id']}"}
        else:
            text = f"{label}:{state.startswith(label + '-')}"
            result = {"content": [{"type": "text", "text": text}], "isError": error}
        body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}, separators=(",", ":"))
        return Response(body, media_type="application/json")

    return Recorder(answer)


async def test_retries_stay_with_their_release_and_only_the_canarys_errors_are_parsed(rig: Rig) -> None:
    """At 50%, each retry carrying a requestState reaches the release that minted it; the canary's
    isError answers count as its failures, the stable release's identical ones are not read."""
    stable, canary = _minting("A", error=True), _minting("B", error=True)
    with raw_upstream("x", stable, "A") as ua, raw_upstream("x", canary, "B") as ub:
        rig.router.swap({"x": ua})
        split = rig.router.start_split("x", [replace(ub, release=2)], 50)
        async with httpx2.AsyncClient(timeout=10) as http:
            for n in range(1, 11):
                first = jsonrpc("tools/call", {"name": "ask", "arguments": {}}, n)
                asked = (await http.post(rig.url("x"), json=first, headers=STATELESS)).json()
                state = asked["result"]["requestState"]
                retry = jsonrpc("tools/call", {"name": "ask", "arguments": {}, "requestState": state}, n)
                answer = (await http.post(rig.url("x"), json=retry, headers=STATELESS)).json()
                assert answer["result"]["content"][0]["text"] == f"{state[0]}:True"
    assert len(stable.seen) == len(canary.seen) == 10
    figures = split.figures
    assert (figures[1].requests, figures[1].failed, figures[1].rpc_errors) == (10, 0, 0)
    assert (figures[2].requests, figures[2].failed, figures[2].rpc_errors) == (10, 5, 5)
