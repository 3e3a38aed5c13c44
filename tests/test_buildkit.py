"""pipeline/buildkit.py: BuildKit's progress messages read from protobuf's wire format."""

from __future__ import annotations

import base64

import pytest

from pipeline.buildkit import Progress

# A log message as the engine sent it (docker.io 20.10): `RUN echo hello-from-run` printing a line.
REAL_LOG = (
    "GmoKR3NoYTI1NjoyMGUwY2FlNWVkYmQwMGEwODM1ZWVlYjFhZWMyMDliZWE0ZjNhMWFmMmE2MWY1OTliMjFiOTc2ZDc3Njk5"
    "ZmI4EgwIzIGh2AYQzY3wqgMYASIPaGVsbG8tZnJvbS1ydW4K"
)


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value: bytes | int) -> bytes:
    """One protobuf field: length-delimited for bytes, varint for int."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def vertex(digest: str, name: str, *, started: bool = False, cached: bool = False, error: str = "") -> bytes:
    """A StatusResponse holding one Vertex."""
    body = field(1, digest.encode()) + field(3, name.encode())
    body += field(4, 1) if cached else b""
    body += field(5, field(1, 1_700_000_000)) if started else b""
    body += field(7, error.encode()) if error else b""
    return field(1, body)


def aux(*messages: bytes) -> str:
    """The base64 `aux` of one trace message made of these StatusResponse parts."""
    return base64.b64encode(b"".join(messages)).decode()


def test_a_real_log_message_of_the_engine_becomes_its_line() -> None:
    """The captured message of a RUN step's output reads as the step printed it."""
    assert Progress().lines(REAL_LOG) == ["hello-from-run"]


def test_steps_are_announced_once_numbered_and_marked_cached_or_failed() -> None:
    """A vertex is named when it starts, once; CACHED and ERROR follow it; its output as printed."""
    progress = Progress()

    assert progress.lines(aux(vertex("a", "[1/2] FROM base"))) == []  # not started yet
    assert progress.lines(aux(vertex("a", "[1/2] FROM base", started=True))) == ["#1 [1/2] FROM base"]
    assert progress.lines(aux(vertex("a", "[1/2] FROM base", started=True))) == []
    assert progress.lines(aux(vertex("b", "[2/2] COPY . /app", cached=True))) == [
        "#2 [2/2] COPY . /app",
        "#2 CACHED",
    ]
    log = field(3, field(1, b"c") + field(4, b"one\n\ntwo\n"))
    failed = vertex("c", "[3/3] RUN false", started=True, error="exit code: 1")
    assert progress.lines(aux(log, failed)) == [
        "one",
        "two",
        "#3 [3/3] RUN false",
        "#3 ERROR: exit code: 1",
    ]


@pytest.mark.parametrize(
    "raw",
    [b"\x0a\x05ab", b"\x08\x80", b"\x0f", b"\x08" + b"\xff" * 11],
    ids=["field past the end", "truncated varint", "unknown wire type", "overlong varint"],
)
def test_a_malformed_message_raises_value_error(raw: bytes) -> None:
    """Bytes that are not a StatusResponse raise ValueError (the build goes on without the line)."""
    with pytest.raises(ValueError):
        Progress().lines(base64.b64encode(raw).decode())
