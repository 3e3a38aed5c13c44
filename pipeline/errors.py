"""The one error tree of central-mcp.

    CentralMCPError                 every error the package raises on purpose
    ├── ConfigError                 deploy.yaml or a manifest is wrong (carries Problems)
    ├── SecretsError                a server secret not granted or not stored, or a bad store or secrets.env
    ├── StateError                  the state directory or its database cannot be used
    │   └── DatabaseDamaged         the database is damaged past its header (also an sqlite3.Error)
    ├── SourceError                 git: a repo, ref or tree that cannot be read
    ├── DockerError                 the Docker engine refused or failed
    │   ├── EngineUnavailable       no Docker engine answers
    │   └── BuildKitUnavailable     the engine refused a BuildKit build (the legacy builder is used)
    ├── BuildError                  an image did not build (carries the build log tail)
    ├── PackageSpecError            build.package is not one exact PyPI/npm version (also a ValueError)
    ├── GateError                   a candidate did not pass the MCP health gate
    │   ├── NotMCP                  the endpoint answered, but not as an MCP server
    │   ├── AnswerTooLarge          it answered more than the gate reads (proxy.max_handshake)
    │   └── CheckFailed             a manifest's smoke check (a tool call) did not get what it expects
    ├── DeployError                 a deploy could not go on (lock, plan, swap)
    │   └── ContractBroken          a breaking change of the tool contract without a major version bump
    ├── NetworkError                a server network, the host firewall or a host-service relay is not right
    │   ├── RemoteRefused           a remote's address leads into the VM, or its certificate fails
    │   └── LookupTimedOut          a remote host's lookup outlasted remotes.connect_timeout (a TimeoutError)
    ├── ServeError                  the serve process did not start, or refused a request
    │   └── ServeUnavailable        no serve process answers for this state directory
    └── ProxyError                  one proxied request could not be relayed
        ├── ClientGone              the client left before its request body was complete
        ├── BodyTooLarge            the request body is over the proxy's limit
        ├── HeadTooLarge            the request target or headers are over the proxy's limits
        ├── UpstreamError           the upstream closed or spoke no HTTP (also a ConnectionError)
        │   ├── UpstreamRefused     the proxy would not connect: a remote's address or certificate is refused
        │   └── UpstreamUnreachable  no connection to a container could be made: nothing was sent
        └── UpstreamFailed          a server's answer to the aggregate's own request was no usable result

`UpstreamError` is also a `ConnectionError` (so an `OSError`): the proxy handles it with
refused and reset connections in one `except OSError`. `DatabaseDamaged` is also an
`sqlite3.DatabaseError`: code that survives a failed write (`except sqlite3.Error`) survives a
damaged page the same way, and the CLI prints it as one line. `NotMCP` is distinct from "not up
yet" (an `OSError`): the gate keeps waiting on both, the monitor reports both.

Lower libraries' errors (docker, git, yaml, httpx) are translated into these at their
adapter; only the CLI turns them into exit codes and only the HTTP layer into responses.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file: where, what, and the likely fix."""

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: str = ""

    def render(self) -> str:
        """Return the one-line `file:line:column path: message (fix)` form."""
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        text = f"{where} {self.path}: {self.message}"
        return f"{text} — {self.hint}" if self.hint else text

    def as_json(self) -> dict[str, object]:
        """Return the problem as a JSON-ready mapping."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


class CentralMCPError(Exception):
    """Base of every error central-mcp raises on purpose."""


class ConfigError(CentralMCPError):
    """deploy.yaml or a server manifest is invalid; `problems` lists every fault found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.render() for p in problems))


class SourceError(CentralMCPError):
    """A git repository, ref or tree could not be read."""


class DockerError(CentralMCPError):
    """The Docker engine refused or failed an operation."""


class EngineUnavailable(DockerError):
    """No Docker engine answers on this machine."""


class BuildKitUnavailable(DockerError):
    """The engine refused a BuildKit build (an old or Windows engine); builds fall back to legacy."""


class BuildError(CentralMCPError):
    """An image failed to build; the message carries the end of the build log."""


class NetworkError(CentralMCPError):
    """A server's network, the host firewall that isolates it, or a host-service relay is missing or
    could not be set up."""


class RemoteRefused(NetworkError):
    """A remote server's host resolves to an address the provider never reaches for one (loopback,
    private, link-local, metadata, the server pool), or its TLS certificate does not verify."""


class LookupTimedOut(NetworkError, TimeoutError):
    """A remote host's name lookup took longer than remotes.connect_timeout: an OSError like any
    connection that does not come up, so the gate keeps waiting and the proxy answers 502."""


class PackageSpecError(CentralMCPError, ValueError):
    """A package spec with a range, a tag, no version, an unknown registry or a bad name; carries the fix."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class GateError(CentralMCPError):
    """A candidate container failed the MCP health gate."""


class NotMCP(GateError):
    """The endpoint answered, but not as an MCP server (kept distinct from 'not up yet')."""


class AnswerTooLarge(GateError):
    """The server answered the MCP handshake with more bytes than the gate reads (not retried)."""


class CheckFailed(GateError):
    """A smoke check's tool call failed, or did not answer what the manifest expects."""


class DeployError(CentralMCPError):
    """A deploy could not continue (lock held, bad plan, failed swap)."""


class ContractBroken(DeployError):
    """A candidate removes a tool or narrows an input without a major version bump (refused)."""


class SecretsError(CentralMCPError):
    """A server names a secret deploy.yaml does not grant it or the store lacks; or a bad store or file.

    Not a ConfigError: secrets live on the VM, never in git, so the fix is on the VM.
    """


class StateError(CentralMCPError):
    """The state directory or its SQLite database cannot be created or opened."""


class DatabaseDamaged(StateError, sqlite3.DatabaseError):
    """SQLite found damaged pages behind a sound header (SQLITE_CORRUPT or SQLITE_NOTADB)."""


class ServeError(CentralMCPError):
    """The serve process did not start, or refused or dropped a local command's request."""


class ServeUnavailable(ServeError):
    """No serve process answers for this state directory (no control.json, or nothing listens)."""


class ProxyError(CentralMCPError):
    """One proxied request could not be relayed."""


class ClientGone(ProxyError):
    """The client disconnected before its request body was complete."""

    def __init__(self) -> None:
        super().__init__("the client disconnected before its request body was complete; nothing to answer")


class BodyTooLarge(ProxyError):
    """The request body is over the proxy's limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the request body is over {limit} bytes, the proxy's limit; send a smaller one")


class HeadTooLarge(ProxyError):
    """A client's request target or header lines are over the proxy's limits (414 or 431)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class UpstreamError(ProxyError, ConnectionError):
    """The upstream closed the connection or sent something that is not HTTP.

    Also a ConnectionError, so the proxy's `except OSError` treats it like a refused or reset
    connection (answer 502; retry an idempotent request once).
    """


class UpstreamRefused(UpstreamError):
    """The proxy did not connect to a remote server: its address leads into the VM, or its TLS
    certificate does not verify (RemoteRefused, met on the proxy's path)."""


class UpstreamUnreachable(UpstreamError):
    """No connection to a container could be made (refused, unreachable, timed out): nothing of the
    request was sent, so another replica may take it."""


class UpstreamFailed(ProxyError):
    """A server's answer to the aggregate's own request (/mcp) was not a usable JSON-RPC result."""

    def __init__(self, server: str, status: int, message: str, retry_after: str = "") -> None:
        super().__init__(f"server {server!r}: {message}")
        self.server = server
        self.status = status
        self.retry_after = retry_after  # the answer's Retry-After (a 429 of the key's rate limit)
