"""A PEP 503 simple index and an npm registry on loopback, for downloads that must be refused or stopped."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.loopback import serve_asgi

CHUNK = 64 * 1024


@dataclass(frozen=True)
class Hosted:
    """One file the index lists: its size (zeros), or `body` as it is; `hang` never finishes it."""

    name: str
    size: int = 0
    body: bytes = b""
    hang: bool = False


@dataclass
class Index:
    """Projects by normalized name, each with its files; `requests` counts what was fetched."""

    projects: dict[str, list[Hosted]]
    requests: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        """The index as an ASGI app: /simple/<project>/ and /files/<file>."""
        return Starlette(
            routes=[Route("/simple/{project}/", self._listing), Route("/files/{file}", self._file)]
        )

    async def _listing(self, request: Request) -> Response:
        files = self.projects.get(request.path_params["project"])
        if files is None:
            return Response(status_code=404)
        links = "".join(f'<a href="/files/{f.name}">{f.name}</a>\n' for f in files)
        return HTMLResponse(f"<!DOCTYPE html><html><body>\n{links}</body></html>")

    async def _file(self, request: Request) -> Response:
        name = request.path_params["file"]
        self.requests.append(name)
        hosted = next((f for p in self.projects.values() for f in p if f.name == name), None)
        if hosted is None:
            return Response(status_code=404)
        if hosted.body:
            return Response(hosted.body, media_type="application/octet-stream")
        return StreamingResponse(_zeros(hosted), media_type="application/octet-stream",
                                 headers={"content-length": str(hosted.size)})  # fmt: skip


async def _zeros(hosted: Hosted) -> AsyncIterator[bytes]:
    sent = 0
    while sent < hosted.size:
        chunk = min(CHUNK, hosted.size - sent)
        sent += chunk
        yield b"\0" * chunk
        if hosted.hang:
            await asyncio.sleep(3600)


@contextmanager
def serving(index: Index) -> Iterator[str]:
    """Serve `index` on loopback; yield its simple index URL."""
    with serve_asgi(index.app()) as port:
        yield f"http://127.0.0.1:{port}/simple"


def tiny_wheel(name: str, version: str, scripts: dict[str, str] | None = None) -> bytes:
    """A minimal valid wheel of `name` `version`, with console `scripts` (name → module:function)."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if scripts:
        files[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items()
        )
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return buffer.getvalue()


@dataclass
class NpmRegistry:
    """An npm registry of one-version packages, each a tarball of `files` (path → text)."""

    packages: dict[str, dict[str, str]]
    base: str = ""

    def app(self) -> Starlette:
        """The registry as an ASGI app: /<name> (the packument) and /<name>/-/<file>.tgz."""
        return Starlette(routes=[Route("/{name}", self._packument), Route("/{name}/-/{file}", self._tarball)])

    async def _packument(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.packages:
            return Response(status_code=404)
        manifest = json.loads(self.packages[name]["package.json"])
        body = self._tgz(name)
        version = manifest["version"]
        dist = {
            "tarball": f"{self.base}/{name}/-/{name}-{version}.tgz",
            "shasum": hashlib.sha1(body).hexdigest(),
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(body).digest()).decode(),
        }
        packument = {
            "name": name,
            "dist-tags": {"latest": version},
            "versions": {version: {**manifest, "dist": dist}},
        }
        return JSONResponse(packument)

    async def _tarball(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.packages:
            return Response(status_code=404)
        return Response(self._tgz(name), media_type="application/octet-stream")

    def _tgz(self, name: str) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
            for path, text in sorted(self.packages[name].items()):
                data = text.encode()
                info = tarfile.TarInfo(f"package/{path}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                archive.addfile(info, io.BytesIO(data))
        # gzip's header holds a time: the packument's integrity and the tarball served a second
        # later must be the same bytes.
        return gzip.compress(buffer.getvalue(), mtime=0)


@contextmanager
def serving_npm(registry: NpmRegistry) -> Iterator[str]:
    """Serve `registry` on loopback; yield its URL."""
    with serve_asgi(registry.app()) as port:
        registry.base = f"http://127.0.0.1:{port}"
        yield registry.base + "/"
