"""pipeline/bridge/hub.py: JSON-RPC ids and progress tokens rewritten per session, and routing.

A fake child records what would be written to the stdio program; the hub's answers are read from
each call's queue. The same paths run against real processes in test_bridge_process.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from pipeline.bridge.child import Child, Message
from pipeline.bridge.hub import Call, Hub, Session


class FakeChild:
    """Stands in for a stdio process: records each message the hub writes to it."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.closed = False
        self.pid = 1

    def send(self, message: Message) -> None:
        """Record a message for the program."""
        if self.closed:
            raise ConnectionError("ended")
        self.sent.append(message)

    def on_message(self, child: Any, message: Message) -> None:
        """Replaced by the hub."""

    def on_exit(self, child: Any, reason: str) -> None:
        """Replaced by the hub."""


def _hub() -> tuple[Hub, FakeChild]:
    child = FakeChild()
    return Hub(cast(Child, child)), child


def _session(hub: Hub, name: str, **capabilities: Any) -> Session:
    session = Session(name, hub, capabilities)
    hub.sessions[name] = session
    return session


def _request(request_id: Any, method: str = "tools/call", **params: Any) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def _drain(call: Call) -> list[Message]:
    found = []
    while not call.queue.empty():
        found.append(call.queue.get_nowait())
    return found


def _from_program(hub: Hub, child: FakeChild, message: Message) -> None:
    hub.on_message(cast(Child, child), message)


def test_two_sessions_with_the_same_request_id_get_their_own_answers() -> None:
    """Both sessions send id 1; the program sees two bridge ids; each answer returns as id 1 to its
    own session only."""
    hub, child = _hub()
    a, b = _session(hub, "a"), _session(hub, "b")
    call_a, call_b = hub.call(a, _request(1)), hub.call(b, _request(1))
    ids = [m["id"] for m in child.sent]
    assert len(set(ids)) == 2
    _from_program(hub, child, {"jsonrpc": "2.0", "id": ids[1], "result": {"who": "b"}})
    _from_program(hub, child, {"jsonrpc": "2.0", "id": ids[0], "result": {"who": "a"}})
    assert _drain(call_a) == [{"jsonrpc": "2.0", "id": 1, "result": {"who": "a"}}]
    assert _drain(call_b) == [{"jsonrpc": "2.0", "id": 1, "result": {"who": "b"}}]
    assert not a.calls and not b.calls and not hub.calls


def test_an_answer_under_an_id_the_bridge_never_issued_answers_no_call() -> None:
    """The program's answer must carry the bridge id exactly: `true`, `1.0` or `"1"` for bridge
    id 1 answer nothing (JSON-RPC ids are strings or integers; Python's True == 1 == 1.0)."""
    hub, child = _hub()
    call = hub.call(_session(hub, "a"), _request("mine"))
    assert child.sent[0]["id"] == 1
    for forged in (True, 1.0, "1", None, [1]):
        _from_program(hub, child, {"jsonrpc": "2.0", "id": forged, "result": {"forged": True}})
    assert _drain(call) == []
    _from_program(hub, child, {"jsonrpc": "2.0", "id": 1, "result": {}})
    assert _drain(call) == [{"jsonrpc": "2.0", "id": "mine", "result": {}}]


def test_progress_goes_to_the_caller_under_its_own_token() -> None:
    """A progressToken is replaced by one of ours; progress under it reaches only the caller, with
    the caller's token."""
    hub, child = _hub()
    a, b = _session(hub, "a"), _session(hub, "b")
    call_a = hub.call(a, _request(7, _meta={"progressToken": "tok"}))
    call_b = hub.call(b, _request(7, _meta={"progressToken": "tok"}))
    token_a = child.sent[0]["params"]["_meta"]["progressToken"]
    assert token_a != "tok" and token_a != child.sent[1]["params"]["_meta"]["progressToken"]
    note = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": token_a, "progress": 1},
    }
    _from_program(hub, child, note)
    assert _drain(call_a) == [{**note, "params": {"progressToken": "tok", "progress": 1}}]
    assert _drain(call_b) == []


def test_a_cancellation_names_only_a_call_of_the_same_session() -> None:
    """notifications/cancelled is rewritten to the bridge id of the session's own call; naming
    another session's call sends nothing."""
    hub, child = _hub()
    a, b = _session(hub, "a"), _session(hub, "b")
    hub.call(a, _request(1))
    hub.call(b, _request(2))
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}
    hub.notify(a, cancel)
    assert len(child.sent) == 2, "a cancelled b's call"
    hub.notify(b, cancel)
    assert child.sent[-1]["params"]["requestId"] == child.sent[1]["id"]


def test_a_server_request_goes_to_the_only_session_with_a_call_in_flight() -> None:
    """With exactly one session's call in flight, sampling goes on that call's stream, and only
    that session may answer it."""
    hub, child = _hub()
    a, b = _session(hub, "a", sampling={}), _session(hub, "b", sampling={})
    call_b = hub.call(b, _request(1))
    ask = {"jsonrpc": "2.0", "id": 99, "method": "sampling/createMessage", "params": {}}
    _from_program(hub, child, ask)
    assert _drain(call_b) == [ask]
    answer = {"jsonrpc": "2.0", "id": 99, "result": {"text": "x"}}
    assert not hub.respond(a, answer)
    assert hub.respond(b, answer)
    assert child.sent[-1] == answer


def test_with_calls_of_several_sessions_a_server_request_goes_to_one_that_declared_the_capability() -> None:
    """Two sessions busy, one declared elicitation: the request goes to it; with none able, the
    program gets a JSON-RPC error back at once."""
    hub, child = _hub()
    a, b = _session(hub, "a"), _session(hub, "b", elicitation={})
    hub.call(a, _request(1))
    call_b = hub.call(b, _request(1))
    ask = {"jsonrpc": "2.0", "id": 5, "method": "elicitation/create", "params": {}}
    _from_program(hub, child, ask)
    assert _drain(call_b) == [ask]
    roots = {"jsonrpc": "2.0", "id": 6, "method": "roots/list"}
    _from_program(hub, child, roots)
    assert (
        child.sent[-1]["id"] == 6
        and "no connected client can answer roots/list" in child.sent[-1]["error"]["message"]
    )


def test_when_the_program_exits_every_call_gets_an_error_and_sessions_end() -> None:
    """The exit reason reaches each caller as a JSON-RPC error; later calls get it at once."""
    hub, child = _hub()
    a = _session(hub, "a")
    call = hub.call(a, _request("x"))
    child.closed = True
    hub.on_exit(cast(Child, child), "the server process exited with code 1")
    [answer] = _drain(call)
    assert answer["id"] == "x" and answer["error"]["message"] == "the server process exited with code 1"
    assert a.closed and not hub.alive
    [late] = _drain(hub.call(a, _request("y")))
    assert late["error"]["message"] == "the server process exited with code 1"


def test_a_client_that_goes_away_cancels_its_call_in_the_program() -> None:
    """Forgetting an unanswered call tells the program notifications/cancelled with the bridge id;
    a late answer is then dropped."""
    hub, child = _hub()
    a = _session(hub, "a")
    call = hub.call(a, _request(3))
    hub.forget(call)
    assert child.sent[-1] == {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": call.bridge_id},
    }
    _from_program(hub, child, {"jsonrpc": "2.0", "id": call.bridge_id, "result": {}})
    assert _drain(call) == []


def test_an_unrelated_notification_reaches_every_session_stream() -> None:
    """A list_changed notification goes to each session's newest call or GET stream."""
    hub, child = _hub()
    a, b = _session(hub, "a"), _session(hub, "b")
    call_a = hub.call(a, _request(1))
    note = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    b.stream = asyncio.Queue(10)
    _from_program(hub, child, note)
    assert _drain(call_a) == [note]
    assert b.stream.get_nowait() == note


def test_a_server_request_whose_session_ends_gets_an_error_in_the_program() -> None:
    """When the session a server request went to ends unanswered, the program gets a JSON-RPC
    error for it instead of waiting forever."""
    hub, child = _hub()
    a = _session(hub, "a", roots={})
    hub.call(a, _request(1))
    _from_program(hub, child, {"jsonrpc": "2.0", "id": "r1", "method": "roots/list"})
    hub.drop_server_requests(a)
    assert child.sent[-1]["id"] == "r1"
    assert child.sent[-1]["error"]["message"] == "the client's session ended"
    assert hub.server_requests == {}
