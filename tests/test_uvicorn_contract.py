"""front.py's contract with uvicorn: every private uvicorn name it builds on, checked one by one.

pipeline/proxy/uvicorn_names.py lists those names in `UVICORN_NAMES`, each with what it is used for; this
module holds the shape each must have (a method's parameters, an attribute's type) and checks it
against the installed uvicorn: methods on the classes, attributes on a real `HttpToolsProtocol` that
has served a request on a real loopback connection. A uvicorn upgrade that moves one of them fails
the test named after it (`make proxy-newest-uvicorn` runs this against uvicorn's newest release).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from pipeline.app import App
from pipeline.proxy import front
from pipeline.proxy.front import FrontProtocol, ProxyCycle
from pipeline.proxy.uvicorn_names import UVICORN_NAMES

NONE = type(None)
REQUEST = (
    b"POST /mcp/x?q=1 HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
)


@dataclass(frozen=True)
class Method:
    """A method front.py overrides (uvicorn calls it with exactly `params`) or calls with `params`."""

    params: tuple[str, ...]
    overridden: bool
    coroutine: bool = False


@dataclass(frozen=True)
class Attribute:
    """An attribute uvicorn sets on a live instance, of one of `types`."""

    types: tuple[type, ...]


@dataclass(frozen=True)
class Importable:
    """A module-level name front.py imports from uvicorn, of type `kind`."""

    kind: type


SHAPES: dict[str, Method | Attribute | Importable] = {
    "Config.__init__": Method(("app", "http"), overridden=False),
    "httptools_impl.HttpToolsProtocol": Importable(type),
    "httptools_impl.RequestResponseCycle": Importable(type),
    "httptools_impl.STATUS_LINE": Importable(dict),
    "HttpToolsProtocol.connection_made": Method(("transport",), overridden=True),
    "HttpToolsProtocol.connection_lost": Method(("exc",), overridden=True),
    "HttpToolsProtocol.data_received": Method(("data",), overridden=True),
    "HttpToolsProtocol.send_400_response": Method(("msg",), overridden=True),
    "HttpToolsProtocol.on_message_begin": Method((), overridden=True),
    "HttpToolsProtocol.on_url": Method(("url",), overridden=True),
    "HttpToolsProtocol.on_header": Method(("name", "value"), overridden=False),
    "HttpToolsProtocol.on_headers_complete": Method((), overridden=True),
    "HttpToolsProtocol.on_body": Method(("body",), overridden=True),
    "HttpToolsProtocol.on_message_complete": Method((), overridden=True),
    "HttpToolsProtocol.on_response_complete": Method((), overridden=False),
    "HttpToolsProtocol._start_asgi_task": Method(("cycle", "app"), overridden=False),
    "HttpToolsProtocol._unset_keepalive_if_required": Method((), overridden=False),
    "HttpToolsProtocol.timeout_keep_alive_task": Attribute((asyncio.TimerHandle, NONE)),
    "HttpToolsProtocol.url": Attribute((bytes,)),
    "HttpToolsProtocol.headers": Attribute((list,)),
    "HttpToolsProtocol.scope": Attribute((dict,)),
    "HttpToolsProtocol.expect_100_continue": Attribute((bool,)),
    "HttpToolsProtocol.parser": Attribute((httptools.HttpRequestParser,)),
    "HttpToolsProtocol.root_path": Attribute((str,)),
    "HttpToolsProtocol.limit_concurrency": Attribute((int, NONE)),
    "HttpToolsProtocol.transport": Attribute((asyncio.Transport,)),
    "HttpToolsProtocol.flow": Attribute((FlowControl,)),
    "HttpToolsProtocol.cycle": Attribute((RequestResponseCycle,)),
    "HttpToolsProtocol.pipeline": Attribute((deque,)),
    "HttpToolsProtocol.app": Attribute((Callable,)),  # type: ignore[arg-type]
    "HttpToolsProtocol.logger": Attribute((logging.Logger,)),
    "HttpToolsProtocol.access_logger": Attribute((logging.Logger,)),
    "HttpToolsProtocol.access_log": Attribute((bool,)),
    "HttpToolsProtocol.client": Attribute((tuple,)),
    "HttpToolsProtocol.server_state": Attribute((ServerState,)),
    "HttpToolsProtocol.loop": Attribute((asyncio.AbstractEventLoop,)),
    "HttpToolsProtocol.tasks": Attribute((set,)),
    "HttpToolsProtocol.connections": Attribute((set,)),
    "ServerState.default_headers": Attribute((list,)),
    "RequestResponseCycle.__init__": Method(
        (
            "scope",
            "transport",
            "flow",
            "logger",
            "access_logger",
            "access_log",
            "default_headers",
            "message_event",
            "expect_100_continue",
            "keep_alive",
            "on_response",
        ),
        overridden=True,
    ),
    "RequestResponseCycle.run_asgi": Method(("app",), overridden=True, coroutine=True),
    "RequestResponseCycle.transport": Attribute((asyncio.Transport,)),
    "RequestResponseCycle.flow": Attribute((FlowControl,)),
    "RequestResponseCycle.logger": Attribute((logging.Logger,)),
    "RequestResponseCycle.access_logger": Attribute((logging.Logger,)),
    "RequestResponseCycle.access_log": Attribute((bool,)),
    "RequestResponseCycle.default_headers": Attribute((list,)),
    "RequestResponseCycle.message_event": Attribute((asyncio.Event,)),
    "RequestResponseCycle.on_response": Attribute((Callable,)),  # type: ignore[arg-type]
    "RequestResponseCycle.disconnected": Attribute((bool,)),
    "RequestResponseCycle.keep_alive": Attribute((bool,)),
    "RequestResponseCycle.waiting_for_100_continue": Attribute((bool,)),
    "RequestResponseCycle.body": Attribute((bytearray,)),
    "RequestResponseCycle.more_body": Attribute((bool,)),
    "RequestResponseCycle.response_started": Attribute((bool,)),
    "RequestResponseCycle.response_complete": Attribute((bool,)),
    "RequestResponseCycle.chunked_encoding": Attribute((bool, NONE)),
    "FlowControl.read_paused": Attribute((bool,)),
    "FlowControl.write_paused": Attribute((bool,)),
    "FlowControl.pause_reading": Method((), overridden=False),
    "FlowControl.resume_reading": Method((), overridden=False),
    "FlowControl.drain": Method((), overridden=False, coroutine=True),
}
CLASSES: dict[str, type] = {
    "Config": uvicorn.Config,
    "HttpToolsProtocol": HttpToolsProtocol,
    "RequestResponseCycle": RequestResponseCycle,
    "FlowControl": FlowControl,
    "ServerState": ServerState,
}
MODULES = {"httptools_impl": "uvicorn.protocols.http.httptools_impl"}


@dataclass(frozen=True)
class Live:
    """What a real uvicorn protocol held while serving a request: each object's instance attributes."""

    attributes: dict[str, dict[str, Any]]  # by class name: vars() of the protocol, its cycle, ...
    protocol: HttpToolsProtocol
    head: bytes  # the head of uvicorn's answer


@pytest.fixture(scope="module")
def live() -> Live:
    """uvicorn's own HttpToolsProtocol, configured as front.py configures it, after one POST on loopback."""
    return asyncio.run(_serve_one_request())


def test_every_name_front_uses_has_a_shape_here() -> None:
    """uvicorn_names.UVICORN_NAMES and this module's SHAPES list the same names, so none goes unchecked."""
    assert sorted(UVICORN_NAMES) == sorted(SHAPES)


@pytest.mark.parametrize("qualified", sorted(SHAPES))
def test_uvicorn_still_has(qualified: str, live: Live) -> None:
    """The uvicorn name front.py builds on exists, with the parameters or type front.py expects."""
    owner, name = qualified.split(".", 1)
    shape, use = SHAPES[qualified], UVICORN_NAMES.get(qualified, "?")
    if isinstance(shape, Method):
        _check_method(owner, name, shape, use)
        return
    if isinstance(shape, Importable):
        where, found = MODULES[owner], vars(importlib.import_module(MODULES[owner]))
        kinds: tuple[type, ...] = (shape.kind,)
    else:
        where, found, kinds = f"uvicorn's {owner}", live.attributes[owner], shape.types
    _require(name in found, f"{where} has no attribute {name!r} (front.py uses it to {use})")
    _require(
        isinstance(found[name], kinds),
        f"{where}.{name} is a {type(found[name]).__name__}, not one of "
        f"{', '.join(kind.__name__ for kind in kinds)} (front.py uses it to {use})",
    )


def test_uvicorn_serves_the_request_the_snapshot_is_taken_from(live: Live) -> None:
    """uvicorn's protocol, configured by front.config, answers the POST this module inspects it with."""
    assert live.head.startswith(b"HTTP/1.1 200 OK\r\n"), live.head


def test_status_line_starts_an_answer() -> None:
    """STATUS_LINE maps a status code to its whole status line, as ProxyCycle._head writes it."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    assert STATUS_LINE[200] == b"HTTP/1.1 200 OK\r\n"


def test_the_asgi_scope_holds_the_protocols_headers_list(live: Live) -> None:
    """uvicorn's scope holds the protocol's `headers` list itself, which `_asgi` extends after building it."""
    assert (
        live.attributes["HttpToolsProtocol"]["scope"]["headers"]
        is live.attributes["HttpToolsProtocol"]["headers"]
    )


def test_uvicorn_collected_the_request_as_front_reads_it(live: Live) -> None:
    """uvicorn's callbacks leave the raw target in `url`, lower-cased headers and the whole body."""
    protocol, cycle = live.attributes["HttpToolsProtocol"], live.attributes["RequestResponseCycle"]
    assert protocol["url"] == b"/mcp/x?q=1"
    assert (b"content-type", b"application/json") in protocol["headers"]
    assert cycle["body"] == b"{}"
    assert cycle["more_body"] is False


def test_a_proxy_cycle_builds_on_a_live_protocol(live: Live) -> None:
    """ProxyCycle's constructor passes uvicorn's RequestResponseCycle everything it asks for."""
    cycle = ProxyCycle(live.protocol, None, "POST", "x", "", b"", "1.1", keep_alive=True)  # type: ignore[arg-type]
    assert cycle.keep_alive and not cycle.response_complete and cycle.body == b""


def test_front_protocol_names_do_not_shadow_uvicorns() -> None:
    """FrontProtocol adds no name uvicorn's protocol already has, except those it overrides."""
    own = set(vars(FrontProtocol)) - _borrowed("HttpToolsProtocol") - _dunders(FrontProtocol)
    assert own & set(dir(HttpToolsProtocol)) == set()


def test_proxy_cycle_names_do_not_shadow_uvicorns(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    """ProxyCycle's own methods and attributes are names uvicorn's cycle does not use."""
    monkeypatch.setattr(RequestResponseCycle, "__init__", lambda self, **_: None)  # only ProxyCycle's own
    cycle = ProxyCycle(live.protocol, None, "POST", "x", "", b"", "1.1", keep_alive=True)  # type: ignore[arg-type]
    own = (
        (set(vars(ProxyCycle)) | set(vars(cycle))) - _borrowed("RequestResponseCycle") - _dunders(ProxyCycle)
    )
    uvicorns = set(dir(RequestResponseCycle)) | set(live.attributes["RequestResponseCycle"])
    assert own & uvicorns == set()


def _check_method(owner: str, name: str, shape: Method, use: str) -> None:
    """Fail naming the method if it is gone, or takes other parameters than front.py relies on."""
    where = f"uvicorn's {owner}"
    method = getattr(CLASSES[owner], name, None)
    _require(method is not None, f"{where} has no method {name!r} (front.py uses it to {use})")
    _require(
        inspect.iscoroutinefunction(method) == shape.coroutine,
        f"{where}.{name} is {'no longer' if shape.coroutine else 'now'} a coroutine function "
        f"(front.py uses it to {use})",
    )
    parameters = inspect.signature(method).parameters  # type: ignore[arg-type]
    names = tuple(p for p in parameters if p != "self")
    if shape.overridden:
        _require(
            names == shape.params,
            f"{where}.{name} takes ({', '.join(names)}), not ({', '.join(shape.params)}) as front.py's "
            f"override does (front.py uses it to {use})",
        )
        return
    missing = [p for p in shape.params if p not in parameters]
    _require(not missing, f"{where}.{name} no longer takes {missing} (front.py uses it to {use})")
    required = [
        p
        for p, parameter in parameters.items()
        if p != "self"
        and p not in shape.params
        and parameter.default is inspect.Parameter.empty
        and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    _require(not required, f"{where}.{name} now requires {required} (front.py uses it to {use})")


def _require(met: bool, failure: str) -> None:
    """Fail with just `failure`: it names the uvicorn name and what front.py uses it for."""
    if not met:
        pytest.fail(failure, pytrace=False)


def _borrowed(owner: str) -> set[str]:
    return {name.split(".", 1)[1] for name in UVICORN_NAMES if name.startswith(f"{owner}.")}


def _dunders(cls: type) -> set[str]:
    return {name for name in vars(cls) if name.startswith("__") and name.endswith("__")}


async def _serve_one_request() -> Live:
    """Serve one POST with uvicorn's HttpToolsProtocol on a real loopback connection and snapshot its
    objects while the request is in flight; what uvicorn no longer has is missing from the snapshot."""
    in_flight: dict[str, dict[str, Any]] = {}
    holder: list[HttpToolsProtocol] = []

    async def answer(request: Request) -> Response:
        in_flight.update(_attributes(holder[0]))  # the body is all in (one read), not yet received
        return Response(await request.body(), media_type="application/json")

    config = front.config(App(routes=[Route("/mcp/x", answer, methods=["POST"])]), log_level="error")
    protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
    holder.append(protocol)
    server = await asyncio.get_running_loop().create_server(lambda: protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await asyncio.wait_for(reader.readexactly(2), 10)
    except (asyncio.IncompleteReadError, TimeoutError) as exc:
        head = f"no answer: {exc!r}".encode()
    finally:
        writer.close()
    answered = _attributes(protocol)  # the keep-alive timer is armed once the answer is out
    server.close()
    await server.wait_closed()
    snapshot = {owner: {**attributes, **in_flight.get(owner, {})} for owner, attributes in answered.items()}
    timer = "timeout_keep_alive_task"
    if timer in answered["HttpToolsProtocol"]:
        snapshot["HttpToolsProtocol"][timer] = answered["HttpToolsProtocol"][timer]
    return Live(snapshot, protocol, head)


def _attributes(protocol: HttpToolsProtocol) -> dict[str, dict[str, Any]]:
    """The instance attributes of the protocol and of the uvicorn objects it holds, by class name."""
    found = {"HttpToolsProtocol": dict(vars(protocol))}
    for cls in (RequestResponseCycle, FlowControl, ServerState):
        held = [value for value in vars(protocol).values() if type(value) is cls]
        found[cls.__name__] = dict(vars(held[0])) if held else {}
    return found
