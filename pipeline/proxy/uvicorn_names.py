"""uvicorn's private names that pipeline/proxy/front.py builds on, each with what it is used for.

This is the debt behind pyproject.toml's pin of uvicorn's minor version. tests/test_uvicorn_contract.py
checks each name against the installed uvicorn and names the one that moved; `make
proxy-newest-uvicorn` runs it and the proxy suites against uvicorn's newest release.
"""

from __future__ import annotations

from typing import Final

UVICORN_NAMES: Final[dict[str, str]] = {
    # imported from uvicorn
    "Config.__init__": "take the protocol class as `http=` (`config`)",
    "httptools_impl.HttpToolsProtocol": "be the class FrontProtocol extends",
    "httptools_impl.RequestResponseCycle": "be the class ProxyCycle extends",
    "httptools_impl.STATUS_LINE": "start a fast-path answer with the status line for its code",
    # HttpToolsProtocol: asyncio.Protocol methods, overridden
    "HttpToolsProtocol.connection_made": "refuse a connection past `max_connections`, and start the "
    "watchdog (super)",
    "HttpToolsProtocol.connection_lost": "mark the cycle disconnected (super), then let a proxy request "
    "waiting on its upstream without a task go",
    "HttpToolsProtocol.data_received": "feed the parser (super), then bound a head still incomplete",
    "HttpToolsProtocol.send_400_response": "answer 414/431 instead when a limit stopped the parser",
    # HttpToolsProtocol: parser callbacks, overridden or relied on
    "HttpToolsProtocol.on_message_begin": "reset a request without an ASGI scope; `_asgi` calls uvicorn's",
    "HttpToolsProtocol.on_url": "collect the request target in `url`, up to `max_url` bytes (as uvicorn's)",
    "HttpToolsProtocol.on_header": "collect `headers` and `expect_100_continue` (uvicorn's, not overridden)",
    "HttpToolsProtocol.on_headers_complete": "take the fast path, or call uvicorn's to start an ASGI cycle",
    "HttpToolsProtocol.on_body": "add to the cycle's body, pausing reads past the high-water mark (super)",
    "HttpToolsProtocol.on_message_complete": "mark the body complete (super), then begin a waiting cycle",
    # HttpToolsProtocol: methods called
    "HttpToolsProtocol.on_response_complete": "be ProxyCycle's `on_response`: start the next pipelined "
    "request or arm the keep-alive timer",
    "HttpToolsProtocol._start_asgi_task": "run a ProxyCycle's `run_asgi` in a task the shutdown awaits",
    "HttpToolsProtocol._unset_keepalive_if_required": "disarm the keep-alive timer an answer made "
    "while parsing armed",
    # HttpToolsProtocol: attributes
    "HttpToolsProtocol.timeout_keep_alive_task": "hold the keep-alive timer `_unset_keepalive_if_required` "
    "disarms",
    "HttpToolsProtocol.url": "read the raw request target (path and query) and give it to ProxyCycle",
    "HttpToolsProtocol.headers": "give the raw headers to ProxyCycle; `_asgi` extends the scope's list",
    "HttpToolsProtocol.scope": "hold `headers` itself, so `_asgi` can extend that list",
    "HttpToolsProtocol.expect_100_continue": "send the request to a task that answers 100 Continue",
    "HttpToolsProtocol.parser": "read the method, HTTP version, keep-alive and upgrade from httptools",
    "HttpToolsProtocol.root_path": "send every request the ASGI way when a root path is set",
    "HttpToolsProtocol.limit_concurrency": "send every request the ASGI way when a limit is set",
    "HttpToolsProtocol.transport": "check the connection is open and give it to ProxyCycle",
    "HttpToolsProtocol.flow": "pause reads for pipelined requests and give flow control to ProxyCycle",
    "HttpToolsProtocol.cycle": "hold the request being served, which uvicorn's callbacks and shutdown use",
    "HttpToolsProtocol.pipeline": "queue a pipelined ProxyCycle until the one before it has answered",
    "HttpToolsProtocol.app": "queue the ASGI app with a pipelined cycle, as uvicorn does",
    "HttpToolsProtocol.logger": "give ProxyCycle uvicorn's error logger",
    "HttpToolsProtocol.access_logger": "give ProxyCycle uvicorn's access logger",
    "HttpToolsProtocol.access_log": "tell ProxyCycle whether to write access log lines",
    "HttpToolsProtocol.client": "give ProxyCycle the client address for the access log",
    "HttpToolsProtocol.server_state": "give ProxyCycle uvicorn's default headers (server, date)",
    "HttpToolsProtocol.loop": "defer ProxyCycle's writes with call_soon and create its tasks",
    "HttpToolsProtocol.tasks": "add ProxyCycle's tasks to those uvicorn's graceful shutdown awaits",
    "HttpToolsProtocol.connections": "count open connections; the watchdog sweeps them",
    "ServerState.default_headers": "write uvicorn's server and date header lines in every answer",
    # RequestResponseCycle
    "RequestResponseCycle.__init__": "build ProxyCycle's uvicorn state from the protocol's",
    "RequestResponseCycle.run_asgi": "run the proxy's coroutine when uvicorn starts the cycle's task",
    "RequestResponseCycle.transport": "write ProxyCycle's answers",
    "RequestResponseCycle.flow": "wait while the client reads slowly, resume reads for the body",
    "RequestResponseCycle.logger": "log a crash in the proxy",
    "RequestResponseCycle.access_logger": "write an access log line per answer",
    "RequestResponseCycle.access_log": "tell whether to write access log lines",
    "RequestResponseCycle.default_headers": "write uvicorn's server and date header lines",
    "RequestResponseCycle.message_event": "wake a coroutine reading the body or waiting for a disconnect",
    "RequestResponseCycle.on_response": "tell the protocol the answer is complete, once",
    "RequestResponseCycle.disconnected": "know the client has gone (uvicorn sets it on connection_lost)",
    "RequestResponseCycle.keep_alive": "close after the answer (uvicorn's shutdown clears it)",
    "RequestResponseCycle.waiting_for_100_continue": "send 100 Continue once, when the body is read",
    "RequestResponseCycle.body": "read the request body uvicorn's on_body collects",
    "RequestResponseCycle.more_body": "know the body is all in (uvicorn's on_message_complete clears it)",
    "RequestResponseCycle.response_started": "answer 500 after a crash only if nothing was sent",
    "RequestResponseCycle.response_complete": "know the answer is done (uvicorn reads it to pipeline)",
    "RequestResponseCycle.chunked_encoding": "remember a streamed answer is chunked",
    # FlowControl (the protocol's and the cycle's `flow`)
    "FlowControl.read_paused": "notice a body too large to wait for without a task",
    "FlowControl.write_paused": "notice the client reads slower than the proxy writes",
    "FlowControl.pause_reading": "stop reading behind a pipelined request",
    "FlowControl.resume_reading": "read more of the body, or the client's disconnect",
    "FlowControl.drain": "wait until the client has read what was written",
}
