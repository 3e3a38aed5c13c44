"""A stand-in for a remote MCP server: a real SDK server over TLS on 127.0.0.1, wanting a token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import remote
from pipeline.config import settings
from tests.support import tls
from tests.support.loopback import serve_asgi
from tests.support.proxy_rig import sdk_app

TOKEN = "Bearer s3cret-remote-token"
ALLOWED = ("127.0.0.1", "localhost")  # the stand-in's hosts, as a test's deploy.yaml allows them
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class Guarded:
    """An ASGI app answering 401 unless Authorization is TOKEN; records what each request carried."""

    app: Any
    seen: list[list[tuple[str, str]]] = field(default_factory=list)  # each request's headers
    down: bool = False  # answer every request 503, as a remote that stopped serving

    def values(self, name: str) -> list[list[str]]:
        """Per request, every value of header `name` (lowercase)."""
        return [[v for k, v in pairs if k == name] for pairs in self.seen]

    @property
    def hosts(self) -> list[str]:
        """Each request's Host."""
        return [v[0] if v else "" for v in self.values("host")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            pairs = [(k.decode().lower(), v.decode()) for k, v in scope["headers"]]
            self.seen.append(pairs)
            status = 503 if self.down else 401
            if self.down or [v for k, v in pairs if k == "authorization"] != [TOKEN]:
                await send({"type": "http.response.start", "status": status, "headers": []})
                await send({"type": "http.response.body", "body": b"no"})
                return
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class StandIn:
    """A running stand-in: its port, certificate (and CA), and the app that records requests."""

    port: int
    cert: tls.ServerCert
    app: Guarded

    def url(self, host: str = "localhost") -> str:
        """Its MCP endpoint, by `host`."""
        return f"https://{host}:{self.port}/mcp"


@contextmanager
def stand_in(folder: Path, label: str = "weather") -> Iterator[StandIn]:
    """Serve the stand-in (an SDK server whose `whoami` answers `label`) over TLS; yield it."""
    cert = tls.server_cert(folder, f"{label}-ca", list(ALLOWED))
    app = Guarded(sdk_app(label))
    with serve_asgi(app, ssl_certfile=str(cert.cert_file), ssl_keyfile=str(cert.key_file)) as port:
        yield StandIn(port, cert, app)


def dialer(ca_file: Path | None, allow: tuple[str, ...] = ALLOWED) -> remote.Dialer:
    """A dialer as deploy.yaml would make it: `allow` in remotes.allow_hosts, `ca_file` the CA."""
    return remote.Dialer.from_settings(
        settings.Settings(
            config_path=Path("deploy.yaml"),
            state_dir=Path("state"),
            remotes=settings.RemotesConfig(allow_hosts=allow, ca_file=ca_file, connect_timeout=2.0),
        )
    )
