"""Replicas behind the real proxy: least in-flight balancing, sessions that stay on the replica that
issued them, stateless-era retries that go back to the replica that minted their request state, and
replicas leaving or joining rotation without cutting what they hold.

The replicas are real SDK servers or raw upstreams on loopback, grouped by the Router as a deploy
groups a release's containers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from starlette.requests import Request
from starlette.responses import Response

from pipeline.proxy.relay import MAX_REQUEST_STATE, request_state
from pipeline.proxy.router import MAX_PINS, Router, TargetState
from tests.support.loopback import free_port
from tests.support.proxy_rig import (
    ACCEPT_BOTH,
    MODERN,
    Recorder,
    Rig,
    connect,
    eventually,
    jsonrpc,
    raw_upstream,
    running_proxy,
    sdk_upstream,
    text_of,
    upstream,
)

STATELESS = {**ACCEPT_BOTH, "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "ask"}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """A proxy with open access (no projects)."""
    with running_proxy(tmp_path) as running:
        yield running


def _minting(label: str) -> Recorder:
    """A stateless-era upstream whose first answer asks for input with a request state it minted, and
    whose retry answer says whether the state it got back is its own."""

    async def answer(request: Request) -> Response:
        message = json.loads(await request.body())
        state = message["params"].get("requestState")
        result: dict[str, object]
        if state is None:
            result = {"resultType": "input_required", "requestState": f"{label}-{message['id']}"}
        else:
            result = {"content": [{"type": "text", "text": f"{label}:{state.startswith(label + '-')}"}]}
        body = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
        return Response(body, media_type="application/json")

    return Recorder(answer)


async def test_new_requests_go_to_the_replica_with_fewest_in_flight(rig: Rig) -> None:
    """While one replica holds a slow request, every new request goes to the other."""
    release = asyncio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(b'{"jsonrpc":"2.0","id":1,"result":{}}', media_type="application/json")

    a, b = Recorder(slow), Recorder()
    with raw_upstream("x", a, "A") as ua, raw_upstream("x", b, "B") as ub:
        rig.router.swap({"x": (ua, ub)})
        async with httpx2.AsyncClient(timeout=10) as http:
            body = json.dumps(jsonrpc("tools/call", {"name": "ask"}))
            held = asyncio.ensure_future(http.post(rig.url("x"), content=body, headers=STATELESS))
            assert await eventually(lambda: len(a.seen) + len(b.seen) == 1)
            busy, idle = (a, b) if a.seen else (b, a)
            for _ in range(6):
                answer = await http.post(rig.url("x"), content=body, headers=STATELESS)
                assert answer.status_code == 200
            assert (len(busy.seen), len(idle.seen)) == (1, 6)
            release.set()
            assert (await held).status_code == 200
    assert rig.router.inflight("A") == rig.router.inflight("B") == 0


async def test_sessions_never_move_between_replicas(rig: Rig) -> None:
    """Sessions spread over both replicas, and every call of a session reaches the replica that issued it."""
    with sdk_upstream("x", "A") as a, sdk_upstream("x", "B") as b:
        rig.router.swap({"x": (a, b)})

        async def session() -> set[str]:
            async with connect(rig.url("x")) as client:
                return {text_of(await client.call_tool("whoami", {})) for _ in range(4)}

        seen = await asyncio.gather(*(session() for _ in range(6)))
    assert all(len(labels) == 1 for labels in seen)
    assert set().union(*seen) == {"A", "B"}


async def test_a_retry_carrying_request_state_reaches_the_replica_that_minted_it(rig: Rig) -> None:
    """A stateless-era input-required round trip: each retry goes back to the replica that minted its
    requestState, although first requests are balanced over both."""
    a, b = _minting("A"), _minting("B")
    with raw_upstream("x", a, "A") as ua, raw_upstream("x", b, "B") as ub:
        rig.router.swap({"x": (ua, ub)})
        async with httpx2.AsyncClient(timeout=10) as http:
            for n in range(1, 9):
                first = jsonrpc("tools/call", {"name": "ask", "arguments": {}}, n)
                asked = (await http.post(rig.url("x"), json=first, headers=STATELESS)).json()
                state = asked["result"]["requestState"]
                retry = jsonrpc("tools/call", {"name": "ask", "arguments": {}, "requestState": state}, n)
                answer = (await http.post(rig.url("x"), json=retry, headers=STATELESS)).json()
                assert answer["result"]["content"][0]["text"] == f"{state[0]}:True"
    assert len(a.seen) >= 4 and len(b.seen) >= 4  # the first requests were balanced


async def test_a_replica_leaving_rotation_keeps_its_sessions_until_drained(rig: Rig) -> None:
    """A replica taken out of rotation serves its open sessions, takes no new one, then retires."""
    with sdk_upstream("x", "A") as a, sdk_upstream("x", "B") as b:
        rig.router.swap({"x": (a, b)})
        async with connect(rig.url("x")) as one, connect(rig.url("x")) as two:
            first, second = (
                text_of(await one.call_tool("whoami", {})),
                text_of(await two.call_tool("whoami", {})),
            )
            assert {first, second} == {"A", "B"}
            leaving = rig.router.remove_target("B")
            assert leaving is not None and leaving.state is TargetState.DRAINING
            for client, label in ((one, first), (two, second)):
                assert text_of(await client.call_tool("whoami", {})) == label
            async with connect(rig.url("x")) as three:
                assert text_of(await three.call_tool("whoami", {})) == "A"
        assert await asyncio.to_thread(rig.router.drain, "B", 2.0, 2.0)
    assert rig.router.target("B") is None


def test_the_last_replica_is_never_removed_and_a_replaced_one_drains() -> None:
    """remove_target keeps a server's last replica; replace_target swaps one in place (the old one drains)."""
    router = Router()
    router.swap({"x": (upstream("x", 1, "A"), upstream("x", 2, "B"))})
    assert router.remove_target("A") is not None
    assert router.remove_target("B") is None
    old = router.replace_target("B", upstream("x", 3, "C"))
    assert old is not None and old.state is TargetState.DRAINING
    assert [t.container_id for t in router.groups["x"].targets] == ["C"]
    assert router.get("x") == upstream("x", 3, "C")
    assert router.drain("B", 1.0, 1.0) and router.drain("A", 1.0, 1.0)
    assert router.target("A") is None and router.target("B") is None


def test_a_swap_drains_every_replica_of_the_old_release() -> None:
    """After a swap, all of the old release's replicas are draining and the new ones take new requests."""
    router = Router()
    router.swap({"x": (upstream("x", 1, "A"), upstream("x", 2, "B"))})
    replaced = router.swap({"x": (upstream("x", 3, "C", release=2), upstream("x", 4, "D", release=2))})
    assert [t.state for t in replaced["x"].targets] == [TargetState.DRAINING] * 2
    picked = {t.container_id for t in (router.pick("x") for _ in range(8)) if t is not None}
    assert picked == {"C", "D"}


def test_add_target_refuses_a_release_that_is_not_live() -> None:
    """A replica of another release than the live one is never put in rotation."""
    router = Router()
    router.swap({"x": upstream("x", 1, "A")})
    with pytest.raises(ValueError, match="not live"):
        router.add_target(upstream("x", 2, "B", release=7))
    router.add_target(upstream("x", 2, "B"))
    assert len(router.groups["x"].targets) == 2


async def test_a_replica_that_cannot_be_connected_to_leaves_rotation_and_no_request_fails(rig: Rig) -> None:
    """Requests outside sessions that meet a replica refusing connections go to the other replica (nothing
    was sent), and that replica leaves rotation until the monitor reinstates it."""
    live = Recorder()
    with raw_upstream("x", live, "A") as ua:
        dead = upstream("x", free_port(), "B")
        rig.router.swap({"x": (ua, dead)})
        async with httpx2.AsyncClient(timeout=10) as http:
            body = json.dumps(jsonrpc("tools/call", {"name": "ask"}))
            answers = [await http.post(rig.url("x"), content=body, headers=STATELESS) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6
        assert len(live.seen) == 6
        target = rig.router.target("B")
        assert target is not None and target.state is TargetState.UNHEALTHY
        rig.router.reinstate("B")
        assert rig.router.groups["x"].targets[1].state is TargetState.HEALTHY
    assert rig.router.inflight("A") == rig.router.inflight("B") == 0


async def test_the_only_replica_unreachable_still_answers_502(rig: Rig) -> None:
    """With no other replica to go to, a refused connection answers 502 naming the server, no address."""
    rig.router.swap({"x": upstream("x", free_port(), "A")})
    async with httpx2.AsyncClient(timeout=10) as http:
        answer = await http.post(rig.url("x"), json=jsonrpc("tools/call", {"name": "ask"}), headers=STATELESS)
    assert answer.status_code == 502
    assert "is unreachable: ConnectionRefusedError" in answer.text and "127.0.0.1" not in answer.text
    target = rig.router.target("A")
    assert target is not None and target.state is TargetState.HEALTHY


def test_swapping_in_a_routed_container_again_keeps_its_target_and_counts() -> None:
    """A container that is already routed keeps its Target (in-flight count, closer) through a swap."""
    router = Router()
    router.swap({"x": upstream("x", 1, "A")})
    target = router.pick("x")
    assert target is not None and router.enter(target) is not None
    router.swap({"x": (upstream("x", 2, "A"), upstream("x", 3, "B"))})
    assert router.target("A") is target and target.inflight == 1 and target.upstream.port == 2
    assert target.state is TargetState.HEALTHY


def test_a_parked_server_stays_known_and_all_its_replicas_drain() -> None:
    """park (scale to zero): the server leaves the table, stays known; each replica drains, then retires."""
    router = Router()
    router.swap({"x": (upstream("x", 1, "A"), upstream("x", 2, "B"))})
    assert router.park("x") == upstream("x", 1, "A")
    assert router.get("x") is None and router.pick("x") is None and "x" in router.known
    assert [router.target(c).state for c in "AB"] == [TargetState.DRAINING] * 2  # type: ignore[union-attr]
    assert router.drain("A", 1.0, 1.0) and router.drain("B", 1.0, 1.0)
    assert router.park("x") is None


async def test_request_state_nested_past_the_parser_depth_is_routed_not_crashed(rig: Rig) -> None:
    """A client's body (or a replica's answer) carrying `requestState` and JSON nested past the
    parser's depth is not pinned: the request is balanced and answered, the proxy keeps serving."""
    deep = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"requestState":"A-1","x":'
    deep += b"[" * 100_000 + b"]" * 100_000 + b"}}"
    a, b = Recorder(), Recorder()
    with raw_upstream("x", a, "A") as ua, raw_upstream("x", b, "B") as ub:
        rig.router.swap({"x": (ua, ub)})
        async with httpx2.AsyncClient(timeout=10) as http:
            answer = await http.post(rig.url("x"), content=deep, headers=STATELESS)
            assert answer.status_code == 200
            assert len(a.seen) + len(b.seen) == 1
            body = jsonrpc("tools/call", {"name": "ask", "arguments": {}}, 2)
            assert (await http.post(rig.url("x"), json=body, headers=STATELESS)).status_code == 200


def test_request_state_of_a_nested_past_the_parser_depth_message_is_none() -> None:
    """request_state reads no state from JSON nested past the parser's depth (no RecursionError)."""
    deep = b'{"result":{"requestState":"s","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    assert request_state(deep, "result") == ""


def test_pins_hold_a_bounded_size_whatever_states_servers_mint() -> None:
    """Request states up to MAX_REQUEST_STATE long are pinned by a fixed-size digest: MAX_PINS of
    them cost kilobytes each at most, not their own length."""
    router = Router()
    router.swap({"x": (upstream("x", 1, "A"), upstream("x", 2, "B"))})
    long = "s" * MAX_REQUEST_STATE
    for n in range(200):
        router.pin(f"{n}{long}", "A")
    assert sum(len(k) for k in router._pins["x"]) <= 200 * 64
    picked = router.pinned("x", f"7{long}")
    assert picked is not None and picked.container_id == "A"
    assert router.pinned("x", f"7{long}x") is None


def test_one_servers_request_states_never_evict_anothers() -> None:
    """A server minting MAX_PINS states (one tenant's, say) leaves another server's pins in place: the
    table was shared, so its retries went to any replica, and a state is asked for only on its own
    server."""
    router = Router()
    router.swap({"x": (upstream("x", 1, "A"), upstream("x", 2, "B"))})
    router.swap({"y": (upstream("y", 3, "C"), upstream("y", 4, "D"))})
    router.pin("mine", "B")
    for n in range(MAX_PINS + 1):
        router.pin(f"flood-{n}", "C")
    picked = router.pinned("x", "mine")
    assert picked is not None and picked.container_id == "B"
    assert router.pinned("y", "mine") is None and router.pinned("x", "flood-5") is None
