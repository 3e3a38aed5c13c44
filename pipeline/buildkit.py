"""BuildKit's progress stream, read without a protobuf library.

The engine's build API with `version=2` builds with BuildKit and streams JSON lines; progress
comes as `{"id": "moby.buildkit.trace", "aux": <base64 StatusResponse>}`. Only a few fields of
that message are needed for the deploy log, so they are decoded here from protobuf's wire format
(moby/buildkit api/services/control/control.proto):

    StatusResponse { repeated Vertex vertexes = 1; ...; repeated VertexLog logs = 3; }
    Vertex         { string digest = 1; string name = 3; bool cached = 4;
                     Timestamp started = 5; Timestamp completed = 6; string error = 7; }
    VertexLog      { string vertex = 1; bytes msg = 4; }

Input is bytes the engine sent; a malformed message raises ValueError, which the caller treats
as a line it cannot show, never as a failed build.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

MAX_MESSAGE = 4 * 1024 * 1024  # a trace message larger than this is not decoded
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass
class Progress:
    """Turns trace messages into plain log lines: steps numbered as `docker build` does (#N), and
    each step's output as it printed it."""

    steps: dict[str, int] = field(default_factory=dict)
    announced: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)

    def lines(self, aux: str) -> list[str]:
        """The log lines one `moby.buildkit.trace` message adds."""
        raw = base64.b64decode(aux, validate=False)
        if len(raw) > MAX_MESSAGE:
            raise ValueError(f"a BuildKit trace message of {len(raw)} bytes")
        out: list[str] = []
        for number, value in _fields(raw):
            if number == 1 and isinstance(value, bytes):
                out += self._vertex(dict(_fields(value)))
            elif number == 3 and isinstance(value, bytes):
                out += self._log(dict(_fields(value)))
        return out

    def _vertex(self, vertex: dict[int, int | bytes]) -> list[str]:
        digest, name = _text(vertex.get(1)), _text(vertex.get(3))
        step = self.steps.setdefault(digest, len(self.steps) + 1)
        out = []
        if digest not in self.announced and (5 in vertex or vertex.get(4)):
            self.announced.add(digest)
            out.append(f"#{step} {name}")
        if digest not in self.closed:
            if vertex.get(7):
                self.closed.add(digest)
                out.append(f"#{step} ERROR: {_text(vertex.get(7))}")
            elif vertex.get(4):
                self.closed.add(digest)
                out.append(f"#{step} CACHED")
        return out

    def _log(self, entry: dict[int, int | bytes]) -> list[str]:
        # A step's own output reads as it would in a terminal (as the legacy builder shows it).
        return [line for line in _text(entry.get(4)).splitlines() if line.strip()]


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of one protobuf message; varints as int, the rest as bytes."""
    fields: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, i = _varint(data, i)
            fields.append((number, value))
        elif wire == _LEN:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ValueError("a length-delimited field runs past the message")
            fields.append((number, data[i : i + size]))
            i += size
        elif wire in (_I64, _I32):
            i += 8 if wire == _I64 else 4
        else:
            raise ValueError(f"wire type {wire} of field {number} is not read here")
    return fields


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("a truncated or overlong varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _text(value: int | bytes | None) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""
